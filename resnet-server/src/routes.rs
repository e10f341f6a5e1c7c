//! `handle(request, state)`: the route table, authentication, deadlines, and every route.
//! It never returns an error: every failure becomes a status and a JSON body.

use crate::batcher::{Batcher, Done, Work};
use crate::body::{body_kind, multipart_files, read_limited, single_image, BodyKind, Upload};
use crate::config::Config;
use crate::error::ApiError;
use crate::history::{now_rfc3339, Entry, History};
use crate::metrics::Metrics;
use crate::model::ServedModel;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use image::RgbImage;
use ndarray::Array3;
use resnet_core::decode::{decode_image_bytes, DecodeOptions};
use resnet_core::postprocess::{softmax, top_k, Prediction};
use resnet_core::preprocess::{resize_and_crop, to_normalized_chw};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The page served at `/`.
const PAGE: &str = include_str!("page.html");

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
    /// Set when shutdown begins (`/readyz` then says 503).
    pub shutting_down: AtomicBool,
}

/// One row of the route table.
struct Route {
    path: &'static str,
    /// The `route` label in metrics.
    name: &'static str,
    method: Method,
    /// Reachable without the token.
    open: bool,
}

fn routes() -> [Route; 10] {
    let r = |path, name, method, open| Route {
        path,
        name,
        method,
        open,
    };
    [
        r("/", "page", Method::GET, true),
        r("/healthz", "healthz", Method::GET, true),
        r("/readyz", "readyz", Method::GET, true),
        r("/metrics", "metrics", Method::GET, false),
        r("/v1/model", "model", Method::GET, false),
        r("/v1/history", "history", Method::GET, false),
        r("/v1/classify", "classify", Method::POST, false),
        r("/v1/classify/batch", "classify_batch", Method::POST, false),
        r("/v1/cam", "cam", Method::POST, false),
        r("/predict", "predict", Method::POST, false),
    ]
}

/// Answers one request. Never fails; records metrics and logs one line.
pub async fn handle(req: Request<Incoming>, state: Arc<AppState>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let table = routes();
    let route = table.iter().find(|r| r.path == path);
    let metric_name = route.map_or("unmatched", |r| r.name);
    let response = match route {
        None => error_response(&ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        )),
        Some(r) if r.method != method => {
            let mut resp = error_response(&ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} accepts {} only", r.method),
            ));
            resp.headers_mut().insert(
                ALLOW,
                HeaderValue::from_static(if r.method == Method::GET {
                    "GET"
                } else {
                    "POST"
                }),
            );
            resp
        }
        Some(r) => match authorize(&state.config, r, &req) {
            Err(e) => error_response(&e),
            Ok(()) if r.method == Method::POST => {
                let deadline = state.config.timeout;
                match tokio::time::timeout(deadline, post(r.name, req, Arc::clone(&state), started))
                    .await
                {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(e)) => error_response(&e),
                    Err(_) => error_response(&ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "timeout",
                        format!(
                            "the request took longer than the server's limit of {:.1} s",
                            deadline.as_secs_f64()
                        ),
                    )),
                }
            }
            Ok(()) => get(r.name, &state),
        },
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.observe_request(metric_name, status, elapsed);
    if state.config.log_requests {
        eprintln!(
            "{method} {path} {status} {:.1}ms",
            elapsed.as_secs_f64() * 1e3
        );
    }
    response
}

/// Checks `Authorization: Bearer TOKEN` when a token is configured (constant-time compare).
fn authorize(config: &Config, route: &Route, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = &config.token else {
        return Ok(());
    };
    if route.open {
        return Ok(());
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the bearer token is wrong",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this server requires 'Authorization: Bearer <token>'",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn get(name: &str, state: &AppState) -> Response<Full<Bytes>> {
    match name {
        "page" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(PAGE.as_bytes()),
        ),
        "healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "readyz" => {
            if state.shutting_down.load(Ordering::Acquire) {
                error_response(&ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the server is shutting down",
                ))
            } else if state.batcher.is_ready() {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            } else {
                error_response(&ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "warming_up",
                    "the model is warming up",
                ))
            }
        }
        "metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(state.metrics.render()),
        ),
        "model" => {
            let c = &state.config;
            let mut v = serde_json::to_value(&state.model.info).unwrap_or(Value::Null);
            v["limits"] = json!({
                "max_batch": c.max_batch,
                "batch_wait_ms": c.batch_wait.as_secs_f64() * 1e3,
                "queue": c.queue,
                "max_body_bytes": c.max_body_bytes,
                "max_megapixels": c.max_pixels as f64 / 1e6,
                "timeout_s": c.timeout.as_secs_f64(),
                "max_batch_parts": c.max_batch_parts,
            });
            v["history"] = json!(state.history.capacity());
            json_response(StatusCode::OK, &v)
        }
        "history" => json_response(
            StatusCode::OK,
            &json!({
                "capacity": state.history.capacity(),
                "synthetic_weights": state.model.info.synthetic_weights,
                "entries": state.history.newest_first(),
            }),
        ),
        _ => error_response(&ApiError::internal(format!("no GET handler for {name}"))),
    }
}

async fn post(
    name: &'static str,
    req: Request<Incoming>,
    state: Arc<AppState>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let (parts, body) = req.into_parts();
    let kind = body_kind(&parts.headers)?;
    if name == "predict" && !matches!(kind, BodyKind::Multipart(_)) {
        return Err(ApiError::bad_request(
            "missing_file",
            "/predict takes multipart/form-data with a field 'file'",
        ));
    }
    let body = read_limited(&parts.headers, body, state.config.max_body_bytes).await?;
    match name {
        "classify" => {
            let k = query.int("top_k", 5, 1, 1000)?;
            let upload = single_image(kind, body).await?;
            let result = classify_one(&state, upload, name, started).await?;
            Ok(json_response(
                StatusCode::OK,
                &result.to_json(&state, k, started),
            ))
        }
        "predict" => {
            let upload = single_image(kind, body).await?;
            let result = classify_one(&state, upload, name, started).await?;
            let probs = softmax(&result.done.logits);
            let top: Vec<Value> = resnet_core::postprocess::top_k_indices(&result.done.logits, 3)
                .into_iter()
                .map(|i| {
                    let pct = (probs[i] as f64 * 10_000.0).round() / 100.0;
                    json!({"label": state.model.labels.name(i), "probability": pct})
                })
                .collect();
            Ok(json_response(StatusCode::OK, &Value::Array(top)))
        }
        "classify_batch" => {
            let k = query.int("top_k", 5, 1, 1000)?;
            let BodyKind::Multipart(boundary) = kind else {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "/v1/classify/batch takes multipart/form-data with one part per image",
                ));
            };
            let uploads =
                multipart_files(body, boundary, None, state.config.max_batch_parts).await?;
            if uploads.is_empty() {
                return Err(ApiError::bad_request(
                    "missing_file",
                    "the multipart body has no file parts",
                ));
            }
            let tasks = uploads.into_iter().map(|u| {
                let state = Arc::clone(&state);
                async move {
                    let name = u.name.clone();
                    match classify_one(&state, u, "classify_batch", started).await {
                        Ok(r) => {
                            let mut v = r.to_json(&state, k, started);
                            v["name"] = json!(name);
                            v
                        }
                        Err(e) => json!({"name": name, "error": e.message, "code": e.code, "status": e.status.as_u16()}),
                    }
                }
            });
            let results = futures_util::future::join_all(tasks).await;
            Ok(json_response(StatusCode::OK, &json!({"results": results})))
        }
        "cam" => {
            let class = match query.get("class") {
                None => None,
                Some(_) => Some(query.int("class", 0, 0, 999)?),
            };
            let upload = single_image(kind, body).await?;
            cam(&state, upload, class).await
        }
        _ => Err(ApiError::internal(format!("no POST handler for {name}"))),
    }
}

/// An image decoded and preprocessed, ready for the queue.
struct Prepared {
    input: Array3<f32>,
    width: u32,
    height: u32,
    format: &'static str,
    crop: Option<RgbImage>,
    thumbnail: Option<String>,
    decode: Duration,
    preprocess: Duration,
}

/// Decodes and preprocesses on the blocking pool.
async fn prepare(state: &AppState, upload: Upload, keep_crop: bool) -> Result<Prepared, ApiError> {
    let opts = DecodeOptions {
        max_pixels: state.config.max_pixels,
        exif: state.config.exif,
    };
    let thumbnail = state.history.enabled();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let image =
            decode_image_bytes(&upload.bytes, &upload.name, &opts).map_err(ApiError::from_core)?;
        let decode = t.elapsed();
        let t = Instant::now();
        let crop = resize_and_crop(&image.rgb);
        let input = to_normalized_chw(&crop);
        let preprocess = t.elapsed();
        Ok(Prepared {
            input,
            width: image.rgb.width(),
            height: image.rgb.height(),
            format: image.format,
            crop: keep_crop.then_some(crop),
            thumbnail: thumbnail.then(|| thumbnail_data_url(&image.rgb)),
            decode,
            preprocess,
        })
    })
    .await
    .map_err(|_| ApiError::internal("the decoder failed on this image"))?
}

/// A JPEG at most 64 pixels on its long side, as a `data:` URL.
fn thumbnail_data_url(rgb: &RgbImage) -> String {
    let (w, h) = (rgb.width() as f64, rgb.height() as f64);
    let scale = (64.0 / w.max(h)).min(1.0);
    let side = |v: f64| ((v * scale).round() as u32).max(1);
    let small = image::imageops::thumbnail(rgb, side(w), side(h));
    let mut jpeg = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 70);
    if small.write_with_encoder(encoder).is_err() {
        return String::new();
    }
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    )
}

fn queue_full() -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            "the server is busy (inference queue full); retry shortly",
        )
    }
}

/// Runs `work` through the queue and waits for its answer.
async fn infer(state: &AppState, work: Work) -> Result<Done, ApiError> {
    let reply = state.batcher.submit(work).map_err(|_| queue_full())?;
    reply
        .await
        .map_err(|_| ApiError::internal("the inference thread stopped"))?
        .map_err(|e| ApiError::internal(format!("inference failed: {e}")))
}

struct Classified {
    prepared: Prepared,
    done: Done,
}

impl Classified {
    fn to_json(&self, state: &AppState, k: usize, started: Instant) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let p = &self.prepared;
        json!({
            "predictions": top_k(&self.done.logits, k, &state.model.labels),
            "backend": state.model.info.backend,
            "model": state.model.info.name,
            "synthetic_weights": state.model.info.synthetic_weights,
            "batch_size": self.done.batch_size,
            "timing_ms": {
                "decode": ms(p.decode),
                "preprocess": ms(p.preprocess),
                "queue": ms(self.done.queue),
                "inference": ms(self.done.inference),
                "total": ms(started.elapsed()),
            },
            "image": {"width": p.width, "height": p.height, "format": p.format},
        })
    }
}

async fn classify_one(
    state: &Arc<AppState>,
    upload: Upload,
    route: &str,
    started: Instant,
) -> Result<Classified, ApiError> {
    let mut prepared = prepare(state, upload, false).await?;
    let input = std::mem::take(&mut prepared.input);
    let done = infer(state, Work::Classify(input)).await?;
    if state.history.enabled() {
        let top: Vec<Prediction> = top_k(&done.logits, 1, &state.model.labels);
        if let Some(top1) = top.into_iter().next() {
            let entry = Entry {
                time: now_rfc3339(),
                route: route.into(),
                width: prepared.width,
                height: prepared.height,
                index: top1.index,
                label: top1.label,
                probability: top1.probability,
                latency_ms: (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
                thumbnail: prepared.thumbnail.take().unwrap_or_default(),
            };
            let st = Arc::clone(state);
            // The file append blocks; the client need not wait for it.
            tokio::task::spawn_blocking(move || {
                if !st.history.record(entry) {
                    st.metrics.history_write_failed();
                }
            });
        }
    }
    Ok(Classified { prepared, done })
}

async fn cam(
    state: &AppState,
    upload: Upload,
    class: Option<usize>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state.model.fc_weight.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "cam_unavailable",
            "class activation maps need the f32 fc.weight, which this model (e.g. an INT8 file) does not carry",
        ));
    }
    let mut prepared = prepare(state, upload, true).await?;
    let input = std::mem::take(&mut prepared.input);
    let done = infer(state, Work::Cam { input, class }).await?;
    let map = done
        .cam
        .ok_or_else(|| ApiError::internal("the model returned no activation map"))?;
    let crop = prepared
        .crop
        .take()
        .ok_or_else(|| ApiError::internal("the crop was not kept"))?;
    let probability = softmax(&map.logits)[map.class];
    let class_index = map.class;
    let png = tokio::task::spawn_blocking(move || {
        let overlay = resnet_core::cam::heatmap_overlay(&crop, &map, 0.45);
        let mut png = Vec::new();
        overlay
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map(|()| png)
    })
    .await
    .map_err(|_| ApiError::internal("the PNG encoder failed"))?
    .map_err(|e| ApiError::internal(format!("cannot encode the map as PNG: {e}")))?;
    let mut resp = respond(StatusCode::OK, "image/png", Bytes::from(png));
    let h = resp.headers_mut();
    h.insert("x-cam-class", HeaderValue::from(class_index));
    if let Ok(v) = HeaderValue::from_str(state.model.labels.name(class_index)) {
        h.insert("x-cam-label", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{probability:.6}")) {
        h.insert("x-cam-probability", v);
    }
    Ok(resp)
}

/// `a=1&b=2`, undecoded (the parameters are numbers).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Query {
        Query(
            q.split('&')
                .filter(|s| !s.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv.to_string(), String::new()),
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn int(&self, key: &str, default: usize, min: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad_parameter",
                        format!("{key} must be an integer from {min} to {max}, got '{v}'"),
                    )
                }),
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    respond(status, "application/json", Bytes::from(body))
}

/// `{"error": message, "code": code}` with the error's status (and `Retry-After`,
/// `WWW-Authenticate` where they apply).
pub fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut resp = json_response(e.status, &json!({"error": e.message, "code": e.code}));
    if let Some(s) = e.retry_after {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}
