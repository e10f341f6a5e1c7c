//! `resnet serve` as a container platform runs it: the port from `PORT`, JSON access logs with
//! the request id, and on SIGTERM readiness 503 while requests are still answered, before the
//! listener closes.

mod common;

use common::{resnet, synth, KillOnDrop};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One GET with `Connection: close`: (status, body), or None when the connection is refused.
fn get(addr: SocketAddr, path: &str, id: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let id = id
        .map(|i| format!("X-Request-Id: {i}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{id}Connection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn port_from_the_environment_json_logs_and_not_ready_before_the_listener_closes() {
    let port = free_port();
    let mut child = KillOnDrop(
        resnet()
            .arg("serve")
            .arg("--weights")
            .arg(synth())
            .args(["--log-format", "json", "--drain-s", "4"])
            .env("PORT", port.to_string())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("no 'listening' line");
        log.push(line.clone());
        if line.starts_with("resnet serve: listening on") {
            assert!(line.ends_with(&format!("http://0.0.0.0:{port}")), "{line}");
            break;
        }
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while get(addr, "/readyz", None).map(|r| r.0) != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(addr, "/v1/model", Some("job-7")).unwrap().0, 200);

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // Within the drain period: readiness 503 (both probes), other routes still answered. The
    // signal may take a while to be handled when the other tests load both cores: the drain is
    // 4 s, and the probes below need well under 1 s of it.
    let t = Instant::now();
    let mut saw_503 = false;
    while t.elapsed() < Duration::from_secs(3) {
        match get(addr, "/readyz", None) {
            Some((503, body)) => {
                assert!(body.contains("shutting_down"), "{body}");
                saw_503 = true;
                break;
            }
            Some((200, _)) => std::thread::sleep(Duration::from_millis(10)),
            other => panic!("readiness during the drain: {other:?}"),
        }
    }
    assert!(saw_503, "readiness never said 503 after SIGTERM");
    assert_eq!(get(addr, "/v2/health/ready", None).map(|r| r.0), Some(503));
    assert_eq!(
        get(addr, "/healthz", None).map(|r| r.0),
        Some(200),
        "still serving while draining"
    );
    let status = child.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        log.push(line);
    }
    assert!(status.success(), "{}", log.join("\n"));
    let line = log
        .iter()
        .find(|l| l.contains("\"job-7\""))
        .unwrap_or_else(|| panic!("no JSON log line with the request id:\n{}", log.join("\n")));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (v["path"].as_str(), v["status"].as_u64()),
        (Some("/v1/model"), Some(200))
    );
    assert!(
        get(addr, "/healthz", None).is_none(),
        "the listener is closed after exit"
    );
}
