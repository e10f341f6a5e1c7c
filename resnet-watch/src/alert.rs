//! What happens to a reported event besides printing it: the frame saved as JPEG
//! (`--save-dir`) and the event POSTed (`--webhook`).

use crate::error::WatchError;
use crate::event::Event;
use crate::webhook::Webhook;
use image::codecs::jpeg::JpegEncoder;
use std::path::{Path, PathBuf};

/// JPEG quality of saved frames (visually lossless; the event holds the predictions).
const SAVE_QUALITY: u8 = 90;

/// `--save-dir` and `--webhook`, applied to the classified events that are reported.
pub struct Actions {
    save_dir: Option<PathBuf>,
    webhook: Option<Webhook>,
}

impl Actions {
    /// Creates the folder if needed (a file in its place is an error).
    pub fn new(save_dir: Option<&Path>, webhook: Option<Webhook>) -> Result<Actions, WatchError> {
        if let Some(dir) = save_dir {
            std::fs::create_dir_all(dir).map_err(|source| WatchError::SaveDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        Ok(Actions {
            save_dir: save_dir.map(Path::to_path_buf),
            webhook,
        })
    }

    /// Whether classified events must keep their frame's pixels.
    pub fn needs_images(&self) -> bool {
        self.save_dir.is_some()
    }

    /// Saves the frame (setting `event.saved`) and queues the POST. Error events are not
    /// saved or posted. A save that fails is logged and the watcher goes on.
    pub fn apply(&mut self, event: &mut Event) {
        if event.error.is_some() {
            return;
        }
        if let (Some(dir), Some(img)) = (&self.save_dir, &event.image) {
            let path = dir.join(file_name(event));
            let saved = std::fs::File::create(&path)
                .map(std::io::BufWriter::new)
                .map_err(|e| e.to_string())
                .and_then(|mut f| {
                    JpegEncoder::new_with_quality(&mut f, SAVE_QUALITY)
                        .encode_image(img.as_ref())
                        .map_err(|e| e.to_string())
                });
            match saved {
                Ok(()) => event.saved = Some(path.display().to_string()),
                Err(e) => log::warn!("--save-dir: cannot write {}: {e}", path.display()),
            }
        }
        if let Some(w) = &mut self.webhook {
            match serde_json::to_string(event) {
                Ok(json) => {
                    w.post(json);
                }
                Err(e) => log::warn!("webhook: cannot serialise an event: {e}"),
            }
        }
    }

    /// Gives queued webhook posts up to `grace` to be delivered.
    pub fn finish(self, grace: std::time::Duration) {
        if let Some(w) = self.webhook {
            w.finish(grace);
        }
    }
}

/// `2026-12-02T01-02-03.456Z_cam_42_tabby.jpg`: sortable by time, unique per source and frame,
/// safe on every file system.
fn file_name(event: &Event) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(60)
            .collect()
    };
    let label = event
        .predictions
        .as_ref()
        .and_then(|p| p.first())
        .map(|p| safe(&p.label))
        .unwrap_or_default();
    format!(
        "{}_{}_{}_{label}.jpg",
        event.time.replace(':', "-"),
        safe(&event.source),
        event.frame
    )
}
