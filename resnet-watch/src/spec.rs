//! What a source argument names: a folder, an HTTP URL, or something for ffmpeg.

use crate::error::WatchError;
use std::path::PathBuf;

/// The kind of a source, decided once from its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A folder (and its subfolders): every new or replaced image file.
    Directory(PathBuf),
    /// An `http://` or `https://` URL: MJPEG (`multipart/x-mixed-replace`) or one image per
    /// request (a `snapshot.jpg`, polled), told apart by the answer's content type.
    Http(String),
    /// Anything `ffmpeg -i` reads: `rtsp://...`, a video file, a V4L2 device, or any input
    /// written as `ffmpeg:INPUT`. `finite` inputs (regular files) end; the others are
    /// reconnected when ffmpeg exits.
    Ffmpeg { input: String, finite: bool },
}

/// One source: the name events carry and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// As given on the command line, or the `NAME` of `NAME=SOURCE`.
    pub name: String,
    pub kind: SourceKind,
}

/// URL schemes handed to ffmpeg as they are.
const FFMPEG_SCHEMES: [&str; 8] = ["rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "tcp", "rtp"];

impl SourceSpec {
    /// Parses `SOURCE` or `NAME=SOURCE` (NAME: letters, digits, `-`, `_`, `.`).
    pub fn parse(arg: &str) -> Result<SourceSpec, WatchError> {
        let (name, target) = match arg.split_once('=') {
            Some((n, t))
                if !n.is_empty()
                    && !t.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                (n.to_string(), t)
            }
            _ => (without_password(arg), arg),
        };
        let bad = |reason: String| WatchError::BadSource {
            name: arg.to_string(),
            reason,
        };
        let kind = if let Some(input) = target.strip_prefix("ffmpeg:") {
            if input.is_empty() {
                return Err(bad("ffmpeg: needs an input after it".into()));
            }
            SourceKind::Ffmpeg {
                input: input.to_string(),
                finite: std::path::Path::new(input).is_file(),
            }
        } else if let Some((scheme, _)) = target.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            if scheme == "http" || scheme == "https" {
                SourceKind::Http(target.to_string())
            } else if FFMPEG_SCHEMES.contains(&scheme.as_str()) {
                SourceKind::Ffmpeg {
                    input: target.to_string(),
                    finite: false,
                }
            } else {
                return Err(bad(format!(
                    "unknown URL scheme '{scheme}' (http, https, rtsp, ...; write ffmpeg:URL to hand any other to ffmpeg)"
                )));
            }
        } else {
            let path = PathBuf::from(target);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => SourceKind::Directory(path),
                Ok(m) => SourceKind::Ffmpeg {
                    input: target.to_string(),
                    finite: m.is_file(),
                },
                Err(e) => return Err(bad(format!("{e}"))),
            }
        };
        Ok(SourceSpec { name, kind })
    }

    /// Whether frames that arrive while the model is busy are dropped (a camera: they are
    /// superseded) rather than waited for (a folder or a video file: nothing is lost by waiting).
    pub fn is_live(&self) -> bool {
        match &self.kind {
            SourceKind::Directory(_) => false,
            SourceKind::Http(_) => true,
            SourceKind::Ffmpeg { finite, .. } => !finite,
        }
    }
}

/// A URL with the password of its `user:password@` part replaced by `***`: a source's name
/// goes into events, logs, the server's history and `/metrics`, its password should not.
fn without_password(arg: &str) -> String {
    let Some((scheme, rest)) = arg.split_once("://") else {
        return arg.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => arg.to_string(),
        },
        None => arg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_name_hides_the_password() {
        let name = |a: &str| SourceSpec::parse(a).unwrap().name;
        assert_eq!(
            name("rtsp://viewer:s3cret@cam.local:554/stream1?x=a@b"),
            "rtsp://viewer:***@cam.local:554/stream1?x=a@b"
        );
        assert_eq!(
            name("http://cam.local/video.mjpg"),
            "http://cam.local/video.mjpg"
        );
        assert_eq!(name("rtsp://viewer@cam/live"), "rtsp://viewer@cam/live");
        assert_eq!(name("front=rtsp://u:p@cam/live"), "front");
    }

    #[test]
    fn kinds_from_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clip.mp4");
        std::fs::write(&file, b"x").unwrap();
        let d = dir.path().display().to_string();
        let f = file.display().to_string();
        let kind = |a: &str| SourceSpec::parse(a).map(|s| (s.name, s.kind));
        assert_eq!(
            kind(&d).unwrap(),
            (d.clone(), SourceKind::Directory(dir.path().into()))
        );
        assert_eq!(
            kind(&format!("front={f}")).unwrap(),
            (
                "front".into(),
                SourceKind::Ffmpeg {
                    input: f.clone(),
                    finite: true
                }
            )
        );
        assert_eq!(
            kind("http://cam/video?x=1").unwrap().1,
            SourceKind::Http("http://cam/video?x=1".into())
        );
        assert_eq!(
            kind("RTSP://cam/live").unwrap().1,
            SourceKind::Ffmpeg {
                input: "RTSP://cam/live".into(),
                finite: false
            }
        );
        assert_eq!(
            kind("ffmpeg:https://cam/live.m3u8").unwrap().1,
            SourceKind::Ffmpeg {
                input: "https://cam/live.m3u8".into(),
                finite: false
            }
        );
        let err = kind("gopher://x").unwrap_err().to_string();
        assert!(err.contains("unknown URL scheme 'gopher'"), "{err}");
        let err = kind(&format!("{d}/missing")).unwrap_err().to_string();
        assert!(
            err.contains("missing") && err.contains("No such file"),
            "{err}"
        );
    }
}
