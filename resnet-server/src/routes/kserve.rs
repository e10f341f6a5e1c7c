//! The KServe / Open Inference Protocol v2 REST surface (what `tritonclient`, KServe, Seldon and
//! `perf_analyzer` speak): health, metadata, Triton's model configuration and `infer`, over the
//! same queue, dynamic batcher, limits and metrics as the other routes. The wire format is in
//! [`crate::kserve`].

use super::classify::{classify_one, infer};
use super::respond::{json_response, respond};
use super::AppState;
use crate::batcher::Work;
use crate::body::{read_within_budget, Upload};
use crate::error::ApiError;
use crate::kserve::{self, Images, InferRequest, MODEL_NAME, MODEL_VERSION};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use ndarray::Array3;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;

/// What a `/v2/models/{name}[/versions/{v}]...` path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelOp {
    /// `/v2/models/{name}`: metadata.
    Metadata,
    /// `.../ready`.
    Ready,
    /// `.../infer`.
    Infer,
    /// `.../config` (Triton).
    Config,
}

/// A parsed model path: the model name, the version if given, and the operation.
pub struct ModelPath<'a> {
    /// The name in the path.
    pub name: &'a str,
    /// The version, for `/versions/{v}/...` paths.
    pub version: Option<&'a str>,
    /// What is asked.
    pub op: ModelOp,
}

/// Parses `/v2/models/{name}[/versions/{v}][/ready|/infer|/config]`.
pub fn parse_model_path(path: &str) -> Option<ModelPath<'_>> {
    let rest = path.strip_prefix("/v2/models/")?;
    let mut segments: Vec<&str> = rest.split('/').collect();
    let op = match segments.last().copied() {
        Some("ready") => Some(ModelOp::Ready),
        Some("infer") => Some(ModelOp::Infer),
        Some("config") => Some(ModelOp::Config),
        _ => None,
    };
    if op.is_some() {
        segments.pop();
    }
    let (name, version) = match segments.as_slice() {
        [name] => (*name, None),
        [name, "versions", v] if !v.is_empty() => (*name, Some(*v)),
        _ => return None,
    };
    if name.is_empty() {
        return None;
    }
    Some(ModelPath {
        name,
        version,
        op: op.unwrap_or(ModelOp::Metadata),
    })
}

/// 404 unless the path names this model (and, if it names a version, version 1).
fn check_model(path: &str) -> Result<(), ApiError> {
    let Some(p) = parse_model_path(path) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        ));
    };
    if p.name != MODEL_NAME {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!(
                "unknown model '{}': this server serves '{MODEL_NAME}'",
                p.name
            ),
        ));
    }
    if let Some(v) = p.version.filter(|v| *v != MODEL_VERSION) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model_version",
            format!("unknown version '{v}' of {MODEL_NAME}: the one version is '{MODEL_VERSION}'"),
        ));
    }
    Ok(())
}

/// `/v2/health/live`.
#[derive(Serialize, ToSchema)]
pub(super) struct Live {
    /// Always true.
    live: bool,
}

/// `/v2/health/ready` and `/v2/models/{name}/ready`.
#[derive(Serialize, ToSchema)]
pub(super) struct Ready {
    /// Warmed up and not shutting down.
    ready: bool,
}

pub(super) fn live() -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &Live { live: true })
}

/// 200 `{"ready": true}`, or 503 `{"ready": false}` while warming up or shutting down.
pub(super) fn ready(state: &AppState) -> Response<Full<Bytes>> {
    let ready = state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &Ready { ready })
}

pub(super) fn server_metadata() -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &kserve::server_metadata())
}

pub(super) fn model_metadata(path: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    check_model(path)?;
    Ok(json_response(StatusCode::OK, &kserve::model_metadata()))
}

pub(super) fn model_ready(path: &str, state: &AppState) -> Result<Response<Full<Bytes>>, ApiError> {
    check_model(path)?;
    Ok(ready(state))
}

pub(super) fn model_config(
    path: &str,
    state: &AppState,
) -> Result<Response<Full<Bytes>>, ApiError> {
    check_model(path)?;
    let wait_us = state.config.batch_wait.as_micros().min(u64::MAX as u128) as u64;
    Ok(json_response(
        StatusCode::OK,
        &kserve::model_config(state.config.max_batch, wait_us),
    ))
}

/// `POST /v2/models/resnet18/infer`: each image goes through the queue on its own, so the
/// dynamic batcher can batch images of different requests together.
pub(super) async fn infer_route(
    req: Request<Incoming>,
    state: Arc<AppState>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = req.uri().path().to_string();
    check_model(&path)?;
    let (parts, body) = req.into_parts();
    let header_length = match parts.headers.get(kserve::HEADER_LENGTH) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::bad_request(
                "bad_request",
                "Inference-Header-Content-Length is not a number",
            )
        })?),
    };
    let header_length = header_length.map(str::to_string);
    let body = read_within_budget(
        &parts.headers,
        body,
        state.config.max_body_bytes,
        Some(&state.bodies),
    )
    .await?;
    let max_images = state.config.max_batch_parts;
    let request: InferRequest = tokio::task::spawn_blocking(move || {
        kserve::parse_infer_request(header_length.as_deref(), &body, max_images)
    })
    .await
    .map_err(|_| ApiError::internal("the request parser failed"))?
    .map_err(|e| ApiError::bad_request("bad_request", e.0))?;
    let logits = run_images(&state, &request, started).await?;
    let labels = &state.model.labels;
    let encoded = kserve::encode_response(&request, &logits, |i| labels.name(i));
    let mut resp = match encoded.header_length {
        None => respond(
            StatusCode::OK,
            "application/json",
            Bytes::from(encoded.body),
        ),
        Some(n) => {
            let mut r = respond(
                StatusCode::OK,
                "application/octet-stream",
                Bytes::from(encoded.body),
            );
            r.headers_mut()
                .insert(kserve::HEADER_LENGTH, HeaderValue::from(n));
            r
        }
    };
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// Every image's 1000 logits, in order. The first failing image fails the request, naming it.
async fn run_images(
    state: &Arc<AppState>,
    request: &InferRequest,
    started: Instant,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let name = &request.input_name;
    let renamed = |i: usize, e: ApiError| ApiError {
        message: format!("{name}[{i}]: {}", e.message),
        ..e
    };
    match &request.images {
        Images::Tensors { count, data } => {
            let per = 3 * 224 * 224;
            let jobs = (0..*count).map(|i| {
                let input =
                    Array3::from_shape_vec((3, 224, 224), data[i * per..(i + 1) * per].to_vec());
                async move {
                    let input = input.map_err(|e| ApiError::internal(e.to_string()))?;
                    infer(state, Work::Classify(input))
                        .await
                        .map(|d| d.logits)
                        .map_err(|e| renamed(i, e))
                }
            });
            futures_util::future::try_join_all(jobs).await
        }
        Images::Encoded(files) => {
            let jobs = files.iter().enumerate().map(|(i, file)| {
                let upload = Upload {
                    name: format!("{name}[{i}]"),
                    bytes: Bytes::copy_from_slice(file),
                };
                async move {
                    classify_one(state, upload, "kserve_infer", started)
                        .await
                        .map(|c| c.done.logits)
                }
            });
            futures_util::future::try_join_all(jobs).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths_parse_with_and_without_versions() {
        let p = parse_model_path("/v2/models/resnet18").unwrap();
        assert_eq!(
            (p.name, p.version, p.op),
            ("resnet18", None, ModelOp::Metadata)
        );
        let p = parse_model_path("/v2/models/resnet18/versions/1/infer").unwrap();
        assert_eq!(
            (p.name, p.version, p.op),
            ("resnet18", Some("1"), ModelOp::Infer)
        );
        let p = parse_model_path("/v2/models/other/config").unwrap();
        assert_eq!((p.name, p.op), ("other", ModelOp::Config));
        for bad in [
            "/v2/models/",
            "/v2/models//ready",
            "/v2/models/a/b/ready",
            "/v2/models/a/versions//infer",
            "/v2/model/resnet18",
        ] {
            assert!(parse_model_path(bad).is_none(), "{bad}");
        }
        assert!(check_model("/v2/models/resnet18/versions/2/ready").is_err());
        assert_eq!(
            check_model("/v2/models/vgg/ready").unwrap_err().code,
            "unknown_model"
        );
    }
}
