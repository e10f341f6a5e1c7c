//! `resnet serve` and `resnet cam` as real processes: start on a free port, answer, stop on
//! SIGTERM; write a class activation map.

mod common;

use common::{resnet, synth, KillOnDrop};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One request with `Connection: close`; returns (status, body).
fn http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    (status, out[end + 4..].to_vec())
}

/// Reads a starting server's stderr on a thread until its "listening" line: the address, the
/// rest of its lines as they come, and the lines read so far.
fn listening(
    stderr: std::process::ChildStderr,
) -> (SocketAddr, mpsc::Receiver<String>, Vec<String>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("no 'listening' line");
        log.push(line.clone());
        if let Some(a) = line.strip_prefix("resnet serve: listening on http://") {
            break a.parse().unwrap();
        }
    };
    (addr, rx, log)
}

#[test]
fn serve_answers_then_stops_gracefully_on_sigterm() {
    // Served from a copy that is replaced and then deleted while the server runs (issue 8's
    // fault): the model lives in memory, so nothing changes for the clients.
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    std::fs::copy(synth(), &weights).unwrap();
    let mut child = KillOnDrop(
        resnet()
            .arg("serve")
            .arg("--weights")
            .arg(&weights)
            .args(["--addr", "127.0.0.1:0", "--max-batch", "4"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (addr, rx, mut log) = listening(stderr);
    let started = Instant::now();
    loop {
        let (status, _) = http(
            addr,
            "GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            b"",
        );
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The weights file is truncated in place, then replaced by garbage, then deleted: the
    // server answers from memory throughout.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(1000)
        .unwrap();
    std::fs::write(&weights, b"garbage, not safetensors").unwrap();
    std::fs::remove_file(&weights).unwrap();
    // The seed frontend's request: multipart field `file` to /predict.
    let cat = std::fs::read(repo().join("testdata/images/cat_baseline.jpg")).unwrap();
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
    body.extend_from_slice(&cat);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let head = format!(
        "POST /predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (status, out) = http(addr, &head, &body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);

    let (status, out) = http(
        addr,
        "GET /v1/model HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let sha = resnet_core::weights::sha256_hex(&std::fs::read(synth()).unwrap());
    assert_eq!(v["weights_sha256"], sha.as_str());
    assert_eq!(v["synthetic_weights"], true);
    assert_eq!(v["limits"]["max_batch"], 4);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("POST /predict 200"), "{log}");
    assert!(log.contains("resnet serve: stopped"), "{log}");
}

/// `resnet serve --watch` (issue 17): the CLI's watch flags reach the server's watcher, a
/// photo already in the folder (`--existing`) is classified into the history with its source,
/// an unknown `--alert` class is refused like `resnet watch` refuses it, and SIGTERM stops the
/// watcher and the server cleanly (its counters logged).
#[test]
fn serve_watches_a_folder_and_stops_its_watcher_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cam = dir.path().join("cam");
    std::fs::create_dir(&cam).unwrap();
    std::fs::copy(
        repo().join("testdata/images/cat_baseline.jpg"),
        cam.join("a.jpg"),
    )
    .unwrap();
    let refused = resnet()
        .arg("serve")
        .arg("--weights")
        .arg(synth())
        .args(["--addr", "127.0.0.1:0", "--alert", "unicorn", "--watch"])
        .arg(&cam)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unicorn"));

    let mut child = KillOnDrop(
        resnet()
            .arg("serve")
            .arg("--weights")
            .arg(synth())
            .args([
                "--addr",
                "127.0.0.1:0",
                "--existing",
                "--drain-s",
                "0.5",
                "--watch",
            ])
            .arg(format!("front={}", cam.display()))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (addr, rx, mut log) = listening(stderr);
    let started = Instant::now();
    let entry = loop {
        let (status, out) = http(
            addr,
            "GET /v1/history HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            b"",
        );
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        if let Some(e) = v["entries"].as_array().unwrap().first() {
            break e.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing classified"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(entry["source"], "watch:front", "{entry}");
    assert_eq!(entry["route"], "watch");
    assert_eq!(
        (entry["width"].as_u64(), entry["height"].as_u64()),
        (Some(451), Some(300))
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.0.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(
        log.contains("resnet serve: watch front: 1 received, 1 classified"),
        "{log}"
    );
    assert!(log.contains("resnet serve: stopped"), "{log}");
}

#[test]
fn serve_refuses_bad_settings_with_exit_2() {
    for args in [
        &["--queue", "0"][..],
        &["--timeout-s", "0"],
        &["--max-body-mb", "-1"],
        &["--batch-wait-ms", "nan"],
    ] {
        let out = resnet()
            .arg("serve")
            .arg("--weights")
            .arg(synth())
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn cam_writes_the_heat_map_over_the_picture_or_the_crop() {
    let dir = tempfile::tempdir().unwrap();
    let out_png = dir.path().join("cam.png");
    let out = resnet()
        .arg("cam")
        .arg(repo().join("testdata/images/cat_baseline.jpg"))
        .arg("--out")
        .arg(&out_png)
        .arg("--weights")
        .arg(synth())
        .args(["--class", "281"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("class 281 tabby"), "{stdout}");
    // Default: the whole original picture (cat_baseline.jpg is 451x300).
    let png = image::open(&out_png).unwrap();
    assert_eq!((png.width(), png.height()), (451, 300));
    let out = resnet()
        .arg("cam")
        .arg(repo().join("testdata/images/cat_baseline.jpg"))
        .arg("--out")
        .arg(&out_png)
        .arg("--weights")
        .arg(synth())
        .args(["--class", "281", "--view", "crop"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let png = image::open(&out_png).unwrap();
    assert_eq!((png.width(), png.height()), (224, 224));

    let out = resnet()
        .arg("cam")
        .arg(repo().join("testdata/images/bad/truncated.jpg"))
        .arg("--out")
        .arg(dir.path().join("bad.png"))
        .arg("--weights")
        .arg(synth())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("bad.png").exists());
}
