//! Replays every saved fuzz input through its harness: the seeds (`fuzz/seeds/<target>/`) and
//! the inputs that once crashed (`fuzz/regressions/<target>/`, each named after its bug). A
//! failure names the file. This runs in the ordinary `cargo test`, without libFuzzer.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, recursively, sorted (none when `dir` does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Runs `target` on each saved input; returns how many ran and the ones that panicked.
fn replay(target: &str) -> (usize, Vec<String>) {
    let mut inputs = files_under(&fuzz_dir().join("seeds").join(target));
    inputs.extend(files_under(&fuzz_dir().join("regressions").join(target)));
    let mut failures = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| resnet_fuzz::run(target, &data)).is_err() {
            failures.push(path.display().to_string());
        }
    }
    (inputs.len(), failures)
}

#[test]
fn every_saved_input_passes_its_harness() {
    for target in resnet_fuzz::TARGETS {
        let (count, failures) = replay(target);
        assert!(count > 0, "no seeds for fuzz target {target}");
        assert!(failures.is_empty(), "{target} fails on: {failures:#?}");
    }
}

/// The HTTP seeds reach the handlers they were written for, through the in-memory connection:
/// proof that the fuzzer starts from requests the server accepts, not from 4xx noise.
#[test]
fn the_http_seeds_get_the_answers_they_were_written_for() {
    let expected: [(&str, &[u16]); 11] = [
        ("get_healthz", &[200]),
        ("get_openapi", &[200]),
        ("get_model_and_metrics_pipelined", &[200, 200]),
        ("get_history", &[200]),
        ("classify_jpeg_top_k", &[200]),
        ("classify_png_chunked", &[200]),
        ("predict_multipart", &[200]),
        ("batch_two_parts", &[200]),
        ("cam_class", &[200]),
        ("no_token", &[401]),
        ("short_body", &[400]),
    ];
    for (name, statuses) in expected {
        let data = std::fs::read(fuzz_dir().join("seeds/http").join(name)).unwrap();
        assert_eq!(resnet_fuzz::http_statuses(&data), statuses, "seed {name}");
    }
}

#[test]
fn the_response_checker_rejects_what_it_should() {
    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(resnet_fuzz::response_statuses(ok), [200, 404]);
    assert_eq!(resnet_fuzz::response_statuses(b""), Vec::<u16>::new());
    for bad in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}"[..],
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n",
    ] {
        let caught = std::panic::catch_unwind(|| resnet_fuzz::response_statuses(bad));
        assert!(
            caught.is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let panicked = std::panic::catch_unwind(|| {
        resnet_fuzz::run("http", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    });
    assert!(panicked.is_ok());
}
