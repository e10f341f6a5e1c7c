//! Batch jobs spread over machines and runs: `--shard I/N`, `--files-from`, `--resume`, with the
//! real binary. The union of the shards is the whole set with no duplicates; a run killed with
//! SIGKILL and resumed gives every input exactly once.

mod common;

use common::{resnet, synth};

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `n` small images (copies of one 7x5 JPEG, fast to decode) in a fresh folder.
fn image_set(n: usize) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(repo().join("testdata/images/tiny_7x5.jpg")).unwrap();
    let paths = (0..n)
        .map(|i| {
            let p = dir.path().join(format!("img_{i:04}.jpg"));
            std::fs::write(&p, &jpeg).unwrap();
            p.display().to_string()
        })
        .collect();
    (dir, paths)
}

fn jsonl_paths(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"));
            assert!(v["predictions"].is_array(), "{l}");
            v["path"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn the_shards_of_a_list_add_up_to_the_whole_list_once() {
    let (_dir, paths) = image_set(24);
    let list = paths.join("\n") + "\n";
    let mut seen: Vec<String> = Vec::new();
    let mut sizes = Vec::new();
    let mut shards: Vec<Vec<String>> = Vec::new();
    for i in 1..=3 {
        let mut child = resnet()
            .arg("classify")
            .arg("--weights")
            .arg(synth())
            .args([
                "--format",
                "jsonl",
                "--files-from",
                "-",
                "--shard",
                &format!("{i}/3"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(list.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = jsonl_paths(&String::from_utf8(out.stdout).unwrap());
        sizes.push(got.len());
        shards.push(got.clone());
        seen.extend(got);
    }
    assert_eq!(seen.len(), paths.len(), "shard sizes {sizes:?}");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), paths.len(), "a path in two shards");
    assert_eq!(unique, paths.iter().collect::<BTreeSet<_>>());
    // The same shard twice is the same share (the hash is stable).
    let again = resnet()
        .arg("classify")
        .arg("--weights")
        .arg(synth())
        .args(["--format", "jsonl", "--shard", "2/3"])
        .args(&paths)
        .output()
        .unwrap();
    assert_eq!(
        jsonl_paths(&String::from_utf8(again.stdout).unwrap()).len(),
        sizes[1]
    );
    // The list read from a file instead of stdin: the same share, in the same order.
    let list_file = _dir.path().join("list.txt");
    std::fs::write(&list_file, &list).unwrap();
    let from_file = resnet()
        .arg("classify")
        .arg("--weights")
        .arg(synth())
        .args(["--format", "jsonl", "--shard", "2/3", "--files-from"])
        .arg(&list_file)
        .output()
        .unwrap();
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    assert_eq!(
        jsonl_paths(&String::from_utf8(from_file.stdout).unwrap()),
        shards[1]
    );
    // A bad shard is a usage error naming the flag.
    let bad = resnet()
        .args(["classify", "--shard", "4/3", "x.jpg"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--shard"));
}

#[test]
fn a_run_killed_with_sigkill_and_resumed_gives_every_input_exactly_once() {
    let n = 200;
    let (dir, paths) = image_set(n);
    let out = dir.path().join("out.jsonl");
    let run = || {
        resnet()
            .arg("classify")
            .arg("--weights")
            .arg(synth())
            .args(["--batch-size", "1", "--resume"])
            .arg(&out)
            .args(&paths)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = run();
    let started = Instant::now();
    let lines = || std::fs::read_to_string(&out).map_or(0, |t| t.lines().count());
    while lines() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no output after 60 s"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let at_kill = lines();
    assert!(
        at_kill < n,
        "the run finished before the kill: nothing to resume"
    );
    // Whatever the kill left, also tear the end the way a crash mid-write does.
    let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
    f.write_all(b"{\"path\": \"").unwrap();
    drop(f);

    let second = run().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("torn last line"), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let mut count: HashMap<String, usize> = HashMap::new();
    for p in jsonl_paths(&text) {
        *count.entry(p).or_default() += 1;
    }
    assert_eq!(count.len(), n, "inputs missing from the output");
    assert!(count.values().all(|&c| c == 1), "an input twice: {count:?}");
    // Resuming a finished job does nothing.
    let third = run().wait_with_output().unwrap();
    assert!(third.status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}
