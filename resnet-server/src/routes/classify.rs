//! Classification: `/v1/classify`, `/v1/classify/batch`, `/predict`, and the steps they share
//! (decode and preprocess on the blocking pool, the inference queue, the history record).

use super::query::{Query, TOP_K};
use super::respond::json_response;
use super::AppState;
use crate::api::{
    BatchItem, BatchResponse, Classification, ImageInfo, PartError, PredictItem, Timing,
};
use crate::batcher::{Done, Work};
use crate::body::{body_kind, multipart_files, read_within_budget, single_image, BodyKind, Upload};
use crate::budget::RequestScope;
use crate::error::ApiError;
use crate::history::{now_rfc3339, Entry};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use image::RgbImage;
use ndarray::Array3;
use resnet_core::decode::{declared_size, decode_image_bytes_cancellable, DecodeOptions};
use resnet_core::postprocess::{softmax, top_k, top_k_indices, Prediction};
use resnet_core::preprocess::{resize_and_crop, to_normalized_chw};
use resnet_core::ImageProblem;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request's query, body kind and body, read within the body limit.
pub(super) struct ReadBody {
    pub query: Query,
    pub kind: BodyKind,
    pub body: Bytes,
}

/// Reads the body of a POST (refusing an unsupported content type before reading).
pub(super) async fn read_body(
    req: Request<Incoming>,
    state: &AppState,
    multipart_only: Option<&'static str>,
) -> Result<ReadBody, ApiError> {
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let (parts, body) = req.into_parts();
    let kind = body_kind(&parts.headers)?;
    if let Some(message) = multipart_only {
        if !matches!(kind, BodyKind::Multipart(_)) {
            return Err(ApiError::bad_request("missing_file", message));
        }
    }
    let body = read_within_budget(
        &parts.headers,
        body,
        state.config.max_body_bytes,
        Some(&state.bodies),
    )
    .await?;
    Ok(ReadBody { query, kind, body })
}

pub(super) async fn classify(
    req: Request<Incoming>,
    state: Arc<AppState>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let ReadBody { query, kind, body } = read_body(req, &state, None).await?;
    let k = query.param_or_default(&TOP_K)?;
    let upload = single_image(kind, body).await?;
    let result = classify_one(&state, upload, "classify", started).await?;
    Ok(json_response(
        StatusCode::OK,
        &result.to_api(&state, k, started, None),
    ))
}

pub(super) async fn predict(
    req: Request<Incoming>,
    state: Arc<AppState>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let ReadBody { kind, body, .. } = read_body(
        req,
        &state,
        Some("/predict takes multipart/form-data with a field 'file'"),
    )
    .await?;
    let upload = single_image(kind, body).await?;
    let result = classify_one(&state, upload, "predict", started).await?;
    let probs = softmax(&result.done.logits);
    let top: Vec<PredictItem> = top_k_indices(&result.done.logits, 3)
        .into_iter()
        .map(|i| PredictItem {
            label: state.model.labels.name(i).to_string(),
            probability: (probs[i] as f64 * 10_000.0).round() / 100.0,
        })
        .collect();
    Ok(json_response(StatusCode::OK, &top))
}

pub(super) async fn classify_batch(
    req: Request<Incoming>,
    state: Arc<AppState>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let ReadBody { query, kind, body } = read_body(req, &state, None).await?;
    let k = query.param_or_default(&TOP_K)?;
    let BodyKind::Multipart(boundary) = kind else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "/v1/classify/batch takes multipart/form-data with one part per image",
        ));
    };
    let uploads = multipart_files(body, boundary, None, state.config.max_batch_parts).await?;
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
                Ok(r) => BatchItem::Ok(Box::new(r.to_api(&state, k, started, Some(name)))),
                Err(e) => BatchItem::Failed(PartError {
                    name,
                    error: e.message,
                    code: e.code,
                    status: e.status.as_u16(),
                }),
            }
        }
    });
    let results = futures_util::future::join_all(tasks).await;
    Ok(json_response(StatusCode::OK, &BatchResponse { results }))
}

/// An image decoded and preprocessed, ready for the queue.
pub(super) struct Prepared {
    pub input: Array3<f32>,
    pub width: u32,
    pub height: u32,
    pub format: &'static str,
    pub crop: Option<RgbImage>,
    /// The decoded image, kept with the crop (for the map over the original picture).
    pub original: Option<RgbImage>,
    pub thumbnail: Option<String>,
    pub decode: Duration,
    pub preprocess: Duration,
}

/// Decodes and preprocesses on the blocking pool, within the decode budget: the header is read
/// first for the decoded size, then the decode waits for its share in the request's turn. The
/// work stops when the request is over (see [`RequestScope`]).
pub(super) async fn prepare(
    state: &AppState,
    upload: Upload,
    keep_crop: bool,
) -> Result<Prepared, ApiError> {
    let opts = DecodeOptions {
        max_pixels: state.config.max_pixels,
        exif: state.config.exif,
    };
    let scope = RequestScope::current();
    let blocking_failed = |_| ApiError::internal("the decoder failed on this image");
    let header = upload.bytes.clone();
    let name = upload.name.clone();
    let size = tokio::task::spawn_blocking(move || declared_size(&header, &name, &opts))
        .await
        .map_err(blocking_failed)?
        .map_err(ApiError::from_core)?;
    let permit = state
        .decodes
        .acquire(scope.id, size.decoded_bytes)
        .await
        .ok_or_else(|| ApiError::internal("the decode budget is closed"))?;
    let thumbnail = state.history.enabled();
    let metrics = Arc::clone(&state.metrics);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let cancel = &scope.cancelled;
        let cancelled = || {
            metrics.decode_cancelled();
            ApiError::from_core(resnet_core::Error::Image {
                path: upload.name.clone(),
                problem: ImageProblem::Cancelled,
            })
        };
        let t = Instant::now();
        let image = match decode_image_bytes_cancellable(&upload.bytes, &upload.name, &opts, cancel)
        {
            Err(resnet_core::Error::Image {
                problem: ImageProblem::Cancelled,
                ..
            }) => return Err(cancelled()),
            other => other.map_err(ApiError::from_core)?,
        };
        let decode = t.elapsed();
        if scope.is_cancelled() {
            return Err(cancelled());
        }
        let t = Instant::now();
        let crop = resize_and_crop(&image.rgb);
        let input = to_normalized_chw(&crop);
        let preprocess = t.elapsed();
        let thumbnail = thumbnail.then(|| thumbnail_data_url(&image.rgb, HISTORY_THUMBNAIL_SIDE));
        Ok(Prepared {
            input,
            width: image.rgb.width(),
            height: image.rgb.height(),
            format: image.format,
            crop: keep_crop.then_some(crop),
            thumbnail,
            original: keep_crop.then_some(image.rgb),
            decode,
            preprocess,
        })
    })
    .await
    .map_err(blocking_failed)?
}

/// The long side of history thumbnails, in pixels.
pub(crate) const HISTORY_THUMBNAIL_SIDE: u32 = 64;

/// A JPEG at most `side` pixels on its long side, as a `data:` URL.
pub(crate) fn thumbnail_data_url(rgb: &RgbImage, side: u32) -> String {
    let (w, h) = (rgb.width() as f64, rgb.height() as f64);
    let scale = (side as f64 / w.max(h)).min(1.0);
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
pub(super) async fn infer(state: &AppState, work: Work) -> Result<Done, ApiError> {
    let reply = state.batcher.submit(work).map_err(|_| queue_full())?;
    reply
        .await
        .map_err(|_| ApiError::internal("the inference thread stopped"))?
        .map_err(|e| ApiError::internal(format!("inference failed: {e}")))
}

/// One image's way through the server: what was prepared and what the model answered.
pub(super) struct Classified {
    pub prepared: Prepared,
    pub done: Done,
}

impl Classified {
    pub(super) fn to_api(
        &self,
        state: &AppState,
        k: usize,
        started: Instant,
        name: Option<String>,
    ) -> Classification {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let p = &self.prepared;
        Classification {
            name,
            predictions: top_k(&self.done.logits, k, &state.model.labels),
            backend: state.model.info.backend.clone(),
            model: state.model.info.name.clone(),
            synthetic_weights: state.model.info.synthetic_weights,
            batch_size: self.done.batch_size,
            timing_ms: Timing {
                decode: ms(p.decode),
                preprocess: ms(p.preprocess),
                queue: ms(self.done.queue),
                inference: ms(self.done.inference),
                total: ms(started.elapsed()),
            },
            image: ImageInfo {
                width: p.width,
                height: p.height,
                format: p.format,
            },
        }
    }
}

/// Prepares, queues and classifies one upload, and records it (history, MQTT).
pub(super) async fn classify_one(
    state: &Arc<AppState>,
    upload: Upload,
    route: &str,
    started: Instant,
) -> Result<Classified, ApiError> {
    let mut prepared = prepare(state, upload, false).await?;
    let input = std::mem::take(&mut prepared.input);
    let done = infer(state, Work::Classify(input)).await?;
    if state.records_recognitions() {
        let top: Vec<Prediction> = top_k(&done.logits, 1, &state.model.labels);
        if let Some(top1) = top.into_iter().next() {
            state.record_recognition(Entry {
                time: now_rfc3339(),
                route: route.into(),
                source: None,
                width: prepared.width,
                height: prepared.height,
                index: top1.index,
                label: top1.label,
                probability: top1.probability,
                latency_ms: (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
                thumbnail: prepared.thumbnail.take().unwrap_or_default(),
                request_id: crate::ops::current_request_id(),
            });
        }
    }
    Ok(Classified { prepared, done })
}
