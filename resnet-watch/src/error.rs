//! What can stop a watcher from starting. Once running, problems become error events instead.

/// A watcher that cannot start: each names the source or option and the problem.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("source '{name}': {reason}")]
    BadSource { name: String, reason: String },
    #[error("source '{name}' needs ffmpeg, which is not installed or not on PATH (install it: apt-get install ffmpeg)")]
    FfmpegMissing { name: String },
    #[error(
        "--alert '{0}': no class has this index or name (give 0-999 or a label, e.g. 'tabby')"
    )]
    UnknownClass(String),
    #[error("{option} must be {what}, got {value}")]
    BadOption {
        option: &'static str,
        what: &'static str,
        value: String,
    },
    #[error("--save-dir {path}: {source}")]
    SaveDir {
        path: String,
        source: std::io::Error,
    },
    #[error("--webhook '{url}': {reason}")]
    BadWebhook { url: String, reason: String },
}
