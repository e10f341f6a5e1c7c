//! The recognition log: the last N classifications in memory, optionally appended to a
//! JSON-lines file (one object per line, flushed per record) and reloaded from it at start.

use crate::error::ServerError;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use utoipa::ToSchema;

/// One recognition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    /// When it was answered, UTC, RFC 3339 (`2026-11-27T23:59:01.123Z`).
    pub time: String,
    /// Which route answered it (`watch` for a watcher's frame).
    pub route: String,
    /// Where a recognition that answered no request came from: `watch:NAME` for the frames of
    /// `resnet serve --watch NAME=...`; absent for HTTP requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Image width in pixels (after EXIF rotation).
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Top-1 class index.
    pub index: usize,
    /// Top-1 class name.
    pub label: String,
    /// Top-1 probability, 0..1.
    pub probability: f32,
    /// Request latency in milliseconds.
    pub latency_ms: f64,
    /// A small JPEG of the image as a `data:` URL (left out when empty: MQTT messages, a
    /// history kept without thumbnails).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub thumbnail: String,
    /// The request's `X-Request-Id` (given by the client or made up by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The in-memory log and its file.
pub struct History {
    capacity: usize,
    entries: Mutex<VecDeque<Entry>>,
    file: Option<(PathBuf, Mutex<Appender>)>,
    /// Non-empty lines of the file that were not records when it was reloaded.
    skipped: u64,
}

/// The history file's handle, reopened after a failure: a disk that was full or read-only may
/// come back, and the log then resumes.
struct Appender {
    /// `None` after a failed open or write.
    file: Option<File>,
    /// A write failed, possibly part-way through a line: the next record starts with a newline
    /// so that it is not glued to the torn one (an empty line is skipped on reload).
    torn: bool,
    /// The last append failed (failures are logged once, not once per request).
    failing: bool,
}

impl History {
    /// A log of `capacity` entries (0: off), reloading and appending to `file` when given.
    /// Unparsable lines in the file (e.g. one cut short by a crash, even inside a multi-byte
    /// character, so not valid UTF-8) are skipped and counted ([`Self::skipped_lines`]).
    ///
    /// A file that cannot be opened for appending (read-only or full disk) is not fatal: the
    /// server starts, keeps the log in memory and tries the file again at each record. A folder
    /// that does not exist, or a folder given as the file, is a configuration mistake, reported
    /// as an error.
    pub fn open(capacity: usize, file: Option<&Path>) -> Result<History, ServerError> {
        let mut entries = VecDeque::with_capacity(capacity.min(4096));
        let mut skipped = 0;
        let file = match file {
            None => None,
            Some(path) => {
                let err = |source| ServerError::History {
                    path: path.display().to_string(),
                    source,
                };
                if path.is_dir() {
                    return Err(err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "this is a folder; give a file name",
                    )));
                }
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    if !dir.is_dir() {
                        return Err(err(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("the folder {} does not exist", dir.display()),
                        )));
                    }
                }
                // Only a regular file is reloaded (a device such as /dev/full is only written).
                if capacity > 0 && path.is_file() {
                    // Lines are split as bytes: a line torn inside a UTF-8 sequence is one bad
                    // record, not an unreadable file.
                    let reader = BufReader::new(File::open(path).map_err(err)?);
                    for line in reader.split(b'\n') {
                        let line = line.map_err(err)?;
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        match serde_json::from_slice::<Entry>(&line) {
                            Ok(e) => {
                                if entries.len() == capacity {
                                    entries.pop_front();
                                }
                                entries.push_back(e);
                            }
                            Err(_) => skipped += 1,
                        }
                    }
                    if skipped > 0 {
                        eprintln!(
                            "resnet serve: skipped {skipped} unreadable line(s) of the history file {} (e.g. one torn by a crash)",
                            path.display()
                        );
                    }
                }
                // A line torn by a crash is terminated before the next record.
                let torn =
                    path.is_file() && last_byte(path).map_err(err)?.is_some_and(|b| b != b'\n');
                let mut appender = Appender {
                    file: None,
                    torn,
                    failing: false,
                };
                appender.reopen(path);
                Some((path.to_path_buf(), Mutex::new(appender)))
            }
        };
        Ok(History {
            capacity,
            entries: Mutex::new(entries),
            file,
            skipped,
        })
    }

    /// Lines of the history file skipped at reload because they were not whole records.
    pub fn skipped_lines(&self) -> u64 {
        self.skipped
    }

    /// Whether anything is recorded.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds a recognition (and appends it to the file). Blocking: call off the async threads.
    /// Returns false when the file append failed (full or read-only disk): the entry is still
    /// kept in memory, the first failure of a run is logged, and the caller counts it.
    pub fn record(&self, entry: Entry) -> bool {
        match self.remember(entry) {
            Some(line) => self.append_line(&line),
            None => true,
        }
    }

    /// Adds a recognition to the list in memory (cheap: a lock and a push, so callable on the
    /// async threads before the answer goes out, and a client that asks for the history right
    /// after its answer finds its recognition there), and returns the line to append to the
    /// file with [`History::append_line`], if the history has a file.
    pub fn remember(&self, entry: Entry) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let line = self.file.as_ref().map(|_| {
            let mut line = serde_json::to_string(&entry).unwrap_or_default();
            line.push('\n');
            line
        });
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
        line
    }

    /// Appends a line of [`History::remember`] to the file. Blocking: call off the async
    /// threads. False when the append failed (see [`History::record`]).
    pub fn append_line(&self, line: &str) -> bool {
        match &self.file {
            Some((path, appender)) => {
                let mut appender = appender.lock().unwrap_or_else(|p| p.into_inner());
                appender.append(path, line)
            }
            None => true,
        }
    }

    /// The entries, newest first.
    pub fn newest_first(&self) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().rev().cloned().collect()
    }
}

impl Appender {
    fn reopen(&mut self, path: &Path) -> bool {
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => {
                self.file = Some(f);
                true
            }
            Err(e) => {
                self.failed(path, "open", &e);
                false
            }
        }
    }

    /// Appends `line`; false on failure (logged on the first of a run).
    fn append(&mut self, path: &Path, line: &str) -> bool {
        if self.file.is_none() && !self.reopen(path) {
            return false;
        }
        let Some(f) = self.file.as_mut() else {
            return false;
        };
        let result = (|| {
            if self.torn {
                f.write_all(b"\n")?;
                self.torn = false;
            }
            f.write_all(line.as_bytes())?;
            f.flush()
        })();
        match result {
            Ok(()) => {
                if self.failing {
                    eprintln!("resnet serve: appending to {} again", path.display());
                    self.failing = false;
                }
                true
            }
            Err(e) => {
                self.torn = true;
                self.file = None;
                self.failed(path, "append to", &e);
                false
            }
        }
    }

    fn failed(&mut self, path: &Path, what: &str, e: &std::io::Error) {
        if !self.failing {
            eprintln!(
                "resnet serve: cannot {what} the history file {}: {e} (keeping the history in memory; failures are counted in /metrics)",
                path.display()
            );
        }
        self.failing = true;
    }
}

fn last_byte(path: &Path) -> std::io::Result<Option<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(None);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8];
    f.read_exact(&mut b)?;
    Ok(Some(b[0]))
}

pub use resnet_core::time::{now_rfc3339, rfc3339};

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        Entry {
            time: rfc3339(i as i64, 0),
            route: "classify".into(),
            source: None,
            width: 10,
            height: 20,
            index: i,
            label: format!("class {i}"),
            probability: 0.5,
            latency_ms: 1.0,
            thumbnail: String::new(),
            request_id: None,
        }
    }

    #[test]
    fn keeps_the_last_n_and_survives_a_restart_with_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let h = History::open(3, Some(&path)).unwrap();
        for i in 0..5 {
            h.record(entry(i));
        }
        let idx: Vec<usize> = h.newest_first().iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![4, 3, 2]);
        drop(h);
        // A crash in the middle of a write leaves a partial line; it is skipped.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\": \"2026").unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 6);
        let h = History::open(3, Some(&path)).unwrap();
        let idx: Vec<usize> = h.newest_first().iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![4, 3, 2]);
        h.record(entry(5));
        drop(h);
        let h = History::open(3, Some(&path)).unwrap();
        let idx: Vec<usize> = h.newest_first().iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![5, 4, 3]);
        assert!(!History::open(0, None).unwrap().enabled());
    }

    /// A crash can cut the last line inside a multi-byte character (`é` is two bytes): the line
    /// is not valid UTF-8. It is skipped and counted like any torn line; the server starts.
    #[test]
    fn a_line_torn_inside_a_utf8_character_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let h = History::open(5, Some(&path)).unwrap();
        for i in 0..2 {
            h.record(Entry {
                label: "café".into(),
                ..entry(i)
            });
        }
        drop(h);
        let mut bytes = std::fs::read(&path).unwrap();
        let e_acute = bytes.windows(2).rposition(|w| w == [0xC3, 0xA9]).unwrap();
        bytes.truncate(e_acute + 1);
        assert!(std::str::from_utf8(&bytes).is_err(), "the cut is inside é");
        std::fs::write(&path, &bytes).unwrap();
        let h = History::open(5, Some(&path)).unwrap();
        let idx: Vec<usize> = h.newest_first().iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![0]);
        assert_eq!(h.newest_first()[0].label, "café");
        assert_eq!(h.skipped_lines(), 1);
        // The next record starts on a line of its own.
        h.record(entry(7));
        drop(h);
        let h = History::open(5, Some(&path)).unwrap();
        let idx: Vec<usize> = h.newest_first().iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![7, 0]);
        assert_eq!(h.skipped_lines(), 1);
    }

    #[test]
    fn a_missing_folder_or_a_folder_as_the_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/h.jsonl");
        let e = History::open(3, Some(&missing)).err().unwrap().to_string();
        assert!(
            e.contains("no/such/h.jsonl") && e.contains("does not exist"),
            "{e}"
        );
        let e = History::open(3, Some(dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("folder"), "{e}");
    }
}
