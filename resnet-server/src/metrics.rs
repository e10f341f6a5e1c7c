//! Prometheus metrics, written by hand in the text exposition format (version 0.0.4).

use crate::mqtt::MqttStats;
use resnet_watch::SourceStats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Request latency buckets, seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Batch size buckets.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Forward-pass duration buckets, seconds.
const INFERENCE_BUCKETS: &[f64] = &[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Everything `/metrics` shows. Routes are a fixed set of names, so label cardinality is bounded.
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    batch_size: Mutex<Histogram>,
    inference: Mutex<Histogram>,
    queue_depth: AtomicI64,
    images: AtomicU64,
    connections_refused: AtomicU64,
    history_write_failures: AtomicU64,
    history_lines_skipped: AtomicU64,
    stalled_writers: AtomicI64,
    write_timeouts: AtomicU64,
    requests_per_connection_closes: AtomicU64,
    body_bytes: AtomicI64,
    memory_refusals: AtomicU64,
    decodes_waiting: AtomicI64,
    decode_bytes: AtomicI64,
    decodes_cancelled: AtomicU64,
    memory_released: AtomicBool,
    /// The `--watch` sources' own counters (set once at start).
    watch_sources: OnceLock<Vec<(String, Arc<SourceStats>)>>,
    watch_event_clients: AtomicI64,
    watch_events_lagged: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(BTreeMap::new()),
            batch_size: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            inference: Mutex::new(Histogram::new(INFERENCE_BUCKETS)),
            queue_depth: AtomicI64::new(0),
            images: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            history_write_failures: AtomicU64::new(0),
            history_lines_skipped: AtomicU64::new(0),
            stalled_writers: AtomicI64::new(0),
            write_timeouts: AtomicU64::new(0),
            requests_per_connection_closes: AtomicU64::new(0),
            body_bytes: AtomicI64::new(0),
            memory_refusals: AtomicU64::new(0),
            decodes_waiting: AtomicI64::new(0),
            decode_bytes: AtomicI64::new(0),
            decodes_cancelled: AtomicU64::new(0),
            memory_released: AtomicBool::new(false),
            watch_sources: OnceLock::new(),
            watch_event_clients: AtomicI64::new(0),
            watch_events_lagged: AtomicU64::new(0),
        }
    }
}

/// One unlabelled counter or gauge with its HELP and TYPE lines.
fn write_single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// Counts one answered request.
    pub fn observe_request(&self, route: &'static str, status: u16, latency: Duration) {
        *lock(&self.requests).entry((route, status)).or_insert(0) += 1;
        lock(&self.latency)
            .entry(route)
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(latency.as_secs_f64());
    }

    /// Counts one forward pass of `n` images.
    pub fn observe_batch(&self, n: usize, took: Duration) {
        lock(&self.batch_size).observe(n as f64);
        lock(&self.inference).observe(took.as_secs_f64());
        self.images.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a connection closed at once because the connection limit was reached.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a history record that could not be appended to the history file.
    pub fn history_write_failed(&self) {
        self.history_write_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts history-file lines skipped at reload (torn by a crash, not records).
    pub fn history_lines_skipped(&self, n: u64) {
        self.history_lines_skipped.fetch_add(n, Ordering::Relaxed);
    }

    /// Moves the gauge of connections whose answer waits for the client to read.
    pub fn stalled_writers_add(&self, delta: i64) {
        self.stalled_writers.fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts a connection closed because its client read nothing within the write timeout.
    pub fn write_timed_out(&self) {
        self.write_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed after its last allowed request (`Connection: close`).
    pub fn connection_request_limit_reached(&self) {
        self.requests_per_connection_closes
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the gauge of request-body bytes held.
    pub fn body_bytes_add(&self, delta: i64) {
        self.body_bytes.fetch_add(delta, Ordering::Relaxed);
        if delta < 0 {
            self.memory_released.store(true, Ordering::Relaxed);
        }
    }

    /// True (once) when request memory was freed since the last call: worth a trim.
    pub fn take_memory_released(&self) -> bool {
        self.memory_released.swap(false, Ordering::Relaxed)
    }

    /// Counts a request refused with 503 because the in-flight memory budget was full.
    pub fn memory_refused(&self) {
        self.memory_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the gauge of decodes waiting for their share of the decode budget.
    pub fn decodes_waiting_add(&self, delta: i64) {
        self.decodes_waiting.fetch_add(delta, Ordering::Relaxed);
    }

    /// Moves the gauge of decoded-pixel bytes reserved by running decodes.
    pub fn decode_bytes_add(&self, delta: i64) {
        self.decode_bytes.fetch_add(delta, Ordering::Relaxed);
        if delta < 0 {
            self.memory_released.store(true, Ordering::Relaxed);
        }
    }

    /// Counts a decode skipped or stopped because its request was over (client gone, deadline).
    pub fn decode_cancelled(&self) {
        self.decodes_cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// The `--watch` sources whose counters `/metrics` shows (once, at start).
    pub fn set_watch_sources(&self, sources: Vec<(String, Arc<SourceStats>)>) {
        let _ = self.watch_sources.set(sources);
    }

    /// Moves the gauge of connected `/v1/events` clients.
    pub fn watch_event_clients_add(&self, delta: i64) {
        self.watch_event_clients.fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts events a slow `/v1/events` client skipped because it fell too far behind.
    pub fn watch_events_lagged(&self, n: u64) {
        self.watch_events_lagged.fetch_add(n, Ordering::Relaxed);
    }

    /// Moves the queue-depth gauge.
    pub fn queue_depth_add(&self, delta: i64) {
        self.queue_depth.fetch_add(delta, Ordering::Relaxed);
    }

    /// Jobs waiting for the model now.
    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// The text exposition format, with the MQTT publisher's counters when there is one.
    pub fn render_with_mqtt(&self, mqtt: Option<MqttStats>) -> String {
        let mut out = self.render();
        if let Some(s) = mqtt {
            let mut single = |name: &str, kind: &str, help: &str, value: u64| {
                write_single(&mut out, name, kind, help, value)
            };
            single(
                "resnet_mqtt_published_total",
                "counter",
                "Recognitions the MQTT broker acknowledged (--mqtt-url).",
                s.published,
            );
            single(
                "resnet_mqtt_dropped_total",
                "counter",
                "Recognitions not published: the MQTT queue was full (broker down or too slow).",
                s.dropped,
            );
            single(
                "resnet_mqtt_connected",
                "gauge",
                "1 while the connection to the MQTT broker is up.",
                u64::from(s.connected),
            );
        }
        out
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP resnet_http_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE resnet_http_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "resnet_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP resnet_http_request_duration_seconds Time from request to response, by route.\n");
        out.push_str("# TYPE resnet_http_request_duration_seconds histogram\n");
        for (route, h) in lock(&self.latency).iter() {
            h.render(
                &mut out,
                "resnet_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str("# HELP resnet_batch_size Images per forward pass.\n");
        out.push_str("# TYPE resnet_batch_size histogram\n");
        lock(&self.batch_size).render(&mut out, "resnet_batch_size", "");
        out.push_str("# HELP resnet_inference_duration_seconds Time of one forward pass.\n");
        out.push_str("# TYPE resnet_inference_duration_seconds histogram\n");
        lock(&self.inference).render(&mut out, "resnet_inference_duration_seconds", "");
        let mut single = |name: &str, kind: &str, help: &str, value: u64| {
            write_single(&mut out, name, kind, help, value)
        };
        single(
            "resnet_queue_depth",
            "gauge",
            "Images waiting for the model.",
            self.queue_depth().max(0) as u64,
        );
        single(
            "resnet_images_classified_total",
            "counter",
            "Images that went through the network.",
            self.images.load(Ordering::Relaxed),
        );
        single(
            "resnet_connections_refused_total",
            "counter",
            "Connections closed at once: the connection limit was reached.",
            self.connections_refused.load(Ordering::Relaxed),
        );
        single(
            "resnet_history_write_failures_total",
            "counter",
            "History records the history file could not take (full or read-only disk).",
            self.history_write_failures.load(Ordering::Relaxed),
        );
        single(
            "resnet_connections_stalled",
            "gauge",
            "Connections holding a slot while their client does not read the answer.",
            self.stalled_writers.load(Ordering::Relaxed).max(0) as u64,
        );
        single(
            "resnet_connections_write_timeouts_total",
            "counter",
            "Connections closed because the client read nothing of the answer within --write-timeout-s.",
            self.write_timeouts.load(Ordering::Relaxed),
        );
        single(
            "resnet_connections_request_limit_total",
            "counter",
            "Connections closed after --max-requests-per-connection requests.",
            self.requests_per_connection_closes.load(Ordering::Relaxed),
        );
        single(
            "resnet_inflight_body_bytes",
            "gauge",
            "Bytes of request bodies held now (bounded by half of --max-inflight-mb).",
            self.body_bytes.load(Ordering::Relaxed).max(0) as u64,
        );
        single(
            "resnet_requests_refused_memory_total",
            "counter",
            "Requests answered 503 because the in-flight memory budget (--max-inflight-mb) was full.",
            self.memory_refusals.load(Ordering::Relaxed),
        );
        single(
            "resnet_decodes_waiting",
            "gauge",
            "Image decodes waiting for their turn in the decode budget.",
            self.decodes_waiting.load(Ordering::Relaxed).max(0) as u64,
        );
        single(
            "resnet_inflight_decode_bytes",
            "gauge",
            "Bytes of decoded pixels reserved by running decodes (bounded by half of --max-inflight-mb).",
            self.decode_bytes.load(Ordering::Relaxed).max(0) as u64,
        );
        single(
            "resnet_decodes_cancelled_total",
            "counter",
            "Decodes skipped or stopped because their request was over (client gone, deadline passed).",
            self.decodes_cancelled.load(Ordering::Relaxed),
        );
        single(
            "resnet_history_lines_skipped_total",
            "counter",
            "Lines of the history file skipped at start: torn by a crash or not records.",
            self.history_lines_skipped.load(Ordering::Relaxed),
        );
        if let Some(sources) = self.watch_sources.get() {
            single(
                "resnet_watch_event_clients",
                "gauge",
                "Clients connected to /v1/events.",
                self.watch_event_clients.load(Ordering::Relaxed).max(0) as u64,
            );
            single(
                "resnet_watch_events_lagged_total",
                "counter",
                "Events /v1/events clients skipped because they read too slowly (the watchers never wait for them).",
                self.watch_events_lagged.load(Ordering::Relaxed),
            );
            render_watch(&mut out, sources);
        }
        out
    }
}

/// The per-source counters of `--watch`. For a source whose frames are all accounted for
/// (a folder after its files are classified), received = classified + gated (both gates) +
/// dropped + frame errors; `errors` also counts problems with the source itself (frame 0).
fn render_watch(out: &mut String, sources: &[(String, Arc<SourceStats>)]) {
    let snaps: Vec<(String, resnet_watch::StatsSnapshot)> = sources
        .iter()
        .map(|(name, s)| (label_value(name), s.snapshot()))
        .collect();
    type Pick = fn(&resnet_watch::StatsSnapshot) -> u64;
    let counters: [(&str, &str, Pick); 5] = [
        (
            "resnet_watch_frames_received_total",
            "Frames (or files) a watch source delivered.",
            |s| s.received,
        ),
        (
            "resnet_watch_frames_classified_total",
            "Frames of a watch source that went through the network.",
            |s| s.classified,
        ),
        (
            "resnet_watch_frames_dropped_total",
            "Frames of a live watch source dropped because its previous frame still waited for the model.",
            |s| s.dropped,
        ),
        (
            "resnet_watch_errors_total",
            "Error events of a watch source (bad frames, failed reads).",
            |s| s.errors,
        ),
        (
            "resnet_watch_reconnects_total",
            "Times a watch source came back after an outage.",
            |s| s.reconnects,
        ),
    ];
    for (name, help, pick) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (source, s) in &snaps {
            let _ = writeln!(out, "{name}{{source=\"{source}\"}} {}", pick(s));
        }
    }
    let name = "resnet_watch_frames_gated_total";
    let _ = writeln!(
        out,
        "# HELP {name} Frames of a watch source not classified: over --fps (gate=\"fps\") or too like the last classified one (gate=\"motion\").\n# TYPE {name} counter"
    );
    for (source, s) in &snaps {
        let _ = writeln!(
            out,
            "{name}{{source=\"{source}\",gate=\"fps\"}} {}",
            s.skipped
        );
        let _ = writeln!(
            out,
            "{name}{{source=\"{source}\",gate=\"motion\"}} {}",
            s.gated
        );
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_rendered_with_inf() {
        let m = Metrics::default();
        m.observe_batch(1, Duration::from_millis(10));
        m.observe_batch(3, Duration::from_millis(30));
        m.observe_request("classify", 200, Duration::from_millis(20));
        m.observe_request("classify", 503, Duration::from_millis(1));
        let text = m.render();
        assert!(
            text.contains("resnet_batch_size_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("resnet_batch_size_bucket{le=\"2\"} 1\n"));
        assert!(text.contains("resnet_batch_size_bucket{le=\"4\"} 2\n"));
        assert!(text.contains("resnet_batch_size_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("resnet_batch_size_sum 4\n"));
        assert!(text.contains("resnet_images_classified_total 4\n"));
        assert!(text.contains("resnet_http_requests_total{route=\"classify\",status=\"503\"} 1\n"));
        assert!(text.contains(
            "resnet_http_request_duration_seconds_bucket{route=\"classify\",le=\"0.025\"} 2\n"
        ));
        assert!(text.contains("resnet_http_request_duration_seconds_count{route=\"classify\"} 2\n"));
        assert!(
            !text.contains("resnet_watch_"),
            "no watch metrics without sources"
        );
    }

    #[test]
    fn watch_sources_are_labelled_with_escaped_names() {
        let m = Metrics::default();
        let odd = Arc::new(SourceStats::default());
        odd.received.store(3, Ordering::Relaxed);
        odd.skipped.store(2, Ordering::Relaxed);
        m.set_watch_sources(vec![
            ("a\"b\\c\nd".into(), odd),
            ("cam".into(), Arc::default()),
        ]);
        let text = m.render();
        assert!(
            text.contains("resnet_watch_frames_received_total{source=\"a\\\"b\\\\c\\nd\"} 3\n"),
            "{text}"
        );
        assert!(text.contains(
            "resnet_watch_frames_gated_total{source=\"a\\\"b\\\\c\\nd\",gate=\"fps\"} 2\n"
        ));
        assert!(text.contains("resnet_watch_reconnects_total{source=\"cam\"} 0\n"));
        // Every sample line has a value after its labels: nothing the escaping could break.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.rsplit_once(' ')
                    .is_some_and(|(_, v)| v.parse::<f64>().is_ok()),
                "{line}"
            );
        }
    }
}
