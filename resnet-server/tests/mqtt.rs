//! `--mqtt-url` against a real Mosquitto on 127.0.0.1 (Debian's `mosquitto`, with a password),
//! read back by a real `mosquitto_sub`: one message per recognition with the answer's top-1;
//! the broker killed mid-run and restarted; a server started while the broker is down. Every
//! wait is bounded; the broker and subscribers are killed by their guards.

mod util;

use resnet_server::mqtt::MqttConfig;
use resnet_server::Config;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use util::mosquitto::{self, Broker, Subscriber};
use util::*;

const TOPIC: &str = "resnet/test";
const WAIT: Duration = Duration::from_secs(20);

fn mqtt_config(broker: &Broker, queue: usize) -> Config {
    let mut mqtt = MqttConfig::parse(&broker.url(TOPIC)).unwrap();
    mqtt.queue = queue;
    // Short pauses between attempts keep the test quick; the backoff itself is the same code.
    mqtt.reconnect_max = Duration::from_millis(500);
    Config {
        mqtt: Some(mqtt),
        ..config()
    }
}

async fn metrics(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

/// Waits (bounded) until `resnet_mqtt_connected` is `want`.
async fn wait_connected(addr: SocketAddr, want: f64, broker: &Broker) {
    let end = Instant::now() + WAIT;
    while metric(&metrics(addr).await, "resnet_mqtt_connected") != want {
        assert!(
            Instant::now() < end,
            "resnet_mqtt_connected never became {want}; broker log:\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POSTs `image` to `path` with `X-Request-Id: id`; the status, JSON body and latency.
async fn classify(addr: SocketAddr, path: &str, image: &str, id: &str) -> (u16, Value, Duration) {
    let bytes = image_bytes(image);
    let body = multipart(&[("file", image, &bytes)]);
    let ct = multipart_type();
    let t = Instant::now();
    let r = send_raw(
        addr,
        &request(
            "POST",
            path,
            &[("Content-Type", &ct), ("X-Request-Id", id)],
            &body,
        ),
    )
    .await;
    let took = t.elapsed();
    (r.status, r.json(), took)
}

/// The recognition messages on TOPIC by request id, waiting (bounded) until `ids` all came.
fn received(sub: &mut Subscriber, ids: &[&str]) -> BTreeMap<String, Vec<Value>> {
    let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let messages = sub.collect(WAIT, |m| {
        if m.topic == TOPIC {
            let v: Value = serde_json::from_str(&m.payload)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", m.payload));
            let id = v["request_id"].as_str().unwrap_or_default().to_string();
            by_id.entry(id).or_default().push(v);
        }
        ids.iter().all(|id| by_id.contains_key(*id))
    });
    assert!(
        ids.iter().all(|id| by_id.contains_key(*id)),
        "missing messages for some of {ids:?}; got {messages:#?}"
    );
    by_id
}

/// Each answered request's top-1 is its message's, once.
fn check_top1(by_id: &BTreeMap<String, Vec<Value>>, answers: &[(&str, Value, &str)]) {
    for (id, answer, route) in answers {
        let msgs = &by_id[*id];
        assert_eq!(msgs.len(), 1, "{id}: {msgs:#?}");
        let m = &msgs[0];
        let top = &answer["predictions"][0];
        assert_eq!(m["index"], top["index"], "{id}: {m} vs {answer}");
        assert_eq!(m["label"], top["label"], "{id}");
        // The message carries the same f32 probability; JSON printing may differ in the last
        // digits between the two encoders, so compare to f32 precision.
        let (p, q) = (
            m["probability"].as_f64().unwrap(),
            top["probability"].as_f64().unwrap(),
        );
        assert!((p - q).abs() < 1e-6, "{id}: {p} vs {q}");
        assert_eq!(m["route"], *route, "{id}");
        assert!(
            m.get("thumbnail").is_none(),
            "{id}: no thumbnail in messages"
        );
        assert!(m["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_recognition_is_published_and_a_dead_broker_never_blocks_a_request() {
    if !mosquitto::available() {
        return;
    }
    let mut broker = Broker::start_new();
    // A queue of 3: small enough that the outage below overflows it.
    let server = start(mqtt_config(&broker, 3), model()).await;
    let addr = server.local_addr();
    wait_connected(addr, 1.0, &broker).await;
    let mut sub = tokio::task::block_in_place(|| Subscriber::ready(&broker, TOPIC));
    // The retained availability message came when the subscriber subscribed.
    let available = format!("{TOPIC}/available");
    let online = sub.on_topic(&available, 1, Duration::from_secs(5));
    assert!(online.iter().any(|m| m.payload == "online"), "{online:?}");

    // Connected: one message per recognition, with the answer's top-1 and request id.
    let mut answers = Vec::new();
    for (i, (path, image)) in [
        ("/v1/classify", "cat_baseline.jpg"),
        ("/v1/classify", "coffee_progressive.jpg"),
        ("/predict", "astronaut_rgb.png"),
        ("/v1/classify", "dogs_lossless.webp"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("up-{i}");
        let (status, answer, _) = classify(addr, path, image, &id).await;
        assert_eq!(status, 200, "{answer}");
        answers.push((id, answer, path));
    }
    let ids: Vec<&str> = answers.iter().map(|(id, ..)| id.as_str()).collect();
    let by_id = tokio::task::block_in_place(|| received(&mut sub, &ids));
    // /predict answers a list of {label, probability%}; its record is checked by label below.
    let classify_answers: Vec<(&str, Value, &str)> = answers
        .iter()
        .filter(|(_, _, p)| *p == "/v1/classify")
        .map(|(id, a, _)| (id.as_str(), a.clone(), "classify"))
        .collect();
    check_top1(&by_id, &classify_answers);
    let predict = &by_id["up-2"];
    assert_eq!(predict.len(), 1);
    assert_eq!(predict[0]["label"], answers[2].1[0]["label"]);
    assert_eq!(predict[0]["route"], "predict");
    drop(sub);

    // The broker dies: every request still succeeds at once; what does not fit the queue is
    // dropped and counted instead of waiting.
    broker.kill();
    wait_connected(addr, 0.0, &broker).await;
    let mut outage = Vec::new();
    for i in 0..8 {
        let (status, answer, took) = classify(
            addr,
            "/v1/classify",
            "cat_baseline.jpg",
            &format!("down-{i}"),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        outage.push(took.as_secs_f64() * 1e3);
    }
    let m = metrics(addr).await;
    let dropped = metric(&m, "resnet_mqtt_dropped_total");
    // 8 recognitions, room for 3 in the queue: at least 5 dropped (a publish that waited for
    // room would have hung the requests instead).
    assert!(dropped >= 5.0, "dropped {dropped}\n{m}");
    eprintln!("latency while the broker was down (ms): {outage:.0?}; dropped {dropped}");

    // Back: the publisher reconnects by itself and new recognitions arrive again.
    broker.start();
    wait_connected(addr, 1.0, &broker).await;
    let mut sub = tokio::task::block_in_place(|| Subscriber::ready(&broker, TOPIC));
    let mut answers = Vec::new();
    for i in 0..3 {
        let id = format!("back-{i}");
        let (status, answer, _) = classify(addr, "/v1/classify", "cat_baseline.jpg", &id).await;
        assert_eq!(status, 200);
        answers.push((id, answer));
    }
    let ids: Vec<&str> = answers.iter().map(|(id, _)| id.as_str()).collect();
    let by_id = tokio::task::block_in_place(|| received(&mut sub, &ids));
    let back: Vec<(&str, Value, &str)> = answers
        .iter()
        .map(|(id, a)| (id.as_str(), a.clone(), "classify"))
        .collect();
    check_top1(&by_id, &back);
    let published = metric(&metrics(addr).await, "resnet_mqtt_published_total");
    assert!(published >= 7.0, "published {published}");

    // A clean stop says `offline` (retained, so a later subscriber sees it too).
    server.shutdown().await;
    let seen = tokio::task::block_in_place(|| {
        sub.collect(Duration::from_secs(5), |m| {
            m.topic == available && m.payload == "offline"
        })
    });
    assert!(
        seen.iter()
            .any(|m| m.topic == available && m.payload == "offline"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_while_the_broker_is_down_serves_and_publishes_once_it_is_up() {
    if !mosquitto::available() {
        return;
    }
    let mut broker = Broker::prepare(mosquitto::free_port());
    let server = start(mqtt_config(&broker, 16), model()).await;
    let addr = server.local_addr();
    for i in 0..2 {
        let (status, answer, _) = classify(
            addr,
            "/v1/classify",
            "cat_baseline.jpg",
            &format!("early-{i}"),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(metric(&metrics(addr).await, "resnet_mqtt_connected"), 0.0);
    broker.start();
    wait_connected(addr, 1.0, &broker).await;
    let mut sub = tokio::task::block_in_place(|| Subscriber::ready(&broker, TOPIC));
    let (status, answer, _) = classify(addr, "/v1/classify", "fig_lossy.webp", "late").await;
    assert_eq!(status, 200);
    let by_id = tokio::task::block_in_place(|| received(&mut sub, &["late"]));
    check_top1(&by_id, &[("late", answer, "classify")]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_outage_not_a_failure() {
    if !mosquitto::available() {
        return;
    }
    let broker = Broker::start_new();
    let mut mqtt = MqttConfig::parse(&broker.url(TOPIC)).unwrap();
    mqtt.credentials.as_mut().unwrap().password = "wrong".into();
    let server = start(
        Config {
            mqtt: Some(mqtt),
            ..config()
        },
        model(),
    )
    .await;
    let addr = server.local_addr();
    let (status, answer, _) = classify(addr, "/v1/classify", "cat_baseline.jpg", "x").await;
    assert_eq!(status, 200, "{answer}");
    // Refused connections are retried; the server never reports being connected.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let m = metrics(addr).await;
    assert_eq!(metric(&m, "resnet_mqtt_connected"), 0.0, "{m}");
    assert_eq!(metric(&m, "resnet_mqtt_published_total"), 0.0, "{m}");
    server.shutdown().await;
}

/// `serve --watch` with `--mqtt-url`: a photo dropped into the watched folder is published like
/// an upload, marked with its source, and agrees with the upload of the same photo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_of_the_server_are_published_too() {
    if !mosquitto::available() {
        return;
    }
    let broker = Broker::start_new();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cam");
    std::fs::create_dir(&dir).unwrap();
    let config = Config {
        mqtt: mqtt_config(&broker, 16).mqtt,
        ..watching(&dir, "porch")
    };
    let server = start(config, model()).await;
    let addr = server.local_addr();
    wait_connected(addr, 1.0, &broker).await;
    let mut sub = tokio::task::block_in_place(|| Subscriber::ready(&broker, TOPIC));
    let (status, answer, _) = classify(addr, "/v1/classify", "cat_baseline.jpg", "upload").await;
    assert_eq!(status, 200, "{answer}");
    drop_in(&dir, "cat_baseline.jpg", "snap.jpg");
    let mut watched = Vec::new();
    let messages = tokio::task::block_in_place(|| {
        sub.collect(WAIT, |m| {
            if m.topic == TOPIC {
                let v: Value = serde_json::from_str(&m.payload)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {}", m.payload));
                if v["source"] == "watch:porch" {
                    watched.push(v);
                }
            }
            !watched.is_empty()
        })
    });
    assert_eq!(
        watched.len(),
        1,
        "no message for the watched photo: {messages:#?}"
    );
    let m = &watched[0];
    assert_eq!(m["route"], "watch", "{m}");
    assert_eq!(
        m["index"], answer["predictions"][0]["index"],
        "{m} vs {answer}"
    );
    assert_eq!(m["label"], answer["predictions"][0]["label"]);
    assert!(
        m.get("thumbnail").is_none(),
        "no thumbnail in messages: {m}"
    );
}
