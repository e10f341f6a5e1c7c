//! Faults the service must survive (issue 8): a backend that panics, clients that vanish in the
//! middle of an upload or a response, and a thousand idle connections.

mod util;

use ndarray::{Array2, ArrayView4};
use resnet_core::backend::{Backend, LayerObserver};
use resnet_server::Server;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::*;

/// Once armed, panics on its next forward pass, then computes normally: a bug that hits one
/// request (arming after start leaves the server's warm-up pass alone).
struct PanicsOnce {
    inner: Arc<dyn Backend>,
    armed: Arc<AtomicBool>,
}

impl Backend for PanicsOnce {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn describe(&self) -> String {
        format!("{} (panics once, for tests)", self.inner.describe())
    }
    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        observer: &mut dyn LayerObserver,
    ) -> resnet_core::Result<Array2<f32>> {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("injected fault: the backend panics on this batch");
        }
        self.inner.forward(batch, observer)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_backend_costs_one_request_a_500_and_the_server_goes_on() {
    let mut m = model();
    let armed = Arc::new(AtomicBool::new(false));
    m.backend = Arc::new(PanicsOnce {
        inner: m.backend,
        armed: Arc::clone(&armed),
    });
    let server = start(config(), m).await;
    armed.store(true, Ordering::SeqCst);
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");

    let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["error"].as_str().unwrap().contains("panicked"),
        "{:?}",
        r.json()
    );

    for _ in 0..3 {
        let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["predictions"].as_array().unwrap().len(), 5);
    }
    assert_eq!(get(addr, "/healthz").await.status, 200);
    let metrics = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("status=\"500\"") && !l.ends_with(" 0")),
        "the 500 is counted:\n{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_mid_upload_or_mid_response_do_not_hurt_the_next_one() {
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    let head = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        cat.len()
    );

    // Mid-upload: announce the whole body, send a third, hang up.
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&cat[..cat.len() / 3]).await.unwrap();
        drop(s);
    }
    // Mid-response: send a whole request, read a few bytes of the answer, hang up.
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&cat).await.unwrap();
        let mut few = [0u8; 8];
        let _ = s.read(&mut few).await;
        drop(s);
    }
    let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(addr, "/readyz").await.status, 200);
    server.shutdown().await;
}

/// Tests that measure this process's RSS, or make it grow by hundreds of MB, run one at a time
/// (the test harness runs tests in parallel threads of one process).
static MEMORY_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A thousand connections opened and left idle: the server keeps answering, memory stays
/// bounded (each idle connection costs a few KB), and the header-read timeout closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_are_bounded_and_timed_out() {
    let _alone = MEMORY_HEAVY.lock().await;
    let mut c = config();
    c.header_read_timeout = Duration::from_secs(2);
    let server = start(c, model()).await;
    let addr = server.local_addr();
    // Warm up so the model's buffers are in the baseline.
    let cat = image_bytes("cat_baseline.jpg");
    assert_eq!(
        post_raw(addr, "/v1/classify", "image/jpeg", &cat)
            .await
            .status,
        200
    );
    let before = rss_kb();

    let mut idle = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Half send nothing, half start a request and stall in its headers.
        if idle.len() % 2 == 1 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        }
        idle.push(s);
    }
    let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
    assert_eq!(
        r.status, 200,
        "a request still succeeds beside 1000 idle connections"
    );
    let grown_mb = rss_kb().saturating_sub(before) as f64 / 1024.0;
    // Both ends live in this process: 2000 sockets, 1000 connection tasks with hyper's read
    // buffers. Measured here: 67 MB (~67 KB per connection pair). The bound is twice that; a
    // connection that kept a request-sized buffer (10 MB body limit) would blow through it.
    println!("RSS grew {grown_mb:.1} MB with 1000 idle connections");
    assert!(
        grown_mb < 140.0,
        "RSS grew {grown_mb:.1} MB with 1000 idle connections"
    );

    // After the header-read timeout the server has closed every one of them.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut closed = 0;
    for s in &mut idle {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1, // EOF, a final error response, or a reset
            Err(_) => {}                           // still open and silent
        }
    }
    assert_eq!(
        closed, 1000,
        "idle connections closed by the header-read timeout"
    );
    server.shutdown().await;
}

/// Beyond `max_connections`, new connections are closed at once and counted; the ones inside
/// the limit are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds() {
    let mut c = config();
    c.max_connections = 20;
    let server = start(c, model()).await;
    let addr = server.local_addr();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The 21st is accepted by the kernel, then closed by the server without an answer.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut buf))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "no answer past the limit: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // Free the slots: requests are served again, and the refusal was counted.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("resnet_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(refused >= 1, "{metrics}");
    server.shutdown().await;
}

/// A history file on a full disk (/dev/full: every write fails with ENOSPC): the request still
/// succeeds, the failure is counted in /metrics, and the record is kept in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_history_file_fails_no_request() {
    let mut c = config();
    c.history = 10;
    c.history_file = Some("/dev/full".into());
    let server = start(c, model()).await;
    let addr = server.local_addr();
    let cat = image_bytes("cat_baseline.jpg");
    for _ in 0..2 {
        let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(history_write_failures(addr, 2).await, 2.0);
    let history = get(addr, "/v1/history").await.json();
    let entries = history
        .as_array()
        .or_else(|| history["entries"].as_array())
        .unwrap_or_else(|| panic!("{history}"));
    assert_eq!(entries.len(), 2, "kept in memory: {history}");
    server.shutdown().await;
}

/// Runs the test named `test` again in a child process with a private mount namespace (via
/// `unshare`, mapping the current user to root there), where it may mount file systems. Returns
/// true in the parent, after checking that the child passed; false in the child, which then runs
/// the test's body. Works as root and, where unprivileged user namespaces are allowed, as any user.
fn rerun_in_mount_namespace(test: &str) -> bool {
    const INSIDE: &str = "RESNET_TEST_IN_MOUNT_NAMESPACE";
    if std::env::var_os(INSIDE).is_some() {
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--map-root-user", "--propagation", "private"])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(INSIDE, "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare (util-linux) for {test}: {e}"));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{test} in a private mount namespace failed:\n{log}"
    );
    // The child must really have run the test, not filtered it out.
    assert!(log.contains("1 passed"), "{test} did not run:\n{log}");
    true
}

fn mount(args: &[&str]) {
    let out = std::process::Command::new("mount")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A history file on a read-only file system (a real one: a tmpfs remounted read-only, which
/// fails writes with EROFS even for root). The server starts and reloads the old records,
/// requests succeed, the failures are counted, the file is left exactly as it was; once the
/// disk is writable again the log resumes in the same file, every line whole.
#[test]
fn a_read_only_disk_under_the_history_file_fails_no_request_and_corrupts_nothing() {
    if rerun_in_mount_namespace(
        "a_read_only_disk_under_the_history_file_fails_no_request_and_corrupts_nothing",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    mount(&["-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt]);
    let file = dir.path().join("history.jsonl");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cat = image_bytes("cat_baseline.jpg");
    let mut c = config();
    c.history = 10;
    c.history_file = Some(file.clone());

    // Two records written while the disk is writable.
    runtime.block_on(async {
        let server = start(c.clone(), model()).await;
        for _ in 0..2 {
            let r = post_raw(server.local_addr(), "/v1/classify", "image/jpeg", &cat).await;
            assert_eq!(r.status, 200);
        }
        wait_for_lines(&file, 2).await;
        server.shutdown().await;
    });
    let before = std::fs::read(&file).unwrap();

    mount(&["-o", "remount,ro", mnt]);
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS expected, got {err}");
    runtime.block_on(async {
        let server = start(c.clone(), model()).await;
        let addr = server.local_addr();
        for _ in 0..3 {
            let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
        assert_eq!(history_write_failures(addr, 3).await, 3.0);
        let history = get(addr, "/v1/history").await.json();
        assert_eq!(
            history["entries"].as_array().unwrap().len(),
            5,
            "two reloaded, three in memory"
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            before,
            "the file is untouched"
        );

        // The disk comes back: the next record goes to the file again.
        mount(&["-o", "remount,rw", mnt]);
        let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
        assert_eq!(r.status, 200);
        wait_for_lines(&file, 3).await;
        let written = std::fs::read(&file).unwrap();
        assert!(written.starts_with(&before), "appended, not rewritten");

        // Now the disk fills up: the append stops part-way through a line (the file's last
        // page has room for part of it). Once space is freed, the next record must start on a
        // line of its own, not be glued to the torn one.
        let filler = dir.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        drop(f);
        let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
        assert_eq!(r.status, 200);
        assert_eq!(history_write_failures(addr, 4).await, 4.0);
        std::fs::remove_file(&filler).unwrap();
        let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
        assert_eq!(r.status, 200);
        for _ in 0..200 {
            if whole_records(&file).0 == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.shutdown().await;
    });
    let (whole, torn) = whole_records(&file);
    assert_eq!(whole, 4, "3 before the disk filled up, 1 after");
    assert!(torn <= 1, "{torn} torn lines");
    let text = std::fs::read_to_string(&file).unwrap();
    let last = text.lines().last().unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(last).is_ok(),
        "the last line is whole"
    );
    mount(&["-o", "remount,ro", mnt]);
    // Restart on the read-only disk: the whole records are reloaded, the torn line skipped.
    let history = resnet_server::history::History::open(10, Some(&file)).unwrap();
    assert_eq!(history.newest_first().len(), 4);
}

/// The history file's lines that parse as records, and the non-empty ones that do not.
fn whole_records(file: &std::path::Path) -> (usize, usize) {
    let text = String::from_utf8_lossy(&std::fs::read(file).unwrap()).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let whole = lines
        .iter()
        .filter(|l| serde_json::from_str::<resnet_server::history::Entry>(l).is_ok())
        .count();
    (whole, lines.len() - whole)
}

/// `resnet_history_write_failures_total` once it reaches `expected` or after 3 s (appends
/// run after the answer).
async fn history_write_failures(addr: std::net::SocketAddr, expected: u32) -> f64 {
    let mut failures = 0.0;
    for _ in 0..300 {
        let text = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
        failures = metric(&text, "resnet_history_write_failures_total");
        if failures >= f64::from(expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    failures
}

/// Waits until `file` has `n` lines (appends run after the answer).
async fn wait_for_lines(file: &std::path::Path, n: usize) {
    for _ in 0..200 {
        let lines = std::fs::read_to_string(file)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= n {
            assert_eq!(lines, n, "more lines than records in {}", file.display());
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never reached {n} lines", file.display());
}

/// Issue 19 #4: a kill -9 can cut the history file's last line inside a multi-byte character
/// (a label `café`): that line is not valid UTF-8. The server still starts, keeps the whole
/// records, and counts the skipped line in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_line_torn_inside_a_utf8_character_does_not_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.jsonl");
    let record = |i: usize| resnet_server::history::Entry {
        source: None,
        time: resnet_server::history::rfc3339(1_795_823_999 + i as i64, 0),
        route: "classify".into(),
        width: 10,
        height: 10,
        index: i,
        label: "café".into(),
        probability: 0.5,
        latency_ms: 1.0,
        thumbnail: String::new(),
        request_id: None,
    };
    let mut bytes = Vec::new();
    for i in 0..2 {
        bytes.extend_from_slice(serde_json::to_string(&record(i)).unwrap().as_bytes());
        bytes.push(b'\n');
    }
    let cut = bytes.windows(2).rposition(|w| w == "é".as_bytes()).unwrap() + 1;
    bytes.truncate(cut);
    std::fs::write(&file, &bytes).unwrap();

    let mut c = config();
    c.history = 10;
    c.history_file = Some(file.clone());
    let server = Server::start(c, model())
        .await
        .expect("the server starts despite the torn line");
    server.wait_ready().await;
    let addr = server.local_addr();
    let history = get(addr, "/v1/history").await.json();
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{history}");
    assert_eq!(entries[0]["label"], "café");
    let text = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
    assert_eq!(metric(&text, "resnet_history_lines_skipped_total"), 1.0);
    server.shutdown().await;
}

/// A client that pipelines thousands of `GET /` with a small receive buffer and never reads:
/// the server's answers fill the socket buffers and its writes stop.
async fn non_reading_client(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let requests = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000);
    // The server stops reading once it stops writing: send what fits, in bounded time.
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&requests)).await;
    stream
}

/// Polls `GET /healthz` until it is answered 200 (new connections are refused while every slot
/// is held) or `bound` passes; returns how long it took.
async fn time_until_served(addr: std::net::SocketAddr, bound: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < bound {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(&request("GET", "/healthz", &[], b""))
                .await
                .ok()?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.ok()?;
            (!out.is_empty()).then(|| parse(&out).status)
        };
        if let Ok(Some(200)) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Issue 19 #1: clients that never read held their connection slot forever, locking everyone
/// out, and made SIGTERM wait the whole grace period. Now a write that makes no progress for
/// `write_timeout` closes the connection: a new client is served within about that time, the
/// stalled slots are counted in /metrics, and shutdown does not wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_lose_their_slot_after_the_write_timeout() {
    let write_timeout = Duration::from_secs(1);
    let mut c = config();
    c.max_connections = 5;
    c.write_timeout = write_timeout;
    let server = start(c, model()).await;
    let addr = server.local_addr();

    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(non_reading_client(addr).await);
    }
    // The fifth slot is free: /metrics shows the four stalled ones.
    let mut seen = 0.0;
    for _ in 0..100 {
        let text = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
        seen = metric(&text, "resnet_connections_stalled");
        if seen >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen >= 4.0, "stalled connections counted: {seen}");
    // Take the last slot too: now every slot is held by a client that does not read.
    stalled.push(non_reading_client(addr).await);
    let waited = time_until_served(addr, Duration::from_secs(15))
        .await
        .expect("a new client is served once the stalled ones time out");
    println!("a new client was served after {waited:?} (write timeout {write_timeout:?})");
    assert!(
        waited < write_timeout + Duration::from_secs(3),
        "served after {waited:?}"
    );
    let text = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
    assert!(
        metric(&text, "resnet_connections_write_timeouts_total") >= 1.0,
        "{text}"
    );

    // SIGTERM's drain (the default 30 s grace) does not wait for clients that do not read.
    for _ in 0..4 {
        stalled.push(non_reading_client(addr).await);
    }
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("shutdown finishes");
    let took = started.elapsed();
    assert!(
        took < write_timeout + Duration::from_secs(3),
        "shutdown took {took:?}"
    );
    drop(stalled);
}

/// Pipelined requests are bounded per connection: the last allowed answer says
/// `Connection: close` and the server closes the connection after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_bounded_per_connection() {
    let mut c = config();
    c.max_requests_per_connection = 3;
    let server = start(c, model()).await;
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    s.write_all(&b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10))
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert_eq!(
        text.to_ascii_lowercase()
            .matches("connection: close")
            .count(),
        1,
        "{text}"
    );
    server.shutdown().await;
}

/// A baseline JPEG whose header says 8000x8000 (64 megapixels, under the default limit) but
/// whose scan holds one 8x8 block: some 600 bytes to send, a 192 MB decode (the decoder fills
/// the missing blocks).
fn jpeg_bomb() -> Vec<u8> {
    let mut jpeg = Vec::new();
    image::RgbImage::from_pixel(8, 8, image::Rgb([120, 30, 200]))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    // FF C0, length (2), precision (1), height (2), width (2), big-endian.
    jpeg[sof + 5..sof + 7].copy_from_slice(&8000u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&8000u16.to_be_bytes());
    jpeg
}

async fn metrics_text(addr: std::net::SocketAddr) -> String {
    String::from_utf8(get(addr, "/metrics").await.body).unwrap()
}

/// Issue 19 #2: four batches of 32 cheap-to-send, costly-to-decode JPEGs, the client hanging
/// up after 0.3 s, used to take the decoders for ~40 s (a normal classify got a 504). Now
/// decodes take turns between requests within a bounded budget, and the work of requests past
/// their deadline is dropped. Run on a runtime shaped like `resnet serve`'s (2 blocking threads
/// for decoding), so the old code's first-come order would show.
#[test]
fn decompression_bombs_in_batches_do_not_starve_a_normal_request() {
    let deadline = Duration::from_secs(6);
    let mut c = config();
    c.timeout = deadline;
    c.max_concurrent_decodes = 2;
    c.max_inflight_bytes = 1 << 30; // 512 MiB of decoded pixels: two bombs at a time
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(resnet_server::server::blocking_threads(&c))
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _alone = MEMORY_HEAVY.lock().await;
        let server = start(c, model()).await;
        let addr = server.local_addr();
        let bomb = jpeg_bomb();
        let cat = image_bytes("cat_baseline.jpg");

        // One bomb alone: it does decode to 64 megapixels (what makes it costly).
        let t = std::time::Instant::now();
        let r = post_raw(addr, "/v1/classify", "image/jpeg", &bomb).await;
        let one_bomb = t.elapsed();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["image"]["width"], 8000);
        let t = std::time::Instant::now();
        assert_eq!(
            post_raw(addr, "/v1/classify", "image/jpeg", &cat)
                .await
                .status,
            200
        );
        let usual = t.elapsed();
        println!(
            "{} bytes decode in {one_bomb:?}; a normal classify takes {usual:?}",
            bomb.len()
        );

        let parts: Vec<(&str, &str, &[u8])> =
            (0..32).map(|_| ("files", "bomb.jpg", &bomb[..])).collect();
        let body = multipart(&parts);
        let ct = multipart_type();
        let raw = request(
            "POST",
            "/v1/classify/batch",
            &[("Content-Type", &ct)],
            &body,
        );
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&raw).await.unwrap();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(s); // the client hangs up
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = std::time::Instant::now();
        let r = post_raw(addr, "/v1/classify", "image/jpeg", &cat).await;
        let waited = t.elapsed();
        println!("with 128 bombs in flight a normal classify took {waited:?}");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        // It goes first (its request had no decode yet) and runs in the small lane beside the two
        // bomb decodes: it does not even wait for one of them to finish. The bound is one bomb
        // decode (measured alone above); its usual time is far below, the excess is CPU shared
        // with the bombs on this 2-core machine.
        assert!(
            waited < one_bomb,
            "took {waited:?}, one bomb decode takes {one_bomb:?}"
        );

        // Past the batches' deadline their queued decodes are dropped, not run. The decodes
        // already running finish first (a bomb's 630 bytes are read before the long decode
        // starts, so the read-side cancellation check cannot stop it): a pair that started just
        // before the deadline ends about one bomb decode after it, two when the pair shares the
        // cores with other tests. The wait is bounded by that, from the time measured above.
        let settle = (deadline + 3 * one_bomb).max(Duration::from_secs(10));
        let polling = std::time::Instant::now();
        let mut text = String::new();
        while polling.elapsed() < settle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            text = metrics_text(addr).await;
            if metric(&text, "resnet_decodes_waiting") == 0.0
                && metric(&text, "resnet_inflight_decode_bytes") == 0.0
            {
                break;
            }
        }
        assert_eq!(metric(&text, "resnet_decodes_waiting"), 0.0, "{text}");
        assert_eq!(metric(&text, "resnet_inflight_decode_bytes"), 0.0, "{text}");
        let cancelled = metric(&text, "resnet_decodes_cancelled_total");
        let decoded = metric(&text, "resnet_images_classified_total");
        println!("decodes cancelled: {cancelled}, images classified: {decoded}");
        assert!(
            cancelled >= 64.0,
            "most of the 128 bombs were never decoded: {text}"
        );
        server.shutdown().await;
    });
}

fn rss_mb() -> f64 {
    rss_kb() as f64 / 1024.0
}

/// Issue 19 #3: 150 concurrent 10 MiB uploads took the server from 143 MB to 2 GB. The bodies
/// in flight are now bounded by half of `max_inflight_bytes` (64 MiB here): past it requests
/// get 503 with Retry-After, counted in /metrics, and the RSS stays within the budget plus
/// 100 MB of the idle figure (the client side of this test, in the same process, shares one
/// body buffer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_uploads_at_once_stay_within_the_memory_budget() {
    let _alone = MEMORY_HEAVY.lock().await;
    let budget_mb = 128.0;
    let mut c = config();
    c.max_inflight_bytes = (budget_mb as u64) << 20;
    c.memory_trim_interval = Duration::from_millis(200);
    let server = start(c, model()).await;
    let addr = server.local_addr();
    // A real image padded to 10 MiB - 1 KiB (data after the end-of-image marker is ignored),
    // so each accepted upload is held through decode and inference.
    let mut body = image_bytes("cat_baseline.jpg");
    body.resize((10 << 20) - 1024, 0);
    assert_eq!(
        post_raw(addr, "/v1/classify", "image/jpeg", &body)
            .await
            .status,
        200
    );
    let idle = rss_mb();

    let raw = Arc::new(request(
        "POST",
        "/v1/classify",
        &[("Content-Type", "image/jpeg")],
        &body,
    ));
    drop(body);
    let peak = Arc::new(std::sync::Mutex::new(idle));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (Arc::clone(&peak), Arc::clone(&sampling));
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let now = rss_mb();
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let clients: Vec<_> = (0..150)
        .map(|_| {
            let raw = Arc::clone(&raw);
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(&raw).await;
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await;
                (!out.is_empty()).then(|| parse(&out))
            })
        })
        .collect();
    let (mut ok, mut busy, mut reset) = (0, 0, 0);
    for c in clients {
        match c.await.unwrap() {
            Some(r) if r.status == 200 => ok += 1,
            Some(r) => {
                r.assert_error(503, "memory_budget_full");
                assert_eq!(r.header("retry-after"), Some("1"));
                busy += 1;
            }
            // Refused before its body was read: the connection may be reset under the answer.
            None => reset += 1,
        }
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = *peak.lock().unwrap();
    println!("150 x 10 MiB: {ok} answered, {busy} got 503, {reset} reset; RSS idle {idle:.0} MB, peak {peak:.0} MB");
    assert!(ok >= 1, "some uploads are served");
    assert!(busy >= 1, "the budget refused some");
    let text = metrics_text(addr).await;
    assert!(metric(&text, "resnet_requests_refused_memory_total") >= busy as f64);
    assert_eq!(metric(&text, "resnet_inflight_body_bytes"), 0.0, "{text}");
    assert!(
        peak - idle < budget_mb + 100.0,
        "RSS grew {:.0} MB, over the budget {budget_mb} MB + 100 MB",
        peak - idle
    );
    // Freed memory goes back to the system: within 20% of the idle figure after a few trim
    // intervals (200 ms here; the wait is bounded at 10 s).
    let started = std::time::Instant::now();
    let mut now = rss_mb();
    while now > idle * 1.2 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = rss_mb();
    }
    println!(
        "RSS {now:.0} MB {:.1} s after the attack (idle {idle:.0} MB)",
        started.elapsed().as_secs_f64()
    );
    assert!(now <= idle * 1.2, "RSS {now:.0} MB, idle {idle:.0} MB");
    server.shutdown().await;
}

/// The minor cases of issue 19: a lower-case `bearer` scheme, HEAD on GET routes, headers
/// declaring huge sizes, which are 422 image_too_large in every format, and `Content-Length`
/// values hyper cannot represent, which are 413 like every other over-limit length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_head_and_huge_declared_sizes() {
    let mut c = config();
    c.token = Some("s3cret".into());
    let server = start(c, model()).await;
    let addr = server.local_addr();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} s3cret");
        let r = send_raw(
            addr,
            &request("GET", "/v1/model", &[("Authorization", &auth)], b""),
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{scheme}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = send_raw(
        addr,
        &request(
            "GET",
            "/v1/model",
            &[("Authorization", "bearer wrong")],
            b"",
        ),
    )
    .await;
    r.assert_error(401, "bad_token");

    let get_healthz = get(addr, "/healthz").await;
    let head = send_raw(addr, &request("HEAD", "/healthz", &[], b"")).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);
    assert_eq!(
        head.header("content-length"),
        Some(get_healthz.body.len().to_string().as_str())
    );
    let r = send_raw(addr, &request("HEAD", "/", &[], b"")).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = send_raw(
        addr,
        &request(
            "HEAD",
            "/v1/classify",
            &[("Authorization", "Bearer s3cret")],
            b"",
        ),
    )
    .await;
    assert_eq!(r.status, 405);

    let encoded = |format, w, h| {
        let mut out = Vec::new();
        image::RgbImage::new(w, h)
            .write_to(&mut std::io::Cursor::new(&mut out), format)
            .unwrap();
        out
    };
    let mut bmp = encoded(image::ImageFormat::Bmp, 2, 2);
    bmp[18..22].copy_from_slice(&100_000i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&100_000i32.to_le_bytes());
    let mut png = encoded(image::ImageFormat::Png, 1, 1);
    png[16..20].copy_from_slice(&(i32::MAX as u32).to_be_bytes());
    let mut webp = b"RIFF\x16\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
    webp.extend_from_slice(&[0xff, 0x3f, 0x00, 0xff, 0x3f, 0x00]);
    for (name, bytes) in [("bmp", bmp), ("png", png), ("webp", webp)] {
        let ct = format!("image/{name}");
        let r = send_raw(
            addr,
            &request(
                "POST",
                "/v1/classify",
                &[("Content-Type", &ct), ("Authorization", "Bearer s3cret")],
                &bytes,
            ),
        )
        .await;
        r.assert_error(422, "image_too_large");
    }

    // Declared body lengths past what hyper can hold (u64::MAX and u64::MAX - 1 are its
    // internal markers; a 21-digit value overflows u64) get the same 413 as any length over
    // --max-body-mb, not hyper's automatic 431 / 400; u64::MAX - 2 is the largest hyper parses.
    for length in [
        "18446744073709551615",
        "18446744073709551614",
        "100000000000000000000",
        "18446744073709551613",
        "11534336",
    ] {
        let head = format!(
            "POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
             content-type: image/png\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n"
        );
        let r = send_raw(addr, head.as_bytes()).await;
        r.assert_error(413, "body_too_large");
    }
    // A head that is really too large keeps hyper's 431, and a malformed length its 400.
    let big_field = "a".repeat(512 << 10);
    let r = send_raw(
        addr,
        &request("GET", "/healthz", &[("X-Padding", &big_field)], b""),
    )
    .await;
    assert_eq!(r.status, 431);
    let r = send_raw(
        addr,
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    // The connection code still serves ordinary requests after all that.
    assert_eq!(get(addr, "/healthz").await.status, 200);
    server.shutdown().await;
}
