//! `resnet serve --watch SOURCE...`: the watchers of `resnet-watch` inside the server.
//!
//! One thread runs [`Watcher::run`] with a backend that is the server's own inference queue
//! ([`QueuedBackend`]): watch frames wait in the same bounded FIFO queue as HTTP images and
//! are batched with them by the one inference thread, so a camera neither starves HTTP clients
//! (it holds at most one batch of frames in the queue, and waits for its answers before it
//! sends more) nor runs a second forward pass that would fight the first for the cores.
//!
//! Each reported event (the `--on-change` / `--alert` filter of `resnet watch`) is recorded in
//! the history through [`AppState::record_recognition`], the path HTTP recognitions take, and
//! sent to the `/v1/events` subscribers ([`WatchHub::subscribe`]) as one Server-Sent Event with
//! a small JPEG of the frame. The per-source counters are the watcher's own ([`SourceStats`]),
//! which `/metrics` renders.

use crate::batcher::{QueueFull, Work};
use crate::error::ServerError;
use crate::history::Entry;
use crate::routes::AppState;
use bytes::Bytes;
use ndarray::{Array2, ArrayView4, Axis};
use resnet_core::backend::{Backend, LayerObserver};
use resnet_watch::{Event, EventFilter, SourceSpec, SourceStats, WatchOptions, Watcher};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// What `resnet serve --watch` runs: the sources, and the options and filter of `resnet watch`.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// The sources, parsed once from their arguments.
    pub sources: Vec<SourceSpec>,
    /// Sampling, gating, folder and stream options (`keep_images` is set by the server, which
    /// needs each frame for its thumbnail).
    pub options: WatchOptions,
    /// Which events are recorded and streamed (errors are streamed, never recorded).
    pub filter: EventFilter,
}

/// Events each `/v1/events` client may fall behind by before it skips the oldest (counted in
/// `resnet_watch_events_lagged_total`); the watchers never wait for a client.
pub const EVENTS_PER_CLIENT: usize = 64;

/// The long side of the frame thumbnail sent with each event, in pixels (a JPEG of about
/// 5-10 KB: small enough for every event, large enough for a live panel).
pub const PANEL_THUMBNAIL_SIDE: u32 = 240;

/// How long a watch batch may wait for room in a full inference queue before its frames are
/// error events: the queue is full only while HTTP clients are being refused too.
const QUEUE_PATIENCE: Duration = Duration::from_secs(5);

/// The watchers of a server, their events and the latest event of each source.
pub struct WatchHub {
    watcher: Watcher,
    filter: EventFilter,
    events: broadcast::Sender<Bytes>,
    /// Each source's latest reported classified frame, as its SSE message: a client that
    /// connects gets these first, so its panels are not empty until the next frame.
    latest: Mutex<BTreeMap<String, Bytes>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WatchHub {
    /// Checks the sources and options (ffmpeg installed, ranges); starts nothing.
    pub fn new(config: &WatchConfig) -> Result<WatchHub, ServerError> {
        let options = WatchOptions {
            keep_images: true,
            ..config.options.clone()
        };
        let watcher = Watcher::new(config.sources.clone(), options)?;
        Ok(WatchHub {
            watcher,
            filter: config.filter,
            events: broadcast::channel(EVENTS_PER_CLIENT).0,
            latest: Mutex::new(BTreeMap::new()),
            thread: Mutex::new(None),
        })
    }

    /// The sources' names and counters, in argument order.
    pub fn stats(&self) -> Vec<(String, Arc<SourceStats>)> {
        self.watcher.stats()
    }

    /// The sources' names, in argument order.
    pub fn source_names(&self) -> Vec<String> {
        self.stats().into_iter().map(|(name, _)| name).collect()
    }

    /// A new `/v1/events` subscriber: the latest event of each source, then the live ones.
    pub fn subscribe(&self) -> (Vec<Bytes>, broadcast::Receiver<Bytes>) {
        // Subscribing under the lock: an event sent meanwhile is either replayed or received.
        let latest = lock(&self.latest);
        let rx = self.events.subscribe();
        (latest.values().cloned().collect(), rx)
    }

    /// Asks the watchers to stop (they finish the frame in hand); see [`WatchHub::join`].
    pub fn stop(&self) {
        self.watcher.stopper().stop();
    }

    /// Waits for the watcher thread to end (after [`WatchHub::stop`]). Blocking.
    pub fn join(&self) {
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }

    /// Turns one watcher event into its history record and its SSE message.
    fn report(&self, state: &Arc<AppState>, mut event: Event) {
        if !self.filter.wants(&event) {
            return;
        }
        let image = event.image.take();
        let top1 = event.predictions.as_ref().and_then(|p| p.first()).cloned();
        if let (Some(top1), Some(image)) = (&top1, &image) {
            if state.records_recognitions() {
                let latency_ms = event
                    .timings
                    .map_or(0.0, |t| t.decode_ms + t.wait_ms + t.infer_ms);
                state.record_recognition(Entry {
                    time: event.time.clone(),
                    route: WATCH_ROUTE.into(),
                    source: Some(history_source(&event.source)),
                    width: image.width(),
                    height: image.height(),
                    index: top1.index,
                    label: top1.label.clone(),
                    probability: top1.probability,
                    latency_ms: (latency_ms * 10.0).round() / 10.0,
                    thumbnail: crate::routes::thumbnail_data_url(
                        image,
                        crate::routes::HISTORY_THUMBNAIL_SIDE,
                    ),
                    request_id: None,
                });
            }
        }
        let message = Message {
            event: &event,
            alerting: event.is_alert(),
            thumbnail: image
                .as_deref()
                .map(|i| crate::routes::thumbnail_data_url(i, PANEL_THUMBNAIL_SIDE)),
        };
        let sse = sse_message(if message.alerting { "alert" } else { "watch" }, &message);
        if top1.is_some() {
            lock(&self.latest).insert(event.source.clone(), sse.clone());
        }
        // No subscriber is not an error; a slow one lags behind on its own.
        let _ = self.events.send(sse);
    }
}

/// The `route` of history entries made by watchers (they answer no request).
pub const WATCH_ROUTE: &str = "watch";

/// The `source` a watcher's history entries carry: `watch:NAME`.
pub fn history_source(name: &str) -> String {
    format!("watch:{name}")
}

/// What a `/v1/events` message carries: the event as `resnet watch` prints it, whether an
/// `--alert` class fired, and a JPEG of the frame as a `data:` URL.
#[derive(Serialize)]
struct Message<'a> {
    #[serde(flatten)]
    event: &'a Event,
    alerting: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    thumbnail: Option<String>,
}

/// One Server-Sent Event: `event: NAME`, one `data:` line of JSON (JSON has no raw newlines).
fn sse_message(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the watcher thread of a server that has watch sources.
pub fn start(state: &Arc<AppState>) -> Result<(), ServerError> {
    let Some(hub) = &state.watch else {
        return Ok(());
    };
    let st = Arc::clone(state);
    let thread = std::thread::Builder::new()
        .name("resnet-watch".into())
        .spawn(move || {
            let Some(hub) = &st.watch else { return };
            let backend = QueuedBackend {
                state: Arc::clone(&st),
            };
            let labels = &st.model.labels;
            match hub.watcher.run(&backend, labels, |event| {
                hub.report(&st, event);
                Ok(())
            }) {
                Ok(summary) => eprintln!(
                    "resnet serve: watchers stopped: {} frames classified, {} errors",
                    summary.classified,
                    summary.errors
                ),
                Err(e) => eprintln!("resnet serve: watchers stopped: {e}"),
            }
            for (name, stats) in hub.stats() {
                let s = stats.snapshot();
                eprintln!(
                    "resnet serve: watch {name}: {} received, {} classified, {} skipped (--fps), {} gated (--motion), {} dropped (model busy), {} errors, {} reconnects",
                    s.received, s.classified, s.skipped, s.gated, s.dropped, s.errors, s.reconnects
                );
            }
        })
        .map_err(|source| ServerError::Start {
            what: "watcher thread",
            source,
        })?;
    *lock(&hub.thread) = Some(thread);
    Ok(())
}

/// The server's inference queue seen as a [`Backend`]: each image of a batch becomes one
/// queued job, batched by the inference thread with whatever HTTP images are waiting. Blocking
/// (the watcher thread waits for the answers); it gives up on a full queue after
/// [`QUEUE_PATIENCE`], and at once when the server shuts down.
struct QueuedBackend {
    state: Arc<AppState>,
}

impl QueuedBackend {
    fn failed(&self, reason: impl Into<String>) -> resnet_core::Error {
        resnet_core::Error::BackendFailed {
            backend: self.state.model.backend.name().to_string(),
            reason: reason.into(),
        }
    }

    fn submit(&self, work: Work) -> resnet_core::Result<crate::batcher::Reply> {
        let started = Instant::now();
        let mut work = work;
        loop {
            match self.state.batcher.try_submit(work) {
                Ok(reply) => return Ok(reply),
                Err((QueueFull, back)) => {
                    if self.state.shutting_down.load(Ordering::Acquire) {
                        return Err(self.failed("the server is shutting down"));
                    }
                    if started.elapsed() > QUEUE_PATIENCE {
                        return Err(self.failed(format!(
                            "the inference queue stayed full for {} s",
                            QUEUE_PATIENCE.as_secs()
                        )));
                    }
                    work = *back;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

impl Backend for QueuedBackend {
    fn name(&self) -> &'static str {
        self.state.model.backend.name()
    }

    fn describe(&self) -> String {
        format!(
            "{} (through the server's inference queue)",
            self.state.model.backend.describe()
        )
    }

    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        _observer: &mut dyn LayerObserver,
    ) -> resnet_core::Result<Array2<f32>> {
        let replies = batch
            .axis_iter(Axis(0))
            .map(|image| self.submit(Work::Classify(image.to_owned())))
            .collect::<resnet_core::Result<Vec<_>>>()?;
        let n = replies.len();
        let mut logits = Vec::new();
        for reply in replies {
            let done = reply
                .blocking_recv()
                .map_err(|_| self.failed("the inference thread stopped"))?
                .map_err(|e| self.failed(e))?;
            logits.extend(done.logits);
        }
        let classes = logits.len() / n.max(1);
        Array2::from_shape_vec((n, classes), logits)
            .map_err(|e| self.failed(format!("the answers do not form a batch: {e}")))
    }
}
