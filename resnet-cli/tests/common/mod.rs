//! Helpers shared by the integration tests of the `resnet` binary (each test file is its own
//! crate and uses a subset of them).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `testdata/images/<name>`.
pub fn image(name: &str) -> PathBuf {
    repo().join("testdata/images").join(name)
}

/// Every environment variable the binary reads that would change what a test sees, if the
/// developer running the tests happened to have it set: where weights come from
/// (`RESNET_WEIGHTS`, `_URL`, `_SHA256`), which kernels and plan run (`RESNET_ISA`,
/// `RESNET_WINOGRAD`, `RESNET_PLAN`), the server's token and port (`RESNET_TOKEN`, `PORT`),
/// and the log filter (`RUST_LOG` overrides `-q`/`-v`, whose output tests assert on). The
/// cache and the network are set explicitly instead (below).
const CLEARED_ENV: [&str; 9] = [
    "RESNET_WEIGHTS",
    "RESNET_WEIGHTS_URL",
    "RESNET_WEIGHTS_SHA256",
    "RESNET_ISA",
    "RESNET_WINOGRAD",
    "RESNET_PLAN",
    "RESNET_TOKEN",
    "PORT",
    "RUST_LOG",
];

/// The binary with a hermetic environment: none of [`CLEARED_ENV`], an empty cache of its own
/// (shared by the tests of one binary) and no network (`RESNET_OFFLINE=1`) unless a test turns
/// them back on with its own `.env(...)`, which wins because it comes later.
pub fn resnet() -> Command {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resnet"));
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("RESNET_CACHE", cache.path())
        .env("RESNET_OFFLINE", "1");
    cmd
}

/// A child process that is killed (and reaped) when the test ends, however it ends. A test that
/// fails while a server or watcher it started is running must not leave it behind: the process
/// would hold the test's stdout, and with it a `cargo test | tee` pipeline (CI's), open forever.
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs [`resnet`] with `args` to completion.
pub fn resnet_with(args: &[&dyn AsRef<OsStr>]) -> Output {
    let mut cmd = resnet();
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run resnet")
}

/// A process's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Synthetic weights (`weights synth --seed 0`) written once by the binary itself, shared by the
/// tests of one test binary.
pub fn synth() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = resnet()
            .args(["weights", "synth", "--seed", "0", "--out"])
            .arg(dir.path().join("synth.safetensors"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        dir
    });
    Box::leak(dir.path().join("synth.safetensors").into_boxed_path())
}

/// torchvision's logits and activations on `weights synth --seed 0` (tools/make_fixtures.py).
pub fn golden() -> serde_json::Value {
    let p = repo().join("resnet-core/tests/data/golden/golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The largest absolute difference of two equally long JSON number arrays.
pub fn max_abs_diff(a: &[serde_json::Value], b: &[serde_json::Value]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}
