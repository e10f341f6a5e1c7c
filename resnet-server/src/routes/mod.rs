//! `handle(request, state)`: the route table, authentication, deadlines, and dispatch to the
//! handlers, one module per concern. It never returns an error: every failure becomes a status
//! and a JSON body ([`respond::error_response`]).
//!
//! Adding a route: a variant of [`Route`], its line in [`Route::ALL`] and in each `match` of
//! `impl Route` (the compiler lists the ones you missed), and its arm in [`dispatch`].

mod auth;
mod cam;
mod classify;
mod events;
mod kserve;
pub mod openapi;
mod query;
pub mod respond;
mod status;
mod trace;
mod vision;

use crate::batcher::Batcher;
use crate::budget::{BodyBudget, DecodeBudget, RequestScope};
use crate::config::Config;
use crate::error::ApiError;
use crate::history::History;
use crate::metrics::Metrics;
use crate::model::ServedModel;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, Response, StatusCode};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

pub(crate) use classify::{thumbnail_data_url, HISTORY_THUMBNAIL_SIDE};
pub use events::{EventStream, ResponseBody, KEEP_ALIVE};
pub use respond::error_response;

/// Everything a request handler needs.
pub struct AppState {
    /// The settings.
    pub config: Config,
    /// The model and its description.
    pub model: ServedModel,
    /// The queue in front of the inference thread.
    pub batcher: Batcher,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// The recognition log.
    pub history: History,
    /// Where recognitions are published, with `--mqtt-url`.
    pub mqtt: Option<Arc<crate::mqtt::Publisher>>,
    /// Set when shutdown begins (`/readyz` then says 503).
    pub shutting_down: AtomicBool,
    /// `/openapi.json`, made once at start (it describes this configuration and model).
    pub openapi: Bytes,
    /// Request bodies held at once.
    pub bodies: Arc<BodyBudget>,
    /// Concurrent decodes and decoded pixels in flight.
    pub decodes: DecodeBudget,
    /// The `--watch` sources, their events and counters (`None`: no sources).
    pub watch: Option<crate::watch::WatchHub>,
    /// Turns true when shutdown begins: event streams end, so they do not hold the drain up.
    pub closing: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Shutdown begins (SIGTERM, or [`crate::Server::shutdown`]): readiness turns 503, the
    /// event streams end and the watchers are told to stop (they finish the frame in hand; the
    /// shutdown waits for them before it stops the inference thread). Idempotent.
    pub fn begin_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        self.closing.send_replace(true);
        if let Some(hub) = &self.watch {
            hub.stop();
        }
    }
}

/// Every route the server answers. A path that is not one of these is a 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /`: the web page.
    Page,
    /// `GET /healthz`: the process is alive.
    Healthz,
    /// `GET /readyz`: the model is loaded and warmed up, and the server is not shutting down.
    Readyz,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /v1/model`: the model, its backend, weights and limits.
    Model,
    /// `GET /v1/history`: the last recognitions.
    History,
    /// `POST /v1/classify`: one image.
    Classify,
    /// `POST /v1/classify/batch`: several images in one multipart body.
    ClassifyBatch,
    /// `POST /v1/cam`: the class activation map as a PNG.
    Cam,
    /// `POST /predict`: the seed service's API.
    Predict,
    /// `POST /v1/vision/scene`: DeepStack / CodeProject.AI scene recognition.
    Scene,
    /// `POST /v1/vision/custom/list`: CodeProject.AI's custom model list (empty).
    CustomList,
    /// `GET /v1/status/updateavailable`: CodeProject.AI's update check (never one).
    UpdateAvailable,
    /// `GET /v2/health/live`: KServe v2 liveness.
    V2Live,
    /// `GET /v2/health/ready`: KServe v2 readiness.
    V2Ready,
    /// `GET /v2`: KServe v2 server metadata.
    V2Server,
    /// `GET /v2/models/{name}[/versions/{v}]`: KServe v2 model metadata.
    V2Model,
    /// `GET /v2/models/{name}[/versions/{v}]/ready`.
    V2ModelReady,
    /// `GET /v2/models/{name}[/versions/{v}]/config`: Triton's model configuration.
    V2ModelConfig,
    /// `POST /v2/models/{name}[/versions/{v}]/infer`: KServe v2 inference.
    V2Infer,
    /// `GET /explore`: the layer-by-layer explorer page.
    Explore,
    /// `POST /v1/trace`: one image layer by layer (statistics, times, feature maps, SQNR).
    Trace,
    /// `GET /openapi.json`: the OpenAPI document of every route.
    OpenApi,
    /// `GET /v1/events`: the `--watch` sources' events as Server-Sent Events.
    Events,
}

/// The body shape of a route's errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error": message, "code": code}`.
    Standard,
    /// DeepStack's `{"success": false, "error": message, "code": code}`.
    Vision,
}

impl Route {
    /// Every route, in the order the docs list them.
    pub const ALL: [Route; 24] = [
        Route::Page,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Model,
        Route::History,
        Route::Events,
        Route::Classify,
        Route::ClassifyBatch,
        Route::Cam,
        Route::Predict,
        Route::Scene,
        Route::CustomList,
        Route::UpdateAvailable,
        Route::V2Live,
        Route::V2Ready,
        Route::V2Server,
        Route::V2Model,
        Route::V2ModelReady,
        Route::V2ModelConfig,
        Route::V2Infer,
        Route::Explore,
        Route::Trace,
        Route::OpenApi,
    ];

    /// The route a request path names, if any (the query string is not part of `path`).
    pub fn from_path(path: &str) -> Option<Route> {
        Some(match path {
            "/" => Route::Page,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            "/v1/model" => Route::Model,
            "/v1/history" => Route::History,
            "/v1/events" => Route::Events,
            "/v1/classify" => Route::Classify,
            "/v1/classify/batch" => Route::ClassifyBatch,
            "/v1/cam" => Route::Cam,
            "/predict" => Route::Predict,
            "/explore" => Route::Explore,
            "/v1/trace" => Route::Trace,
            "/openapi.json" => Route::OpenApi,
            "/v1/vision/scene" => Route::Scene,
            "/v1/vision/custom/list" => Route::CustomList,
            "/v1/status/updateavailable" => Route::UpdateAvailable,
            "/v2/health/live" => Route::V2Live,
            "/v2/health/ready" => Route::V2Ready,
            "/v2" => Route::V2Server,
            _ => match kserve::parse_model_path(path)?.op {
                kserve::ModelOp::Metadata => Route::V2Model,
                kserve::ModelOp::Ready => Route::V2ModelReady,
                kserve::ModelOp::Config => Route::V2ModelConfig,
                kserve::ModelOp::Infer => Route::V2Infer,
            },
        })
    }

    /// The path, as documented.
    pub fn path(self) -> &'static str {
        match self {
            Route::Page => "/",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Model => "/v1/model",
            Route::History => "/v1/history",
            Route::Events => "/v1/events",
            Route::Classify => "/v1/classify",
            Route::ClassifyBatch => "/v1/classify/batch",
            Route::Cam => "/v1/cam",
            Route::Predict => "/predict",
            Route::Scene => "/v1/vision/scene",
            Route::CustomList => "/v1/vision/custom/list",
            Route::UpdateAvailable => "/v1/status/updateavailable",
            Route::V2Live => "/v2/health/live",
            Route::V2Ready => "/v2/health/ready",
            Route::V2Server => "/v2",
            Route::V2Model => "/v2/models/{name}",
            Route::V2ModelReady => "/v2/models/{name}/ready",
            Route::V2ModelConfig => "/v2/models/{name}/config",
            Route::V2Infer => "/v2/models/{name}/infer",
            Route::Explore => "/explore",
            Route::Trace => "/v1/trace",
            Route::OpenApi => "/openapi.json",
        }
    }

    /// The one method the route accepts.
    pub fn method(self) -> Method {
        match self {
            Route::Page
            | Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::Model
            | Route::History
            | Route::Events
            | Route::UpdateAvailable
            | Route::V2Live
            | Route::V2Ready
            | Route::V2Server
            | Route::V2Model
            | Route::V2ModelReady
            | Route::V2ModelConfig
            | Route::Explore
            | Route::OpenApi => Method::GET,
            Route::Classify
            | Route::ClassifyBatch
            | Route::Cam
            | Route::Predict
            | Route::Scene
            | Route::CustomList
            | Route::V2Infer
            | Route::Trace => Method::POST,
        }
    }

    /// Reachable without the bearer token: the probes, the page (a static file holding no
    /// data), and the DeepStack routes, which check the token as their form field `api_key`.
    pub fn is_public(self) -> bool {
        matches!(
            self,
            Route::Page
                | Route::Explore
                | Route::Healthz
                | Route::Readyz
                | Route::V2Live
                | Route::V2Ready
                | Route::Scene
                | Route::CustomList
                | Route::UpdateAvailable
        )
    }

    /// The body shape this route's clients expect of a failure: DeepStack's for its routes.
    pub fn error_shape(self) -> ErrorShape {
        match self {
            Route::Scene | Route::CustomList | Route::UpdateAvailable => ErrorShape::Vision,
            _ => ErrorShape::Standard,
        }
    }

    /// Renders a failure in the body shape of [`Route::error_shape`].
    pub fn error_response(self, e: &ApiError) -> Response<Full<Bytes>> {
        match self.error_shape() {
            ErrorShape::Vision => vision::error_response(e),
            ErrorShape::Standard => error_response(e),
        }
    }

    /// The `route` label in metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            Route::Page => "page",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Model => "model",
            Route::History => "history",
            Route::Events => "events",
            Route::Classify => "classify",
            Route::ClassifyBatch => "classify_batch",
            Route::Cam => "cam",
            Route::Predict => "predict",
            Route::Scene => "vision_scene",
            Route::CustomList => "vision_custom_list",
            Route::UpdateAvailable => "update_available",
            Route::V2Live => "v2_live",
            Route::V2Ready => "v2_ready",
            Route::V2Server => "v2_server",
            Route::V2Model => "v2_model",
            Route::V2ModelReady => "v2_model_ready",
            Route::V2ModelConfig => "v2_model_config",
            Route::V2Infer => "v2_infer",
            Route::Explore => "explore",
            Route::Trace => "trace",
            Route::OpenApi => "openapi",
        }
    }
}

/// Answers one request. Never fails; records metrics and logs one line.
pub async fn handle(req: Request<Incoming>, state: Arc<AppState>) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = Route::from_path(&path);
    let metric_label = route.map_or("unmatched", Route::metric_label);
    let request_id = crate::ops::request_id(req.headers());
    let cors = state.config.cors_origin.clone();
    let mut response = match route {
        None => error_response(&ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        ))
        .map(Either::Left),
        Some(r) if method == Method::OPTIONS && cors.is_some() => {
            crate::ops::preflight(&r.method()).map(Either::Left)
        }
        // HEAD is GET without the body (hyper sends the head only, Content-Length included).
        Some(r)
            if r.method() != method && !(method == Method::HEAD && r.method() == Method::GET) =>
        {
            method_not_allowed(r).map(Either::Left)
        }
        Some(r) => match auth::authorize(&state.config, r, &req) {
            Err(e) => r.error_response(&e).map(Either::Left),
            Ok(()) if r == Route::Events => events::events(&state),
            Ok(()) => {
                let run = with_deadline(r, req, Arc::clone(&state), started);
                crate::ops::with_request_id(request_id.clone(), run)
                    .await
                    .map(Either::Left)
            }
        },
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(crate::ops::REQUEST_ID, v);
    }
    if let Some(origin) = &cors {
        crate::ops::add_cors(&mut response, origin);
    }
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.observe_request(metric_label, status, elapsed);
    if state.config.log_requests {
        let format = state.config.log_format;
        let line = crate::ops::log_line(format, &method, &path, status, elapsed, &request_id);
        eprintln!("{line}");
    }
    response
}

fn method_not_allowed(route: Route) -> Response<Full<Bytes>> {
    let mut resp = error_response(&ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} accepts {} only", route.path(), route.method()),
    ));
    let allow = if route.method() == Method::GET {
        "GET, HEAD"
    } else {
        "POST"
    };
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Runs the handler under the whole-request deadline (`--timeout-s`, upload included).
async fn with_deadline(
    route: Route,
    req: Request<Incoming>,
    state: Arc<AppState>,
    started: Instant,
) -> Response<Full<Bytes>> {
    let deadline = state.config.timeout;
    // The request's work stops once it is over: answered, past its deadline, or dropped with
    // its connection (the guard is dropped with this future in every case).
    let (scope, _cancel_on_drop) = RequestScope::new();
    let handler = scope.run(dispatch(route, req, state, started));
    match tokio::time::timeout(deadline, handler).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => route.error_response(&e),
        Err(_) => route.error_response(&ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the request took longer than the server's limit of {:.1} s",
                deadline.as_secs_f64()
            ),
        )),
    }
}

/// One arm per route: a new variant of [`Route`] does not compile until it has its handler.
async fn dispatch(
    route: Route,
    req: Request<Incoming>,
    state: Arc<AppState>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match route {
        Route::Page => Ok(status::page()),
        Route::Healthz => Ok(status::healthz()),
        Route::Readyz => Ok(status::readyz(&state)),
        Route::Metrics => Ok(status::metrics(&state)),
        Route::Model => Ok(status::model(&state)),
        Route::History => Ok(status::history(&state)),
        Route::Classify => classify::classify(req, state, started).await,
        Route::ClassifyBatch => classify::classify_batch(req, state, started).await,
        Route::Predict => classify::predict(req, state, started).await,
        Route::Cam => cam::cam(req, state).await,
        Route::Scene => vision::scene(req, state, started).await,
        Route::CustomList => Ok(vision::custom_list()),
        Route::UpdateAvailable => Ok(vision::update_available()),
        Route::V2Live => Ok(kserve::live()),
        Route::V2Ready => Ok(kserve::ready(&state)),
        Route::V2Server => Ok(kserve::server_metadata()),
        Route::V2Model => kserve::model_metadata(req.uri().path()),
        Route::V2ModelReady => kserve::model_ready(req.uri().path(), &state),
        Route::V2ModelConfig => kserve::model_config(req.uri().path(), &state),
        Route::V2Infer => kserve::infer_route(req, state, started).await,
        Route::Explore => Ok(trace::page()),
        Route::Trace => trace::trace(req, state, started).await,
        Route::OpenApi => Ok(openapi::serve(&state)),
        // A stream has no whole body and no deadline: `handle` answers it before dispatching.
        Route::Events => Err(ApiError::internal("/v1/events is served as a stream")),
    }
}

#[cfg(test)]
mod tests {
    use super::Route;
    use std::collections::HashSet;

    #[test]
    fn every_route_is_found_by_its_own_path_and_labels_are_distinct() {
        for r in Route::ALL {
            assert_eq!(Route::from_path(r.path()), Some(r), "{r:?}");
        }
        let labels: HashSet<_> = Route::ALL.iter().map(|r| r.metric_label()).collect();
        assert_eq!(labels.len(), Route::ALL.len(), "metric labels collide");
        let paths: HashSet<_> = Route::ALL.iter().map(|r| r.path()).collect();
        assert_eq!(paths.len(), Route::ALL.len(), "paths collide");
        assert_eq!(Route::from_path("/v1/classify/"), None);
        assert_eq!(Route::from_path("/V1/classify"), None);
    }
}
