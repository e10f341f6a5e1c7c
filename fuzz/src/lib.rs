//! What each fuzz target does with one input, as plain functions.
//!
//! The libFuzzer binaries in `fuzz_targets/` are one line each: they call [`run`]. The
//! regression test (`tests/regressions.rs`) calls the same function on every saved input, in an
//! ordinary `cargo test`, so an input that once crashed stays fixed without libFuzzer or a
//! nightly compiler.
//!
//! An error returned for a hostile input is the expected outcome. A harness panics, which the
//! fuzzer reports as a crash, when the code under test panics or when a promise is broken: a
//! decoded image over the pixel limit, a preprocessed tensor that is not 3x224x224 and finite,
//! an HTTP answer that is not well-formed or is a 500.
//!
//! Inputs live in `fuzz/seeds/<target>/` (starting points, some are links to the repository's
//! test data) and `fuzz/regressions/<target>/` (inputs that once failed, named after the bug).
#![forbid(unsafe_code)]

use ndarray::{Array2, Array4, ArrayView4};
use resnet_core::arch::{FC_IN, NUM_CLASSES};
use resnet_core::backend::{Backend, LayerEvent, LayerObserver};
use resnet_core::cpu::Isa;
use resnet_core::decode::{decode_image_bytes, DecodeOptions};
use resnet_core::labels::Labels;
use resnet_server::routes::AppState;
use resnet_server::server::respond_in_memory;
use resnet_server::{Config, ServedModel, WeightsIdentity};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Every fuzz target, by the name of its binary and its input folders.
pub const TARGETS: [&str; 7] = [
    "decode_image",
    "safetensors",
    "pth",
    "labels",
    "http",
    "kserve",
    "mjpeg",
];

/// Runs `target`'s harness on `data`. Panics on an unknown target name.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "decode_image" => decode_image(data),
        "safetensors" => safetensors(data),
        "pth" => pth(data),
        "labels" => labels(data),
        "http" => http(data),
        "kserve" => kserve(data),
        "mjpeg" => mjpeg(data),
        other => panic!("no fuzz target named {other}"),
    }
}

/// The KServe v2 inference request parser (JSON header, binary tensor extension, BYTES
/// elements) and the response encoder. The input's first line is the
/// `Inference-Header-Content-Length` value (empty: no header); the rest is the body.
pub fn kserve(data: &[u8]) {
    use resnet_server::kserve::{encode_response, parse_infer_request, Images};
    let (first, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let header_length = std::str::from_utf8(first).ok().filter(|s| !s.is_empty());
    let Ok(request) = parse_infer_request(header_length, body, 8) else {
        return;
    };
    let n = request.images.len();
    assert!((1..=8).contains(&n), "{n} images passed the limit of 8");
    if let Images::Tensors { count, data } = &request.images {
        assert_eq!(data.len(), count * 3 * 224 * 224, "tensor size");
        assert!(data.iter().all(|v| v.is_finite()), "non-finite input");
    }
    let logits: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            (0..NUM_CLASSES)
                .map(|c| ((c * 7 + i) % 13) as f32)
                .collect()
        })
        .collect();
    let encoded = encode_response(&request, &logits, |_| "label");
    let json_end = encoded.header_length.unwrap_or(encoded.body.len());
    let header: serde_json::Value =
        serde_json::from_slice(&encoded.body[..json_end]).expect("response header is JSON");
    let outputs = header["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), request.outputs.len());
    let binary: u64 = outputs
        .iter()
        .filter_map(|o| o["parameters"]["binary_data_size"].as_u64())
        .sum();
    assert_eq!(
        binary as usize,
        encoded.body.len() - json_end,
        "binary sizes"
    );
}

/// The pixel limit the image harness decodes with (the CLI's and the server's default is larger;
/// a smaller one keeps each run fast while exercising the same check).
pub const MAX_PIXELS: u64 = 4_000_000;

/// Image decoding (every format) and preprocessing, with the pixel limit on.
pub fn decode_image(data: &[u8]) {
    let opts = DecodeOptions {
        max_pixels: MAX_PIXELS,
        ..DecodeOptions::default()
    };
    if let Ok(image) = decode_image_bytes(data, "fuzz", &opts) {
        let pixels = u64::from(image.rgb.width()) * u64::from(image.rgb.height());
        assert!(
            pixels <= MAX_PIXELS,
            "decoded {pixels} pixels past the limit"
        );
        let input = resnet_core::preprocess::preprocess(&image.rgb);
        assert_eq!(input.shape(), [3, 224, 224]);
        assert!(
            input.iter().all(|v| v.is_finite()),
            "non-finite input value"
        );
    }
}

/// The safetensors reader and the ResNet-18 weights validation behind it.
pub fn safetensors(data: &[u8]) {
    let _ = resnet_core::weights::read_raw(data, "fuzz.safetensors");
    let _ = resnet_core::weights::Weights::from_bytes(data, "fuzz.safetensors");
}

/// The `.pth` reader: zip archive, restricted unpickler, storages and views. Inputs that do not
/// start like a zip archive get a `PK` prefix, so the fuzzer spends its time past the magic.
pub fn pth(data: &[u8]) {
    if data.starts_with(b"PK") {
        let _ = resnet_core::weights::read_raw(data, "fuzz.pth");
    } else {
        let mut v = b"PK".to_vec();
        v.extend_from_slice(data);
        let _ = resnet_core::weights::read_raw(&v, "fuzz.pth");
    }
}

/// The label-file parser (a JSON array or one name per line).
pub fn labels(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(labels) = resnet_core::labels::Labels::parse(text, "fuzz.txt") {
            assert!(!labels.is_empty(), "an empty label list was accepted");
        }
    }
}

/// The bearer token of the fuzzed server (the seeds carry it, so the fuzzer gets past it).
pub const HTTP_TOKEN: &str = "fuzz-token";

/// The whole HTTP path in memory: `data` is what a client sends on one connection (any bytes:
/// request line, headers, query, multipart or chunked bodies, pipelined requests). It goes
/// through hyper's parser and the server's router, limits, multipart reader, decoder,
/// preprocessing, batcher, history and activation maps, exactly as over TCP; only the network is
/// a [`StandInModel`]. Every answer must be a well-formed HTTP/1.1 response, and none a 500: a
/// 500 means a handler failed on input it should have refused with a 4xx.
pub fn http(data: &[u8]) {
    let statuses = http_statuses(data);
    assert!(!statuses.contains(&500), "a request got 500: {statuses:?}");
}

/// Sends `data` to the in-memory server and returns the status of each response, checking
/// that the answer is a well-formed sequence of HTTP/1.1 responses.
pub fn http_statuses(data: &[u8]) -> Vec<u16> {
    let (runtime, state) = http_server();
    let response = runtime.block_on(respond_in_memory(state, data));
    response_statuses(&response)
}

/// One server for the whole fuzzing process: the stand-in model, history in memory, a token,
/// small limits so that their checks are reached.
fn http_server() -> &'static (tokio::runtime::Runtime, Arc<AppState>) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, Arc<AppState>)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let fc_weight = (0..NUM_CLASSES * FC_IN)
            .map(|i| (i % 17) as f32 * 0.01 - 0.08)
            .collect();
        let model = ServedModel::new(
            Box::new(StandInModel),
            Labels::imagenet(),
            WeightsIdentity {
                source: "fuzzing stand-in".into(),
                sha256: None,
                synthetic: true,
                fc_weight: Some(fc_weight),
            },
            Isa::Portable,
            1,
        );
        let config = Config {
            token: Some(HTTP_TOKEN.into()),
            history: 8,
            max_body_bytes: 1 << 20,
            max_pixels: MAX_PIXELS,
            max_batch_parts: 4,
            batch_wait: Duration::ZERO,
            timeout: Duration::from_secs(5),
            log_requests: false,
            ..Config::default()
        };
        let state = runtime
            .block_on(async { AppState::start(config, model) })
            .expect("the fuzzed server starts");
        while !state.batcher.is_ready() {
            std::thread::sleep(Duration::from_millis(5));
        }
        (runtime, state)
    })
}

/// Stands in for the network in the HTTP harness, so that the fuzzer spends its time on the
/// request path (a real forward pass costs tens of milliseconds under the sanitizer). Whatever
/// the request, the network only ever receives `[N, 3, 224, 224]` finite tensors, which the
/// backends' own tests cover. It reports a `layer4.1` output, so activation maps work.
pub struct StandInModel;

impl Backend for StandInModel {
    fn name(&self) -> &'static str {
        "stand-in"
    }

    fn describe(&self) -> String {
        "channel means (a fuzzing stand-in for the network)".into()
    }

    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        observer: &mut dyn LayerObserver,
    ) -> resnet_core::Result<Array2<f32>> {
        let n = batch.dim().0;
        let means: Vec<[f32; 3]> = batch
            .outer_iter()
            .map(|image| {
                let mut m = [0.0; 3];
                for (c, plane) in image.outer_iter().enumerate().take(3) {
                    m[c] = plane.mean().unwrap_or(0.0);
                }
                m
            })
            .collect();
        if observer.wants_outputs() {
            let features = Array4::from_shape_fn((n, FC_IN, 7, 7), |(i, k, y, x)| {
                means[i][k % 3] * (y + x) as f32
            });
            observer.on_layer(&LayerEvent {
                point: resnet_core::cam::FEATURE_LAYER,
                name: resnet_core::cam::FEATURE_LAYER.name(),
                shape: features.shape().to_vec(),
                elapsed: Duration::ZERO,
                output: Some(features.view().into_dyn()),
            });
        }
        Ok(Array2::from_shape_fn((n, NUM_CLASSES), |(i, k)| {
            means[i][k % 3] * ((k % 7) as f32 - 3.0)
        }))
    }
}

/// The status codes of the responses in `raw` (a sequence of HTTP/1.1 responses, or 1.0 ones
/// to 1.0 requests, each with a `content-length`). Panics when `raw` is not such a sequence.
pub fn response_statuses(raw: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let head_end = find(rest, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("a response without the end of its head:\n{}", excerpt(raw)));
        let head = std::str::from_utf8(&rest[..head_end])
            .unwrap_or_else(|_| panic!("a response head that is not UTF-8:\n{}", excerpt(raw)));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a malformed status line {status_line:?}"));
        let length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("a response without content-length:\n{head}"));
        let body_start = head_end + 4;
        assert!(
            rest.len() >= body_start + length,
            "a response body shorter than its content-length:\n{}",
            excerpt(raw)
        );
        statuses.push(status);
        rest = &rest[body_start + length..];
    }
    statuses
}

/// The part limit of the MJPEG harness (small, so that inputs reach it).
pub const MJPEG_MAX_PART: usize = 4096;

/// The MJPEG multipart parser of `resnet watch`, fed in pieces: the first byte sets the piece
/// size (1 to 64), the rest is the stream (boundary `frame`). Promises: no part over the limit,
/// parts never hold more bytes than were fed, memory held stays bounded (limit + header limit +
/// one piece), and the same pieces give the same parts.
pub fn mjpeg(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let parse = || {
        let mut parser = resnet_watch::mjpeg::PartParser::new(b"frame", MJPEG_MAX_PART);
        let mut parts = Vec::new();
        for chunk in stream.chunks(piece) {
            parser.push(chunk);
            while let Some(part) = parser.next_part() {
                parts.push(part);
            }
            assert!(
                parser.pending_bytes() <= MJPEG_MAX_PART + 16 * 1024 + 2 * piece + 64,
                "{} bytes held",
                parser.pending_bytes()
            );
        }
        parts
    };
    let parts = parse();
    let mut total = 0;
    for part in parts.iter().flatten() {
        assert!(
            part.len() <= MJPEG_MAX_PART,
            "a part of {} bytes",
            part.len()
        );
        total += part.len();
    }
    assert!(
        total <= stream.len(),
        "{total} bytes of parts from {}",
        stream.len()
    );
    assert_eq!(parts, parse(), "the same input parsed twice differs");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn excerpt(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(2000)]).into_owned()
}
