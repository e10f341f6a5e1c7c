//! An HTTP source: an MJPEG stream (`multipart/x-mixed-replace`), read part by part, or a URL
//! that answers one image per request (a camera's `snapshot.jpg`), polled at `--fps`.

use crate::backoff::{Backoff, Outage};
use crate::engine::{bump, Feed};
use crate::mjpeg::{boundary_from_content_type, PartParser};
use std::io::Read;
use std::time::{Duration, Instant};

/// How often a snapshot URL is polled without `--fps`.
const DEFAULT_SNAPSHOT_PERIOD: Duration = Duration::from_secs(1);

pub(crate) fn run(mut feed: Feed, url: &str) {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(feed.opts.http_timeout)
        .timeout_read(feed.opts.http_timeout)
        .build();
    let mut backoff = Backoff::new(feed.opts.reconnect_max);
    let mut outage = Outage::default();
    let what = feed.name.clone();
    let period = if feed.opts.fps > 0.0 {
        Duration::from_secs_f64(1.0 / feed.opts.fps)
    } else {
        DEFAULT_SNAPSHOT_PERIOD
    };
    while !feed.stopped() {
        let started = Instant::now();
        let response = match agent.get(url).call() {
            Ok(r) => r,
            Err(e) => {
                outage.failed(&what, &short_error(&e));
                if !feed.sleep(backoff.next_delay()) {
                    return;
                }
                continue;
            }
        };
        let content_type = response.content_type().to_string();
        let full_type = response.header("content-type").unwrap_or("").to_string();
        if outage.recovered(&what) {
            bump(&feed.stats().reconnects);
        }
        backoff.reset();
        if let Some(boundary) = boundary_from_content_type(&full_type) {
            let why = stream(&mut feed, response.into_reader(), &boundary);
            if feed.stopped() {
                return;
            }
            outage.failed(&what, &why);
            if !feed.sleep(backoff.next_delay()) {
                return;
            }
        } else if content_type.starts_with("multipart/") {
            feed.error(
                0,
                None,
                format!("{content_type} without a boundary parameter: cannot split it into frames"),
            );
            if !feed.sleep(backoff.next_delay()) {
                return;
            }
        } else {
            snapshot(&mut feed, response);
            let next = started + period;
            if !feed.sleep(next.saturating_duration_since(Instant::now())) {
                return;
            }
        }
    }
}

/// Reads parts until the stream ends or fails; returns why it ended.
fn stream(feed: &mut Feed, mut body: impl Read, boundary: &[u8]) -> String {
    let mut parser = PartParser::new(boundary, feed.opts.max_frame_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if feed.stopped() {
            return "stopped".into();
        }
        match body.read(&mut buf) {
            Ok(0) => {
                return match parser.pending_bytes() {
                    0 => "the stream ended".into(),
                    n => format!("the stream ended inside a frame ({n} bytes discarded)"),
                }
            }
            Ok(n) => {
                parser.push(&buf[..n]);
                while let Some(part) = parser.next_part() {
                    let (frame, take) = feed.arrive(false);
                    match part {
                        Ok(bytes) if take => feed.offer_bytes(frame, &bytes),
                        Ok(_) => {}
                        Err(e) => feed.error(frame, None, e.to_string()),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return format!("read failed: {e}"),
        }
    }
}

/// One snapshot: the whole body is one frame.
fn snapshot(feed: &mut Feed, response: ureq::Response) {
    let limit = feed.opts.max_frame_bytes;
    let mut bytes = Vec::new();
    let read = response
        .into_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes);
    let (frame, _) = feed.arrive(true);
    match read {
        Err(e) => feed.error(frame, None, format!("reading the snapshot: {e}")),
        Ok(_) if bytes.len() > limit => feed.error(
            frame,
            None,
            format!("snapshot larger than the limit of {limit} bytes"),
        ),
        Ok(_) => feed.offer_bytes(frame, &bytes),
    }
}

/// ureq's error without the response body: `HTTP 503` or the transport problem.
fn short_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, _) => format!("HTTP {code}"),
        ureq::Error::Transport(t) => t.to_string(),
    }
}
