//! Where the weights come from: `--weights`, `$RESNET_WEIGHTS`, the cache, or a download of the
//! official torchvision checkpoint (verified by SHA-256, converted to safetensors in the cache).

use crate::args::DownloadArgs;
use anyhow::{anyhow, bail, Context};
use resnet_core::weights::{StoreDtype, Weights};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `weights/manifest.json`: the official file's URL and hash.
#[derive(Deserialize)]
pub struct Manifest {
    pub name: String,
    pub url: String,
    pub sha256_prefix: String,
    pub sha256: String,
}

pub fn manifest() -> Manifest {
    serde_json::from_str(include_str!("../../weights/manifest.json"))
        .expect("weights/manifest.json is valid (checked by a test)")
}

/// Refuses downloads bigger than this (the official file is 46.8 MB).
const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

/// How to get weights when none are given, from flags and the environment.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Where to download from (`--url`, `$RESNET_WEIGHTS_URL`, else the official URL).
    pub url: String,
    /// The expected SHA-256 of the downloaded file: a full digest or a prefix of one.
    pub sha256: String,
    /// No network access (`--offline`, `$RESNET_OFFLINE=1`).
    pub offline: bool,
    /// Allow plain http to hosts other than loopback.
    pub allow_http: bool,
    /// Connect and read timeout.
    pub timeout: Duration,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl FetchOptions {
    /// The download flags, converted once: flags win over the environment, which wins over
    /// the manifest.
    pub fn from_args(args: &DownloadArgs) -> anyhow::Result<FetchOptions> {
        let m = manifest();
        let sha256 = args
            .sha256
            .clone()
            .or_else(|| env_nonempty("RESNET_WEIGHTS_SHA256"))
            .unwrap_or(m.sha256)
            .to_ascii_lowercase();
        if sha256.len() < 8 || sha256.len() > 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--sha256 must be 8 to 64 hex digits of a SHA-256 digest, got '{sha256}'");
        }
        Ok(FetchOptions {
            url: args
                .url
                .clone()
                .or_else(|| env_nonempty("RESNET_WEIGHTS_URL"))
                .unwrap_or(m.url),
            sha256,
            offline: args.offline || env_flag("RESNET_OFFLINE"),
            allow_http: args.allow_http,
            timeout: Duration::from_secs(args.download_timeout_s.max(1)),
        })
    }

    /// Never downloads: for commands that only look for weights already here (`bench`).
    pub fn offline_only() -> anyhow::Result<FetchOptions> {
        FetchOptions::from_args(&DownloadArgs {
            url: None,
            sha256: None,
            offline: true,
            allow_http: false,
            download_timeout_s: 1,
        })
    }

    /// The cached safetensors file for these weights, named by the hash it was verified
    /// against (`resnet18-f37072fd.safetensors` for the official file).
    pub fn cache_file(&self) -> anyhow::Result<PathBuf> {
        Ok(cache_dir()?.join(format!("resnet18-{}.safetensors", &self.sha256[..8])))
    }
}

/// `$RESNET_CACHE`, else `$XDG_CACHE_HOME/resnet18-rs`, else the platform cache directory
/// (`~/.cache/resnet18-rs` on Linux).
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = env_nonempty("RESNET_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = env_nonempty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(xdg).join("resnet18-rs"));
    }
    dirs::cache_dir()
        .map(|d| d.join("resnet18-rs"))
        .ok_or_else(|| anyhow!("no cache directory: set RESNET_CACHE (or HOME)"))
}

/// Finds the weights file: `--weights` > `$RESNET_WEIGHTS` > the cache > a download (unless
/// offline). When nothing works, the error lists what was tried and how to fix it.
pub fn resolve(weights: Option<&Path>, fetch_opts: &FetchOptions) -> anyhow::Result<PathBuf> {
    if let Some(p) = weights {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env_nonempty("RESNET_WEIGHTS") {
        return Ok(PathBuf::from(p));
    }
    let cached = fetch_opts.cache_file()?;
    if cached.is_file() {
        return Ok(cached);
    }
    let tried = format!(
        "tried: --weights (not given), $RESNET_WEIGHTS (not set), the cache ({} does not exist)",
        cached.display()
    );
    if fetch_opts.offline {
        bail!(
            "no weights: {tried}, and downloading is off (--offline or RESNET_OFFLINE=1).\n\
             Fix: on a machine with internet run `resnet weights fetch` (it fills {dir}), or copy \
             resnet18-f37072fd.pth here and run\n    resnet weights convert resnet18-f37072fd.pth {file}\n\
             or pass --weights FILE. To try the tool without them: resnet weights synth --out synth.safetensors",
            dir = cached.parent().unwrap_or(Path::new(".")).display(),
            file = cached.display()
        );
    }
    log::info!(
        "no weights given and none cached: downloading the official weights (once) from {}",
        fetch_opts.url
    );
    fetch(fetch_opts).with_context(|| {
        format!(
            "no weights: {tried}, and the download failed.\n\
             Fix: check the network and run `resnet weights fetch`, point --url / RESNET_WEIGHTS_URL at a \
             mirror, or download resnet18-f37072fd.pth elsewhere and run `resnet weights convert \
             resnet18-f37072fd.pth {}`; or pass --weights FILE",
            cached.display()
        )
    })
}

/// Plain http only to loopback (test servers, local mirrors) unless explicitly allowed.
pub fn check_url_policy(url: &str, allow_http: bool) -> anyhow::Result<()> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("'{url}' is not a URL (expected https://...)"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = if let Some(v6) = host.strip_prefix('[') {
                v6.split(']').next().unwrap_or("")
            } else {
                host.split(':').next().unwrap_or("")
            };
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback || allow_http {
                Ok(())
            } else {
                bail!(
                    "refusing plain http for '{url}': weights must come over https (plain http is \
                     allowed to loopback hosts, or with --allow-http)"
                )
            }
        }
        other => bail!("unsupported URL scheme '{other}' in '{url}' (use https)"),
    }
}

/// Downloads, verifies and converts the weights into the cache; returns the cached file.
///
/// The download streams into a temporary file beside the cache entry while it is hashed; only a
/// file whose SHA-256 matches is parsed, and only valid weights are written (atomically) under
/// the cache name. Any failure removes the temporary file, so the cache never holds a file that
/// looks valid and is not.
pub fn fetch(opts: &FetchOptions) -> anyhow::Result<PathBuf> {
    if opts.offline {
        bail!("downloading is off (--offline or RESNET_OFFLINE=1)");
    }
    check_url_policy(&opts.url, opts.allow_http)?;
    let target = opts.cache_file()?;
    let dir = target.parent().expect("cache file has a directory");
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
    let part = dir.join(format!(".download-{}.pth.part", std::process::id()));
    let result = download_and_convert(opts, &part, &target);
    let _ = std::fs::remove_file(&part);
    result?;
    Ok(target)
}

fn download_and_convert(opts: &FetchOptions, part: &Path, target: &Path) -> anyhow::Result<()> {
    let (digest, size) = download(opts, part)?;
    if !digest.starts_with(&opts.sha256) {
        bail!(
            "{}: SHA-256 mismatch: the download ({size} bytes) hashes to {digest}, expected {}{}; \
             nothing was cached",
            opts.url,
            opts.sha256,
            if opts.sha256.len() < 64 { "..." } else { "" }
        );
    }
    let bytes = std::fs::read(part).with_context(|| format!("reading back {}", part.display()))?;
    let weights = Weights::from_bytes(&bytes, &opts.url)?;
    drop(bytes);
    let weights = weights.with_metadata([
        ("resnet18_rs.source_url", opts.url.as_str()),
        ("resnet18_rs.source_sha256", digest.as_str()),
    ]);
    weights.save_safetensors(target, StoreDtype::F32)?;
    log::info!("verified SHA-256 {digest}; cached as {}", target.display());
    Ok(())
}

/// Streams `opts.url` into `part`, returning its SHA-256 (hex) and size.
fn download(opts: &FetchOptions, part: &Path) -> anyhow::Result<(String, u64)> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(opts.timeout)
        .timeout_read(opts.timeout)
        .user_agent(concat!("resnet18-rs/", env!("CARGO_PKG_VERSION")))
        .build();
    let response = agent.get(&opts.url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => {
            anyhow!(
                "{}: the server answered {code} {}",
                opts.url,
                r.status_text()
            )
        }
        // The transport error names the URL itself.
        ureq::Error::Transport(t) => anyhow!("{t}"),
    })?;
    let total: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.parse().ok());
    if total.is_some_and(|t| t > MAX_DOWNLOAD_BYTES) {
        bail!(
            "{}: the server announces {} bytes, over the limit of {MAX_DOWNLOAD_BYTES}",
            opts.url,
            total.unwrap_or(0)
        );
    }
    let bar = progress_bar(total, !log::log_enabled!(log::Level::Info));
    let mut file =
        std::fs::File::create(part).with_context(|| format!("cannot write {}", part.display()))?;
    let mut reader = response.into_reader().take(MAX_DOWNLOAD_BYTES + 1);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    let started = Instant::now();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                bail!("{}: the download failed after {size} bytes: {e}", opts.url);
            }
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.display()))?;
        size += n as u64;
        bar.set_position(size);
    }
    bar.finish_and_clear();
    if size > MAX_DOWNLOAD_BYTES {
        bail!("{}: more than {MAX_DOWNLOAD_BYTES} bytes", opts.url);
    }
    if let Some(t) = total.filter(|&t| t != size) {
        bail!(
            "{}: the connection ended after {size} of {t} bytes",
            opts.url
        );
    }
    file.sync_all()
        .with_context(|| format!("cannot write {}", part.display()))?;
    let secs = started.elapsed().as_secs_f64();
    log::info!(
        "downloaded {size} bytes in {secs:.1} s ({:.1} MB/s)",
        size as f64 / 1e6 / secs.max(1e-9)
    );
    Ok((hex(&hasher.finalize()), size))
}

fn progress_bar(total: Option<u64>, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("valid template"),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_the_official_file() {
        let m = manifest();
        assert!(m.url.starts_with("https://") && m.url.ends_with("resnet18-f37072fd.pth"));
        assert!(m.sha256.starts_with(&m.sha256_prefix) && m.sha256.len() == 64);
        assert!(m.name.contains("IMAGENET1K_V1"));
    }

    #[test]
    fn url_policy() {
        assert!(check_url_policy("https://download.pytorch.org/x.pth", false).is_ok());
        for ok in [
            "http://127.0.0.1:8000/x.pth",
            "http://localhost/x",
            "http://[::1]:9/x",
            "http://user@127.0.0.2/x",
        ] {
            assert!(check_url_policy(ok, false).is_ok(), "{ok}");
        }
        let err = check_url_policy("http://mirror.example/x.pth", false).unwrap_err();
        assert!(err.to_string().contains("--allow-http"), "{err}");
        assert!(check_url_policy("http://mirror.example/x.pth", true).is_ok());
        assert!(check_url_policy("http://127.0.0.1.evil.example/x", false).is_err());
        assert!(check_url_policy("ftp://x/y", true).is_err());
        assert!(check_url_policy("download.pytorch.org/x", true).is_err());
    }
}
