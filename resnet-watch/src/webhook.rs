//! `--webhook URL`: events POSTed as JSON by a thread of their own, so a slow or dead receiver
//! never holds up the watcher. At most [`QUEUE`] events wait; more are dropped and counted.
//! Each is tried [`ATTEMPTS`] times with growing pauses; an outage of the receiver is logged
//! once when it starts and once when it ends.

use crate::backoff::Outage;
use crate::error::WatchError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Events waiting to be posted, at most.
pub const QUEUE: usize = 64;
/// Tries per event (the first and the retries).
pub const ATTEMPTS: u32 = 4;
/// Pause before the first retry; it doubles for each next one.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Counters of a webhook.
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    /// Given up after every attempt failed.
    pub failed: AtomicU64,
    /// Not queued: the queue was full.
    pub dropped: AtomicU64,
}

/// The sending side; dropping it (or [`Webhook::finish`]) lets the thread end.
pub struct Webhook {
    tx: Option<SyncSender<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<WebhookStats>,
    warned_full: bool,
}

impl Webhook {
    /// Starts the sender for `url` (http or https). `timeout`: per attempt, connect and read.
    pub fn start(url: &str, timeout: Duration) -> Result<Webhook, WatchError> {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(WatchError::BadWebhook {
                url: url.to_string(),
                reason: "give an http:// or https:// URL".into(),
            });
        }
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        let stats = Arc::new(WebhookStats::default());
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout)
            .build();
        let url = url.to_string();
        let s = stats.clone();
        let thread = std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || deliver(agent, &url, rx, &s))
            .map_err(|e| WatchError::BadWebhook {
                url: "(thread)".into(),
                reason: e.to_string(),
            })?;
        Ok(Webhook {
            tx: Some(tx),
            thread: Some(thread),
            stats,
            warned_full: false,
        })
    }

    /// Queues one JSON body; never blocks. Returns false when it was dropped (queue full).
    pub fn post(&mut self, json: String) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(json) {
            Ok(()) => {
                self.warned_full = false;
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut self.warned_full, true) {
                    log::warn!(
                        "webhook: {QUEUE} events already waiting for the receiver; dropping new ones until it catches up"
                    );
                }
                false
            }
        }
    }

    /// Stops queuing and gives the queued events up to `grace` to be delivered.
    pub fn finish(mut self, grace: Duration) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let (done_tx, done_rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = t.join();
                let _ = done_tx.send(());
            });
            if done_rx.recv_timeout(grace).is_err() {
                log::warn!(
                    "webhook: events still undelivered after {:.0} s at exit were dropped",
                    grace.as_secs_f64()
                );
            }
        }
    }
}

fn deliver(agent: ureq::Agent, url: &str, rx: Receiver<String>, stats: &WebhookStats) {
    let what = format!("webhook {url}");
    let mut outage = Outage::default();
    for body in rx {
        let mut pause = FIRST_RETRY;
        let mut delivered = false;
        for attempt in 1..=ATTEMPTS {
            let result = agent
                .post(url)
                .set("Content-Type", "application/json")
                .send_string(&body);
            match result {
                Ok(_) => {
                    outage.recovered(&what);
                    delivered = true;
                    break;
                }
                Err(e) => {
                    let why = match &e {
                        ureq::Error::Status(code, _) => format!("HTTP {code}"),
                        ureq::Error::Transport(t) => t.to_string(),
                    };
                    outage.failed(&what, &why);
                    if attempt < ATTEMPTS {
                        std::thread::sleep(pause);
                        pause *= 2;
                    }
                }
            }
        }
        let counter = if delivered {
            &stats.delivered
        } else {
            &stats.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
