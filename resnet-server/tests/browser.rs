//! The page in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run` installs)
//! driven over the DevTools protocol loads `/`, uploads a real photo through the file input, and
//! must show the same labels as the API, the synthetic-weights banner, the class activation map
//! overlay and the history. A screenshot is saved under `CARGO_TARGET_TMPDIR/browser/`.
//!
//! Chromium is looked up as `$RESNET_CHROMIUM`, then `chromium`, `chromium-browser`,
//! `google-chrome` on the PATH. Without one the test fails with the command that installs it;
//! `RESNET_BROWSER_TEST=skip` skips it explicitly (and says so).

mod util;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};
use util::*;

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RESNET_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Kills the browser when the test ends, however it ends.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts headless Chromium with a DevTools port; returns it and the port.
fn launch(chromium: &PathBuf) -> (Browser, u16) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1000,1400",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let browser = Browser {
        child,
        _profile: profile,
    };
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "Chromium did not open its DevTools port:\n{}",
                    seen.join("\n")
                )
            });
        if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
            let port = rest.split('/').next().unwrap().parse().unwrap();
            return (browser, port);
        }
        seen.push(line);
    }
}

/// `GET path` on the DevTools HTTP endpoint (which keeps the connection open: read by length).
fn devtools_json(port: u16, path: &str) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "DevTools closed the connection");
        out.extend_from_slice(&chunk[..n]);
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = parse(&out);
            let len: usize = r.header("content-length").unwrap().parse().unwrap();
            if out.len() >= end + 4 + len {
                return serde_json::from_slice(&r.body[..len]).unwrap();
            }
        }
    }
}

/// A DevTools session on one page.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::Text(msg.to_string())).unwrap();
        loop {
            let Message::Text(text) = self.ws.read().unwrap() else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true.
    fn wait_for(&mut self, expression: &str, what: &str) {
        let started = Instant::now();
        while self.eval(expression) != json!(true) {
            if started.elapsed() > Duration::from_secs(60) {
                let status = self.eval("document.getElementById('status').textContent");
                panic!("timed out waiting for {what} (page status: {status})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_classifies_an_uploaded_photo_and_shows_the_map() {
    let Some(chromium) = find_chromium() else {
        if std::env::var("RESNET_BROWSER_TEST").as_deref() == Ok("skip") {
            eprintln!("browser test SKIPPED (RESNET_BROWSER_TEST=skip)");
            return;
        }
        panic!(
            "no Chromium found for the browser test: install it (apt-get install -y chromium, as \
             .ci/run does), point RESNET_CHROMIUM at one, or set RESNET_BROWSER_TEST=skip"
        );
    };
    let server = start(config(), model()).await;
    let addr = server.local_addr();
    let photo = image_path("cat_baseline.jpg").canonicalize().unwrap();
    // What the API says about the photo: the page must show exactly this.
    let api = post_raw(
        addr,
        "/v1/classify?top_k=5",
        "image/jpeg",
        &std::fs::read(&photo).unwrap(),
    )
    .await
    .json();
    let expected_labels: Vec<String> = api["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap().to_string())
        .collect();

    let screenshot_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&screenshot_dir).unwrap();
    let screenshot = screenshot_dir.join("page.png");
    let page_url = format!("http://{addr}/");
    let shot = screenshot.clone();
    // The DevTools session is blocking I/O: keep it off the runtime the server runs on.
    tokio::task::spawn_blocking(move || {
        let (_browser, port) = launch(&chromium);
        let targets = devtools_json(port, "/json/list");
        let ws_url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // No DevTools call may hang the test: each answer must come within 30 s.
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).unwrap();
        let mut cdp = Cdp { ws, next_id: 0 };
        cdp.call("Page.enable", json!({}));
        cdp.call("Page.navigate", json!({"url": page_url}));
        cdp.wait_for(
            "document.readyState === 'complete' && !document.getElementById('synthetic-banner').hidden",
            "the page and its synthetic-weights banner",
        );
        assert!(cdp
            .eval("document.getElementById('synthetic-banner').textContent")
            .as_str()
            .unwrap()
            .contains("synthetic weights"));

        // Upload the photo through the file input, as a user choosing a file does.
        let root = cdp.call("DOM.getDocument", json!({}))["root"]["nodeId"].clone();
        let input = cdp.call("DOM.querySelector", json!({"nodeId": root, "selector": "#file"}))["nodeId"].clone();
        cdp.call(
            "DOM.setFileInputFiles",
            json!({"nodeId": input, "files": [photo.display().to_string()]}),
        );
        cdp.wait_for(
            "document.getElementById('result').getAttribute('data-done') === '1'",
            "the predictions",
        );
        let shown: Vec<String> = serde_json::from_value(cdp.eval(
            "Array.from(document.querySelectorAll('#predictions li')).map(li => li.firstChild.firstChild.textContent.trim())",
        ))
        .unwrap();
        assert_eq!(shown, expected_labels, "the page shows other labels than the API");
        let bars: Vec<String> = serde_json::from_value(
            cdp.eval("Array.from(document.querySelectorAll('#predictions .bar span')).map(s => s.style.width)"),
        )
        .unwrap();
        assert_eq!(bars.len(), 5);
        assert!(cdp.eval("document.getElementById('timings').textContent").as_str().unwrap().contains("inference"));

        // "Where did it look": the CAM overlay replaces the preview.
        cdp.eval("document.getElementById('cam-toggle').click()");
        cdp.wait_for(
            "document.getElementById('cam-figure').getAttribute('data-loaded') === '1' && document.getElementById('cam').naturalWidth === 451 && !document.getElementById('cam-figure').hidden",
            "the class activation map",
        );
        assert_eq!(
            cdp.eval("document.getElementById('cam-label').textContent"),
            json!(expected_labels[0])
        );
        // History lists the page's recognition (and the API's) with thumbnails.
        cdp.wait_for(
            "document.querySelectorAll('#history img').length >= 2",
            "the history with thumbnails",
        );

        let png = cdp.call("Page.captureScreenshot", json!({"format": "png"}))["data"]
            .as_str()
            .unwrap()
            .to_string();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png).unwrap();
        std::fs::write(&shot, &bytes).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert!(img.width() >= 300 && img.height() >= 300);
    })
    .await
    .unwrap();
    eprintln!("browser test screenshot: {}", screenshot.display());
    server.shutdown().await;
}
