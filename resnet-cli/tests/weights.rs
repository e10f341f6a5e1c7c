//! `resnet weights` as a real process: `synth`, `.pth` and safetensors `info`/`convert`, and `fetch`
//! with its cache against a real HTTP server on 127.0.0.1 (no test touches the internet).

mod common;

use common::{image, repo, resnet, resnet_with, stderr, synth};
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::sync::OnceLock;

#[test]
fn synth_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let out = resnet_with(&[&"weights", &"synth", &"--seed", &"0", &"--out", &a]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(synth()).unwrap());
}

/// What the test HTTP server does with each request.
#[derive(Clone)]
enum Serve {
    /// 200 with this body.
    Body(Vec<u8>),
    /// 404.
    NotFound,
    /// Announces the whole body, sends this many bytes, then closes the connection.
    DropAfter(Vec<u8>, usize),
    /// Reads the request and then says nothing for this long.
    Stall(std::time::Duration),
}

/// A one-purpose HTTP/1.1 server on 127.0.0.1 (no internet here, and none needed): serves every
/// connection the same way until the test ends. Returns the URL of `/resnet18.pth`.
fn http_server(serve: Serve) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/resnet18.pth", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let serve = serve.clone();
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
                let _ = match serve {
                    Serve::Body(body) => stream
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                                .as_bytes(),
                        )
                        .and_then(|_| stream.write_all(&body)),
                    Serve::NotFound => stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                    Serve::DropAfter(body, n) => stream
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                                .as_bytes(),
                        )
                        .and_then(|_| stream.write_all(&body[..n])),
                    Serve::Stall(d) => {
                        std::thread::sleep(d);
                        Ok(())
                    }
                };
            });
        }
    });
    url
}

/// A full-size synthetic checkpoint in PyTorch's format and its SHA-256 (from `weights info`).
fn synth_pth() -> &'static (Vec<u8>, String) {
    static PTH: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    PTH.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("synth.pth");
        let out = resnet_with(&[&"weights", &"synth", &"--seed", &"0", &"--out", &path]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = resnet_with(&[&"weights", &"info", &path, &"--format", &"json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["format"], "PyTorch .pth (zip)");
        assert_eq!(info["parameters"], 11_689_512);
        assert_eq!(info["resnet18"], "valid torchvision ResNet-18 state dict");
        (
            std::fs::read(&path).unwrap(),
            info["sha256"].as_str().unwrap().to_string(),
        )
    })
}

/// Files in a cache directory (including hidden temporaries).
fn cache_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn fetch(url: &str, cache: &Path, extra: &[&str]) -> Output {
    let mut cmd = resnet();
    cmd.env("RESNET_CACHE", cache)
        .env_remove("RESNET_OFFLINE")
        .args(["weights", "fetch", "--url", url])
        .args(extra);
    cmd.output().unwrap()
}

#[test]
fn fetch_verifies_converts_and_caches() {
    let (pth, sha) = synth_pth();
    let url = http_server(Serve::Body(pth.clone()));
    let cache = tempfile::tempdir().unwrap();
    let out = fetch(&url, cache.path(), &["--sha256", sha]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cached = cache
        .path()
        .join(format!("resnet18-{}.safetensors", &sha[..8]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cached.display().to_string()
    );
    assert!(
        stderr(&out).contains(&format!("verified SHA-256 {sha}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        cache_files(cache.path()),
        [cached.file_name().unwrap().to_string_lossy()]
    );

    // The cached safetensors classifies exactly as the .pth it came from.
    let pth_file = cache
        .path()
        .join("..")
        .join(format!("synth-{}.pth", std::process::id()));
    std::fs::write(&pth_file, pth).unwrap();
    let run = |weights: &Path| {
        let out = resnet_with(&[
            &"classify",
            &"--weights",
            &weights,
            &"--format",
            &"json",
            &"--logits",
            &image("cat_baseline.jpg"),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    assert_eq!(run(&cached), run(&pth_file));
    std::fs::remove_file(&pth_file).unwrap();

    // A second fetch finds it cached and does not download.
    let out = fetch(
        "http://127.0.0.1:9/unreachable.pth",
        cache.path(),
        &["--sha256", sha],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("already cached"), "{}", stderr(&out));
}

#[test]
fn fetch_refuses_a_hash_mismatch_and_caches_nothing() {
    let (pth, _) = synth_pth();
    let url = http_server(Serve::Body(pth.clone()));
    let cache = tempfile::tempdir().unwrap();
    // Default: the official hash, which synthetic weights do not have.
    let out = fetch(&url, cache.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("SHA-256 mismatch") && err.contains("expected f37072fd"),
        "{err}"
    );
    assert!(
        cache_files(cache.path()).is_empty(),
        "{:?}",
        cache_files(cache.path())
    );
}

#[test]
fn fetch_survives_a_dropped_connection_a_404_and_a_stalled_server() {
    let (pth, sha) = synth_pth();
    let cache = tempfile::tempdir().unwrap();

    let url = http_server(Serve::DropAfter(pth.clone(), pth.len() / 2));
    let out = fetch(&url, cache.path(), &["--sha256", sha]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
    assert!(
        cache_files(cache.path()).is_empty(),
        "{:?}",
        cache_files(cache.path())
    );

    let url = http_server(Serve::NotFound);
    let out = fetch(&url, cache.path(), &["--sha256", sha]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("answered 404"), "{}", stderr(&out));
    assert!(cache_files(cache.path()).is_empty());

    let url = http_server(Serve::Stall(std::time::Duration::from_secs(20)));
    let started = std::time::Instant::now();
    let out = fetch(
        &url,
        cache.path(),
        &["--sha256", sha, "--download-timeout-s", "1"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        started.elapsed().as_secs() < 15,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr(&out).to_lowercase().contains("timed out"),
        "{}",
        stderr(&out)
    );
    assert!(cache_files(cache.path()).is_empty());
}

#[test]
fn fetch_refuses_plain_http_to_other_hosts() {
    let cache = tempfile::tempdir().unwrap();
    let out = fetch("http://weights.example/resnet18.pth", cache.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("refusing plain http") && stderr(&out).contains("--allow-http"),
        "{}",
        stderr(&out)
    );
    let out = fetch("ftp://weights.example/resnet18.pth", cache.path(), &[]);
    assert!(
        stderr(&out).contains("unsupported URL scheme"),
        "{}",
        stderr(&out)
    );
}

/// The README's main command on a fresh machine: no weights anywhere, so `classify` downloads
/// them once (here from a mirror on loopback), and the next run works offline from the cache.
#[test]
fn classify_with_no_setup_downloads_once_then_runs_offline() {
    let (pth, sha) = synth_pth();
    let url = http_server(Serve::Body(pth.clone()));
    let cache = tempfile::tempdir().unwrap();
    let mut cmd = resnet();
    cmd.env("RESNET_CACHE", cache.path())
        .env_remove("RESNET_OFFLINE")
        .env("RESNET_WEIGHTS_URL", &url)
        .env("RESNET_WEIGHTS_SHA256", sha)
        .args(["classify", "--format", "json"])
        .arg(image("cat_baseline.jpg"));
    let first = cmd.output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("downloading the official weights (once)"),
        "{}",
        stderr(&first)
    );

    let mut cmd = resnet();
    cmd.env("RESNET_CACHE", cache.path())
        .env("RESNET_WEIGHTS_SHA256", sha)
        .args(["classify", "--format", "json"])
        .arg(image("cat_baseline.jpg"));
    let second = cmd.output().unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        !stderr(&second).contains("downloading"),
        "{}",
        stderr(&second)
    );
    assert_eq!(first.stdout, second.stdout);
}

#[test]
fn offline_without_weights_says_what_was_tried_and_how_to_fix_it() {
    let out = resnet_with(&[&"classify", &image("cat_baseline.jpg")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for needle in [
        "--weights (not given)",
        "$RESNET_WEIGHTS (not set)",
        "does not exist",
        "--offline or RESNET_OFFLINE=1",
        "resnet weights fetch",
        "resnet weights convert",
    ] {
        assert!(err.contains(needle), "missing '{needle}' in: {err}");
    }
}

#[test]
fn convert_and_info_round_trip_pth_and_safetensors() {
    let (pth, _) = synth_pth();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.pth");
    std::fs::write(&input, pth).unwrap();
    let st = dir.path().join("out.safetensors");
    let out = resnet_with(&[&"weights", &"convert", &input, &st, &"--dtype", &"f16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = resnet_with(&[&"weights", &"info", &st, &"--format", &"json"]);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["format"], "safetensors");
    assert_eq!(info["dtypes"]["F16"], 102);
    assert_eq!(info["dtypes"]["I64"], 20);
    assert_eq!(info["tensors"], 122);
    assert!(info["batch_norm_statistics"]
        .as_str()
        .unwrap()
        .starts_with("present (20"));
    assert!(info["official"].as_str().unwrap().starts_with("no"));

    // Back to .pth, and the text form of info.
    let back = dir.path().join("back.pth");
    let out = resnet_with(&[&"weights", &"convert", &st, &back]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = resnet_with(&[&"weights", &"info", &back]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PyTorch .pth (zip)") && text.contains("parameters  11689512"),
        "{text}"
    );

    // Broken and hostile inputs: clear errors naming the file.
    let bad = dir.path().join("bad.pth");
    std::fs::write(&bad, &pth[..pth.len() / 3]).unwrap();
    let out = resnet_with(&[
        &"weights",
        &"convert",
        &bad,
        &dir.path().join("x.safetensors"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bad.pth: not a readable PyTorch checkpoint"),
        "{}",
        stderr(&out)
    );
    let evil = repo().join("resnet-core/tests/data/pth/malicious.pth");
    let out = resnet_with(&[&"weights", &"info", &evil]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("GLOBAL posix.system"),
        "{}",
        stderr(&out)
    );
}
