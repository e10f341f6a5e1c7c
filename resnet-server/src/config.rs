//! The server's settings, validated once at start.

use crate::error::ServerError;
use resnet_core::decode::ExifMode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `resnet serve` can be told.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub addr: SocketAddr,
    /// A second port on the same address serving the same routes (`--deepstack-port`), for
    /// DeepStack and CodeProject.AI clients that assume port 5000 or 32168. 0 picks a free one.
    pub deepstack_port: Option<u16>,
    /// Most images run through the network together.
    pub max_batch: usize,
    /// How long the first request of a batch waits for others.
    pub batch_wait: Duration,
    /// Requests that may wait for the model; more get 503 with `Retry-After`.
    pub queue: usize,
    /// Largest request body in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Largest image in pixels, checked from its header (422 above it).
    pub max_pixels: u64,
    /// Whole-request deadline, body upload included (504 after it).
    pub timeout: Duration,
    /// Deadline for a client to send its request headers (the connection is closed after it).
    pub header_read_timeout: Duration,
    /// Bearer token every route but `/healthz`, `/readyz` and the page `/` requires.
    pub token: Option<String>,
    /// Recognitions kept for `/v1/history` (0 turns history off).
    pub history: usize,
    /// Append-only JSON-lines file the history is written to and reloaded from.
    pub history_file: Option<PathBuf>,
    /// Most images in one `/v1/classify/batch` request.
    pub max_batch_parts: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// EXIF orientation handling for uploads.
    pub exif: ExifMode,
    /// One log line per request on stderr.
    pub log_requests: bool,
    /// Most connections open at once; beyond it new connections are closed at once (and
    /// counted in `/metrics`), so idle or slow clients cannot exhaust memory or descriptors.
    pub max_connections: usize,
    /// How long writing an answer may go without progress (a client that does not read): the
    /// connection is then closed and its slot freed.
    pub write_timeout: Duration,
    /// Most requests answered on one connection (pipelined or kept alive); the last answer
    /// says `Connection: close`.
    pub max_requests_per_connection: usize,
    /// Memory for request data in flight, in bytes: half for request bodies (a body that does
    /// not fit gets 503 with `Retry-After`), half for decoded pixels (decodes wait for their
    /// share, requests taking turns).
    pub max_inflight_bytes: u64,
    /// Most images decoded at once.
    pub max_concurrent_decodes: usize,
    /// How often memory freed by finished requests is given back to the system (when some was).
    pub memory_trim_interval: Duration,
    /// Text or JSON access log lines.
    pub log_format: crate::ops::LogFormat,
    /// `Access-Control-Allow-Origin` for cross-origin browsers (`*` or one origin); `None`: no
    /// CORS headers, and `OPTIONS` is a 405 like any other method.
    pub cors_origin: Option<String>,
    /// After SIGTERM, how long readiness says 503 while the server still accepts and answers
    /// (so load balancers and Kubernetes stop sending) before the listener closes and the
    /// in-flight requests drain.
    pub drain: Duration,
    /// Publish each recognition to this MQTT broker and topic (`--mqtt-url`).
    pub mqtt: Option<crate::mqtt::MqttConfig>,
    /// `--watch`: sources the server classifies itself (history, `/metrics`, `/v1/events`).
    pub watch: Option<crate::watch::WatchConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            deepstack_port: None,
            max_batch: 8,
            batch_wait: Duration::from_millis(2),
            queue: 64,
            max_body_bytes: 10 << 20,
            max_pixels: resnet_core::decode::DEFAULT_MAX_PIXELS,
            timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            token: None,
            history: 50,
            history_file: None,
            max_batch_parts: 32,
            shutdown_grace: Duration::from_secs(30),
            exif: ExifMode::Apply,
            log_requests: true,
            max_connections: 1024,
            write_timeout: Duration::from_secs(5),
            max_requests_per_connection: 1000,
            max_inflight_bytes: 512 << 20,
            max_concurrent_decodes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            memory_trim_interval: Duration::from_secs(1),
            log_format: crate::ops::LogFormat::Text,
            cors_origin: None,
            drain: Duration::ZERO,
            mqtt: None,
            watch: None,
        }
    }
}

impl Config {
    /// Checks the ranges that would otherwise make the server misbehave.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: &str| Err(ServerError::Config(m.to_string()));
        if self.max_batch == 0 || self.max_batch > 256 {
            return bad("--max-batch must be between 1 and 256");
        }
        if self.queue == 0 {
            return bad("--queue must be at least 1");
        }
        if self.max_body_bytes == 0 {
            return bad("--max-body-mb must be positive");
        }
        if self.max_pixels == 0 {
            return bad("--max-megapixels must be positive");
        }
        if self.timeout.is_zero()
            || self.header_read_timeout.is_zero()
            || self.write_timeout.is_zero()
        {
            return bad("timeouts must be positive");
        }
        if self.max_inflight_bytes / 2 < self.max_body_bytes as u64 {
            return bad("--max-inflight-mb must be at least twice --max-body-mb (half of it holds request bodies)");
        }
        if self.max_concurrent_decodes == 0 {
            return bad("--max-decodes must be at least 1");
        }
        if self.max_requests_per_connection == 0 {
            return bad("--max-requests-per-connection must be at least 1");
        }
        if self.max_batch_parts == 0 {
            return bad("the batch route needs at least one part");
        }
        if let Some(o) = &self.cors_origin {
            if o.is_empty() || hyper::header::HeaderValue::from_str(o).is_err() {
                return bad("--cors-origin must be '*' or an origin such as https://example.com");
            }
        }
        if self
            .deepstack_port
            .is_some_and(|p| p != 0 && p == self.addr.port())
        {
            return bad("--deepstack-port must differ from the port of --addr");
        }
        if matches!(&self.token, Some(t) if t.is_empty()) {
            return bad("the token must not be empty");
        }
        Ok(())
    }
}
