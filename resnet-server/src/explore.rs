//! The layer-by-layer explorer: the body of `POST /v1/trace` and the page `/explore` that draws
//! it. `resnet trace --html` builds the same [`TraceResponse`] and embeds it in the same page
//! ([`static_page`]), so the static file and the live page show the same thing.

use crate::api::ImageInfo;
use base64::Engine;
use image::RgbImage;
use resnet_core::postprocess::Prediction;
use resnet_core::trace::{channel_sheet, point_costs, PointCost, Trace, TraceRow};
use serde::Serialize;
use utoipa::ToSchema;

/// The explorer page (served at `/explore`; one file, no external resources).
pub const EXPLORE_PAGE: &str = include_str!("explore.html");

/// Where [`static_page`] puts the trace: the page reads it from this element when present.
const DATA_SLOT: &str = r#"<script id="trace-data" type="application/json"></script>"#;

/// `POST /v1/trace`, and the data of a `resnet trace --html` file.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TraceResponse {
    /// The model's name.
    pub model: String,
    /// The backend that ran the trace.
    pub backend: String,
    /// The backend it was compared with (`?compare=`), whose outputs are the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<String>,
    /// True when the weights are seeded random ones: the labels then mean nothing.
    pub synthetic_weights: bool,
    /// The uploaded image as decoded.
    pub image: ImageInfo,
    /// The 224x224 crop the network sees, as a PNG `data:` URL.
    pub crop: String,
    /// The image as uploaded, as a `data:` URL (static files only: the live page has the file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    /// The top classes of this forward pass, most probable first.
    pub predictions: Vec<Prediction>,
    /// Where the time went.
    pub timing_ms: TraceTiming,
    /// One entry per trace point, in network order.
    pub layers: Vec<LayerReport>,
    /// Class activation maps over the crop for the top classes (static files only: the live page
    /// asks `/v1/cam` for any class).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cams: Vec<CamImage>,
}

/// Milliseconds per stage of one trace.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TraceTiming {
    /// Decoding the upload.
    pub decode: f64,
    /// Resize, crop and normalisation.
    pub preprocess: f64,
    /// Waiting in the inference queue.
    pub queue: f64,
    /// The traced forward pass (outputs copied out at every point); the layers' `ms` sum to a
    /// little less.
    pub trace: f64,
    /// The compared backend's traced forward pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<f64>,
    /// Statistics, SQNR and PNG tiles.
    pub report: f64,
    /// From the request's arrival (or the start of `resnet trace`) to the answer.
    pub total: f64,
}

/// One trace point: what `resnet trace --format json` prints for it, what it costs, and its
/// most active channels.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LayerReport {
    /// Name, shape, time, statistics and SQNR, exactly as `resnet trace --format json`.
    #[serde(flatten)]
    pub row: TraceRow,
    /// Its operations, parameters and MACs from the layer table.
    #[serde(flatten)]
    pub cost: PointCost,
    /// The most active channels as one sprite sheet (`?maps=N`, feature maps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maps: Option<MapSheet>,
}

/// A [`resnet_core::trace::ChannelSheet`] with its PNG as a `data:` URL.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MapSheet {
    /// The channel index of each tile, row-major (most active first).
    pub channels: Vec<usize>,
    /// Each shown channel's mean activation.
    pub channel_means: Vec<f32>,
    /// Each shown channel's fraction of exact zeros.
    pub channel_zeros: Vec<f32>,
    /// Tile width in pixels (the map's W).
    pub tile_width: usize,
    /// Tile height in pixels (the map's H).
    pub tile_height: usize,
    /// Tiles per row.
    pub columns: usize,
    /// Tile rows.
    pub rows: usize,
    /// The activation drawn black.
    pub black: f32,
    /// The activation drawn white.
    pub white: f32,
    /// The 8-bit grey PNG, `columns * tile_width` x `rows * tile_height`.
    pub png: String,
}

/// A class activation map over the crop.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CamImage {
    /// The class.
    pub index: usize,
    /// Its name.
    pub label: String,
    /// Its probability.
    pub probability: f32,
    /// The overlay, a PNG `data:` URL.
    pub png: String,
}

/// `bytes` as a `data:` URL.
pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// An RGB image as a PNG `data:` URL.
pub fn png_data_url(rgb: &RgbImage) -> Result<String, String> {
    let mut png = Vec::new();
    rgb.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode PNG: {e}"))?;
    Ok(data_url("image/png", &png))
}

/// The layers of `trace` (compared with `reference` when given), with the `maps` most active
/// channels of every feature map. The rows are [`resnet_core::trace::trace_rows`], the function
/// `resnet trace` prints.
pub fn layer_reports(
    trace: &Trace,
    reference: Option<&Trace>,
    maps: usize,
    input_hw: (usize, usize),
) -> Result<Vec<LayerReport>, String> {
    let rows = resnet_core::trace::trace_rows(&trace.points, reference.map(|r| &r.points[..]));
    let costs = point_costs(input_hw.0, input_hw.1);
    rows.into_iter()
        .zip(&trace.points)
        .map(|(row, point)| {
            let cost = costs
                .iter()
                .find(|c| c.point == point.point)
                .cloned()
                .ok_or_else(|| format!("no layer-table entry for trace point {}", point.point))?;
            let maps = channel_sheet(point.output.view(), maps)
                .map_err(|e| e.to_string())?
                .map(|s| MapSheet {
                    png: data_url("image/png", &s.png),
                    channels: s.channels,
                    channel_means: s.channel_means,
                    channel_zeros: s.channel_zeros,
                    tile_width: s.tile_width,
                    tile_height: s.tile_height,
                    columns: s.columns,
                    rows: s.rows,
                    black: s.black,
                    white: s.white,
                });
            Ok(LayerReport { row, cost, maps })
        })
        .collect()
}

/// The explorer page with `report` embedded: opens without a server (no upload, the embedded
/// trace instead).
pub fn static_page(report: &TraceResponse) -> Result<String, String> {
    let json = serde_json::to_string(report).map_err(|e| e.to_string())?;
    // `<` only occurs inside JSON strings, where `\u003c` means the same: no `</script>` can
    // end the element early.
    let json = json.replace('<', "\\u003c");
    if !EXPLORE_PAGE.contains(DATA_SLOT) {
        return Err("the explorer page has no data slot".into());
    }
    Ok(EXPLORE_PAGE.replacen(
        DATA_SLOT,
        &format!(r#"<script id="trace-data" type="application/json">{json}</script>"#),
        1,
    ))
}
