//! What operators need around every request: the `X-Request-Id` (taken from the client or a
//! proxy, or made up), the access log line (text or JSON), and CORS for browsers on other
//! origins (off unless `--cors-origin` is given).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The header that carries the request id, in and out.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How the access log is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `POST /v1/classify 200 12.3ms id=...`.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format '{other}': text or json")),
        }
    }
}

tokio::task_local! {
    static CURRENT_ID: String;
}

/// Runs `f` with `id` as the current request id (see [`current_request_id`]).
pub async fn with_request_id<F: std::future::Future>(id: String, f: F) -> F::Output {
    CURRENT_ID.scope(id, f).await
}

/// The id of the request being handled on this task, if any (the history records it).
pub fn current_request_id() -> Option<String> {
    CURRENT_ID.try_with(Clone::clone).ok()
}

/// The client's `X-Request-Id` when it is 1 to 128 visible ASCII characters; otherwise a new
/// one (so a hostile value never reaches the log or the history).
pub fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(v) => v.to_string(),
        None => new_request_id(),
    }
}

/// 32 hex digits: the time in nanoseconds and a process-wide counter, mixed. Unique within a
/// process, and across replicas in practice (no randomness needed: ids only correlate logs).
pub fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let pid = u64::from(std::process::id());
    let mix = |mut x: u64| {
        // splitmix64's finaliser.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    format!(
        "{:016x}{:016x}",
        mix(t ^ pid.rotate_left(32)),
        mix(n ^ t.rotate_left(17))
    )
}

#[derive(Serialize)]
struct LogLine<'a> {
    time: String,
    method: &'a str,
    path: &'a str,
    status: u16,
    ms: f64,
    request_id: &'a str,
}

/// The access log line of one request, without the newline.
pub fn log_line(
    format: LogFormat,
    method: &Method,
    path: &str,
    status: u16,
    elapsed: Duration,
    id: &str,
) -> String {
    let ms = (elapsed.as_secs_f64() * 1e4).round() / 10.0;
    match format {
        LogFormat::Text => format!("{method} {path} {status} {ms:.1}ms id={id}"),
        LogFormat::Json => serde_json::to_string(&LogLine {
            time: crate::history::now_rfc3339(),
            method: method.as_str(),
            path,
            status,
            ms,
            request_id: id,
        })
        .unwrap_or_default(),
    }
}

/// Request headers a cross-origin browser may send.
const CORS_ALLOW_HEADERS: &str =
    "Authorization, Content-Type, X-Request-Id, Inference-Header-Content-Length";
/// Response headers a cross-origin page may read.
const CORS_EXPOSE_HEADERS: &str = "X-Request-Id, Inference-Header-Content-Length, Retry-After";

/// Adds `Access-Control-Allow-Origin` (and what goes with it) for `origin`.
pub fn add_cors<B>(resp: &mut Response<B>, origin: &str) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        hyper::header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(CORS_EXPOSE_HEADERS),
    );
    if origin != "*" {
        h.append(hyper::header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The answer to a CORS preflight (`OPTIONS`) for a route accepting `method`.
pub fn preflight(method: &Method) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    let methods = format!("{method}, OPTIONS");
    if let Ok(v) = HeaderValue::from_str(&methods) {
        h.insert(hyper::header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    h.insert(
        hyper::header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_ALLOW_HEADERS),
    );
    h.insert(
        hyper::header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_client_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        let made = request_id(&h);
        assert_eq!(made.len(), 32);
        assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn json_log_lines_are_json_with_the_id() {
        let line = log_line(
            LogFormat::Json,
            &Method::POST,
            "/v1/classify",
            200,
            Duration::from_micros(12_345),
            "id-1",
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["ms"], 12.3);
        assert_eq!(v["path"], "/v1/classify");
    }
}
