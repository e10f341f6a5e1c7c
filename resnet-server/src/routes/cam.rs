//! `POST /v1/cam`: the class activation map as a PNG over the crop the network saw.

use super::classify::{infer, prepare, read_body, ReadBody};
use super::query::CAM_CLASS;
use super::respond::respond;
use super::AppState;
use crate::batcher::Work;
use crate::body::single_image;
use crate::error::ApiError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use resnet_core::cam::CamView;
use resnet_core::postprocess::softmax;
use std::sync::Arc;

pub(super) async fn cam(
    req: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let ReadBody { query, kind, body } = read_body(req, &state, None).await?;
    let class = query.param(&CAM_CLASS)?;
    let view: CamView = match query.get("view") {
        None => CamView::default(),
        Some(v) => v
            .parse()
            .map_err(|e: String| ApiError::bad_request("bad_parameter", format!("view: {e}")))?,
    };
    let upload = single_image(kind, body).await?;
    if state.model.fc_weight.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "cam_unavailable",
            "class activation maps need the f32 fc.weight, which this model (e.g. an INT8 file) does not carry",
        ));
    }
    let mut prepared = prepare(&state, upload, true).await?;
    let input = std::mem::take(&mut prepared.input);
    let done = infer(&state, Work::Cam { input, class }).await?;
    let map = done
        .cam
        .ok_or_else(|| ApiError::internal("the model returned no activation map"))?;
    let (original, crop) = prepared
        .original
        .take()
        .zip(prepared.crop.take())
        .ok_or_else(|| ApiError::internal("the images were not kept"))?;
    let probability = softmax(&map.logits)[map.class];
    let class_index = map.class;
    let png = tokio::task::spawn_blocking(move || {
        let overlay = resnet_core::cam::overlay_for_view(view, &original, &crop, &map, 0.45);
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
