//! The server over real sockets on 127.0.0.1:0: every route, every error status, limits,
//! batching, back-pressure, auth, timeouts, history and graceful shutdown.

mod util;

use ndarray::Axis;
use resnet_core::backend::NoObserver;
use resnet_core::decode::{decode_image_bytes, DecodeOptions};
use resnet_core::postprocess::top_k;
use resnet_core::preprocess::preprocess;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::*;

/// What the library itself says about an image: the expected predictions.
fn library_top_k(bytes: &[u8], k: usize) -> Vec<resnet_core::postprocess::Prediction> {
    let m = model();
    let img = decode_image_bytes(bytes, "x", &DecodeOptions::default()).unwrap();
    let input = preprocess(&img.rgb).insert_axis(Axis(0));
    let logits = m.backend.forward(input.view(), &mut NoObserver).unwrap();
    top_k(logits.row(0).as_slice().unwrap(), k, &m.labels)
}

fn assert_predictions_match(
    json: &serde_json::Value,
    expected: &[resnet_core::postprocess::Prediction],
) {
    let got = json["predictions"].as_array().unwrap();
    assert_eq!(got.len(), expected.len(), "{json}");
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g["rank"], e.rank);
        assert_eq!(g["index"], e.index, "{json}");
        assert_eq!(g["label"], e.label.as_str());
        let p = g["probability"].as_f64().unwrap();
        assert!(
            (p - e.probability as f64).abs() < 1e-4,
            "{p} vs {}",
            e.probability
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_multipart_and_raw_give_the_librarys_predictions() {
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    let expected = library_top_k(&cat, 3);

    let r = post_file(addr, "/v1/classify?top_k=3", "cat.jpg", &cat).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_predictions_match(&v, &expected);
    assert_eq!(v["backend"], "native");
    assert_eq!(v["model"], "resnet18");
    assert_eq!(v["synthetic_weights"], true);
    assert_eq!(
        v["image"],
        serde_json::json!({"width": 451, "height": 300, "format": "jpeg"})
    );
    for key in ["decode", "preprocess", "queue", "inference", "total"] {
        assert!(
            v["timing_ms"][key].as_f64().is_some_and(|t| t >= 0.0),
            "{key}: {v}"
        );
    }
    assert!(v["timing_ms"]["total"].as_f64() >= v["timing_ms"]["inference"].as_f64());

    let r = post_raw(addr, "/v1/classify?top_k=3", "image/jpeg", &cat).await;
    assert_eq!(r.status, 200);
    assert_predictions_match(&r.json(), &expected);

    // Default top_k is 5; another format goes through the same path.
    let png = image_bytes("astronaut_rgb.png");
    let r = post_raw(addr, "/v1/classify", "image/png", &png).await;
    assert_predictions_match(&r.json(), &library_top_k(&png, 5));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_speaks_the_seed_services_api() {
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_24bit.bmp");
    let r = post_file(addr, "/predict", "cat.bmp", &cat).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let arr = v.as_array().expect("a JSON array");
    let expected = library_top_k(&cat, 3);
    assert_eq!(arr.len(), 3);
    for (g, e) in arr.iter().zip(&expected) {
        assert_eq!(
            g.as_object().unwrap().len(),
            2,
            "only label and probability: {g}"
        );
        assert_eq!(g["label"], e.label.as_str());
        let pct = g["probability"].as_f64().unwrap();
        assert_eq!(pct, (e.probability as f64 * 10_000.0).round() / 100.0);
        // Two decimals at most.
        assert!(((pct * 100.0).round() - pct * 100.0).abs() < 1e-6);
    }
    // The seed's errors: {"error": ...} (the code comes along).
    let r = post_file(addr, "/predict", "x.jpg", b"not an image").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    let r = post_raw(addr, "/predict", "image/jpeg", &cat).await;
    r.assert_error(400, "missing_file");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_with_its_status_and_the_server_lives_on() {
    let mut cfg = config();
    cfg.max_pixels = 1_000_000;
    let server = start(cfg, model()).await;
    let addr = server.local_addr();

    get(addr, "/nope").await.assert_error(404, "not_found");
    let r = get(addr, "/v1/classify").await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    send_raw(addr, &request("POST", "/healthz", &[], b""))
        .await
        .assert_error(405, "method_not_allowed");
    post_raw(addr, "/v1/classify", "text/plain", b"hello")
        .await
        .assert_error(415, "unsupported_media_type");
    let svg = b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>";
    post_raw(addr, "/v1/classify", "image/svg+xml", svg)
        .await
        .assert_error(415, "unsupported_image_format");
    let cases = [
        ("bad/not_an_image.jpg", 400, "not_an_image"),
        ("bad/truncated.jpg", 400, "truncated_image"),
        ("bad/empty.jpg", 400, "empty_image"),
        ("bad/bad_crc.png", 400, "corrupt_image"),
        ("bad/bomb_60000x60000.png", 422, "image_too_large"),
        // Over this server's 1-megapixel limit.
        ("panorama_2000x120.jpg", 200, ""),
        ("hopper_cmyk.jpg", 200, ""),
    ];
    for (file, status, code) in cases {
        let r = post_file(addr, "/v1/classify", file, &image_bytes(file)).await;
        if status == 200 {
            assert_eq!(
                r.status,
                200,
                "{file}: {}",
                String::from_utf8_lossy(&r.body)
            );
        } else {
            r.assert_error(status, code);
        }
    }
    let big = image::RgbImage::new(1500, 1000);
    let mut png = Vec::new();
    big.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    post_raw(addr, "/v1/classify", "image/png", &png)
        .await
        .assert_error(422, "image_too_large");
    let zero = post_file(
        addr,
        "/v1/classify",
        "z.gif",
        &image_bytes("bad/zero_size.gif"),
    )
    .await;
    assert!(zero.status == 400, "{zero:?}");

    let cat = image_bytes("tiny_7x5.jpg");
    post_raw(addr, "/v1/classify?top_k=0", "image/jpeg", &cat)
        .await
        .assert_error(400, "bad_parameter");
    post_raw(addr, "/v1/classify?top_k=abc", "image/jpeg", &cat)
        .await
        .assert_error(400, "bad_parameter");
    post_file(addr, "/v1/classify", "cat.jpg", b"")
        .await
        .assert_error(400, "empty_image");
    let body = multipart(&[("other", "cat.jpg", &cat)]);
    send_raw(
        addr,
        &request(
            "POST",
            "/v1/classify",
            &[("Content-Type", &multipart_type())],
            &body,
        ),
    )
    .await
    .assert_error(400, "missing_file");
    send_raw(
        addr,
        &request(
            "POST",
            "/v1/classify",
            &[("Content-Type", "multipart/form-data")],
            b"x",
        ),
    )
    .await
    .assert_error(400, "bad_multipart");
    // A POST without Content-Length or Transfer-Encoding.
    send_raw(addr, b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n")
        .await
        .assert_error(411, "length_required");

    let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
    assert_eq!(r.status, 200, "the server still answers after all that");
    let metrics = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
    assert!(
        metrics.contains("resnet_http_requests_total{route=\"classify\",status=\"422\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("resnet_http_requests_total{route=\"unmatched\",status=\"404\"} 1"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_multipart_is_a_400() {
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    let mut body = multipart(&[("file", "cat.jpg", &cat)]);
    body.truncate(body.len() / 2);
    let r = send_raw(
        addr,
        &request(
            "POST",
            "/v1/classify",
            &[("Content-Type", &multipart_type())],
            &body,
        ),
    )
    .await;
    r.assert_error(400, "bad_multipart");
    // Declares more bytes than it sends, then closes its side: the body is incomplete.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        cat.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&cat[..1000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    if !out.is_empty() {
        parse(&out).assert_error(400, "incomplete_body");
    }
    assert_eq!(
        post_file(addr, "/v1/classify", "cat.jpg", &cat)
            .await
            .status,
        200
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_while_reading() {
    let mut cfg = config();
    cfg.max_body_bytes = 100_000;
    let server = start(cfg, model()).await;
    let addr = server.local_addr();
    // Declared too large: refused from the header, before the body is sent.
    let head = b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nContent-Length: 50000000\r\nConnection: close\r\n\r\n";
    let started = Instant::now();
    send_raw(addr, head)
        .await
        .assert_error(413, "body_too_large");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Chunked, no length: refused once the bytes read pass the limit.
    let mut raw = b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    let chunk = vec![0xABu8; 16_384];
    for _ in 0..10 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    send_raw(addr, &raw)
        .await
        .assert_error(413, "body_too_large");
    // Multipart over the limit.
    let big = vec![0u8; 150_000];
    post_file(addr, "/v1/classify", "big.jpg", &big)
        .await
        .assert_error(413, "body_too_large");
    // Under the limit, chunked: fine.
    let cat = image_bytes("cat_baseline.jpg");
    let mut raw = b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for part in cat.chunks(10_000) {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(send_raw(addr, &raw).await.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_byte_by_byte_is_cut_off() {
    let mut cfg = config();
    cfg.header_read_timeout = Duration::from_millis(400);
    let server = start(cfg, model()).await;
    let addr = server.local_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut_off = false;
    for b in request {
        if s.write_all(&[*b]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Sending the full header would take ~2.4 s; the server must not wait that long.
        if started.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept the slow connection open");
    let text = String::from_utf8_lossy(&out);
    assert!(
        cut_off || out.is_empty() || text.starts_with("HTTP/1.1 408"),
        "the slow request was answered: {text}"
    );
    assert!(!text.contains("200 OK"));
    assert_eq!(get(addr, "/healthz").await.status, 200);
    server.shutdown().await;
}

/// A client that shuts down its sending side once the request is out (`nc -N`, `curl` with some
/// proxies) still gets the whole answer, for a GET and for an upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_connection_still_gets_its_answer() {
    let server = start(config(), model()).await;
    let cat = image_bytes("cat_baseline.jpg");
    let mut upload = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        cat.len()
    )
    .into_bytes();
    upload.extend_from_slice(&cat);
    for request in [&b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..], &upload] {
        let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
        s.write_all(request).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with('}'), "the whole JSON body: {text}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_answered_like_single_ones() {
    let mut cfg = config();
    cfg.max_batch = 8;
    cfg.batch_wait = Duration::from_millis(300);
    let server = start(cfg, model()).await;
    let addr = server.local_addr();
    let files = [
        "cat_baseline.jpg",
        "astronaut_rgb.png",
        "flower.gif",
        "coffee_progressive.jpg",
        "cat_24bit.bmp",
        "dogs_lossless.webp",
    ];
    let tasks: Vec<_> = files
        .iter()
        .map(|f| {
            let bytes = image_bytes(f);
            tokio::spawn(async move {
                (
                    bytes.clone(),
                    post_file(addr, "/v1/classify?top_k=5", "x", &bytes).await,
                )
            })
        })
        .collect();
    let mut max_batch = 0;
    for t in tasks {
        let (bytes, r) = t.await.unwrap();
        assert_eq!(r.status, 200);
        let v = r.json();
        max_batch = max_batch.max(v["batch_size"].as_u64().unwrap());
        assert_predictions_match(&v, &library_top_k(&bytes, 5));
    }
    assert!(max_batch > 1, "no request was batched with another");
    let metrics = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
    let batches = metric(&metrics, "resnet_batch_size_count");
    let images = metric(&metrics, "resnet_batch_size_sum");
    // The warm-up pass is not counted.
    assert_eq!(images, 6.0, "{metrics}");
    assert!(
        batches < images,
        "batch-size histogram shows no batching: {metrics}"
    );
    let singles = metrics
        .lines()
        .find_map(|l| l.strip_prefix("resnet_batch_size_bucket{le=\"1\"} "))
        .unwrap()
        .parse::<f64>()
        .unwrap();
    assert!(singles < batches, "{metrics}");
    assert_eq!(metric(&metrics, "resnet_images_classified_total"), 6.0);
    assert_eq!(metric(&metrics, "resnet_queue_depth"), 0.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let mut cfg = config();
    cfg.max_batch = 1;
    cfg.batch_wait = Duration::ZERO;
    cfg.queue = 1;
    let server = start(cfg, slow_model(Duration::from_millis(400))).await;
    let addr = server.local_addr();
    let cat = image_bytes("tiny_7x5.jpg");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let cat = cat.clone();
            tokio::spawn(async move { post_raw(addr, "/v1/classify", "image/jpeg", &cat).await })
        })
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                r.assert_error(503, "queue_full");
                assert_eq!(r.header("retry-after"), Some("1"));
                busy += 1;
            }
            s => panic!("unexpected status {s}: {r:?}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, 503 {busy}");
    assert!(
        ok <= 3,
        "one running + one queued (+ one taken meanwhile) at most: {ok}"
    );
    assert_eq!(
        post_raw(addr, "/v1/classify", "image/jpeg", &cat)
            .await
            .status,
        200
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_everything_but_health_and_the_page() {
    let mut cfg = config();
    cfg.token = Some("s3cret".into());
    let server = start(cfg, model()).await;
    let addr = server.local_addr();
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 200);
    assert_eq!(get(addr, "/").await.status, 200);
    for path in ["/metrics", "/v1/model", "/v1/history"] {
        let r = get(addr, path).await;
        r.assert_error(401, "missing_token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        get_auth(addr, path, "wrong")
            .await
            .assert_error(401, "bad_token");
        get_auth(addr, path, "s3cre")
            .await
            .assert_error(401, "bad_token");
        assert_eq!(get_auth(addr, path, "s3cret").await.status, 200, "{path}");
    }
    let cat = image_bytes("tiny_7x5.jpg");
    post_raw(addr, "/v1/classify", "image/jpeg", &cat)
        .await
        .assert_error(401, "missing_token");
    post_file(addr, "/predict", "c.jpg", &cat)
        .await
        .assert_error(401, "missing_token");
    let r = send_raw(
        addr,
        &request(
            "POST",
            "/v1/classify",
            &[
                ("Content-Type", "image/jpeg"),
                ("Authorization", "Bearer s3cret"),
            ],
            &cat,
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_deadline_gets_504() {
    let mut cfg = config();
    cfg.timeout = Duration::from_millis(300);
    let server = start(cfg, slow_model(Duration::from_millis(1200))).await;
    let addr = server.local_addr();
    let cat = image_bytes("tiny_7x5.jpg");
    let started = Instant::now();
    post_raw(addr, "/v1/classify", "image/jpeg", &cat)
        .await
        .assert_error(504, "timeout");
    assert!(started.elapsed() < Duration::from_millis(1100));
    assert_eq!(get(addr, "/healthz").await.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_warm_up_pass() {
    let server = resnet_server::Server::start(config(), slow_model(Duration::from_millis(600)))
        .await
        .unwrap();
    let addr = server.local_addr();
    get(addr, "/readyz").await.assert_error(503, "warming_up");
    assert_eq!(get(addr, "/healthz").await.status, 200);
    server.wait_ready().await;
    assert_eq!(get(addr, "/readyz").await.json()["status"], "ready");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_request_in_flight() {
    let server = start(config(), slow_model(Duration::from_millis(700))).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    let in_flight =
        tokio::spawn(async move { post_raw(addr, "/v1/classify", "image/jpeg", &cat).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.shutdown().await;
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request was dropped: {r:?}");
    assert!(r.json()["predictions"]
        .as_array()
        .is_some_and(|p| p.len() == 5));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "shutdown did not wait"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_route_answers_each_part() {
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    let fig = image_bytes("fig_rgba.png");
    let body = multipart(&[
        ("files", "cat.jpg", &cat),
        ("files", "junk.jpg", b"junk"),
        ("files", "fig.png", &fig),
    ]);
    let r = send_raw(
        addr,
        &request(
            "POST",
            "/v1/classify/batch?top_k=2",
            &[("Content-Type", &multipart_type())],
            &body,
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["name"], "cat.jpg");
    assert_predictions_match(&results[0], &library_top_k(&cat, 2));
    assert_eq!(results[1]["name"], "junk.jpg");
    assert_eq!(results[1]["code"], "not_an_image");
    assert_eq!(results[1]["status"], 400);
    assert_predictions_match(&results[2], &library_top_k(&fig, 2));
    // Raw bodies are not a batch.
    post_raw(addr, "/v1/classify/batch", "image/jpeg", &cat)
        .await
        .assert_error(415, "unsupported_media_type");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_parts_in_a_batch_is_refused() {
    let mut cfg = config();
    cfg.max_batch_parts = 2;
    let server = start(cfg, model()).await;
    let tiny = image_bytes("tiny_7x5.jpg");
    let body = multipart(&[
        ("f", "a.jpg", &tiny),
        ("f", "b.jpg", &tiny),
        ("f", "c.jpg", &tiny),
    ]);
    send_raw(
        server.local_addr(),
        &request(
            "POST",
            "/v1/classify/batch",
            &[("Content-Type", &multipart_type())],
            &body,
        ),
    )
    .await
    .assert_error(413, "too_many_parts");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cam_returns_the_heat_map_png_of_the_asked_class() {
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    let top1 = library_top_k(&cat, 1)[0].index;
    let r = post_raw(addr, "/v1/cam", "image/jpeg", &cat).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("x-cam-class"), Some(top1.to_string().as_str()));
    let png = image::load_from_memory_with_format(&r.body, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    // By default over the whole original picture (451x300), the region the network saw outlined.
    let m = model();
    let img = decode_image_bytes(&cat, "x", &DecodeOptions::default()).unwrap();
    assert_eq!(png.dimensions(), img.rgb.dimensions());
    let crop = resnet_core::preprocess::resize_and_crop(&img.rgb);
    let input = resnet_core::preprocess::to_normalized_chw(&crop);
    let map = resnet_core::cam::class_activation_map(
        &*m.backend,
        m.fc_weight.as_deref().unwrap(),
        input.view(),
        None,
    )
    .unwrap();
    assert_eq!(
        png,
        resnet_core::cam::heatmap_overlay_on_original(&img.rgb, &map, 0.45)
    );
    // `?view=crop`: the 224x224 crop the network saw, the same map over all of it.
    let r = post_raw(addr, "/v1/cam?view=crop", "image/jpeg", &cat).await;
    let crop_png = image::load_from_memory_with_format(&r.body, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    assert_eq!(
        crop_png,
        resnet_core::cam::heatmap_overlay(&crop, &map, 0.45)
    );
    post_raw(addr, "/v1/cam?view=sideways", "image/jpeg", &cat)
        .await
        .assert_error(400, "bad_parameter");

    let r = post_file(addr, "/v1/cam?class=7", "cat.jpg", &cat).await;
    assert_eq!(r.header("x-cam-class"), Some("7"));
    assert_ne!(r.body, png.as_raw().as_slice());
    post_raw(addr, "/v1/cam?class=1000", "image/jpeg", &cat)
        .await
        .assert_error(400, "bad_parameter");
    post_raw(addr, "/v1/cam", "image/jpeg", b"junk")
        .await
        .assert_error(400, "not_an_image");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_last_n_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.jsonl");
    let mut cfg = config();
    cfg.history = 2;
    cfg.history_file = Some(file.clone());
    let server = start(cfg.clone(), model()).await;
    let addr = server.local_addr();
    for f in ["cat_baseline.jpg", "flower.gif", "astronaut_rgb.png"] {
        assert_eq!(
            post_file(addr, "/v1/classify", f, &image_bytes(f))
                .await
                .status,
            200
        );
    }
    // A recognition is in the history before its answer goes out (only the file append runs
    // after it): no waiting here, as the page does not wait either.
    let v = get(addr, "/v1/history").await.json();
    let entries = v["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[0]["width"].clone(), entries[0]["height"].clone()),
        (320.into(), 320.into())
    );
    assert_eq!(entries[1]["width"], 360);
    let expected = library_top_k(&image_bytes("astronaut_rgb.png"), 1);
    assert_eq!(entries[0]["index"], expected[0].index);
    assert!(entries[0]["thumbnail"]
        .as_str()
        .unwrap()
        .starts_with("data:image/jpeg;base64,"));
    assert!(entries[0]["time"].as_str().unwrap().ends_with('Z'));
    server.shutdown().await;
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);

    let server = start(cfg, model()).await;
    let v = get(server.local_addr(), "/v1/history").await.json();
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    assert_eq!(v["entries"][0]["width"], 320);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_model_and_metrics_routes() {
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let r = get(addr, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = String::from_utf8(r.body).unwrap();
    assert!(html.contains("id=\"synthetic-banner\""));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads nothing external"
    );

    let v = get(addr, "/v1/model").await.json();
    assert_eq!(v["name"], "resnet18");
    assert_eq!(v["backend"], "native");
    assert_eq!(v["labels"], 1000);
    assert_eq!(v["synthetic_weights"], true);
    assert_eq!(v["threads"], 2);
    assert!(v["isa"].is_string() && v["description"].is_string());
    assert_eq!(v["limits"]["max_batch"], 8);

    let r = get(addr, "/metrics").await;
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(r.body).unwrap();
    for name in [
        "resnet_http_requests_total",
        "resnet_http_request_duration_seconds_bucket",
        "resnet_batch_size_bucket",
        "resnet_queue_depth",
        "resnet_images_classified_total",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(text.contains("resnet_http_requests_total{route=\"page\",status=\"200\"} 1"));
    server.shutdown().await;
}
