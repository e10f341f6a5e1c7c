//! Watchers: classify what cameras produce, as it arrives.
//!
//! A [`Watcher`] runs one thread per source ([`SourceSpec`]: a folder, an HTTP URL serving
//! MJPEG or single snapshots, anything `ffmpeg` reads) and one inference loop on the caller's
//! thread. Each source thread samples its frames ([`gate::FpsGate`] at `--fps`, then
//! [`gate::MotionGate`] against the last classified frame), decodes and preprocesses them
//! exactly as `resnet classify` does, and hands at most one frame at a time to the model: a
//! live source whose previous frame is still waiting drops the new one (counted), a folder or a
//! video file waits instead (its frames do not go away). The loop batches whatever frames are
//! waiting across sources and turns each into an [`Event`]; what to print, post or save is the
//! caller's choice ([`EventFilter`], [`alert::Actions`]).
//!
//! It lives in its own crate so that both the `resnet` command and the server can run it: the
//! server depends on `resnet-core` only, and the CLI on both.
#![forbid(unsafe_code)]

pub mod alert;
mod backoff;
mod engine;
mod error;
pub mod event;
pub mod gate;
pub mod mjpeg;
pub mod ppm;
mod source;
mod spec;
pub mod webhook;

pub use engine::{SourceStats, StatsSnapshot, Stopper, Summary, WatchOptions, Watcher};
pub use error::WatchError;
pub use event::{AlertRule, Event, EventFilter};
pub use spec::{SourceKind, SourceSpec};
