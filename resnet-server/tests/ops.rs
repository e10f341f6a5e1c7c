//! Operations around every request: X-Request-Id in, out and in the history; CORS only when
//! asked for.

mod util;

use resnet_server::Config;
use util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_made_up_and_recorded_in_the_history() {
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let jpeg = image_bytes("cat_baseline.jpg");
    let body = multipart(&[("file", "cat.jpg", &jpeg)]);
    let ct = multipart_type();
    let r = send_raw(
        addr,
        &request(
            "POST",
            "/v1/classify",
            &[("Content-Type", &ct), ("X-Request-Id", "trace-42")],
            &body,
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    // No id, or one that is not a clean token: the server makes one up.
    let made = get(addr, "/healthz").await;
    let id = made.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    let bad = send_raw(
        addr,
        &request("GET", "/healthz", &[("X-Request-Id", "a b")], b""),
    )
    .await;
    assert_ne!(bad.header("x-request-id"), Some("a b"));
    // Errors carry it too, and the history has the classified request's.
    let missing = get(addr, "/nope").await;
    assert!(missing.header("x-request-id").is_some());
    // An answer can reach its client a moment before its history line is written (on a blocking
    // task after the answer): poll, bounded.
    let started = std::time::Instant::now();
    let history = loop {
        let h = get(addr, "/v1/history").await.json();
        if h["entries"].as_array().is_some_and(|e| !e.is_empty())
            || started.elapsed() > std::time::Duration::from_secs(5)
        {
            break h;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(history["entries"][0]["request_id"], "trace-42", "{history}");
    // No CORS unless configured: OPTIONS is just another wrong method.
    let options = send_raw(
        addr,
        &request(
            "OPTIONS",
            "/v1/classify",
            &[("Origin", "https://a.example")],
            b"",
        ),
    )
    .await;
    assert_eq!(options.status, 405);
    assert!(options.header("access-control-allow-origin").is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_origin_answers_preflights_and_marks_responses() {
    let server = start(
        Config {
            cors_origin: Some("https://app.example".into()),
            ..config()
        },
        model(),
    )
    .await;
    let addr = server.local_addr();
    let pre = send_raw(
        addr,
        &request(
            "OPTIONS",
            "/v2/models/resnet18/infer",
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
            b"",
        ),
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        pre.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    assert!(pre
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Inference-Header-Content-Length"));
    let r = get(addr, "/v1/model").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(r
        .header("access-control-expose-headers")
        .unwrap()
        .contains("X-Request-Id"));
    server.shutdown().await;
    assert!(Config {
        cors_origin: Some("bad\norigin".into()),
        ..config()
    }
    .validate()
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deepstack_port_serves_the_same_routes_metrics_and_shutdown() {
    let server = start(
        Config {
            deepstack_port: Some(0),
            ..config()
        },
        model(),
    )
    .await;
    let main = server.local_addr();
    let second = server.deepstack_addr().expect("a second listener");
    assert_ne!(main.port(), second.port());
    assert_eq!(main.ip(), second.ip());
    let jpeg = image_bytes("cat_baseline.jpg");
    let body = multipart(&[("image", "cat.jpg", &jpeg)]);
    let ct = multipart_type();
    let scene = request("POST", "/v1/vision/scene", &[("Content-Type", &ct)], &body);
    let a = send_raw(main, &scene).await;
    let b = send_raw(second, &scene).await;
    assert_eq!((a.status, b.status), (200, 200));
    // One model behind both: the same class (the probability may differ in the last bits when
    // the two ran in batches of different sizes).
    assert_eq!(a.json()["index"], b.json()["index"]);
    assert_eq!(a.json()["label"], b.json()["label"]);
    // One set of metrics counts both, whichever port is asked.
    let metrics = String::from_utf8(get(second, "/metrics").await.body).unwrap();
    assert_eq!(
        metric(
            &metrics,
            "resnet_http_requests_total{route=\"vision_scene\",status=\"200\"}"
        ),
        2.0
    );
    server.shutdown().await;
    // Both listeners close with the server.
    for addr in [main, second] {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still accepts"
        );
    }
}
