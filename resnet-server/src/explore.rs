//! The layer-by-layer explorer: the body of `POST /v1/trace` and the page `/explore` that draws
//! it. `resnet trace --html` builds the same [`TraceResponse`] and embeds it in the same page
//! ([`static_page`]), so the static file and the live page show the same thing.

use crate::api::ImageInfo;
use crate::pages::EXPLORE_PAGE;
use base64::Engine;
use image::RgbImage;
use resnet_core::postprocess::Prediction;
use resnet_core::trace::branches::{BlockBranches, BranchStage};
use resnet_core::trace::{
    activation_stats, channel_sheet, compare, point_costs, ActivationStats, ChannelSheet,
    Comparison, PointCost, Trace, TraceRow,
};
use serde::Serialize;
use utoipa::ToSchema;

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
    /// BasicBlocks recomputed stage by stage (`?block=`; every block in a `--html` file).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<BlockReport>,
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
    /// Recomputing the asked-for BasicBlocks stage by stage (textbook loops: the slow part).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branches: Option<f64>,
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

impl From<ChannelSheet> for MapSheet {
    fn from(s: ChannelSheet) -> MapSheet {
        MapSheet {
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
        }
    }
}

/// Most channels drawn per stage of a recomputed block: a block has five stages and an answer
/// may carry all eight blocks, so they get fewer tiles than the trace points (keeps
/// `?block=all&maps=64` under about 4 MB).
pub const MAX_STAGE_CHANNELS: usize = 16;

/// A BasicBlock recomputed stage by stage from its input.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BlockReport {
    /// The block (`layer3.1`).
    pub layer: String,
    /// Fraction of the sum's values below zero: what the block's final ReLU switched off.
    pub relu_off: f64,
    /// The recomputed output against the traced backend's own output at this trace point (the
    /// reference): shows the stages are that network's.
    pub versus_backend: Comparison,
    /// conv1, conv2, the shortcut (`identity` or `downsample`), sum, output.
    pub stages: Vec<StageReport>,
}

/// One stage of a recomputed block.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct StageReport {
    /// `conv1`, `conv2`, `identity`, `downsample`, `sum` or `output`.
    #[schema(value_type = String)]
    pub stage: BranchStage,
    /// What it computes, with torchvision's module names.
    pub op: String,
    /// Output shape `[N, C, H, W]`.
    pub shape: Vec<usize>,
    /// Its statistics, as a trace point's.
    #[serde(flatten)]
    pub stats: ActivationStats,
    /// Its most active channels (at most [`MAX_STAGE_CHANNELS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maps: Option<MapSheet>,
}

/// The recomputed `blocks` of `trace` with statistics and the `maps` most active channels of
/// every stage (at most [`MAX_STAGE_CHANNELS`]).
pub fn block_reports(
    trace: &Trace,
    blocks: &[BlockBranches],
    maps: usize,
) -> Result<Vec<BlockReport>, String> {
    blocks
        .iter()
        .map(|b| {
            let traced = trace
                .point(b.point)
                .ok_or_else(|| format!("the trace has no point {}", b.point))?;
            let output = b
                .stage(BranchStage::Output)
                .ok_or_else(|| format!("{} was recomputed without its output", b.point))?;
            let stages = b
                .stages
                .iter()
                .map(|s| {
                    let view = s.output.view().into_dyn();
                    Ok(StageReport {
                        stage: s.stage,
                        op: s.stage.describe(b.point.name()),
                        shape: s.output.shape().to_vec(),
                        stats: activation_stats(view.view()),
                        maps: channel_sheet(view, maps.min(MAX_STAGE_CHANNELS))
                            .map_err(|e| e.to_string())?
                            .map(MapSheet::from),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(BlockReport {
                layer: b.point.name().into(),
                relu_off: b.relu_off,
                versus_backend: compare(traced.output.view(), output.view().into_dyn()),
                stages,
            })
        })
        .collect()
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
                .map(MapSheet::from);
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
