//! The watcher: source threads that sample and prepare frames, a one-frame hand-off per source,
//! and the inference loop that turns frames into events.

use crate::event::{AlertRule, Event, Timings};
use crate::gate::{FpsGate, MotionGate, PacedGate};
use crate::spec::{SourceKind, SourceSpec};
use crate::WatchError;
use image::RgbImage;
use ndarray::{Array3, Array4, Axis};
use resnet_core::backend::{Backend, NoObserver};
use resnet_core::decode::{decode_image_bytes, decode_image_file, DecodeOptions};
use resnet_core::labels::Labels;
use resnet_core::postprocess::{softmax, top_k};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a watcher samples, decodes and reports.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Decoding limits and EXIF handling, as for `classify`.
    pub decode: DecodeOptions,
    /// Most frames classified per second per live source (0: all).
    pub fps: f64,
    /// Minimum difference from the last classified frame (`--motion`), 0..1.
    pub motion: Option<f64>,
    /// Classes per event.
    pub top_k: usize,
    /// Put the raw logits into events.
    pub logits: bool,
    /// Keep each classified frame's pixels in its event (for `--save-dir` or a live view).
    pub keep_images: bool,
    /// `--alert`: marks events whose alert classes reached the threshold.
    pub alert: Option<AlertRule>,
    /// Largest MJPEG part or snapshot body accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Folders: how long a file's size and time must stay the same before it is taken, when
    /// file events cannot tell that the writer closed it (polling).
    pub settle: Duration,
    /// Folders: poll at this interval instead of using file events (network shares).
    pub poll: Option<Duration>,
    /// Folders: also classify the files already there at start.
    pub existing: bool,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
    /// HTTP connect and read timeout (a stream silent for this long is reconnected).
    pub http_timeout: Duration,
    /// Most frames run through the network together (from different sources).
    pub max_batch: usize,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            decode: DecodeOptions::default(),
            fps: 2.0,
            motion: None,
            top_k: 5,
            logits: false,
            keep_images: false,
            alert: None,
            max_frame_bytes: 16 << 20,
            settle: Duration::from_secs(1),
            poll: None,
            existing: false,
            reconnect_max: Duration::from_secs(30),
            http_timeout: Duration::from_secs(10),
            max_batch: 8,
        }
    }
}

/// Per-source counters (atomics: the source thread, the loop and a metrics reader share them).
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Frames (or files) that arrived.
    pub received: AtomicU64,
    /// Not sampled: more than `--fps` per second.
    pub skipped: AtomicU64,
    /// Not different enough from the last classified frame (`--motion`).
    pub gated: AtomicU64,
    /// Arrived while this source's previous frame still waited for the model.
    pub dropped: AtomicU64,
    /// Classified.
    pub classified: AtomicU64,
    /// Error events (bad frames, failed reads).
    pub errors: AtomicU64,
    /// Successful reconnections after an outage.
    pub reconnects: AtomicU64,
}

/// A copy of [`SourceStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub received: u64,
    pub skipped: u64,
    pub gated: u64,
    pub dropped: u64,
    pub classified: u64,
    pub errors: u64,
    pub reconnects: u64,
}

impl SourceStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            received: g(&self.received),
            skipped: g(&self.skipped),
            gated: g(&self.gated),
            dropped: g(&self.dropped),
            classified: g(&self.classified),
            errors: g(&self.errors),
            reconnects: g(&self.reconnects),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Frames classified.
    pub classified: u64,
    /// Error events.
    pub errors: u64,
    /// Stopped by [`Watcher::stop`] (rather than every source having ended).
    pub stopped: bool,
}

/// A frame ready for the model.
struct Pending {
    frame: u64,
    path: Option<PathBuf>,
    input: Array3<f32>,
    size: Option<(u32, u32)>,
    image: Option<RgbImage>,
    motion: Option<f64>,
    decode_ms: f64,
    ready_at: Instant,
}

/// Error events waiting to be reported, at most this many (older ones are counted, not kept).
const MAX_NOTES: usize = 1000;

struct State {
    slots: Vec<Option<Pending>>,
    notes: VecDeque<Event>,
    running: usize,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stop: AtomicBool,
    pub(crate) stats: Vec<Arc<SourceStats>>,
    /// ffmpeg processes, killed at stop (their reader threads may be blocked in a read).
    children: Mutex<Vec<Arc<Mutex<Option<Child>>>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs sources and classifies their frames; see the crate documentation.
pub struct Watcher {
    specs: Vec<SourceSpec>,
    opts: Arc<WatchOptions>,
    shared: Arc<Shared>,
}

impl Watcher {
    /// Checks the options and that what the sources need is there (ffmpeg); starts nothing.
    pub fn new(specs: Vec<SourceSpec>, opts: WatchOptions) -> Result<Watcher, WatchError> {
        if !(opts.fps >= 0.0 && opts.fps.is_finite()) {
            return Err(WatchError::BadOption {
                option: "--fps",
                what: "0 (every frame) or a positive number",
                value: opts.fps.to_string(),
            });
        }
        if let Some(m) = opts.motion {
            if !(0.0..1.0).contains(&m) {
                return Err(WatchError::BadOption {
                    option: "--motion",
                    what: "a difference from 0 to 1 (e.g. 0.02)",
                    value: m.to_string(),
                });
            }
        }
        if let Some(s) = specs
            .iter()
            .find(|s| matches!(s.kind, SourceKind::Ffmpeg { .. }))
        {
            crate::source::ffmpeg::check_installed(&s.name)?;
        }
        let stats = specs.iter().map(|_| Arc::default()).collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                slots: specs.iter().map(|_| None).collect(),
                notes: VecDeque::new(),
                running: 0,
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            stats,
            children: Mutex::new(Vec::new()),
        });
        Ok(Watcher {
            specs,
            opts: Arc::new(opts),
            shared,
        })
    }

    /// The sources' names and counters, in argument order.
    pub fn stats(&self) -> Vec<(String, Arc<SourceStats>)> {
        self.specs
            .iter()
            .map(|s| s.name.clone())
            .zip(self.shared.stats.iter().cloned())
            .collect()
    }

    /// A handle that stops [`Watcher::run`] from another thread (or a signal handler's thread).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Starts the sources and classifies until every source has ended (files and folders given
    /// as finite do end; cameras do not) or [`Stopper::stop`] is called. `emit` gets every
    /// event in order; its error (a closed pipe) stops the run and is returned.
    pub fn run(
        &self,
        backend: &dyn Backend,
        labels: &Labels,
        mut emit: impl FnMut(Event) -> std::io::Result<()>,
    ) -> std::io::Result<Summary> {
        self.shared.lock().running = self.specs.len();
        for (index, spec) in self.specs.iter().enumerate() {
            let feed = Feed {
                shared: self.shared.clone(),
                index,
                name: spec.name.clone(),
                live: spec.is_live(),
                fps: FpsGate::new(self.opts.fps),
                paced: PacedGate::new(self.opts.fps),
                motion: MotionGate::new(self.opts.motion),
                opts: self.opts.clone(),
                frames: 0,
            };
            let kind = spec.kind.clone();
            std::thread::Builder::new()
                .name(format!("watch-{index}"))
                .spawn(move || {
                    let _done = Finished(feed.shared.clone());
                    crate::source::run(feed, kind);
                })
                .map_err(|e| std::io::Error::other(format!("cannot start a source thread: {e}")))?;
        }
        let result = self.classify_loop(backend, labels, &mut emit);
        self.stopper().stop();
        result
    }

    fn classify_loop(
        &self,
        backend: &dyn Backend,
        labels: &Labels,
        emit: &mut impl FnMut(Event) -> std::io::Result<()>,
    ) -> std::io::Result<Summary> {
        let n = self.specs.len();
        let mut last_top1: Vec<Option<usize>> = vec![None; n];
        let mut summary = Summary {
            classified: 0,
            errors: 0,
            stopped: false,
        };
        let mut next = 0usize;
        loop {
            let (notes, batch) = {
                let mut st = self.shared.lock();
                loop {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        summary.stopped = true;
                        return Ok(summary);
                    }
                    if !st.notes.is_empty() || st.slots.iter().any(Option::is_some) {
                        break;
                    }
                    if st.running == 0 {
                        return Ok(summary);
                    }
                    st = self
                        .shared
                        .wake
                        .wait_timeout(st, Duration::from_millis(200))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                let notes: Vec<Event> = st.notes.drain(..).collect();
                let mut batch = Vec::new();
                for k in 0..n {
                    let i = (next + k) % n;
                    if batch.len() < self.opts.max_batch.max(1) {
                        if let Some(p) = st.slots[i].take() {
                            batch.push((i, p));
                        }
                    }
                }
                next = (next + 1) % n.max(1);
                (notes, batch)
            };
            self.shared.wake.notify_all(); // sources waiting for their slot
            for e in notes {
                summary.errors += 1;
                emit(e)?;
            }
            if batch.is_empty() {
                continue;
            }
            let started = Instant::now();
            let views: Vec<_> = batch
                .iter()
                .map(|(_, p)| p.input.view().insert_axis(Axis(0)))
                .collect();
            let input: Array4<f32> =
                ndarray::concatenate(Axis(0), &views).expect("inputs are all 3x224x224");
            let result = backend.forward(input.view(), &mut NoObserver);
            let infer_ms = started.elapsed().as_secs_f64() * 1e3;
            let size = batch.len();
            for (row, (i, p)) in batch.into_iter().enumerate() {
                let name = &self.specs[i].name;
                let path = p.path.as_ref().map(|p| p.display().to_string());
                let logits = match &result {
                    Ok(l) => l.row(row).to_vec(),
                    Err(e) => {
                        bump(&self.shared.stats[i].errors);
                        summary.errors += 1;
                        emit(Event::error(name, p.frame, path, format!("model: {e}")))?;
                        continue;
                    }
                };
                let preds = top_k(&logits, self.opts.top_k, labels);
                let top1 = preds.first().map(|p| p.index);
                let mut event = Event::new(name, p.frame);
                event.changed = Some(last_top1[i] != top1);
                last_top1[i] = top1;
                event.alert = self
                    .opts
                    .alert
                    .as_ref()
                    .map(|rule| rule.hits(&softmax(&logits), labels));
                event.path = path;
                event.width = p.size.map(|s| s.0);
                event.height = p.size.map(|s| s.1);
                event.predictions = Some(preds);
                event.motion = p.motion;
                event.timings = Some(Timings {
                    decode_ms: p.decode_ms,
                    wait_ms: started.duration_since(p.ready_at).as_secs_f64() * 1e3,
                    infer_ms,
                    batch: size,
                });
                event.logits = self.opts.logits.then_some(logits);
                event.image = p.image.map(Arc::new);
                bump(&self.shared.stats[i].classified);
                summary.classified += 1;
                emit(event)?;
            }
        }
    }
}

/// Stops a running [`Watcher`]: the frame being classified finishes, nothing new starts, and
/// ffmpeg processes are killed.
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.wake.notify_all();
        let children = self.0.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter() {
            if let Some(c) = child.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                let _ = c.kill();
            }
        }
    }
}

/// Counts a source thread out when it ends, however it ends.
struct Finished(Arc<Shared>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.lock().running -= 1;
        self.0.wake.notify_all();
    }
}

/// A source thread's side of the hand-off.
pub(crate) struct Feed {
    shared: Arc<Shared>,
    index: usize,
    pub(crate) name: String,
    live: bool,
    fps: FpsGate,
    paced: PacedGate,
    motion: MotionGate,
    pub(crate) opts: Arc<WatchOptions>,
    frames: u64,
}

impl Feed {
    pub(crate) fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> &SourceStats {
        &self.shared.stats[self.index]
    }

    /// Sleeps up to `d`, waking early at stop; returns false when stopped.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.stopped() {
            let now = Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
        false
    }

    /// Registers an ffmpeg process to be killed at stop.
    pub(crate) fn register_child(&self, child: Arc<Mutex<Option<Child>>>) {
        let mut children = self
            .shared
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        children.retain(|c| Arc::strong_count(c) > 1);
        children.push(child);
    }

    /// A frame arrived: its number, and whether it is worth decoding. `paced`: the source already
    /// samples at `--fps` itself (ffmpeg's fps filter): its frames pass the wall-clock
    /// [`PacedGate`] instead of the [`FpsGate`], and one that finds the previous frame still
    /// waiting for the model waits up to one `--fps` period for it (ffmpeg hands frames over in
    /// bursts; dropping the second of a pair classified 1.3 of 2 frames/s) before it is dropped.
    pub(crate) fn arrive(&mut self, paced: bool) -> (u64, bool) {
        self.frames += 1;
        bump(&self.stats().received);
        if self.live {
            let now = Instant::now();
            let admitted = if paced {
                self.paced.admit(now)
            } else {
                self.fps.admit(now)
            };
            if !admitted {
                bump(&self.stats().skipped);
                return (self.frames, false);
            }
        }
        if self.live && !self.slot_free_within(paced) {
            bump(&self.stats().dropped);
            return (self.frames, false);
        }
        (self.frames, true)
    }

    /// Whether this source's slot is empty now or, for a paced source, becomes empty within one
    /// `--fps` period.
    fn slot_free_within(&self, paced: bool) -> bool {
        let deadline = Instant::now()
            + if paced && self.opts.fps > 0.0 {
                Duration::from_secs_f64(1.0 / self.opts.fps)
            } else {
                Duration::ZERO
            };
        let mut st = self.shared.lock();
        while st.slots[self.index].is_some() {
            let now = Instant::now();
            if now >= deadline || self.stopped() {
                return false;
            }
            st = self
                .shared
                .wake
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// A problem with frame `frame` (0: with the source itself).
    pub(crate) fn error(&self, frame: u64, path: Option<PathBuf>, message: String) {
        bump(&self.stats().errors);
        let event = Event::error(
            &self.name,
            frame,
            path.map(|p| p.display().to_string()),
            message,
        );
        let mut st = self.shared.lock();
        if st.notes.len() >= MAX_NOTES {
            st.notes.pop_front();
        }
        st.notes.push_back(event);
        drop(st);
        self.shared.wake.notify_all();
    }

    /// Encoded image bytes (an MJPEG part, a snapshot).
    pub(crate) fn offer_bytes(&mut self, frame: u64, bytes: &[u8]) {
        let t = Instant::now();
        let what = format!("{} frame {frame}", self.name);
        match decode_image_bytes(bytes, &what, &self.opts.decode) {
            Ok(img) => self.offer_image(frame, None, img.rgb, t),
            Err(e) => self.error(frame, None, e.to_string()),
        }
    }

    /// An image file (or a preprocessed `.npy`, which skips motion gating).
    pub(crate) fn offer_file(&mut self, frame: u64, path: PathBuf) {
        let t = Instant::now();
        if resnet_core::input::is_npy(&path) {
            match resnet_core::input::read_npy_input(&path) {
                Ok(input) => self.put(Pending {
                    frame,
                    path: Some(path),
                    input,
                    size: None,
                    image: None,
                    motion: None,
                    decode_ms: t.elapsed().as_secs_f64() * 1e3,
                    ready_at: Instant::now(),
                }),
                Err(e) => self.error(frame, Some(path), e.to_string()),
            }
            return;
        }
        match decode_image_file(&path, &self.opts.decode) {
            Ok(img) => self.offer_image(frame, Some(path), img.rgb, t),
            Err(e) => self.error(frame, Some(path), e.to_string()),
        }
    }

    /// Decoded pixels: motion gate, preprocess (as `classify`), hand over.
    pub(crate) fn offer_image(
        &mut self,
        frame: u64,
        path: Option<PathBuf>,
        rgb: RgbImage,
        started: Instant,
    ) {
        let motion = match self.motion.check(&rgb) {
            Ok(d) => d,
            Err(_) => {
                bump(&self.stats().gated);
                return;
            }
        };
        let input = resnet_core::preprocess::preprocess(&rgb);
        let size = Some(rgb.dimensions());
        self.put(Pending {
            frame,
            path,
            input,
            size,
            image: self.opts.keep_images.then_some(rgb),
            motion,
            decode_ms: started.elapsed().as_secs_f64() * 1e3,
            ready_at: Instant::now(),
        });
    }

    /// Live: into the empty slot (checked in [`Feed::arrive`]). Otherwise: waits for the slot.
    fn put(&self, pending: Pending) {
        let mut st = self.shared.lock();
        while st.slots[self.index].is_some() {
            if self.stopped() {
                return;
            }
            if self.live {
                bump(&self.stats().dropped);
                return;
            }
            st = self
                .shared
                .wake
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.slots[self.index] = Some(pending);
        drop(st);
        self.shared.wake.notify_all();
    }
}
