//! `POST /v1/trace`: one image layer by layer (the explorer page's data), and `GET /explore`.

use super::classify::{infer, prepare, read_body, ReadBody};
use super::query::{STAGE_MAPS, TOP_K, TRACE_MAPS};
use super::respond::{json_response, respond};
use super::AppState;
use crate::batcher::Work;
use crate::body::single_image;
use crate::error::ApiError;
use crate::explore::{
    block_reports, layer_reports, png_data_url, TraceResponse, TraceTiming, MAX_STAGE_CHANNELS,
};
use crate::pages::EXPLORE_PAGE;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use resnet_core::arch::TracePoint;
use resnet_core::backend::Backend;
use resnet_core::postprocess::top_k;
use resnet_core::trace::branches::block_points;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) fn page() -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(EXPLORE_PAGE.as_bytes()),
    )
}

/// The served backend `?key=` names (`None` when absent); an unknown name is 400.
fn backend_param(
    state: &AppState,
    query: &super::query::Query,
    key: &str,
) -> Result<Option<Arc<dyn Backend>>, ApiError> {
    let Some(name) = query.get(key) else {
        return Ok(None);
    };
    state.model.backend_named(name).cloned().map(Some).ok_or_else(|| {
        ApiError::bad_request(
            "bad_parameter",
            format!(
                "{key}: this server runs no backend '{name}' (it runs {}; start it with --trace-backend to add one)",
                state.model.info.backends.join(", ")
            ),
        )
    })
}

/// `?block=`: the BasicBlocks to recompute stage by stage (`layer3.1`, a comma-separated list,
/// or `all`), with the weights to do it; `None` when absent.
fn blocks_param(
    state: &AppState,
    query: &super::query::Query,
) -> Result<Option<crate::batcher::BlockRequest>, ApiError> {
    let Some(spec) = query.get("block") else {
        return Ok(None);
    };
    // The query is not percent-decoded: a browser's URLSearchParams sends the comma as %2C.
    let spec = spec.replace("%2C", ",").replace("%2c", ",");
    let points = if spec == "all" {
        block_points()
    } else {
        spec.split(',')
            .map(|name| {
                TracePoint::from_name(name)
                    .filter(|p| matches!(p, TracePoint::Block(_)))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "bad_parameter",
                            format!(
                                "block: '{name}' is not a BasicBlock (use layer1.0 ... layer4.1, a comma-separated list of them, or all)"
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let weights = state.model.blocks.clone().ok_or_else(|| {
        ApiError::bad_request(
            "bad_parameter",
            "block: this server has no f32 weights to recompute blocks with (it runs an INT8 model file)",
        )
    })?;
    Ok(Some((weights, points)))
}

pub(super) async fn trace(
    req: Request<Incoming>,
    state: Arc<AppState>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let ReadBody { query, kind, body } = read_body(req, &state, None).await?;
    let maps = query.param_or_default(&TRACE_MAPS)?;
    // Tiles per stage of a recomputed block: as many as per layer unless told, at most 16.
    let stage_maps = query
        .param(&STAGE_MAPS)?
        .unwrap_or(maps.min(MAX_STAGE_CHANNELS));
    let k = query.param_or_default(&TOP_K)?;
    let main = backend_param(&state, &query, "backend")?
        .unwrap_or_else(|| Arc::clone(&state.model.backend));
    let reference = backend_param(&state, &query, "compare")?;
    let branches = blocks_param(&state, &query)?;
    let upload = single_image(kind, body).await?;
    let mut prepared = prepare(&state, upload, true).await?;
    let input = std::mem::take(&mut prepared.input);
    let (_, h, w) = input.dim();
    let compared = reference.is_some();
    let backends = std::iter::once(main).chain(reference).collect();
    let done = infer(
        &state,
        Work::Trace {
            input,
            backends,
            branches,
        },
    )
    .await?;
    let crop = prepared
        .crop
        .take()
        .ok_or_else(|| ApiError::internal("the crop was not kept"))?;
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let st = Arc::clone(&state);
    // Statistics and PNG encoding take a few milliseconds: not on the runtime's threads.
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut traces = done.traces.into_iter();
        let trace = traces
            .next()
            .ok_or_else(|| ApiError::internal("the model returned no trace"))?;
        let other = if compared { traces.next() } else { None };
        let layers =
            layer_reports(&trace, other.as_ref(), maps, (h, w)).map_err(ApiError::internal)?;
        let blocks = match &done.branches {
            Some(b) => block_reports(&trace, &b.blocks, stage_maps).map_err(ApiError::internal)?,
            None => Vec::new(),
        };
        let crop = png_data_url(&crop).map_err(ApiError::internal)?;
        let report = ms(t.elapsed());
        let logits = trace.logits.row(0).to_vec();
        let body = TraceResponse {
            model: st.model.info.name.clone(),
            backend: trace.backend.into(),
            compare: other.as_ref().map(|o| o.backend.to_string()),
            synthetic_weights: st.model.info.synthetic_weights,
            image: crate::api::ImageInfo {
                width: prepared.width,
                height: prepared.height,
                format: prepared.format,
            },
            crop,
            original: None,
            predictions: top_k(&logits, k, &st.model.labels),
            timing_ms: TraceTiming {
                decode: ms(prepared.decode),
                preprocess: ms(prepared.preprocess),
                queue: ms(done.queue),
                trace: ms(trace.elapsed),
                compare: other.as_ref().map(|o| ms(o.elapsed)),
                branches: done.branches.as_ref().map(|b| ms(b.elapsed)),
                report,
                total: ms(started.elapsed()),
            },
            layers,
            blocks,
            cams: Vec::new(),
        };
        Ok(json_response(StatusCode::OK, &body))
    })
    .await
    .map_err(|_| ApiError::internal("building the trace report failed"))?
}
