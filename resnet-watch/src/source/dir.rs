//! A folder source: every new or replaced image file in it and its subfolders, each taken once
//! it is complete.
//!
//! File events (inotify, through `notify`) say when a writer closes a file: a file seen being
//! written is taken at its close, and a file moved in is taken at once. Where events cannot say
//! that (polling, for network shares and `--poll`; files found in a folder that appeared), a file
//! is taken once its size and modification time have stayed the same for the settle time. A
//! version already classified (same size and time) is not classified again.

use crate::engine::Feed;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// Files taken, as `classify` takes them from a folder: images and preprocessed `.npy` tensors.
fn is_input_file(path: &Path) -> bool {
    resnet_core::decode::has_image_extension(path) || resnet_core::input::is_npy(path)
}

/// What identifies a version of a file.
type Stamp = (u64, Option<SystemTime>);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    m.is_file().then(|| (m.len(), m.modified().ok()))
}

#[derive(Debug)]
struct Candidate {
    stamp: Option<Stamp>,
    changed_at: Instant,
    /// A writer was seen writing it: wait for its close event rather than for the settle time.
    needs_close: bool,
    /// Closed by its writer (or moved in) with this stamp: take it if it is still the same.
    closed: bool,
}

struct DirWatch {
    root: PathBuf,
    settle: Duration,
    /// The events say when a writer closes a file (inotify; polling does not).
    close_events: bool,
    /// Classified versions (and, at start, the versions already there).
    known: BTreeMap<PathBuf, Stamp>,
    pending: BTreeMap<PathBuf, Candidate>,
}

impl DirWatch {
    fn note(&mut self, path: &Path, needs_close: bool, closed: bool) {
        if !is_input_file(path) {
            return;
        }
        let now = Instant::now();
        let s = stamp(path);
        let c = self.pending.entry(path.to_path_buf()).or_insert(Candidate {
            stamp: s,
            changed_at: now,
            needs_close: false,
            closed: false,
        });
        if c.stamp != s {
            c.stamp = s;
            c.changed_at = now;
        }
        c.needs_close |= needs_close;
        if closed {
            c.closed = true;
        } else if needs_close {
            c.closed = false;
        }
    }

    /// Every image file under `dir`, as candidates that settle by time.
    fn scan(&mut self, dir: &Path) {
        for path in walk(dir) {
            if stamp(&path) != self.known.get(&path).copied() {
                self.note(&path, false, false);
            }
        }
    }

    /// Candidates that are complete now, in path order (removed from the pending set).
    fn ready(&mut self) -> Vec<PathBuf> {
        let now = Instant::now();
        let mut out = Vec::new();
        self.pending.retain(|path, c| {
            let s = stamp(path);
            if s.is_none() {
                return false; // removed, or not a file
            }
            if s != c.stamp {
                c.stamp = s;
                c.changed_at = now;
                c.closed = false;
                return true;
            }
            let done = c.closed || (!c.needs_close && now - c.changed_at >= self.settle);
            if done {
                out.push(path.clone());
            }
            !done
        });
        out.retain(|p| {
            let s = stamp(p).expect("checked above");
            self.known.insert(p.clone(), s) != Some(s)
        });
        out
    }
}

/// Image files under `dir`, recursively, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) if is_input_file(&p) => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The interval of the polling fallback when no `--poll` interval was given.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

pub(crate) fn run(mut feed: Feed, root: PathBuf) {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let poll = |interval: Duration| {
        notify::PollWatcher::new(
            tx.clone(),
            notify::Config::default().with_poll_interval(interval),
        )
        .and_then(|mut w| w.watch(&root, RecursiveMode::Recursive).map(|()| w))
        .map(|w| Box::new(w) as Box<dyn notify::Watcher + Send>)
    };
    let mut close_events = false;
    let events = match feed.opts.poll {
        Some(interval) => poll(interval),
        None => notify::RecommendedWatcher::new(tx.clone(), notify::Config::default())
            .and_then(|mut w| w.watch(&root, RecursiveMode::Recursive).map(|()| w))
            .map(|w| {
                close_events = notify::RecommendedWatcher::kind() == notify::WatcherKind::Inotify;
                Box::new(w) as Box<dyn notify::Watcher + Send>
            })
            .or_else(|e| {
                log::warn!(
                    "{}: no file events ({e}); polling every {} s instead",
                    feed.name,
                    FALLBACK_POLL.as_secs()
                );
                poll(FALLBACK_POLL)
            }),
    };
    // Kept alive for the loop below: dropping it ends the events.
    let _watcher = match events {
        Ok(w) => w,
        Err(e) => {
            feed.error(0, Some(root), format!("cannot watch this folder: {e}"));
            return;
        }
    };
    let mut dir = DirWatch {
        root: root.clone(),
        settle: feed.opts.settle,
        close_events,
        known: BTreeMap::new(),
        pending: BTreeMap::new(),
    };
    if feed.opts.existing {
        dir.scan(&root);
    } else {
        for p in walk(&root) {
            if let Some(s) = stamp(&p) {
                dir.known.insert(p, s);
            }
        }
    }
    let how = match (close_events, feed.opts.poll) {
        (true, _) => "file events".to_string(),
        (false, Some(p)) => format!("polling every {} ms", p.as_millis()),
        (false, None) => "polling or file events without closes".to_string(),
    };
    log::info!("{}: watching for new files ({how})", feed.name);
    let tick = Duration::from_millis(100);
    while !feed.stopped() {
        match rx.recv_timeout(tick) {
            Ok(Ok(event)) => dir.on_event(&event),
            Ok(Err(e)) => feed.error(0, Some(dir.root.clone()), format!("file events: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(event) = rx.try_recv() {
            match event {
                Ok(event) => dir.on_event(&event),
                Err(e) => feed.error(0, Some(dir.root.clone()), format!("file events: {e}")),
            }
        }
        for path in dir.ready() {
            if feed.stopped() {
                return;
            }
            let (frame, _) = feed.arrive(true);
            feed.offer_file(frame, path);
        }
    }
}

impl DirWatch {
    fn on_event(&mut self, event: &notify::Event) {
        log::trace!("file event {event:?}");
        match event.kind {
            EventKind::Create(CreateKind::Folder) => {
                for p in &event.paths {
                    self.scan(p);
                }
            }
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => {
                // Written by someone: with close events, wait for the close.
                for p in &event.paths {
                    if p.is_dir() {
                        self.scan(p);
                    } else {
                        self.note(p, self.close_events, false);
                    }
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in &event.paths {
                    self.note(p, false, true);
                }
            }
            EventKind::Modify(ModifyKind::Name(mode)) => {
                // Moved in: complete already. (From: its old name is gone.)
                let to: &[PathBuf] = match mode {
                    RenameMode::Both => &event.paths[event.paths.len().min(1)..],
                    RenameMode::From => &[],
                    _ => &event.paths,
                };
                for p in to {
                    if p.is_dir() {
                        self.scan(p);
                    } else {
                        self.note(p, false, true);
                    }
                }
            }
            EventKind::Remove(_) => {
                for p in &event.paths {
                    self.pending.remove(p);
                    self.known.retain(|k, _| !k.starts_with(p));
                }
            }
            EventKind::Modify(_) | EventKind::Any | EventKind::Other => {
                if event.need_rescan() {
                    let root = self.root.clone();
                    self.scan(&root);
                }
                for p in &event.paths {
                    if p.is_file() {
                        self.note(p, false, false);
                    }
                }
            }
            EventKind::Access(_) => {}
        }
    }
}
