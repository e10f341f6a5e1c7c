//! The source threads, one module per kind. Each reads its frames and hands them to its
//! [`Feed`]; none returns before its source ends or the watcher stops.

mod dir;
pub(crate) mod ffmpeg;
mod http;

use crate::engine::Feed;
use crate::spec::SourceKind;

pub(crate) fn run(feed: Feed, kind: SourceKind) {
    match kind {
        SourceKind::Directory(path) => dir::run(feed, path),
        SourceKind::Http(url) => http::run(feed, &url),
        SourceKind::Ffmpeg { input, finite } => ffmpeg::run(feed, &input, finite),
    }
}
