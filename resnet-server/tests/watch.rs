//! `resnet serve --watch` in process: a server watching a real folder on disk, its events on a
//! real `/v1/events` connection over 127.0.0.1, its history and its `/metrics`.

mod util;

use resnet_server::Config;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::*;

/// A `/v1/events` subscriber on its own connection: the raw bytes as they come.
struct EventClient {
    stream: TcpStream,
    seen: Vec<u8>,
    /// Where the next unparsed event starts in `seen`.
    next: usize,
}

impl EventClient {
    async fn connect(addr: SocketAddr, token: Option<&str>) -> EventClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let head = format!(
            "GET /v1/events HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n{auth}\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut client = EventClient {
            stream,
            seen: Vec::new(),
            next: 0,
        };
        // The head, and the stream's first comment: from then on this client is subscribed.
        client.read_until(b": resnet watch events").await;
        client
    }

    /// Reads until `needle` has arrived (30 s at most).
    async fn read_until(&mut self, needle: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.seen.windows(needle.len()).any(|w| w == needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut buf = [0u8; 16384];
            let n = tokio::time::timeout(left, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {:?} within 30 s; got {}",
                        String::from_utf8_lossy(needle),
                        String::from_utf8_lossy(&self.seen)
                    )
                })
                .unwrap();
            assert!(
                n > 0,
                "the stream ended: {}",
                String::from_utf8_lossy(&self.seen)
            );
            self.seen.extend_from_slice(&buf[..n]);
        }
    }

    /// The next event: its name and its JSON (each event is one chunk of the chunked body,
    /// so chunk sizes never fall inside one).
    async fn next_event(&mut self) -> (String, Value) {
        loop {
            let text = String::from_utf8_lossy(&self.seen[self.next..]).into_owned();
            if let Some(start) = text.find("event: ") {
                if let Some(len) = text[start..].find("\n\n") {
                    let block = &text[start..start + len];
                    self.next += start + len + 2;
                    let name = block.lines().next().unwrap()["event: ".len()..].to_string();
                    let data = block
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .expect("an event has data");
                    return (name, serde_json::from_str(data).unwrap());
                }
            }
            let have = self.seen.len();
            self.read_until_more(have).await;
        }
    }

    async fn read_until_more(&mut self, have: usize) {
        let mut buf = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut buf))
            .await
            .expect("no event within 30 s")
            .unwrap();
        assert!(n > 0, "the stream ended after {have} bytes");
        self.seen.extend_from_slice(&buf[..n]);
    }

    /// Whether the server ends the stream (and the connection) within `limit`.
    async fn ends_within(mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 16384];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// `/metrics` value of a per-source watch counter, if the text has it.
fn try_source_metric(text: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

/// `/metrics` value of a per-source watch counter.
fn source_metric(text: &str, name: &str, labels: &str) -> u64 {
    try_source_metric(text, name, labels)
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in {text}"))
}

/// Waits (bounded) until `/metrics` satisfies `done`; returns its text.
async fn metrics_when(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} not within 60 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_in_photo_is_streamed_recorded_and_counted_like_an_upload() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cam");
    std::fs::create_dir(&dir).unwrap();
    let server = start(watching(&dir, "garden"), model()).await;
    let addr = server.local_addr();
    let model = get(addr, "/v1/model").await.json();
    assert_eq!(model["watch"], serde_json::json!(["garden"]));

    let mut events = EventClient::connect(addr, None).await;
    drop_in(&dir, "cat_baseline.jpg", "snap1.jpg");
    let (name, event) = events.next_event().await;
    assert_eq!(name, "watch", "{event}");
    assert_eq!(event["source"], "garden");
    assert!(
        event["path"].as_str().unwrap().ends_with("snap1.jpg"),
        "{event}"
    );
    assert_eq!(
        (event["width"].as_u64(), event["height"].as_u64()),
        (Some(451), Some(300))
    );
    assert_eq!(event["alerting"], false);
    assert!(event["thumbnail"]
        .as_str()
        .unwrap()
        .starts_with("data:image/jpeg;base64,"));

    // The same photo uploaded: the same top-1 class (same decoding, preprocessing, model).
    let api = post_raw(
        addr,
        "/v1/classify?top_k=5",
        "image/jpeg",
        &image_bytes("cat_baseline.jpg"),
    )
    .await
    .json();
    let top1 = &api["predictions"][0];
    assert_eq!(
        event["predictions"][0]["index"], top1["index"],
        "{event}\n{api}"
    );
    assert_eq!(event["predictions"][0]["label"], top1["label"]);

    // The history has both, the watcher's marked with its source. An answer may reach its
    // client a moment before its history line is written: poll, bounded.
    let started = std::time::Instant::now();
    let history = loop {
        let h = get(addr, "/v1/history").await.json();
        let n = h["entries"].as_array().map_or(0, Vec::len);
        if n >= 2 || started.elapsed() > Duration::from_secs(5) {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let entries = history["entries"].as_array().unwrap();
    let watched: Vec<&Value> = entries.iter().filter(|e| e["route"] == "watch").collect();
    assert_eq!(watched.len(), 1, "{history}");
    assert_eq!(watched[0]["source"], "watch:garden");
    assert_eq!(watched[0]["index"], top1["index"]);
    assert!(watched[0]["thumbnail"]
        .as_str()
        .unwrap()
        .starts_with("data:image/jpeg"));
    let uploaded: Vec<&Value> = entries
        .iter()
        .filter(|e| e["route"] == "classify")
        .collect();
    assert_eq!(uploaded.len(), 1, "{history}");
    assert!(uploaded[0].get("source").is_none(), "{history}");

    // A file that is not an image: an error event on the stream, not a history entry.
    std::fs::write(root.path().join("broken"), b"this is no JPEG").unwrap();
    std::fs::rename(root.path().join("broken"), dir.join("broken.jpg")).unwrap();
    let (name, event) = events.next_event().await;
    assert_eq!(name, "watch");
    assert!(
        event["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{event}"
    );
    assert!(event.get("predictions").is_none());

    // A folder's frames are all accounted for once handled: received = classified + gated
    // (both gates) + dropped + frame errors. Here: 2 = 1 + 0 + 0 + 1.
    let labels = "source=\"garden\"";
    let text = metrics_when(addr, "both files counted", |t| {
        t.contains("resnet_watch_errors_total{source=\"garden\"} 1\n")
    })
    .await;
    let m = |name: &str| source_metric(&text, name, labels);
    let fps = source_metric(
        &text,
        "resnet_watch_frames_gated_total",
        "source=\"garden\",gate=\"fps\"",
    );
    let motion = source_metric(
        &text,
        "resnet_watch_frames_gated_total",
        "source=\"garden\",gate=\"motion\"",
    );
    let received = m("resnet_watch_frames_received_total");
    let classified = m("resnet_watch_frames_classified_total");
    let dropped = m("resnet_watch_frames_dropped_total");
    let errors = m("resnet_watch_errors_total");
    assert_eq!(
        (received, classified, fps, motion, dropped, errors),
        (2, 1, 0, 0, 0, 1),
        "{text}"
    );
    assert_eq!(received, classified + fps + motion + dropped + errors);
    assert_eq!(m("resnet_watch_reconnects_total"), 0);
    assert_eq!(metric(&text, "resnet_watch_event_clients"), 1.0);
    // The watcher's frame went through the server's queue: two images in its forward passes.
    assert_eq!(
        metric(&text, "resnet_images_classified_total"),
        2.0,
        "{text}"
    );

    // Shutdown ends the stream (it must not hold the graceful shutdown up).
    let shutdown = tokio::spawn(server.shutdown());
    assert!(
        events.ends_within(Duration::from_secs(10)).await,
        "the event stream outlived shutdown"
    );
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown with watchers finished within 30 s")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_events_does_not_hold_the_watcher_up() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("drop");
    std::fs::create_dir(&dir).unwrap();
    let server = start(
        Config {
            write_timeout: Duration::from_secs(1),
            ..watching(&dir, "door")
        },
        model(),
    )
    .await;
    let addr = server.local_addr();
    // Subscribed, then never read again.
    let stuck = EventClient::connect(addr, None).await;
    // And one that reads, to see every event arrive.
    let mut reader = EventClient::connect(addr, None).await;
    let photos = [
        "cat_baseline.jpg",
        "coffee_progressive.jpg",
        "astronaut_rgb.png",
        "hopper_cmyk.jpg",
    ];
    let files = 12;
    for i in 0..files {
        let photo = photos[i % photos.len()];
        let ext = photo.rsplit('.').next().unwrap();
        drop_in(&dir, photo, &format!("f{i:02}.{ext}"));
    }
    let mut paths = Vec::new();
    for _ in 0..files {
        let (_, event) = reader.next_event().await;
        assert!(event["predictions"].is_array(), "{event}");
        paths.push(
            event["path"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    paths.sort();
    let want: Vec<String> = (0..files)
        .map(|i| {
            format!(
                "f{i:02}.{}",
                photos[i % photos.len()].rsplit('.').next().unwrap()
            )
        })
        .collect();
    assert_eq!(paths, want, "each file once");
    let text = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
    assert_eq!(
        source_metric(
            &text,
            "resnet_watch_frames_classified_total",
            "source=\"door\""
        ),
        files as u64
    );
    drop(stuck);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_need_the_token_and_a_server_with_sources() {
    let root = tempfile::tempdir().unwrap();
    let plain = start(config(), model()).await;
    get(plain.local_addr(), "/v1/events")
        .await
        .assert_error(404, "no_watch_sources");
    assert_eq!(
        get(plain.local_addr(), "/v1/model").await.json()["watch"],
        serde_json::json!([])
    );
    plain.shutdown().await;

    let guarded = start(
        Config {
            token: Some("s3cret".into()),
            ..watching(root.path(), "cam")
        },
        model(),
    )
    .await;
    let addr = guarded.local_addr();
    get(addr, "/v1/events")
        .await
        .assert_error(401, "missing_token");
    let mut events = EventClient::connect(addr, Some("s3cret")).await;
    let head = String::from_utf8_lossy(&events.seen).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    drop_in(root.path(), "fig_lossy.webp", "x.webp");
    let (_, event) = events.next_event().await;
    assert_eq!(event["source"], "cam");
    guarded.shutdown().await;
}

/// A live MJPEG camera (20 frames/s, cut after 40 frames, then streaming again) watched at
/// `--fps 5` by a server whose model takes 300 ms a pass: `/metrics` counts, per source, the
/// frames the fps gate skips, those dropped because the model was busy, and the reconnect, and
/// every frame received is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_camera_faster_than_the_model_counts_gated_dropped_and_reconnects() {
    use util::mjpeg_camera::{mjpeg_camera, Visit};
    let (url, _sent) = mjpeg_camera(
        vec![Visit::FramesThenCut(40), Visit::Frames],
        Duration::from_millis(50),
    );
    let config = watching_source(
        &format!("porch={url}"),
        resnet_watch::WatchOptions {
            fps: 5.0,
            reconnect_max: Duration::from_millis(500),
            ..resnet_watch::WatchOptions::default()
        },
    );
    let server = start(config, slow_model(Duration::from_millis(300))).await;
    let addr = server.local_addr();
    let labels = "source=\"porch\"";
    let text = metrics_when(
        addr,
        "a reconnect, drops and classified frames after it",
        |t| {
            let nonzero = |name| try_source_metric(t, name, labels).is_some_and(|v| v > 0);
            nonzero("resnet_watch_reconnects_total") && nonzero("resnet_watch_frames_dropped_total")
        },
    )
    .await;
    let m = |name: &str| source_metric(&text, name, labels);
    let fps = source_metric(
        &text,
        "resnet_watch_frames_gated_total",
        "source=\"porch\",gate=\"fps\"",
    );
    let motion = source_metric(
        &text,
        "resnet_watch_frames_gated_total",
        "source=\"porch\",gate=\"motion\"",
    );
    let received = m("resnet_watch_frames_received_total");
    let classified = m("resnet_watch_frames_classified_total");
    let dropped = m("resnet_watch_frames_dropped_total");
    let errors = m("resnet_watch_errors_total");
    assert_eq!(m("resnet_watch_reconnects_total"), 1, "{text}");
    assert_eq!(motion, 0, "no --motion");
    // The cut part is not a frame, and no error: the stream ended inside it.
    assert_eq!(errors, 0, "{text}");
    assert!(classified >= 1, "{text}");
    // 20 frames/s sampled at 5: about three of four skipped by the fps gate.
    assert!(fps >= 2 * (classified + dropped), "{text}");
    // A live source may hold one frame received but not yet accounted for.
    let accounted = classified + fps + motion + dropped + errors;
    assert!(
        received == accounted || received == accounted + 1,
        "received {received}, accounted {accounted}:\n{text}"
    );
    server.shutdown().await;
}
