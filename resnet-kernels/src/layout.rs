//! The network input from NCHW `f32` (what the preprocessing and every peer produce) to the
//! NHWC activations the backends run on, converted on the way (`f32`, bf16 or `u8` codes).
//!
//! One place for the three backends: in parallel over runs of pixels, each channel's run
//! converted as one contiguous loop (which vectorises), then interleaved. A plain scatter
//! (`dst[p * C + c] = src[c][p]`, one thread) cost 2 ms of the stem's 4.4 at batch 8 on the
//! Xeon of docs/bf16-amx.md.

use crate::team::for_each_chunk_mut;

/// Pixels per work item (the stem's input is 50 k pixels per image).
const PIXELS: usize = 2048;

/// `out` (`[N, H·W, C]`) = `convert` of `input` (`[N, C, H·W]`), `convert(run, dst)` writing
/// one channel's run of at most [`PIXELS`] values into `dst` (same length).
///
/// # Panics
/// If the lengths differ from `batch * c * hw`.
pub fn nchw_to_nhwc_with<T: Copy + Default + Send>(
    input: &[f32],
    batch: usize,
    c: usize,
    hw: usize,
    out: &mut [T],
    convert: impl Fn(&[f32], &mut [T]) + Sync,
) {
    nchw_to_nhwc_segments(input, batch, c, hw, out, |image, p0, seg| {
        convert_and_scatter(image, hw, p0, seg, &convert)
    });
}

/// The driver of [`nchw_to_nhwc_with`]: in parallel over runs of [`PIXELS`] output pixels,
/// each cut into segments inside one image; `segment(image, p0, dst)` fills `dst` (`dst.len() /
/// c` pixels from pixel `p0` of `image`, its `[C, H·W]` input).
///
/// # Panics
/// If the lengths differ from `batch * c * hw`.
pub(crate) fn nchw_to_nhwc_segments<T: Send>(
    input: &[f32],
    batch: usize,
    c: usize,
    hw: usize,
    out: &mut [T],
    segment: impl Fn(&[f32], usize, &mut [T]) + Sync,
) {
    assert_eq!(input.len(), batch * c * hw, "input is not [N, C, H*W]");
    assert_eq!(
        out.len(),
        input.len(),
        "output length differs from the input's"
    );
    if input.is_empty() {
        return;
    }
    // Chunks of PIXELS output pixels over the whole batch; one may straddle two images, so
    // each is walked in segments that stay inside one image.
    for_each_chunk_mut(out, PIXELS * c, |item, dst| {
        let mut done = 0;
        while done * c < dst.len() {
            let pixel = item * PIXELS + done;
            let (image, p0) = (pixel / hw, pixel % hw);
            let pixels = (hw - p0).min(dst.len() / c - done);
            segment(
                &input[image * c * hw..][..c * hw],
                p0,
                &mut dst[done * c..][..pixels * c],
            );
            done += pixels;
        }
    });
}

/// One segment of [`nchw_to_nhwc_with`]: each channel's run converted as one contiguous loop,
/// then scattered into the pixels of `seg` (at most [`PIXELS`]).
pub(crate) fn convert_and_scatter<T: Copy + Default>(
    image: &[f32],
    hw: usize,
    p0: usize,
    seg: &mut [T],
    convert: &impl Fn(&[f32], &mut [T]),
) {
    let c = image.len() / hw;
    let pixels = seg.len() / c;
    let mut plane = [T::default(); PIXELS];
    for ch in 0..c {
        convert(&image[ch * hw + p0..][..pixels], &mut plane[..pixels]);
        for (px, &v) in seg.chunks_exact_mut(c).zip(&plane[..pixels]) {
            px[ch] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the plain scatter, with images whose pixel count is not a multiple of the run
    /// (chunks straddle images) and a converting function.
    #[test]
    fn equals_the_plain_scatter() {
        for (batch, c, hw) in [(3, 3, 2500), (2, 5, 4096), (1, 1, 7), (4, 3, 2049)] {
            let input: Vec<f32> = (0..batch * c * hw)
                .map(|i| (i % 977) as f32 - 400.0)
                .collect();
            let mut want = vec![0i32; input.len()];
            for n in 0..batch {
                for ch in 0..c {
                    for p in 0..hw {
                        want[(n * hw + p) * c + ch] = 2 * input[(n * c + ch) * hw + p] as i32;
                    }
                }
            }
            let mut got = vec![-1i32; input.len()];
            nchw_to_nhwc_with(&input, batch, c, hw, &mut got, |src, dst| {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = 2 * s as i32;
                }
            });
            assert_eq!(got, want, "batch {batch} c {c} hw {hw}");
        }
    }
}
