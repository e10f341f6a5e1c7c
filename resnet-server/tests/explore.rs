//! `POST /v1/trace` and `GET /explore` (issue 18) over real HTTP on 127.0.0.1: every trace point
//! with the statistics `resnet_core::trace` computes (the function `resnet trace` prints), PNG
//! tiles of the stated size, SQNR against a second backend, and the limits and errors of the
//! other image routes. (Equality with the `resnet trace --format json` process: resnet-cli's
//! tests/explore.rs.)

mod util;

use ndarray::Axis;
use resnet_core::backend::BackendKind;
use resnet_core::decode::{decode_image_bytes, DecodeOptions};
use resnet_core::preprocess::preprocess;
use resnet_core::trace::{record, trace_rows};
use resnet_server::ServedModel;
use serde_json::Value;
use std::sync::Arc;
use util::*;

/// The shared native model plus `gemm` on the same synthetic weights.
fn two_backends() -> ServedModel {
    let weights = resnet_core::weights::synthetic_weights(0);
    let gemm = BackendKind::Gemm
        .create(&weights, &Default::default())
        .unwrap();
    model().with_other_backend(Arc::from(gemm))
}

fn png_of(data_url: &str) -> image::DynamicImage {
    use base64::Engine;
    let b64 = data_url
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| {
            panic!(
                "not a PNG data URL: {}",
                &data_url[..40.min(data_url.len())]
            )
        });
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Png
    );
    image::load_from_memory(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_reports_every_point_with_statistics_tiles_and_sqnr() {
    let model = two_backends();
    let native = Arc::clone(&model.backend);
    let server = start(config(), model).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    let r = post_raw(addr, "/v1/trace?maps=16&compare=gemm", "image/jpeg", &cat).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["backend"], "native");
    assert_eq!(v["compare"], "gemm");
    assert_eq!(v["synthetic_weights"], true);
    assert_eq!(
        (v["image"]["width"].as_u64(), v["image"]["height"].as_u64()),
        (Some(451), Some(300))
    );
    let crop = png_of(v["crop"].as_str().unwrap());
    assert_eq!((crop.width(), crop.height()), (224, 224));

    // The same statistics, computed here by the library on the same decoded image.
    let image = decode_image_bytes(&cat, "cat.jpg", &DecodeOptions::default()).unwrap();
    let input = preprocess(&image.rgb).insert_axis(Axis(0));
    let local = record(&*native, input.view()).unwrap();
    let expected = trace_rows(&local.points, None);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), expected.len());
    for (got, want) in layers.iter().zip(&expected) {
        let name = &want.layer;
        assert_eq!(got["layer"], *name);
        let shape: Vec<usize> = serde_json::from_value(got["shape"].clone()).unwrap();
        assert_eq!(shape, want.shape, "{name}");
        // Same backend, same input, same code: the same numbers. f32 values survive the JSON
        // round trip exactly; serde_json's default f64 parser may be 1 ulp off, hence 1e-15.
        assert_eq!(
            got["min"].as_f64().unwrap() as f32,
            want.stats.min,
            "{name} min"
        );
        assert_eq!(
            got["max"].as_f64().unwrap() as f32,
            want.stats.max,
            "{name} max"
        );
        for (key, value) in [
            ("mean", want.stats.mean),
            ("std", want.stats.std),
            ("zeros", want.stats.zeros),
        ] {
            let found = got[key].as_f64().unwrap();
            assert!(
                (found - value).abs() <= 1e-15 * value.abs(),
                "{name} {key}: {found} vs {value}"
            );
        }
        assert!(got["ms"].as_f64().unwrap() > 0.0, "{name}");
        assert!(got["macs"].as_u64().is_some() && got["parameters"].as_u64().is_some());
        // native against gemm: f32 rounding differences only (a wrong layer is near 0 dB).
        let sqnr = got["versus"]["sqnr_db"].as_f64().unwrap_or(f64::INFINITY);
        assert!(sqnr > 60.0, "{name}: SQNR {sqnr} dB");
        if shape.len() == 4 {
            let maps = &got["maps"];
            let (c, h, w) = (shape[1], shape[2], shape[3]);
            let channels: Vec<usize> = serde_json::from_value(maps["channels"].clone()).unwrap();
            assert_eq!(channels.len(), 16, "{name}");
            assert!(channels.iter().all(|&k| k < c), "{name}: {channels:?}");
            let means: Vec<f32> = serde_json::from_value(maps["channel_means"].clone()).unwrap();
            assert!(
                means.windows(2).all(|p| p[0] >= p[1]),
                "{name}: most active first"
            );
            assert_eq!(
                (maps["tile_width"].as_u64(), maps["tile_height"].as_u64()),
                (Some(w as u64), Some(h as u64))
            );
            assert_eq!(
                (maps["columns"].as_u64(), maps["rows"].as_u64()),
                (Some(4), Some(4))
            );
            let sheet = png_of(maps["png"].as_str().unwrap());
            assert_eq!(sheet.color(), image::ColorType::L8, "{name}: grey-scale");
            assert_eq!(
                (sheet.width() as usize, sheet.height() as usize),
                (4 * w, 4 * h),
                "{name}"
            );
            // Tile 0 is channel channels[0]: its brightest pixel is that channel's largest
            // value on the sheet's scale (8-bit rounding: +-1 level).
            let point = resnet_core::arch::TracePoint::from_name(name).unwrap();
            let out = local.point(point).unwrap().output.view();
            let ch = out
                .index_axis(Axis(0), 0)
                .index_axis(Axis(0), channels[0])
                .to_owned();
            let (black, white) = (
                maps["black"].as_f64().unwrap() as f32,
                maps["white"].as_f64().unwrap() as f32,
            );
            let top = ch.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let expected_level = ((top - black) / (white - black) * 255.0).round() as i32;
            let luma = sheet.to_luma8();
            let found = (0..h as u32)
                .flat_map(|y| (0..w as u32).map(move |x| (x, y)))
                .map(|(x, y)| luma.get_pixel(x, y).0[0] as i32)
                .max()
                .unwrap();
            assert!(
                (found - expected_level).abs() <= 1,
                "{name}: {found} vs {expected_level}"
            );
        } else {
            assert!(got.get("maps").is_none(), "{name} has no spatial maps");
        }
    }
    // The top classes are /v1/classify's.
    let classify = post_raw(addr, "/v1/classify?top_k=5", "image/jpeg", &cat)
        .await
        .json();
    let idx = |v: &Value| -> Vec<u64> {
        v["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["index"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(idx(&v), idx(&classify));

    // ?backend=gemm traces gemm; without maps there are no tiles.
    let g = post_raw(addr, "/v1/trace?backend=gemm", "image/jpeg", &cat)
        .await
        .json();
    assert_eq!(g["backend"], "gemm");
    assert!(g["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l.get("maps").is_none() && l.get("versus").is_none()));
    // The most a client can ask for stays within a few MB.
    let big = post_raw(addr, "/v1/trace?maps=64&compare=gemm", "image/jpeg", &cat).await;
    assert_eq!(big.status, 200);
    assert!(big.body.len() < 4 << 20, "{} bytes", big.body.len());
    let model_info = get(addr, "/v1/model").await.json();
    assert_eq!(
        model_info["backends"],
        serde_json::json!(["native", "gemm"])
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_refuses_bad_input_like_the_other_routes() {
    let mut cfg = config();
    cfg.max_body_bytes = 200_000;
    cfg.max_pixels = 1_000_000;
    let server = start(cfg, model()).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    for (query, needle) in [
        ("maps=65", "maps"),
        ("maps=-1", "maps"),
        ("maps=many", "maps"),
        ("top_k=0", "top_k"),
        ("backend=nope", "nope"),
        ("compare=gemm", "gemm"),
        ("block=layer5.0", "layer5.0"),
        ("block=stem", "stem"),
        ("block=", "''"),
        ("block=layer1.0,,layer1.1", "''"),
        ("block=layer1.0&stage_maps=17", "stage_maps"),
    ] {
        let r = post_raw(addr, &format!("/v1/trace?{query}"), "image/jpeg", &cat).await;
        r.assert_error(400, "bad_parameter");
        assert!(
            r.json()["error"].as_str().unwrap().contains(needle),
            "{query}: {}",
            r.json()
        );
    }
    // Images: the same status and code as /v1/classify, whatever is wrong with them.
    let mut big = Vec::new();
    image::RgbImage::new(1500, 1000)
        .write_to(&mut std::io::Cursor::new(&mut big), image::ImageFormat::Png)
        .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad/not_an_image.jpg", image_bytes("bad/not_an_image.jpg")),
        ("bad/truncated.jpg", image_bytes("bad/truncated.jpg")),
        ("bad/empty.jpg", image_bytes("bad/empty.jpg")),
        (
            "bad/bomb_60000x60000.png",
            image_bytes("bad/bomb_60000x60000.png"),
        ),
        ("over the 1 MP limit", big),
        ("over the body limit", vec![0xAB; 300_000]),
    ];
    for (what, bytes) in &cases {
        let c = post_file(addr, "/v1/classify", "x.jpg", bytes).await;
        let t = post_file(addr, "/v1/trace?maps=8", "x.jpg", bytes).await;
        assert!(c.status >= 400, "{what}");
        t.assert_error(c.status, c.json()["code"].as_str().unwrap());
    }
    post_raw(addr, "/v1/trace", "text/plain", b"hello")
        .await
        .assert_error(415, "unsupported_media_type");
    get(addr, "/v1/trace")
        .await
        .assert_error(405, "method_not_allowed");
    // The server is still fine.
    assert_eq!(
        post_raw(addr, "/v1/trace", "image/jpeg", &cat).await.status,
        200
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_page_is_public_and_self_contained_and_the_trace_needs_the_token() {
    let mut cfg = config();
    cfg.token = Some("s3cret".into());
    let server = start(cfg, model()).await;
    let addr = server.local_addr();
    let page = get(addr, "/explore").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("/v1/trace") && html.contains(r#"id="trace-data""#));
    for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(external), "the page loads {external}...");
    }
    let cat = image_bytes("cat_baseline.jpg");
    post_raw(addr, "/v1/trace", "image/jpeg", &cat)
        .await
        .assert_error(401, "missing_token");
    let auth = send_raw(
        addr,
        &request(
            "POST",
            "/v1/trace?maps=4",
            &[
                ("Content-Type", "image/jpeg"),
                ("Authorization", "Bearer s3cret"),
            ],
            &cat,
        ),
    )
    .await;
    assert_eq!(auth.status, 200);
    assert_eq!(auth.json()["layers"].as_array().unwrap().len(), 12);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_recomputes_a_block_stage_by_stage_and_it_is_the_networks_block() {
    use resnet_core::arch::TracePoint;
    use resnet_core::trace::branches::BlockWeights;
    let model = model();
    let native = Arc::clone(&model.backend);
    let server = start(config(), model).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    let r = post_raw(
        addr,
        "/v1/trace?block=layer2.0,layer3.1&maps=0&stage_maps=9",
        "image/jpeg",
        &cat,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert!(v["timing_ms"]["branches"].as_f64().unwrap() > 0.0);
    let blocks = v["blocks"].as_array().unwrap();
    let names: Vec<&str> = blocks
        .iter()
        .map(|b| b["layer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["layer2.0", "layer3.1"]);

    // The server's output stage against this process's own native trace of the same image:
    // the stages really are the network's. Both sum the same folded weights in another order
    // (f64 textbook loops there, f32 tiles and Winograd in native): f32 reassociation, relative
    // differences of ~1e-6..1e-5, so 1e-4 of the layer's largest value.
    let image = decode_image_bytes(&cat, "cat.jpg", &DecodeOptions::default()).unwrap();
    let input = preprocess(&image.rgb).insert_axis(Axis(0));
    let local = record(&*native, input.view()).unwrap();
    for (b, point, shortcut, shape) in [
        (
            &blocks[0],
            TracePoint::Block(2),
            "downsample",
            [1usize, 128, 28, 28],
        ),
        (
            &blocks[1],
            TracePoint::Block(5),
            "identity",
            [1, 256, 14, 14],
        ),
    ] {
        let name = point.name();
        let stages: Vec<&str> = b["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        assert_eq!(
            stages,
            ["conv1", "conv2", shortcut, "sum", "output"],
            "{name}"
        );
        let stage = |key: &str| {
            b["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["stage"] == key)
                .unwrap()
                .clone()
        };
        for s in b["stages"].as_array().unwrap() {
            let got: Vec<usize> = serde_json::from_value(s["shape"].clone()).unwrap();
            assert_eq!(got, shape, "{name} {}", s["stage"]);
            // 9 tiles per stage (stage_maps=9): a 3x3 sheet of the stage's maps.
            let sheet = png_of(s["maps"]["png"].as_str().unwrap());
            assert_eq!(
                (sheet.width() as usize, sheet.height() as usize),
                (3 * shape[3], 3 * shape[2]),
                "{name} {}",
                s["stage"]
            );
        }
        let traced = local.point(point).unwrap().output.view();
        let want = resnet_core::trace::activation_stats(traced.view());
        let out = stage("output");
        let scale = want.max as f64;
        for (key, value) in [
            ("min", want.min as f64),
            ("max", want.max as f64),
            ("mean", want.mean),
            ("std", want.std),
        ] {
            let found = out[key].as_f64().unwrap();
            assert!(
                (found - value).abs() <= 1e-4 * scale,
                "{name} {key}: recomputed {found}, native {value}"
            );
        }
        let versus = &b["versus_backend"];
        assert!(
            versus["max_abs_error"].as_f64().unwrap() <= 1e-4 * scale,
            "{name}: {versus}"
        );
        // The sum is main branch + shortcut: its mean is theirs (f64 means of f32 values).
        let mean = |key: &str| stage(key)["mean"].as_f64().unwrap();
        assert!(
            (mean("sum") - mean("conv2") - mean(shortcut)).abs() <= 1e-5 * scale,
            "{name}: sum mean"
        );
        // conv1 ends in a ReLU, the sum has negative values and the output has none.
        assert!(stage("conv1")["min"].as_f64().unwrap() >= 0.0);
        assert!(stage("sum")["min"].as_f64().unwrap() < 0.0);
        assert_eq!(out["min"].as_f64().unwrap(), 0.0);
        // What ReLU switched off: the sum's values below 0, all of which are 0 in the output
        // (which may also hold sums of exactly 0).
        let off = b["relu_off"].as_f64().unwrap();
        let zeros = out["zeros"].as_f64().unwrap();
        assert!(
            off > 0.0 && off <= zeros && zeros - off < 1e-3,
            "{name}: {off} vs {zeros}"
        );
    }
    // The same numbers the library computes in this process from its own trace.
    let weights = resnet_core::weights::synthetic_weights(0);
    let mine = BlockWeights::new(&weights)
        .of_trace(&local, &[TracePoint::Block(5)])
        .unwrap();
    let conv1 = mine[0].stages[0].output.view().into_dyn();
    let stats = resnet_core::trace::activation_stats(conv1);
    let served = &blocks[1]["stages"][0];
    assert_eq!(served["max"].as_f64().unwrap() as f32, stats.max);
    assert!((served["mean"].as_f64().unwrap() - stats.mean).abs() <= 1e-12 * stats.mean.abs());

    // Every block, with the most tiles a client can ask for, stays within a few MB.
    let all = post_raw(addr, "/v1/trace?block=all&maps=64", "image/jpeg", &cat).await;
    assert_eq!(all.status, 200);
    assert!(all.body.len() < 4 << 20, "{} bytes", all.body.len());
    let all = all.json();
    assert_eq!(all["blocks"].as_array().unwrap().len(), 8);
    assert_eq!(
        all["blocks"][0]["stages"][0]["maps"]["channels"]
            .as_array()
            .unwrap()
            .len(),
        16,
        "stage tiles are capped at 16"
    );
    // Without ?block= there are no blocks.
    let plain = post_raw(addr, "/v1/trace", "image/jpeg", &cat).await.json();
    assert!(plain.get("blocks").is_none() && plain["timing_ms"].get("branches").is_none());
    server.shutdown().await;
}
