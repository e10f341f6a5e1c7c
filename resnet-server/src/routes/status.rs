//! The GET routes: the page, the probes, metrics, the model and the history.

use super::respond::{error_response, json_response, respond};
use super::AppState;
use crate::api::{HistoryResponse, Limits, ModelResponse, Status};
use crate::error::ApiError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use std::sync::atomic::Ordering;

pub(super) fn page() -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(crate::pages::CLASSIFIER_PAGE.as_bytes()),
    )
}

pub(super) fn healthz() -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &Status { status: "ok" })
}

impl AppState {
    /// Ready for traffic: the model is warmed up and no shutdown has begun (a SIGTERM turns
    /// this false before the listener closes, so load balancers stop sending first).
    pub fn is_ready(&self) -> bool {
        self.batcher.is_ready() && !self.shutting_down.load(Ordering::Acquire)
    }
}

pub(super) fn readyz(state: &AppState) -> Response<Full<Bytes>> {
    if state.shutting_down.load(Ordering::Acquire) {
        error_response(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ))
    } else if state.batcher.is_ready() {
        json_response(StatusCode::OK, &Status { status: "ready" })
    } else {
        error_response(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "warming_up",
            "the model is warming up",
        ))
    }
}

pub(super) fn metrics(state: &AppState) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(
            state
                .metrics
                .render_with_mqtt(state.mqtt.as_ref().map(|p| p.stats())),
        ),
    )
}

pub(super) fn model(state: &AppState) -> Response<Full<Bytes>> {
    let c = &state.config;
    let body = ModelResponse {
        info: &state.model.info,
        limits: Limits {
            max_batch: c.max_batch,
            batch_wait_ms: c.batch_wait.as_secs_f64() * 1e3,
            queue: c.queue,
            max_body_bytes: c.max_body_bytes,
            max_megapixels: c.max_pixels as f64 / 1e6,
            timeout_s: c.timeout.as_secs_f64(),
            max_batch_parts: c.max_batch_parts,
        },
        history: state.history.capacity(),
        watch: state
            .watch
            .as_ref()
            .map_or_else(Vec::new, |hub| hub.source_names()),
    };
    json_response(StatusCode::OK, &body)
}

pub(super) fn history(state: &AppState) -> Response<Full<Bytes>> {
    let body = HistoryResponse {
        capacity: state.history.capacity(),
        synthetic_weights: state.model.info.synthetic_weights,
        entries: state.history.newest_first(),
    };
    json_response(StatusCode::OK, &body)
}
