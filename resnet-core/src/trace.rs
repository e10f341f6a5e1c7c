//! One image through the network, trace point by trace point: what `resnet trace` prints, what
//! `POST /v1/trace` answers and what the explorer page draws, computed in one place so that they
//! agree by construction.
//!
//! - [`record`] runs a forward pass with a [`TraceRecorder`] and keeps every trace point's output
//!   (NCHW / NF f32, as PyTorch forward hooks see it) and time.
//! - [`trace_rows`] turns the points into one [`TraceRow`] each: shape, time,
//!   [`ActivationStats`] and, against a second backend's points, a [`Comparison`] (SQNR).
//! - [`channel_sheet`] draws the `n` most active channels of a feature map as one grey-scale PNG
//!   sprite sheet ([`ChannelSheet`]), with the channel index of every tile.
//! - [`point_costs`] sums the layer table of [`crate::arch`] per trace point (parameters, MACs).
//! - [`branches`] recomputes a BasicBlock step by step (its two branches, their sum), which the
//!   fast backends fuse away.

use crate::arch::{LayerRow, ResNet18Arch, TracePoint};
use crate::backend::{Backend, LayerEvent, LayerObserver};
use crate::error::{Error, Result};
use image::{GrayImage, Luma};
use ndarray::{Array2, ArrayD, ArrayView4, ArrayViewD, Axis, Ix4};
use serde::Serialize;
use std::time::Duration;

pub mod branches;

/// One trace point as a forward pass reported it.
#[derive(Clone, Debug)]
pub struct RecordedPoint {
    /// The trace point (`stem`, `maxpool`, `layer1.0`, ..., `avgpool`, `fc`).
    pub point: TracePoint,
    /// Output shape, `[N, C, H, W]` or `[N, F]`.
    pub shape: Vec<usize>,
    /// Time spent computing this point since the previous one.
    pub elapsed: Duration,
    /// The output, NCHW or NF f32 (empty when the backend did not hand it over).
    pub output: ArrayD<f32>,
}

/// A [`LayerObserver`] that keeps every trace point's output.
#[derive(Debug, Default)]
pub struct TraceRecorder {
    /// The points, in network order.
    pub points: Vec<RecordedPoint>,
}

impl LayerObserver for TraceRecorder {
    fn wants_outputs(&self) -> bool {
        true
    }

    fn on_layer(&mut self, e: &LayerEvent<'_>) {
        self.points.push(RecordedPoint {
            point: e.point,
            shape: e.shape.clone(),
            elapsed: e.elapsed,
            output: e
                .output
                .as_ref()
                .map(|o| o.to_owned())
                .unwrap_or_else(|| ArrayD::zeros(vec![0])),
        });
    }
}

/// A whole traced forward pass.
#[derive(Clone, Debug)]
pub struct Trace {
    /// The backend's name.
    pub backend: &'static str,
    /// Every trace point, in network order.
    pub points: Vec<RecordedPoint>,
    /// The logits `[N, 1000]`.
    pub logits: Array2<f32>,
    /// The whole forward pass, recording included.
    pub elapsed: Duration,
}

impl Trace {
    /// The recorded output of `point`.
    pub fn point(&self, point: TracePoint) -> Option<&RecordedPoint> {
        self.points.iter().find(|p| p.point == point)
    }
}

/// Runs `input` (`[N, 3, H, W]`, normalised as in [`crate::preprocess`]) through `backend`,
/// keeping every trace point.
pub fn record(backend: &dyn Backend, input: ArrayView4<'_, f32>) -> Result<Trace> {
    let started = std::time::Instant::now();
    let mut rec = TraceRecorder::default();
    let logits = backend.forward(input, &mut rec)?;
    let found: Vec<TracePoint> = rec.points.iter().map(|p| p.point).collect();
    if found != TracePoint::ALL {
        return Err(Error::TracePoints {
            backend: backend.name().into(),
            found,
        });
    }
    if let Some(p) = rec
        .points
        .iter()
        .find(|p| p.output.shape() != p.shape.as_slice())
    {
        return Err(Error::TraceOutput {
            backend: backend.name().into(),
            point: p.point,
            expected: p.shape.clone(),
            found: p.output.shape().to_vec(),
        });
    }
    Ok(Trace {
        backend: backend.name(),
        points: rec.points,
        logits,
        elapsed: started.elapsed(),
    })
}

/// Activation statistics of one trace point's output.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActivationStats {
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Mean (accumulated in f64).
    pub mean: f64,
    /// Population standard deviation (two passes, f64).
    pub std: f64,
    /// Fraction of exact zeros (what the last ReLU switched off).
    pub zeros: f64,
}

/// The statistics of `values` (all of them, every image of the batch).
pub fn activation_stats(values: ArrayViewD<'_, f32>) -> ActivationStats {
    let n = values.len().max(1) as f64;
    let (mut min, mut max, mut sum, mut zeros) = (f32::INFINITY, f32::NEG_INFINITY, 0.0f64, 0usize);
    for &v in values.iter() {
        min = min.min(v);
        max = max.max(v);
        sum += v as f64;
        zeros += (v == 0.0) as usize;
    }
    let mean = sum / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    ActivationStats {
        min,
        max,
        mean,
        std: var.sqrt(),
        zeros: zeros as f64 / n,
    }
}

/// How far one backend's output is from another's at the same trace point.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Comparison {
    /// The largest absolute difference.
    pub max_abs_error: f32,
    /// Signal-to-quantisation-noise ratio `10 log10(sum ref^2 / sum (ref - x)^2)` in dB;
    /// infinite (JSON `null`) when the outputs are equal.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub sqnr_db: f64,
}

/// Compares `x` with `reference` (same shape; extra values of either are ignored).
pub fn compare(reference: ArrayViewD<'_, f32>, x: ArrayViewD<'_, f32>) -> Comparison {
    let (mut signal, mut noise, mut max) = (0.0f64, 0.0f64, 0.0f32);
    for (&r, &v) in reference.iter().zip(x.iter()) {
        signal += (r as f64).powi(2);
        noise += (r as f64 - v as f64).powi(2);
        max = max.max((r - v).abs());
    }
    Comparison {
        max_abs_error: max,
        sqnr_db: if noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (signal / noise).log10()
        },
    }
}

/// One trace point as `resnet trace --format json` prints it (and `/v1/trace` answers it).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceRow {
    /// The trace point's name.
    pub layer: String,
    /// Output shape.
    pub shape: Vec<usize>,
    /// Milliseconds spent on it.
    pub ms: f64,
    /// Its activation statistics.
    #[serde(flatten)]
    pub stats: ActivationStats,
    /// Against the compared backend's output at the same point (that output is the reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versus: Option<Comparison>,
}

/// One row per point of `trace`; with `reference`, each compared with the point of the same name.
pub fn trace_rows(trace: &[RecordedPoint], reference: Option<&[RecordedPoint]>) -> Vec<TraceRow> {
    trace
        .iter()
        .map(|p| TraceRow {
            layer: p.point.name().to_string(),
            shape: p.shape.clone(),
            ms: p.elapsed.as_secs_f64() * 1e3,
            stats: activation_stats(p.output.view()),
            versus: reference.and_then(|r| {
                r.iter()
                    .find(|q| q.point == p.point)
                    .map(|q| compare(q.output.view(), p.output.view()))
            }),
        })
        .collect()
}

/// Most channels [`channel_sheet`] draws (keeps one answer of `/v1/trace` to about 2 MB).
pub const MAX_SHEET_CHANNELS: usize = 64;

/// The most active channels of one feature map, drawn as one grey-scale sprite sheet.
#[derive(Clone, Debug)]
pub struct ChannelSheet {
    /// The channel index of each tile, row-major over the sheet (most active first).
    pub channels: Vec<usize>,
    /// Each shown channel's mean activation (what "most active" ranks by).
    pub channel_means: Vec<f32>,
    /// Each shown channel's fraction of exact zeros.
    pub channel_zeros: Vec<f32>,
    /// Tile width (the map's W).
    pub tile_width: usize,
    /// Tile height (the map's H).
    pub tile_height: usize,
    /// Tiles per sheet row.
    pub columns: usize,
    /// Tile rows.
    pub rows: usize,
    /// The value drawn black (the smallest over the shown channels).
    pub black: f32,
    /// The value drawn white (the largest over the shown channels).
    pub white: f32,
    /// The sheet, `columns * tile_width` x `rows * tile_height`, 8-bit grey PNG.
    pub png: Vec<u8>,
}

/// The `n` channels (at most [`MAX_SHEET_CHANNELS`]) of image 0 of `output` (`[N, C, H, W]`)
/// with the highest mean activation, drawn side by side on one grey scale shared by the sheet
/// (so tiles compare), smallest value black, largest white. `None` for a point without spatial
/// maps (`avgpool`, `fc`) or `n == 0`.
pub fn channel_sheet(output: ArrayViewD<'_, f32>, n: usize) -> Result<Option<ChannelSheet>> {
    let Ok(nchw) = output.into_dimensionality::<Ix4>() else {
        return Ok(None);
    };
    let (batch, c, h, w) = nchw.dim();
    if n == 0 || batch == 0 || c == 0 || h * w == 0 {
        return Ok(None);
    }
    let image = nchw.index_axis(Axis(0), 0);
    let means: Vec<f32> = image
        .outer_iter()
        .map(|ch| (ch.iter().map(|&v| v as f64).sum::<f64>() / (h * w) as f64) as f32)
        .collect();
    let mut order: Vec<usize> = (0..c).collect();
    // Descending mean, then ascending index; NaN sorts last.
    order.sort_by(|&a, &b| {
        means[b]
            .partial_cmp(&means[a])
            .unwrap_or_else(|| means[a].is_nan().cmp(&means[b].is_nan()))
            .then(a.cmp(&b))
    });
    order.truncate(n.min(MAX_SHEET_CHANNELS).min(c));
    let (mut black, mut white) = (f32::INFINITY, f32::NEG_INFINITY);
    for &k in &order {
        for &v in image
            .index_axis(Axis(0), k)
            .iter()
            .filter(|v| v.is_finite())
        {
            black = black.min(v);
            white = white.max(v);
        }
    }
    if black > white {
        (black, white) = (0.0, 0.0);
    }
    let columns = (order.len() as f64).sqrt().ceil() as usize;
    let rows = order.len().div_ceil(columns);
    let range = white - black;
    let mut sheet = GrayImage::new((columns * w) as u32, (rows * h) as u32);
    for (t, &k) in order.iter().enumerate() {
        let (ox, oy) = ((t % columns) * w, (t / columns) * h);
        for ((y, x), &v) in image.index_axis(Axis(0), k).indexed_iter() {
            let level = if range > 0.0 && v.is_finite() {
                (((v - black) / range).clamp(0.0, 1.0) * 255.0).round() as u8
            } else {
                0
            };
            sheet.put_pixel((ox + x) as u32, (oy + y) as u32, Luma([level]));
        }
    }
    let mut png = Vec::new();
    sheet
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::PngEncode {
            what: format!("the sheet of {} channels of {h}x{w}", order.len()),
            reason: e.to_string(),
        })?;
    let channel_zeros = order
        .iter()
        .map(|&k| {
            let ch = image.index_axis(Axis(0), k);
            ch.iter().filter(|&&v| v == 0.0).count() as f32 / (h * w) as f32
        })
        .collect();
    Ok(Some(ChannelSheet {
        channel_means: order.iter().map(|&k| means[k]).collect(),
        channels: order,
        channel_zeros,
        tile_width: w,
        tile_height: h,
        columns,
        rows,
        black,
        white,
        png,
    }))
}

/// What one trace point computes and costs, from the layer table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PointCost {
    /// The trace point (not serialised: [`TraceRow::layer`] names it next to this).
    #[serde(skip_serializing)]
    pub point: TracePoint,
    /// The operations it covers (`conv 3x3/1 + layer1.0.bn1`, ...), with their module names.
    pub ops: Vec<String>,
    /// Input `[C, H, W]` of its first operation.
    pub input: [usize; 3],
    /// Learned parameters of its operations.
    pub parameters: usize,
    /// Multiply-accumulates per image.
    pub macs: usize,
}

/// The layer table of an `h x w` input grouped by trace point: `conv1` is `stem`, a block's
/// convolutions (downsample included) are the block's.
pub fn point_costs(h: usize, w: usize) -> Vec<PointCost> {
    let arch = ResNet18Arch::new();
    let table = arch.layer_table(h, w);
    // A row belongs to the point named by its module name up to the block (`layer2.0.conv1`
    // is `layer2.0`'s), `conv1` to the stem.
    let owner = |row: &LayerRow| -> Option<TracePoint> {
        if row.name == arch.stem.conv {
            return Some(TracePoint::Stem);
        }
        let module: Vec<&str> = row.name.splitn(3, '.').take(2).collect();
        TracePoint::from_name(&module.join("."))
    };
    TracePoint::ALL
        .into_iter()
        .map(|point| {
            let rows: Vec<&LayerRow> = table.iter().filter(|r| owner(r) == Some(point)).collect();
            PointCost {
                ops: rows
                    .iter()
                    .map(|r| format!("{}: {}", r.name, r.op))
                    .collect(),
                input: rows.first().map_or([0; 3], |r| r.input),
                parameters: rows.iter().map(|r| r.parameters).sum(),
                macs: rows.iter().map(|r| r.macs).sum(),
                point,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array4, IxDyn};

    #[test]
    fn stats_of_a_known_tensor() {
        let v = ArrayD::from_shape_vec(IxDyn(&[1, 4]), vec![0.0f32, 2.0, 0.0, 6.0]).unwrap();
        let s = activation_stats(v.view());
        assert_eq!((s.min, s.max, s.mean, s.zeros), (0.0, 6.0, 2.0, 0.5));
        // Population variance of [0, 2, 0, 6] around 2: (4 + 0 + 4 + 16) / 4 = 6.
        assert!((s.std - 6f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn sqnr_is_infinite_for_equal_outputs_and_20_db_for_a_tenth_of_the_amplitude() {
        let r = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0f32, -2.0, 3.0]).unwrap();
        assert_eq!(compare(r.view(), r.view()).sqnr_db, f64::INFINITY);
        let x = r.mapv(|v| v * 1.1);
        let c = compare(r.view(), x.view());
        // noise = 0.01 * signal exactly in real numbers; f32 rounding of 1.1x stays below 1e-4 dB.
        assert!((c.sqnr_db - 20.0).abs() < 1e-4, "{}", c.sqnr_db);
        assert!((c.max_abs_error - 0.3).abs() < 1e-6);
    }

    #[test]
    fn sheet_ranks_channels_by_mean_and_draws_them_on_one_scale() {
        // Channel k is the constant k, except channel 2 which is a ramp with mean 10.
        let mut a = Array4::<f32>::from_shape_fn((1, 5, 3, 2), |(_, k, _, _)| k as f32);
        for (i, v) in a.index_axis_mut(Axis(1), 2).iter_mut().enumerate() {
            *v = 7.5 + i as f32; // 7.5 .. 12.5, mean 10
        }
        let sheet = channel_sheet(a.view().into_dyn(), 3).unwrap().unwrap();
        assert_eq!(sheet.channels, vec![2, 4, 3]);
        assert_eq!((sheet.tile_width, sheet.tile_height), (2, 3));
        assert_eq!((sheet.columns, sheet.rows), (2, 2));
        assert_eq!((sheet.black, sheet.white), (3.0, 12.5));
        let img = image::load_from_memory(&sheet.png).unwrap();
        assert_eq!(img.color(), image::ColorType::L8);
        let img = img.to_luma8();
        assert_eq!(img.dimensions(), (4, 6));
        // Tile 0 (channel 2) starts black-ish at 7.5 and ends white at 12.5.
        let level = |v: f32| (((v - 3.0) / 9.5) * 255.0).round() as u8;
        assert_eq!(img.get_pixel(0, 0).0[0], level(7.5));
        assert_eq!(img.get_pixel(1, 2).0[0], 255);
        // Tile 1 (channel 4) is at column 1; tile 2 (channel 3, the darkest) at row 1: black.
        assert_eq!(img.get_pixel(2, 0).0[0], level(4.0));
        assert_eq!(img.get_pixel(0, 3).0[0], 0);
        assert!(channel_sheet(ArrayD::zeros(IxDyn(&[1, 512])).view(), 4)
            .unwrap()
            .is_none());
    }

    #[test]
    fn point_costs_cover_the_whole_table() {
        let costs = point_costs(224, 224);
        let points: Vec<_> = costs.iter().map(|c| c.point).collect();
        assert_eq!(points, TracePoint::ALL);
        let table = ResNet18Arch::new().layer_table(224, 224);
        assert_eq!(
            costs.iter().map(|c| c.macs).sum::<usize>(),
            table.iter().map(|r| r.macs).sum::<usize>()
        );
        assert_eq!(
            costs.iter().map(|c| c.parameters).sum::<usize>(),
            11_689_512
        );
        let l2 = costs
            .iter()
            .find(|c| c.point == TracePoint::Block(2))
            .unwrap();
        assert_eq!(l2.ops.len(), 3, "conv1, conv2 and the downsample");
        assert_eq!(l2.input, [64, 56, 56]);
    }

    #[test]
    fn recording_every_backend_reports_every_point_with_its_output() {
        use crate::backend::{BackendKind, BackendOptions};
        let weights = crate::weights::synthetic_weights(0);
        let input = Array4::from_shape_fn((1, 3, 64, 64), |(_, c, y, x)| {
            ((c * 31 + y * 7 + x * 3) % 97) as f32 / 40.0 - 1.2
        });
        for kind in [BackendKind::Gemm, BackendKind::Native] {
            let backend = kind.create(&weights, &BackendOptions::default()).unwrap();
            let t = record(&*backend, input.view()).unwrap();
            assert_eq!(t.points.len(), 12);
            assert_eq!(t.point(TracePoint::Fc).unwrap().output.shape(), &[1, 1000]);
            // The fc point is the logits.
            let fc = t.point(TracePoint::Fc).unwrap().output.view();
            assert_eq!(
                fc.iter().copied().collect::<Vec<_>>(),
                t.logits.iter().copied().collect::<Vec<_>>()
            );
        }
    }
}
