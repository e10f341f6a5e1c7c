//! MQTT publishing: each recognition of `resnet serve` and each reported event of `resnet
//! watch` as one JSON message on a broker's topic (Home Assistant, Node-RED, Frigate-style
//! automations subscribe to it).
//!
//! A request never waits for the broker. [`Publisher::publish`] hands the message to a bounded
//! queue (rumqttc's request channel, [`MqttConfig::queue`] messages) and returns at once; when
//! the queue is full, because the broker is down or slower than the recognitions, the message is
//! dropped and counted ([`MqttStats`], `resnet_mqtt_dropped_total` in `/metrics`). Messages
//! queued during an outage go out when the broker is back.
//!
//! The connection runs on a thread of its own with a single-threaded tokio runtime: the same
//! publisher serves the server (tokio) and the CLI watcher (plain threads), and a broker that is
//! slow to answer a connect holds none of the server's runtime threads. Reconnects back off from
//! 0.25 s, doubling up to [`MqttConfig::reconnect_max`]; an outage is logged once when it starts
//! and once when the broker is back.
//!
//! QoS 1 (at least once): the broker acknowledges each message, so `resnet_mqtt_published_total`
//! counts messages the broker took, and rumqttc resends the unacknowledged ones after a
//! reconnect; a subscriber may see a duplicate then (the message's `time` and `request_id` tell
//! it). Availability goes to `TOPIC/available`, retained: `online` after each connect, `offline`
//! as the last will (the broker sends it when the connection dies) and at a clean stop.

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The broker port when the URL gives none.
pub const DEFAULT_PORT: u16 = 1883;
/// Messages held while the broker is away or slow; more are dropped (and counted).
pub const DEFAULT_QUEUE: usize = 256;
/// The longest pause between two connection attempts.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(10);
/// The first pause after a failed connection.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The QoS of every event message (see the module documentation for why 1).
const EVENT_QOS: QoS = QoS::AtLeastOnce;

/// Where to publish: `mqtt://[user[:password]@]host[:port]/topic`, parsed once at start.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The topic every event is published to (`resnet/recognitions`).
    pub topic: String,
    /// User name and password from the URL.
    pub credentials: Option<Credentials>,
    /// Messages held while the broker is away or slow.
    pub queue: usize,
    /// The longest pause between two connection attempts.
    pub reconnect_max: Duration,
}

/// A user name and password for the broker.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password (never printed: `Debug` and [`MqttConfig::display_url`] leave it out).
    pub password: String,
}

/// Why an `--mqtt-url` is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MqttUrlError {
    /// Not a URL at all.
    #[error("not a URL ({0}); expected mqtt://host:1883/TOPIC")]
    NotAUrl(String),
    /// Another scheme than `mqtt://`.
    #[error("the scheme is '{0}': expected mqtt://host:1883/TOPIC")]
    Scheme(String),
    /// `mqtts://`, which this build does not speak.
    #[error("mqtts:// (TLS) is not supported by this build; use mqtt:// on a trusted network or a TLS-terminating proxy such as stunnel in front of the broker")]
    TlsUnsupported,
    /// No host.
    #[error("no broker host: expected mqtt://host:1883/TOPIC")]
    NoHost,
    /// No topic in the path.
    #[error("no topic: put it in the path, as in mqtt://host:1883/resnet/recognitions")]
    NoTopic,
    /// A topic with MQTT wildcards, a query or a fragment.
    #[error("the topic '{0}' is not a topic one can publish to (no '+', '#', empty levels, '?query' or NUL)")]
    BadTopic(String),
}

impl MqttConfig {
    /// Parses `mqtt://[user[:password]@]host[:port]/topic` (user, password and topic
    /// percent-decoded).
    pub fn parse(text: &str) -> Result<MqttConfig, MqttUrlError> {
        let url = url::Url::parse(text.trim()).map_err(|e| MqttUrlError::NotAUrl(e.to_string()))?;
        match url.scheme() {
            "mqtt" | "tcp" => {}
            "mqtts" | "ssl" => return Err(MqttUrlError::TlsUnsupported),
            other => return Err(MqttUrlError::Scheme(other.to_string())),
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(MqttUrlError::NoHost)?;
        // An IPv6 literal keeps its brackets in the URL, not in the address to connect to.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let topic = decode(url.path().trim_start_matches('/'));
        if topic.is_empty() {
            return Err(MqttUrlError::NoTopic);
        }
        let bad_topic = topic.contains(['+', '#', '\0'])
            || topic.split('/').any(str::is_empty)
            || url.query().is_some()
            || url.fragment().is_some();
        if bad_topic {
            let mut shown = topic.clone();
            if let Some(q) = url.query() {
                shown = format!("{shown}?{q}");
            }
            if let Some(f) = url.fragment() {
                shown = format!("{shown}#{f}");
            }
            return Err(MqttUrlError::BadTopic(shown));
        }
        let credentials = (!url.username().is_empty()).then(|| Credentials {
            username: decode(url.username()),
            password: decode(url.password().unwrap_or("")),
        });
        Ok(MqttConfig {
            host: host.to_string(),
            port: url.port().unwrap_or(DEFAULT_PORT),
            topic,
            credentials,
            queue: DEFAULT_QUEUE,
            reconnect_max: DEFAULT_RECONNECT_MAX,
        })
    }

    /// The URL without the password, for logs.
    pub fn display_url(&self) -> String {
        let user = match &self.credentials {
            Some(c) => format!("{}@", c.username),
            None => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("mqtt://{user}{host}:{}/{}", self.port, self.topic)
    }

    /// Where `online` / `offline` is published (retained).
    pub fn availability_topic(&self) -> String {
        format!("{}/available", self.topic)
    }
}

impl std::str::FromStr for MqttConfig {
    type Err = MqttUrlError;
    fn from_str(s: &str) -> Result<MqttConfig, MqttUrlError> {
        MqttConfig::parse(s)
    }
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.display_url())
            .field("queue", &self.queue)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, password hidden)", self.username)
    }
}

/// What the publisher has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MqttStats {
    /// Messages the broker acknowledged.
    pub published: u64,
    /// Messages dropped because the queue was full (broker down or too slow).
    pub dropped: u64,
    /// Whether the connection is up now.
    pub connected: bool,
}

#[derive(Default)]
struct Counters {
    /// Messages taken into the queue (each then ends as published, or lost with the connection).
    accepted: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    connected: AtomicBool,
    stopping: AtomicBool,
    /// Messages handed over and not yet written to the broker. Counted here so that the bound
    /// does not depend on how rumqttc keeps requests across a reconnect (its channel capacity
    /// alone bounds only what it has not taken out yet).
    queued: AtomicUsize,
}

/// Publishes JSON messages to one topic in the background (see the module documentation).
pub struct Publisher {
    client: AsyncClient,
    topic: String,
    availability: String,
    counters: Arc<Counters>,
    queue: usize,
    /// Says when the connection thread has ended (after [`Publisher::finish`]).
    ended: Mutex<mpsc::Receiver<()>>,
}

impl Publisher {
    /// Starts the connection thread; `who` (`serve`, `watch`) goes into the MQTT client id.
    /// Returns at once: the broker may be down, the first connection is tried in the
    /// background.
    pub fn start(config: &MqttConfig, who: &str) -> std::io::Result<Publisher> {
        let availability = config.availability_topic();
        let mut options = MqttOptions::new(client_id(who), config.host.clone(), config.port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_last_will(LastWill::new(
            availability.clone(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(c) = &config.credentials {
            options.set_credentials(c.username.clone(), c.password.clone());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, eventloop) = {
            let _context = runtime.enter();
            AsyncClient::new(options, config.queue.max(1))
        };
        let counters = Arc::new(Counters::default());
        let (ended_tx, ended) = mpsc::channel();
        let connection = Connection {
            client: client.clone(),
            counters: Arc::clone(&counters),
            url: config.display_url(),
            availability: availability.clone(),
            queue: config.queue,
            reconnect_max: config.reconnect_max.max(FIRST_BACKOFF),
        };
        std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || {
                runtime.block_on(connection.run(eventloop));
                let _ = ended_tx.send(());
            })?;
        Ok(Publisher {
            client,
            topic: config.topic.clone(),
            availability,
            counters,
            queue: config.queue.max(1),
            ended: Mutex::new(ended),
        })
    }

    /// Queues one message for the topic; never waits. False when the queue was full and the
    /// message was dropped (counted).
    pub fn publish(&self, payload: Vec<u8>) -> bool {
        let waiting = &self.counters.queued;
        let queued = waiting.fetch_add(1, Ordering::Relaxed) < self.queue
            && self
                .client
                .try_publish(self.topic.clone(), EVENT_QOS, false, payload)
                .is_ok();
        if queued {
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            waiting.fetch_sub(1, Ordering::Relaxed);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Queues `value` as JSON (see [`Publisher::publish`]).
    pub fn publish_json<T: Serialize>(&self, value: &T) -> bool {
        match serde_json::to_vec(value) {
            Ok(payload) => self.publish(payload),
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The counters now.
    pub fn stats(&self) -> MqttStats {
        MqttStats {
            published: self.counters.published.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            connected: self.counters.connected.load(Ordering::Relaxed),
        }
    }

    /// Publishes `offline`, sends what is queued and disconnects, waiting at most `grace`
    /// (blocking: call it off async threads). Messages published after it are dropped.
    pub fn finish(&self, grace: Duration) {
        // While connected, the queued events are acknowledged first (QoS 1: the broker's PubAck
        // is what `published` counts); disconnecting at once would lose the last acks.
        let deadline = std::time::Instant::now() + grace;
        let c = &self.counters;
        while c.connected.load(Ordering::Relaxed)
            && c.published.load(Ordering::Relaxed) < c.accepted.load(Ordering::Relaxed)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let grace = deadline.saturating_duration_since(std::time::Instant::now());
        self.counters.stopping.store(true, Ordering::Relaxed);
        // QoS 0 like `online`, so that the acknowledgements counted stay the events' own; it
        // is queued before the disconnect, and the connection writes requests in order.
        let _ =
            self.client
                .try_publish(self.availability.clone(), QoS::AtMostOnce, true, "offline");
        let _ = self.client.try_disconnect();
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.recv_timeout(grace).is_err() {
            log::warn!(
                "mqtt: the broker did not take the queued messages within {:.1} s of the stop; they are lost",
                grace.as_secs_f64()
            );
        }
    }
}

/// A client id unique per process and start (two replicas with one id would keep kicking each
/// other off the broker), at most 23 characters as MQTT 3.1.1 brokers must accept.
fn client_id(who: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let who: String = who
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(6)
        .collect();
    format!(
        "resnet-{who}-{:x}-{:x}",
        std::process::id() & 0xffff,
        nanos & 0xffff
    )
}

/// The connection thread's state.
struct Connection {
    client: AsyncClient,
    counters: Arc<Counters>,
    url: String,
    availability: String,
    queue: usize,
    reconnect_max: Duration,
}

impl Connection {
    /// Polls the event loop until a disconnect was sent (or the stop found the broker away).
    async fn run(self, mut eventloop: rumqttc::EventLoop) {
        let mut backoff = FIRST_BACKOFF;
        // When the current outage began, and the drop count then.
        let mut outage: Option<(Instant, u64)> = None;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    self.counters.connected.store(true, Ordering::Relaxed);
                    backoff = FIRST_BACKOFF;
                    match outage.take() {
                        Some((since, dropped_before)) => log::warn!(
                            "mqtt: connected to {} again after {:.1} s ({} message(s) dropped meanwhile)",
                            self.url,
                            since.elapsed().as_secs_f64(),
                            self.counters.dropped.load(Ordering::Relaxed) - dropped_before
                        ),
                        None => log::info!("mqtt: publishing to {}", self.url),
                    }
                    // QoS 0 so that every acknowledgement counted below is an event's.
                    let _ = self.client.try_publish(
                        self.availability.clone(),
                        QoS::AtMostOnce,
                        true,
                        "online",
                    );
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                    // Saturating: availability messages and resends after a reconnect are
                    // written too without having been counted in.
                    let _ = self.counters.queued.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |n| Some(n.saturating_sub(1)),
                    );
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    self.counters.connected.store(false, Ordering::Relaxed);
                    if self.counters.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    if outage.is_none() {
                        outage = Some((
                            Instant::now(),
                            self.counters.dropped.load(Ordering::Relaxed),
                        ));
                        log::warn!(
                            "mqtt: {}: {e}; retrying every {:.0} s at most; up to {} message(s) wait meanwhile, more are dropped (counted in /metrics)",
                            self.url,
                            self.reconnect_max.as_secs_f64(),
                            self.queue
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.reconnect_max);
                }
            }
        }
        self.counters.connected.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_topic_and_credentials() {
        let c = MqttConfig::parse("mqtt://broker.lan/resnet/recognitions").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.topic.as_str()),
            ("broker.lan", 1883, "resnet/recognitions")
        );
        assert!(c.credentials.is_none());
        let c = MqttConfig::parse("mqtt://ha%40home:p%3Ass@127.0.0.1:18830/cam%20events").unwrap();
        let creds = c.credentials.clone().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("ha@home", "p:ss")
        );
        assert_eq!((c.port, c.topic.as_str()), (18830, "cam events"));
        // The password never reaches a log line.
        assert!(!format!("{c:?}").contains("p:ss"), "{c:?}");
        let c = MqttConfig::parse("mqtt://[::1]:1884/t").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1884));
        assert_eq!(c.display_url(), "mqtt://[::1]:1884/t");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        use MqttUrlError::*;
        let err = |s: &str| MqttConfig::parse(s).unwrap_err();
        assert!(matches!(err("broker:1883/topic"), Scheme(_) | NotAUrl(_)));
        assert_eq!(err("http://broker/t"), Scheme("http".into()));
        assert_eq!(err("mqtts://broker/t"), TlsUnsupported);
        assert_eq!(err("mqtt://broker"), NoTopic);
        assert_eq!(err("mqtt://broker/"), NoTopic);
        assert_eq!(err("mqtt://broker/a/+/c"), BadTopic("a/+/c".into()));
        assert_eq!(err("mqtt://broker/a/#"), BadTopic("a/#".into()));
        assert_eq!(err("mqtt://broker/a//b"), BadTopic("a//b".into()));
        assert_eq!(err("mqtt://broker/a?qos=2"), BadTopic("a?qos=2".into()));
        assert!(matches!(err("mqtt://broker:99999/t"), NotAUrl(_)));
        assert!(matches!(err("mqtt:///t"), NoHost | NotAUrl(_)));
    }

    #[test]
    fn client_ids_fit_mqtt_311s_limit() {
        for who in ["serve", "watch", "a-very-long-name-indeed"] {
            let id = client_id(who);
            assert!(id.len() <= 23 && id.is_ascii(), "{id}");
        }
    }
}
