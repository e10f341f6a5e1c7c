//! Helpers for the server tests: a shared synthetic model, a slowed-down backend, a raw HTTP/1.1
//! client over TcpStream (so malformed and slow requests are possible), multipart bodies.
#![allow(dead_code)]

pub mod chromium;
pub mod mjpeg_camera;
pub mod mosquitto;

use ndarray::{Array2, ArrayView4};
use resnet_core::backend::{Backend, BackendKind, BackendOptions, LayerObserver};
use resnet_core::cpu::Isa;
use resnet_server::watch::WatchConfig;
use resnet_server::{Config, ServedModel, Server};
use resnet_watch::{EventFilter, SourceSpec, WatchOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The program `name` on PATH, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `testdata/images/<name>` (bad files are under `bad/`).
pub fn image_path(name: &str) -> PathBuf {
    repo_root().join("testdata/images").join(name)
}

pub fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(image_path(name)).unwrap()
}

/// The native backend on synthetic weights (seed 0), prepared once per test binary.
pub fn model() -> ServedModel {
    static MODEL: OnceLock<ServedModel> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let weights = resnet_core::weights::synthetic_weights(0);
            let options = BackendOptions {
                isa: Isa::best_supported(),
                ..BackendOptions::default()
            };
            ServedModel::build(BackendKind::Native, &weights, &options, 2).unwrap()
        })
        .share()
}

/// A backend that sleeps before each forward pass: makes queues fill up and requests run long
/// enough to test overflow, timeouts and shutdown. The numbers are still the real backend's.
pub struct SlowBackend {
    pub inner: Arc<dyn Backend>,
    pub delay: Duration,
}

impl Backend for SlowBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn describe(&self) -> String {
        format!(
            "{} (slowed by {:?} for tests)",
            self.inner.describe(),
            self.delay
        )
    }
    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        observer: &mut dyn LayerObserver,
    ) -> resnet_core::Result<Array2<f32>> {
        std::thread::sleep(self.delay);
        self.inner.forward(batch, observer)
    }
}

pub fn slow_model(delay: Duration) -> ServedModel {
    let mut m = model();
    m.backend = Arc::new(SlowBackend {
        inner: m.backend,
        delay,
    });
    m
}

/// Quiet settings on a free loopback port.
pub fn config() -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        log_requests: false,
        ..Config::default()
    }
}

pub async fn start(config: Config, model: ServedModel) -> Server {
    let server = Server::start(config, model).await.unwrap();
    server.wait_ready().await;
    server
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    /// Asserts the status and the JSON error code.
    pub fn assert_error(&self, status: u16, code: &str) {
        let v = self.json();
        assert_eq!(self.status, status, "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// Parses a whole `Connection: close` response.
pub fn parse(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete response head in {:?}",
                String::from_utf8_lossy(raw)
            )
        });
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// Writes `raw` and reads until the server closes.
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before reading everything, e.g. 413: ignore write errors.
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    parse(&out)
}

/// A request with `Content-Length` and `Connection: close`.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    send_raw(addr, &request("GET", path, &[], b"")).await
}

pub async fn get_auth(addr: SocketAddr, path: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    send_raw(
        addr,
        &request("GET", path, &[("Authorization", &auth)], b""),
    )
    .await
}

pub const BOUNDARY: &str = "----resnet-test-boundary-7MA4YWxkTrZu0gW";

/// A multipart/form-data body: (field name, file name, bytes) per part.
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, file, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// POST one image as multipart field `file`.
pub async fn post_file(addr: SocketAddr, path: &str, name: &str, bytes: &[u8]) -> Resp {
    let body = multipart(&[("file", name, bytes)]);
    let ct = multipart_type();
    send_raw(
        addr,
        &request("POST", path, &[("Content-Type", &ct)], &body),
    )
    .await
}

/// POST one image as the raw body.
pub async fn post_raw(addr: SocketAddr, path: &str, content_type: &str, bytes: &[u8]) -> Resp {
    send_raw(
        addr,
        &request("POST", path, &[("Content-Type", content_type)], bytes),
    )
    .await
}

/// The value of an unlabelled metric line `name value`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A server config watching `dir` as source `name`.
pub fn watching(dir: &Path, name: &str) -> Config {
    watching_source(
        &format!("{name}={}", dir.display()),
        WatchOptions {
            settle: Duration::from_millis(300),
            ..WatchOptions::default()
        },
    )
}

/// A server config watching one source (`NAME=SOURCE`, as `--watch` takes it) with `options`.
pub fn watching_source(source: &str, options: WatchOptions) -> Config {
    Config {
        watch: Some(WatchConfig {
            sources: vec![SourceSpec::parse(source).unwrap()],
            options,
            filter: EventFilter::default(),
        }),
        ..config()
    }
}

/// Copies a test photo into the watched folder whole: written beside it, then renamed in (a
/// rename is taken at once; the folder source's handling of slow writers is tested in
/// `resnet-cli/tests/watch.rs`).
pub fn drop_in(dir: &Path, photo: &str, name: &str) {
    let staging = dir.parent().unwrap().join(format!(".{name}.part"));
    std::fs::copy(image_path(photo), &staging).unwrap();
    std::fs::rename(&staging, dir.join(name)).unwrap();
}
