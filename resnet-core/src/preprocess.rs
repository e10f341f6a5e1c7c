//! torchvision's ImageNet evaluation transform, reproduced exactly:
//!
//! ```python
//! transforms.Compose([
//!     transforms.Resize(256),          # PIL bilinear with antialias; short side -> 256
//!     transforms.CenterCrop(224),
//!     transforms.ToTensor(),           # HWC uint8 -> CHW float32 / 255
//!     transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
//! ])
//! ```
//!
//! [`resize_bilinear_like_pil`] follows Pillow's `Resample.c` to the bit: the same filter support,
//! the same coefficient rounding to 22-bit fixed point, horizontal pass first with 8-bit rounding
//! in between, then the vertical pass. On the same RGB input the 224x224 crop is bit-identical to
//! PIL's (tested against fixtures made by PIL).

use image::RgbImage;
use ndarray::Array3;

/// Side of the short edge after `Resize(256)`.
pub const RESIZE_SHORT_SIDE: u32 = 256;
/// Side of the center crop.
pub const CROP_SIZE: u32 = 224;
/// ImageNet channel means (RGB).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The whole transform: resize, crop, normalise. Returns `[3, 224, 224]`.
pub fn preprocess(rgb: &RgbImage) -> Array3<f32> {
    to_normalized_chw(&resize_and_crop(rgb))
}

/// `Resize(256)` then `CenterCrop(224)`: the 8-bit pixels the network will see.
///
/// Only the 224x224 window of the resized image is computed: bit-identical to resizing the whole
/// image and cropping it (each output pixel depends only on its own filter taps), and bounded in
/// memory. A whole resize is not: a 4x63751 image, a quarter megapixel, resizes to 256x4079
/// thousand, 3 GB (the HTTP fuzz target found this).
pub fn resize_and_crop(rgb: &RgbImage) -> RgbImage {
    let (w, h) = resized_size(rgb.width(), rgb.height(), RESIZE_SHORT_SIDE);
    let (left, top) = (
        center_crop_offset(w - CROP_SIZE),
        center_crop_offset(h - CROP_SIZE),
    );
    resize_window_like_pil(rgb, (w, h), (left, top, CROP_SIZE, CROP_SIZE))
}

/// The square of the original image that the network sees: `Resize(256)` then
/// `CenterCrop(224)` mapped back to the original's pixels, as `(left, top, width, height)`
/// (floating point: the crop's edges fall between pixels of the original).
pub fn crop_region_in_original(w: u32, h: u32) -> (f64, f64, f64, f64) {
    let (rw, rh) = resized_size(w, h, RESIZE_SHORT_SIDE);
    let (left, top) = (
        center_crop_offset(rw - CROP_SIZE),
        center_crop_offset(rh - CROP_SIZE),
    );
    let (sx, sy) = (w as f64 / rw as f64, h as f64 / rh as f64);
    (
        left as f64 * sx,
        top as f64 * sy,
        CROP_SIZE as f64 * sx,
        CROP_SIZE as f64 * sy,
    )
}

/// torchvision's output size for `Resize(size)` with an int: the short side becomes `size`,
/// the long side `int(size * long / short)` (truncated, as Python's `int()` does).
pub fn resized_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Both operands are exact in f64 and IEEE division rounds correctly, like Python's `/`.
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `CenterCrop(size)`: `top = int(round((h - size) / 2))`, rounding half to even
/// as Python's `round` does (same for `left`). The image must be at least `size` on each side.
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    assert!(img.width() >= size && img.height() >= size);
    let (left, top) = (
        center_crop_offset(img.width() - size),
        center_crop_offset(img.height() - size),
    );
    image::imageops::crop_imm(img, left, top, size, size).to_image()
}

/// `int(round(extra / 2))` with Python's half-to-even rounding: the crop's left or top offset
/// when the image is `extra` pixels larger than the crop.
fn center_crop_offset(extra: u32) -> u32 {
    let (half, odd) = (extra / 2, extra % 2 == 1);
    // (extra / 2) is k + 0.5 when extra is odd: round half to even.
    if odd && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// `ToTensor` then `Normalize`: `((v / 255) - mean) / std` per channel, in f32 as torch computes
/// it, laid out `[C, H, W]`.
pub fn to_normalized_chw(img: &RgbImage) -> Array3<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = Array3::<f32>::zeros((3, h, w));
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            let v = p.0[c] as f32 / 255.0;
            out[[c, y as usize, x as usize]] = (v - MEAN[c]) / STD[c];
        }
    }
    out
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in `Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The triangle filter of `Image.BILINEAR`, support 1.
fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Filter taps of one output pixel: the first input index and the fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing `in_size` to `out_size`,
/// for the output pixels in `range` only.
///
/// When shrinking, the filter is stretched by the scale factor (this is the antialiasing): every
/// output pixel averages all the input pixels under a triangle `2 * scale` wide.
fn precompute_taps(in_size: u32, out_size: u32, range: std::ops::Range<u32>) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 1.0 * filter_scale;
    range
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filter_scale;
            // C's (int) cast truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| bilinear_filter((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let fixed = w * (1u32 << PRECISION_BITS) as f64;
                    if fixed < 0.0 {
                        (-0.5 + fixed) as i32
                    } else {
                        (0.5 + fixed) as i32
                    }
                })
                .collect();
            Taps {
                first: xmin,
                weights,
            }
        })
        .collect()
}

/// Pillow's `clip8`: from fixed point back to a byte, saturating.
fn clip8(acc: i32) -> u8 {
    if acc >= (1 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// `PIL.Image.resize((out_w, out_h), Image.BILINEAR)` on an RGB image, bit for bit.
pub fn resize_bilinear_like_pil(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    resize_window_like_pil(img, (out_w, out_h), (0, 0, out_w, out_h))
}

/// The window `(left, top, width, height)` of `PIL.Image.resize((out_w, out_h),
/// Image.BILINEAR)`, computing only that window's pixels (and the rows and columns of the input
/// they read).
fn resize_window_like_pil(
    img: &RgbImage,
    (out_w, out_h): (u32, u32),
    (left, top, win_w, win_h): (u32, u32, u32, u32),
) -> RgbImage {
    assert!(left + win_w <= out_w && top + win_h <= out_h && win_w > 0 && win_h > 0);
    let (in_w, in_h) = img.dimensions();
    let round = 1i32 << (PRECISION_BITS - 1);
    // Pillow skips a pass whose size does not change: that pass is the identity.
    let vertical = (out_h != in_h).then(|| precompute_taps(in_h, out_h, top..top + win_h));

    // Horizontal pass, only over the rows the vertical pass will read (Pillow's ybox).
    let (first_row, last_row) = match &vertical {
        None => (top as usize, (top + win_h) as usize),
        Some(vertical) => {
            let last = vertical.last().expect("a window row");
            (vertical[0].first, last.first + last.weights.len())
        }
    };
    let rows = last_row - first_row;
    let src = img.as_raw();
    let stride = win_w as usize * 3;
    let temp: Vec<u8> = if out_w == in_w {
        let mut temp = Vec::with_capacity(rows * stride);
        for y in first_row..last_row {
            temp.extend_from_slice(&src[(y * in_w as usize + left as usize) * 3..][..stride]);
        }
        temp
    } else {
        let horizontal = precompute_taps(in_w, out_w, left..left + win_w);
        let mut temp = vec![0u8; rows * stride];
        for (y, out_row) in temp.chunks_exact_mut(stride).enumerate() {
            let in_row = &src[(first_row + y) * in_w as usize * 3..][..in_w as usize * 3];
            for (x, taps) in horizontal.iter().enumerate() {
                let mut acc = [round; 3];
                for (i, &k) in taps.weights.iter().enumerate() {
                    let p = &in_row[(taps.first + i) * 3..][..3];
                    for c in 0..3 {
                        acc[c] += p[c] as i32 * k;
                    }
                }
                for c in 0..3 {
                    out_row[x * 3 + c] = clip8(acc[c]);
                }
            }
        }
        temp
    };
    let Some(vertical) = vertical else {
        return RgbImage::from_raw(win_w, win_h, temp).expect("buffer matches size");
    };

    // Vertical pass over the horizontally resized rows.
    let mut out = vec![0u8; win_h as usize * stride];
    for (y, taps) in vertical.iter().enumerate() {
        let first = taps.first - first_row;
        for x in 0..stride {
            let mut acc = round;
            for (i, &k) in taps.weights.iter().enumerate() {
                acc += temp[(first + i) * stride + x] as i32 * k;
            }
            out[y * stride + x] = clip8(acc);
        }
    }
    RgbImage::from_raw(win_w, win_h, out).expect("buffer matches size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_follows_torchvision() {
        assert_eq!(resized_size(451, 300, 256), (384, 256)); // int(256*451/300) = 384
        assert_eq!(resized_size(2000, 120, 256), (4266, 256));
        assert_eq!(resized_size(427, 640, 256), (256, 383));
        assert_eq!(resized_size(1, 1, 256), (256, 256));
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        // 225 - 224 = 1 -> round(0.5) = 0; 227 - 224 = 3 -> round(1.5) = 2.
        let img = RgbImage::from_fn(227, 225, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = center_crop(&img, 224);
        assert_eq!(c.get_pixel(0, 0).0, [2, 0, 0]);
    }

    #[test]
    fn constant_image_stays_constant_and_normalises() {
        let img = RgbImage::from_pixel(300, 500, image::Rgb([10, 128, 250]));
        let r = resize_and_crop(&img);
        assert!(r.pixels().all(|p| p.0 == [10, 128, 250]));
        let t = preprocess(&img);
        assert_eq!(t.shape(), &[3, 224, 224]);
        assert_eq!(t[[1, 5, 5]], (128.0f32 / 255.0 - 0.456) / 0.224);
    }

    /// The computed window equals the same window cut from the whole resize, for up- and
    /// downscaling on either axis and odd crop offsets.
    #[test]
    fn a_window_of_the_resize_equals_the_crop_of_the_whole_resize() {
        for (w, h) in [
            (300, 500),
            (500, 300),
            (231, 229),
            (1000, 257),
            (256, 256),
            (7, 5),
        ] {
            let img = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + y) as u8, (x ^ y) as u8, (x * y % 251) as u8])
            });
            let (rw, rh) = resized_size(w, h, RESIZE_SHORT_SIDE);
            let whole = center_crop(&resize_bilinear_like_pil(&img, rw, rh), CROP_SIZE);
            assert_eq!(resize_and_crop(&img), whole, "{w}x{h}");
        }
    }

    #[test]
    fn upscaling_a_single_pixel_fills_the_output() {
        let img = RgbImage::from_pixel(1, 1, image::Rgb([7, 8, 9]));
        let r = resize_bilinear_like_pil(&img, 256, 256);
        assert!(r.pixels().all(|p| p.0 == [7, 8, 9]));
    }
}
