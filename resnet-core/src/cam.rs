//! Class activation maps (Zhou et al., 2016, "Learning Deep Features for Discriminative
//! Localization"): where in the image the network found the evidence for a class.
//!
//! ResNet-18 ends with `layer4` (features `F[512, 7, 7]` for a 224x224 input), a global average
//! pool and one linear layer. Because the pool and the linear layer are both linear, the logit of
//! class `c` is the spatial mean of one map:
//!
//! ```text
//! CAM_c[y, x] = sum_k fc.weight[c, k] * F[k, y, x]
//! logit_c     = mean_yx(CAM_c) + fc.bias[c]
//! ```
//!
//! [`class_activation_map`] runs one forward pass, takes `F` from the `layer4.1` trace point via a
//! [`LayerObserver`] (so it works with every backend) and weights it by the class's row of
//! `fc.weight`. [`heatmap_overlay`] upsamples the map bilinearly to the 224x224 crop the network
//! saw and blends it over the crop as a heat map.

use crate::arch::{TracePoint, FC_IN, NUM_CLASSES};
use crate::backend::{Backend, LayerEvent, LayerObserver};
use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use ndarray::{Array3, ArrayView3, Axis};

/// The trace point whose output the map is made of: the last residual block, `layer4.1`.
pub const FEATURE_LAYER: TracePoint = TracePoint::Block(7);

/// A class activation map for one image.
#[derive(Clone, Debug)]
pub struct ClassActivationMap {
    /// The class the map explains.
    pub class: usize,
    /// Map height (7 for a 224x224 input).
    pub height: usize,
    /// Map width.
    pub width: usize,
    /// `CAM_c[y, x]` row-major, unnormalised: its mean plus `fc.bias[c]` is the class's logit.
    pub raw: Vec<f32>,
    /// `raw` min-max scaled to `[0, 1]` (all zeros when the map is flat).
    pub normalized: Vec<f32>,
    /// The image's 1000 logits from the same forward pass.
    pub logits: Vec<f32>,
}

/// Keeps the output of [`FEATURE_LAYER`].
struct FeatureGrabber {
    features: Option<Array3<f32>>,
}

impl LayerObserver for FeatureGrabber {
    fn wants_outputs(&self) -> bool {
        true
    }

    fn on_layer(&mut self, event: &LayerEvent<'_>) {
        if event.point != FEATURE_LAYER {
            return;
        }
        if let Some(out) = &event.output {
            if let Ok(nchw) = out.view().into_dimensionality::<ndarray::Ix4>() {
                self.features = Some(nchw.index_axis(Axis(0), 0).to_owned());
            }
        }
    }
}

/// Runs `input` (`[3, H, W]`, normalised as in [`crate::preprocess`]) through `backend` and
/// computes the map of `class` (default: the top-1 class). `fc_weight` is `fc.weight`,
/// `[1000, 512]` row-major, as in [`crate::weights::Weights::tensor`].
pub fn class_activation_map(
    backend: &dyn Backend,
    fc_weight: &[f32],
    input: ArrayView3<'_, f32>,
    class: Option<usize>,
) -> Result<ClassActivationMap> {
    check_fc_weight(backend.name(), fc_weight)?;
    check_class(class)?;
    let mut grabber = FeatureGrabber { features: None };
    let logits = backend.forward(input.insert_axis(Axis(0)), &mut grabber)?;
    let logits = logits.row(0).to_vec();
    let features = grabber.features.ok_or_else(|| Error::MissingTraceOutput {
        backend: backend.name().into(),
        point: FEATURE_LAYER,
    })?;
    map_from_features(backend.name(), features.view(), fc_weight, class, logits)
}

/// The map of `class` (default: the top-1 of `logits`) from `features`, the `[512, H, W]` output
/// of [`FEATURE_LAYER`] of a pass already run (e.g. by [`crate::trace::record`]) whose logits
/// are `logits`. `source` names the backend in errors.
pub fn map_from_features(
    source: &str,
    features: ArrayView3<'_, f32>,
    fc_weight: &[f32],
    class: Option<usize>,
    logits: Vec<f32>,
) -> Result<ClassActivationMap> {
    let size = |tensor: String, unit, found, expected| Error::CamTensorSize {
        backend: source.into(),
        tensor,
        unit,
        found,
        expected,
    };
    check_fc_weight(source, fc_weight)?;
    check_class(class)?;
    if logits.len() != NUM_CLASSES {
        return Err(size(
            "the logits".into(),
            "values",
            logits.len(),
            NUM_CLASSES,
        ));
    }
    let class = class.unwrap_or_else(|| crate::postprocess::top_k_indices(&logits, 1)[0]);
    let (k, height, width) = features.dim();
    if k != FC_IN {
        return Err(size(FEATURE_LAYER.to_string(), "channels", k, FC_IN));
    }
    let row = &fc_weight[class * FC_IN..(class + 1) * FC_IN];
    let mut raw = vec![0.0f32; height * width];
    for (channel, &w) in features.outer_iter().zip(row) {
        for (acc, &f) in raw.iter_mut().zip(channel.iter()) {
            *acc += w * f;
        }
    }
    Ok(ClassActivationMap {
        class,
        height,
        width,
        normalized: min_max_normalize(&raw),
        raw,
        logits,
    })
}

/// `fc.weight` must be `[1000, 512]`.
fn check_fc_weight(backend: &str, fc_weight: &[f32]) -> Result<()> {
    if fc_weight.len() == NUM_CLASSES * FC_IN {
        return Ok(());
    }
    Err(Error::CamTensorSize {
        backend: backend.into(),
        tensor: "fc.weight".into(),
        unit: "values",
        found: fc_weight.len(),
        expected: NUM_CLASSES * FC_IN,
    })
}

/// A class asked for must be one of the classifier's.
fn check_class(class: Option<usize>) -> Result<()> {
    match class {
        Some(class) if class >= NUM_CLASSES => Err(Error::ClassOutOfRange {
            class,
            classes: NUM_CLASSES,
        }),
        _ => Ok(()),
    }
}

fn min_max_normalize(values: &[f32]) -> Vec<f32> {
    let min = values.iter().copied().fold(f32::INFINITY, f32::min);
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = max - min;
    if !(range > 0.0 && range.is_finite()) {
        return vec![0.0; values.len()];
    }
    values.iter().map(|v| (v - min) / range).collect()
}

/// Upsamples `map` (`h x w`, values in `[0, 1]`) to `out_w x out_h` bilinearly with half-pixel
/// centres (OpenCV's `INTER_LINEAR`, PyTorch's `align_corners=False`).
pub fn upsample_bilinear(
    map: &[f32],
    (h, w): (usize, usize),
    (out_w, out_h): (u32, u32),
) -> Vec<f32> {
    let coord = |o: u32, out: u32, inp: usize| {
        let s = ((o as f32 + 0.5) * inp as f32 / out as f32 - 0.5).clamp(0.0, (inp - 1) as f32);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(inp - 1);
        (i0, i1, s - i0 as f32)
    };
    let mut out = Vec::with_capacity(out_w as usize * out_h as usize);
    for oy in 0..out_h {
        let (y0, y1, fy) = coord(oy, out_h, h);
        for ox in 0..out_w {
            let (x0, x1, fx) = coord(ox, out_w, w);
            let top = map[y0 * w + x0] * (1.0 - fx) + map[y0 * w + x1] * fx;
            let bottom = map[y1 * w + x0] * (1.0 - fx) + map[y1 * w + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// The "jet" colour map: 0 is dark blue, 0.5 green-yellow, 1 dark red.
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let channel =
        |offset: f32| ((1.5 - (4.0 * v - offset).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// Which picture the heat map is drawn over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CamView {
    /// The whole original image, the map over the region the network saw, that region outlined:
    /// "where in my picture did it look".
    #[default]
    Original,
    /// The 224x224 crop the network saw, the map over all of it.
    Crop,
}

impl CamView {
    /// Every view, the default first.
    pub const ALL: [CamView; 2] = [CamView::Original, CamView::Crop];

    /// Its name on the command line and in `/v1/cam?view=`.
    pub fn name(self) -> &'static str {
        match self {
            CamView::Original => "original",
            CamView::Crop => "crop",
        }
    }
}

impl std::str::FromStr for CamView {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        CamView::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("unknown view '{s}' (use original or crop)"))
    }
}

/// The overlay for `view`: over `original` (the decoded image, before preprocessing) or over
/// `crop` (what [`crate::preprocess::resize_and_crop`] made of it).
pub fn overlay_for_view(
    view: CamView,
    original: &RgbImage,
    crop: &RgbImage,
    map: &ClassActivationMap,
    alpha: f32,
) -> RgbImage {
    match view {
        CamView::Original => heatmap_overlay_on_original(original, map, alpha),
        CamView::Crop => heatmap_overlay(crop, map, alpha),
    }
}

/// Long side of the picture [`heatmap_overlay_on_original`] draws at most: larger originals are
/// scaled down first (a 64-megapixel photo would make a 100 MB PNG, and a screen shows less).
pub const MAX_OVERLAY_SIDE: u32 = 1600;

/// Draws the map over the whole original image: blended over the region the network saw (the
/// center crop mapped back through the resize), that region outlined in white, the rest of the
/// image as it is. Images larger than [`MAX_OVERLAY_SIDE`] are scaled down first.
pub fn heatmap_overlay_on_original(
    original: &RgbImage,
    map: &ClassActivationMap,
    alpha: f32,
) -> RgbImage {
    let (ow, oh) = original.dimensions();
    let (left, top, rw, rh) = crate::preprocess::crop_region_in_original(ow, oh);
    let scale = (MAX_OVERLAY_SIDE as f64 / ow.max(oh) as f64).min(1.0);
    let mut out = if scale < 1.0 {
        let w = ((ow as f64 * scale).round() as u32).max(1);
        let h = ((oh as f64 * scale).round() as u32).max(1);
        image::imageops::resize(original, w, h, image::imageops::FilterType::Triangle)
    } else {
        original.clone()
    };
    let (w, h) = out.dimensions();
    // The region in the output's pixels, whole pixels inside the image.
    let x0 = ((left * scale).round() as u32).min(w - 1);
    let y0 = ((top * scale).round() as u32).min(h - 1);
    let x1 = (((left + rw) * scale).round() as u32).clamp(x0 + 1, w);
    let y1 = (((top + rh) * scale).round() as u32).clamp(y0 + 1, h);
    let up = upsample_bilinear(&map.normalized, (map.height, map.width), (x1 - x0, y1 - y0));
    let alpha = alpha.clamp(0.0, 1.0);
    for y in y0..y1 {
        for x in x0..x1 {
            let heat = jet(up[((y - y0) * (x1 - x0) + (x - x0)) as usize]);
            let p = out.get_pixel_mut(x, y);
            p.0 = std::array::from_fn(|c| {
                ((1.0 - alpha) * p.0[c] as f32 + alpha * heat[c] as f32).round() as u8
            });
        }
    }
    // Outline: a white line just inside the region, 1/200 of the long side thick (at least 1).
    let t = (w.max(h) / 200).max(1);
    for y in y0..y1 {
        for x in x0..x1 {
            let edge = x < x0 + t || x + t >= x1 || y < y0 + t || y + t >= y1;
            if edge {
                out.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
    }
    out
}

/// Blends the map over `crop` (the image the network saw, e.g.
/// [`crate::preprocess::resize_and_crop`]): `out = (1 - alpha) * crop + alpha * jet(map)`.
pub fn heatmap_overlay(crop: &RgbImage, map: &ClassActivationMap, alpha: f32) -> RgbImage {
    let (w, h) = crop.dimensions();
    let up = upsample_bilinear(&map.normalized, (map.height, map.width), (w, h));
    let alpha = alpha.clamp(0.0, 1.0);
    RgbImage::from_fn(w, h, |x, y| {
        let heat = jet(up[(y * w + x) as usize]);
        let p = crop.get_pixel(x, y).0;
        Rgb(std::array::from_fn(|c| {
            ((1.0 - alpha) * p[c] as f32 + alpha * heat[c] as f32).round() as u8
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_spans_zero_to_one_and_handles_flat_maps() {
        assert_eq!(min_max_normalize(&[2.0, 4.0, 3.0]), vec![0.0, 1.0, 0.5]);
        assert_eq!(min_max_normalize(&[5.0; 4]), vec![0.0; 4]);
        assert_eq!(min_max_normalize(&[f32::NAN, 1.0]), vec![0.0; 2]);
    }

    #[test]
    fn upsampling_keeps_constants_and_interpolates_between_centres() {
        let up = upsample_bilinear(&[0.25; 4], (2, 2), (8, 8));
        assert!(up.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        // 1x2 map [0, 1] to width 4: centres at 0.25 and 0.75 of the way; edges clamp.
        let up = upsample_bilinear(&[0.0, 1.0], (1, 2), (4, 1));
        assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn jet_runs_blue_to_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        let mid = jet(0.5);
        assert!(mid[1] == 255 && mid[0] == 128 && mid[2] == 128);
    }

    /// The defining identity: the spatial mean of the raw map plus the class's bias is the logit
    /// the same forward pass produced, for every backend that reports the feature layer.
    #[test]
    fn map_mean_plus_bias_is_the_logit() {
        use crate::backend::{BackendKind, BackendOptions};
        let weights = crate::weights::synthetic_weights(0);
        let fc_weight = weights.tensor("fc.weight").f32_values();
        let fc_bias = weights.tensor("fc.bias").f32_values();
        let input = Array3::from_shape_fn((3, 224, 224), |(c, y, x)| {
            ((c * 31 + y * 7 + x * 3) % 97) as f32 / 40.0 - 1.2
        });
        for kind in [BackendKind::Gemm, BackendKind::Native] {
            let backend = kind.create(&weights, &BackendOptions::default()).unwrap();
            for class in [None, Some(0), Some(999)] {
                let map = class_activation_map(&*backend, fc_weight, input.view(), class).unwrap();
                assert_eq!((map.height, map.width), (7, 7));
                let c = map.class;
                if class.is_none() {
                    assert_eq!(c, crate::postprocess::top_k_indices(&map.logits, 1)[0]);
                }
                let mean = map.raw.iter().sum::<f32>() / 49.0;
                let (expected, found) = (map.logits[c], mean + fc_bias[c]);
                assert!(
                    (expected - found).abs() < 1e-3 * expected.abs().max(1.0),
                    "{kind} class {c}: logit {expected}, mean(CAM) + bias {found}"
                );
            }
        }
        let backend = BackendKind::Native
            .create(&weights, &BackendOptions::default())
            .unwrap();
        assert!(class_activation_map(&*backend, fc_weight, input.view(), Some(1000)).is_err());
        assert!(class_activation_map(&*backend, &fc_weight[1..], input.view(), None).is_err());
    }

    #[test]
    fn the_overlay_on_the_original_covers_the_crop_region_and_outlines_it() {
        // 400x300: resized to 341x256, crop offset (58, 16), so the region is x 68..331,
        // y 18.75..281.25 in the original (scale 300/256).
        let original = RgbImage::from_fn(400, 300, |_, _| Rgb([10, 20, 30]));
        let (left, top, rw, rh) = crate::preprocess::crop_region_in_original(400, 300);
        assert!((left - 58.0 * 400.0 / 341.0).abs() < 1e-9 && (top - 18.75).abs() < 1e-9);
        assert!((rw - 224.0 * 400.0 / 341.0).abs() < 1e-9 && (rh - 262.5).abs() < 1e-9);
        let map = ClassActivationMap {
            class: 0,
            height: 1,
            width: 1,
            raw: vec![1.0],
            normalized: vec![1.0],
            logits: vec![],
        };
        let out = heatmap_overlay_on_original(&original, &map, 1.0);
        assert_eq!(out.dimensions(), (400, 300));
        // Outside the region: untouched. Inside: the map's colour. On its edge: the outline.
        assert_eq!(out.get_pixel(5, 5).0, [10, 20, 30]);
        assert_eq!(out.get_pixel(399, 299).0, [10, 20, 30]);
        assert_eq!(out.get_pixel(200, 150).0, jet(1.0));
        assert_eq!(out.get_pixel(68, 150).0, [255, 255, 255]);
        assert_eq!(out.get_pixel(200, 19).0, [255, 255, 255]);
        // A large original is drawn at MAX_OVERLAY_SIDE.
        let big = RgbImage::from_fn(3200, 100, |_, _| Rgb([0, 0, 0]));
        let out = heatmap_overlay_on_original(&big, &map, 0.5);
        assert_eq!(out.dimensions(), (MAX_OVERLAY_SIDE, 50));
    }

    #[test]
    fn overlay_with_alpha_zero_is_the_crop() {
        let crop = RgbImage::from_fn(14, 14, |x, y| Rgb([x as u8, y as u8, 7]));
        let map = ClassActivationMap {
            class: 0,
            height: 7,
            width: 7,
            raw: (0..49).map(|i| i as f32).collect(),
            normalized: min_max_normalize(&(0..49).map(|i| i as f32).collect::<Vec<_>>()),
            logits: vec![],
        };
        assert_eq!(heatmap_overlay(&crop, &map, 0.0), crop);
        let full = heatmap_overlay(&crop, &map, 1.0);
        assert_eq!(full.get_pixel(0, 0).0, jet(0.0));
        assert_eq!(full.get_pixel(13, 13).0, jet(1.0));
    }
}
