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

    /// Stops queuing, gives the queued events up to `grace` to be delivered, and logs what
    /// became of the events.
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
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        log::info!(
            "webhook: {} event(s) delivered, {} given up after {ATTEMPTS} attempts, {} dropped (queue full)",
            count(&self.stats.delivered),
            count(&self.stats.failed),
            count(&self.stats.dropped)
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;

    /// A port nothing listens on: bound, then closed.
    fn refused_url() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    }

    fn waits_for(stats: &WebhookStats, done: impl Fn(&WebhookStats) -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !done(stats) {
            assert!(std::time::Instant::now() < end, "{stats:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_refused_connection_is_tried_attempts_times_then_given_up() {
        let mut hook = Webhook::start(&refused_url(), Duration::from_secs(2)).unwrap();
        let stats = hook.stats.clone();
        let started = std::time::Instant::now();
        assert!(hook.post("{}".into()));
        waits_for(&stats, |s| s.failed.load(Ordering::Relaxed) == 1);
        // The pauses between the attempts: 250 + 500 + 1000 ms.
        assert!(started.elapsed() >= Duration::from_millis(1750));
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
        hook.finish(Duration::from_secs(1));
    }

    #[test]
    fn a_receiver_answering_500_gets_exactly_attempts_requests_per_event() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        let mut hook = Webhook::start(&url, Duration::from_secs(2)).unwrap();
        let stats = hook.stats.clone();
        assert!(hook.post("{\"n\":1}".into()));
        assert!(hook.post("{\"n\":2}".into()));
        waits_for(&stats, |s| s.failed.load(Ordering::Relaxed) == 2);
        assert_eq!(requests.load(Ordering::SeqCst), 2 * ATTEMPTS as usize);
        hook.finish(Duration::from_secs(1));
    }

    #[test]
    fn a_receiver_that_never_answers_fills_the_queue_and_new_events_are_dropped() {
        // Accepts connections (the backlog does) and never answers: the first post waits out
        // its timeout while the queue fills.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let mut hook = Webhook::start(&url, Duration::from_secs(30)).unwrap();
        let stats = hook.stats.clone();
        let accepted = (0..QUEUE + 10).filter(|_| hook.post("{}".into())).count();
        // One may already be taken off the queue by the sender thread.
        assert!(
            (QUEUE..=QUEUE + 1).contains(&accepted),
            "{accepted} queued of {}",
            QUEUE + 10
        );
        assert_eq!(
            stats.dropped.load(Ordering::Relaxed) as usize,
            QUEUE + 10 - accepted
        );
        // finish() does not wait past its grace for a receiver that never answers.
        let t = std::time::Instant::now();
        hook.finish(Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(listener);
    }
}
