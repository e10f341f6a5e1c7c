//! `GET /v1/events`: the watchers' events as Server-Sent Events.
//!
//! Each client gets the latest event of every source, then each new one as it happens
//! (`event: watch`, or `event: alert` when an `--alert` class fired; `data:` the event's JSON),
//! and a `: keep-alive` comment when nothing happened for [`KEEP_ALIVE`]. A client that reads
//! slower than events come falls behind by at most [`crate::watch::EVENTS_PER_CLIENT`] events, then skips
//! the oldest (counted): the watchers never wait for it. One that reads nothing at all is
//! closed by the write deadline (`--write-timeout-s`) like any other stalled connection, and
//! each stream holds one of the `--max-connections` slots. Streams end when shutdown begins
//! (SIGTERM, before the drain), so they never hold the drain up.

use super::respond::error_response;
use super::AppState;
use crate::error::ApiError;
use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

/// A comment line after this long without an event, so proxies and browsers keep the stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The body of an event stream.
pub type EventStream = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// Any answer of the server: a whole body, or an event stream.
pub type ResponseBody = Either<Full<Bytes>, EventStream>;

/// The stream, or 404 on a server without watch sources.
pub(super) fn events(state: &Arc<AppState>) -> Response<ResponseBody> {
    let Some(hub) = &state.watch else {
        return error_response(&ApiError::new(
            StatusCode::NOT_FOUND,
            "no_watch_sources",
            "this server watches no sources (start it with --watch SOURCE)",
        ))
        .map(Either::Left);
    };
    let (replay, events) = hub.subscribe();
    let subscriber = Subscriber {
        hello: true,
        replay: replay.into(),
        events,
        closing: state.closing.subscribe(),
        keep_alive: tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE),
        client: Client::count(Arc::clone(&state.metrics)),
    };
    let stream = futures_util::stream::unfold(subscriber, |mut s| async move {
        let bytes = s.next().await?;
        Some((Ok(Frame::data(bytes)), s))
    });
    let mut resp = Response::new(Either::Right(StreamBody::new(stream.boxed())));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx (deploy/) would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// One client's place in the stream.
struct Subscriber {
    /// The `retry:` line is still to be sent.
    hello: bool,
    /// The sources' latest events, sent first.
    replay: VecDeque<Bytes>,
    events: Receiver<Bytes>,
    closing: tokio::sync::watch::Receiver<bool>,
    keep_alive: tokio::time::Interval,
    /// Counted as connected while the stream lives.
    client: Client,
}

impl Subscriber {
    /// The next chunk of the stream; `None` ends it (shutdown).
    async fn next(&mut self) -> Option<Bytes> {
        if self.hello {
            self.hello = false;
            // EventSource reconnects after this many milliseconds when the stream ends.
            return Some(Bytes::from_static(
                b"retry: 2000\n: resnet watch events\n\n",
            ));
        }
        if let Some(b) = self.replay.pop_front() {
            return Some(b);
        }
        loop {
            if *self.closing.borrow_and_update() {
                return None;
            }
            let woke = tokio::select! {
                changed = self.closing.changed() => Woke::Closing(changed.is_ok()),
                event = self.events.recv() => Woke::Event(event),
                _ = self.keep_alive.tick() => Woke::KeepAlive,
            };
            match woke {
                // The flag is read at the top of the loop; a dropped sender ends the stream.
                Woke::Closing(open) if open => {}
                Woke::Closing(_) | Woke::Event(Err(RecvError::Closed)) => return None,
                Woke::Event(Ok(b)) => {
                    self.keep_alive.reset();
                    return Some(b);
                }
                Woke::Event(Err(RecvError::Lagged(n))) => {
                    self.client.metrics.watch_events_lagged(n)
                }
                Woke::KeepAlive => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }
}

/// What woke a waiting subscriber.
enum Woke {
    /// Shutdown's flag changed (false: its sender is gone).
    Closing(bool),
    Event(Result<Bytes, RecvError>),
    KeepAlive,
}

/// Counts a connected client in `resnet_watch_event_clients` while it lives.
struct Client {
    metrics: Arc<Metrics>,
}

impl Client {
    fn count(metrics: Arc<Metrics>) -> Client {
        metrics.watch_event_clients_add(1);
        Client { metrics }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.metrics.watch_event_clients_add(-1);
    }
}
