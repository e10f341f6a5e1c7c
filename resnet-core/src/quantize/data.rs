//! Calibration and evaluation inputs: real photos, plus augmented crops of them (random square
//! crops of 40-100% of the short side, horizontal flips, brightness in [0.8, 1.2]), each resized
//! to 224x224 with the same PIL-exact resampling as [`crate::preprocess`] and normalised.

use crate::decode::{decode_image_bytes, DecodeOptions};
use crate::error::Result;
use crate::preprocess::{preprocess, resize_bilinear_like_pil, to_normalized_chw, CROP_SIZE};
use image::RgbImage;
use ndarray::Array3;

/// The photos built into the binary for the default calibration (from `testdata/images`).
pub const DEFAULT_CALIBRATION_NAMES: [&str; 3] = [
    "cat_baseline.jpg",
    "coffee_progressive.jpg",
    "fig_lossy.webp",
];

const DEFAULT_CALIBRATION_BYTES: [&[u8]; 3] = [
    include_bytes!("../../../testdata/images/cat_baseline.jpg"),
    include_bytes!("../../../testdata/images/coffee_progressive.jpg"),
    include_bytes!("../../../testdata/images/fig_lossy.webp"),
];

/// Inputs per built-in photo in the default calibration: its standard preprocessing plus 7 crops.
const DEFAULT_PER_PHOTO: usize = 8;

/// The default calibration set (24 inputs): each built-in photo's standard preprocessing and 7
/// augmented crops. Used when the INT8 backend is given f32 weights.
pub fn default_calibration_inputs() -> Result<Vec<Array3<f32>>> {
    let mut out = Vec::new();
    for (i, (name, bytes)) in DEFAULT_CALIBRATION_NAMES
        .iter()
        .zip(DEFAULT_CALIBRATION_BYTES)
        .enumerate()
    {
        let img = decode_image_bytes(bytes, name, &DecodeOptions::default())?;
        out.push(preprocess(&img.rgb));
        out.extend(augmented_inputs(
            &img.rgb,
            DEFAULT_PER_PHOTO - 1,
            1000 + i as u64,
        ));
    }
    Ok(out)
}

/// `count` augmented 224x224 normalised crops of `rgb`, reproducible from `seed`.
pub fn augmented_inputs(rgb: &RgbImage, count: usize, seed: u64) -> Vec<Array3<f32>> {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut unit = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let (w, h) = rgb.dimensions();
    (0..count)
        .map(|_| {
            let short = w.min(h) as f64;
            let side = ((0.4 + 0.6 * unit()) * short).round().max(1.0) as u32;
            let x0 = ((w - side) as f64 * unit()).round() as u32;
            let y0 = ((h - side) as f64 * unit()).round() as u32;
            let flip = unit() < 0.5;
            let gain = 0.8 + 0.4 * unit();
            let crop = RgbImage::from_fn(side, side, |x, y| {
                let sx = if flip { x0 + side - 1 - x } else { x0 + x };
                let p = rgb.get_pixel(sx, y0 + y).0;
                image::Rgb(p.map(|v| (v as f64 * gain).round().clamp(0.0, 255.0) as u8))
            });
            to_normalized_chw(&resize_bilinear_like_pil(&crop, CROP_SIZE, CROP_SIZE))
        })
        .collect()
}
