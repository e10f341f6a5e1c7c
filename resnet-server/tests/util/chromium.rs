//! Headless Chromium driven over the DevTools protocol, for the browser tests of the server and
//! of `resnet trace --html` (resnet-cli includes this file by path). Self-contained on purpose.
//!
//! Chromium is looked up as `$RESNET_CHROMIUM`, then `chromium`, `chromium-browser`,
//! `google-chrome` on the PATH.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

pub fn find_chromium() -> Option<PathBuf> {
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
pub struct Browser {
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
pub fn launch(chromium: &PathBuf) -> (Browser, u16) {
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
pub fn devtools_json(port: u16, path: &str) -> Value {
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
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .expect("DevTools answers with Content-Length")
                .trim()
                .parse()
                .unwrap();
            if out.len() >= end + 4 + len {
                return serde_json::from_slice(&out[end + 4..end + 4 + len]).unwrap();
            }
        }
    }
}

/// A DevTools session on one page.
pub struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    pub fn call(&mut self, method: &str, params: Value) -> Value {
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
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true. An expression that throws (the page still loading:
    /// its elements not there yet) counts as not true yet.
    pub fn wait_for(&mut self, expression: &str, what: &str) {
        let started = Instant::now();
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        );
        while self.eval(&guarded) != json!(true) {
            if started.elapsed() > Duration::from_secs(60) {
                let status = self.eval("document.getElementById('status').textContent");
                panic!("timed out waiting for {what} (page status: {status})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Chromium, or `None` after saying so when `RESNET_BROWSER_TEST=skip`; panics with the fix
/// when there is none and the skip was not asked for.
pub fn chromium_or_skip() -> Option<PathBuf> {
    match find_chromium() {
        Some(c) => Some(c),
        None if std::env::var("RESNET_BROWSER_TEST").as_deref() == Ok("skip") => {
            eprintln!("browser test SKIPPED (RESNET_BROWSER_TEST=skip)");
            None
        }
        None => panic!(
            "no Chromium found for the browser test: run tools/test.sh (it installs Debian's \
             chromium), point RESNET_CHROMIUM at one, or set RESNET_BROWSER_TEST=skip"
        ),
    }
}

/// Starts Chromium and opens a DevTools session on its page (navigated nowhere yet).
pub fn open(chromium: &PathBuf) -> (Browser, Cdp) {
    let (browser, port) = launch(chromium);
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
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (ws, _) = tungstenite::client(ws_url.as_str(), stream).unwrap();
    let mut cdp = Cdp { ws, next_id: 0 };
    cdp.call("Page.enable", json!({}));
    (browser, cdp)
}

impl Cdp {
    /// Saves a PNG screenshot of the page to `path` and returns its size in pixels.
    pub fn screenshot(&mut self, path: &std::path::Path) -> (u32, u32) {
        use base64::Engine;
        let png = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )["data"]
            .as_str()
            .unwrap()
            .to_string();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png)
            .unwrap();
        std::fs::write(path, &bytes).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        (img.width(), img.height())
    }
}
