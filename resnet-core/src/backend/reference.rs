//! The reference backend: ResNet-18 written as a textbook.
//!
//! One short function per layer type, each computing exactly the formula in its doc comment with
//! plain loops: no im2col, no BatchNorm folding, no SIMD, no `unsafe`. Sums are accumulated in
//! f64, so this backend is also the most accurate one: every other backend is tested against it.
//!
//! Tensors are `ndarray` arrays in NCHW order: `N` images, `C` channels, `H` rows, `W` columns.
//! Only the output-channel loop of [`conv2d`] runs in parallel (rayon); everything else is serial.

use super::{check_batch_shape, Backend, LayerObserver, Reporter, TracePoint};
use crate::arch::{BasicBlock, ConvBn, ResNet18Arch};
use crate::error::Result;
use crate::weights::{BatchNorm, Weights};
use ndarray::{Array2, Array4, ArrayView4, Axis, Zip};
use rayon::prelude::*;

/// ResNet-18 by direct loops; see the module documentation.
pub struct ReferenceBackend {
    arch: ResNet18Arch,
    weights: Weights,
}

impl ReferenceBackend {
    /// Keeps a copy of the weights as they are (BatchNorm stays a separate step).
    pub fn new(weights: &Weights) -> ReferenceBackend {
        ReferenceBackend {
            arch: ResNet18Arch::new(),
            weights: weights.clone(),
        }
    }

    /// conv -> BatchNorm, as torchvision's `convN` + `bnN` modules.
    fn conv_bn(&self, x: &Array4<f32>, cb: &ConvBn) -> Array4<f32> {
        let w = self.weights.tensor(&format!("{}.weight", cb.conv));
        let y = conv2d(x, &w.data, cb.weight_shape(), cb.stride, cb.padding);
        batch_norm(&y, &self.weights.batch_norm(&cb.bn))
    }

    /// torchvision's `BasicBlock.forward`:
    /// `relu(bn2(conv2(relu(bn1(conv1(x))))) + identity)`.
    fn basic_block(&self, x: &Array4<f32>, block: &BasicBlock) -> Array4<f32> {
        // Residual branch.
        let out = relu(self.conv_bn(x, &block.conv1));
        let out = self.conv_bn(&out, &block.conv2);
        // Skip branch: the input itself, or a 1x1/2 conv + BN when the shape changes.
        let identity = match &block.downsample {
            Some(ds) => self.conv_bn(x, ds),
            None => x.clone(),
        };
        // Merge, then activate.
        relu(out + identity)
    }
}

impl Backend for ReferenceBackend {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn describe(&self) -> String {
        "direct convolution loops, f64 accumulation, BatchNorm unfolded, no SIMD".into()
    }

    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        observer: &mut dyn LayerObserver,
    ) -> Result<Array2<f32>> {
        check_batch_shape(&batch)?;
        let mut trace = Reporter::new(observer);

        // Stem: conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2.
        let x = relu(self.conv_bn(&batch.to_owned(), &self.arch.stem));
        trace.report(TracePoint::Stem, x.view().into_dyn());
        let mut x = max_pool_3x3_s2_p1(&x);
        trace.report(TracePoint::MaxPool, x.view().into_dyn());

        // Four stages of two BasicBlocks.
        for block in &self.arch.blocks {
            x = self.basic_block(&x, block);
            trace.report(block.point(), x.view().into_dyn());
        }

        // Head: global average pool -> fully connected.
        let pooled = global_avg_pool(&x);
        trace.report(TracePoint::AvgPool, pooled.view().into_dyn());
        let fc_w = self.weights.tensor("fc.weight");
        let fc_b = self.weights.tensor("fc.bias");
        let logits = linear(&pooled, &fc_w.data, &fc_b.data);
        trace.report(TracePoint::Fc, logits.view().into_dyn());
        Ok(logits)
    }
}

/// 2-D convolution without bias.
///
/// ```text
/// x: [N, C, H, W]   w: [OC, C, KH, KW]   y: [N, OC, OH, OW]
/// OH = (H + 2·pad − KH) / stride + 1        (likewise OW)
/// y[n, oc, oh, ow] = Σ_c Σ_kh Σ_kw  w[oc, c, kh, kw] · x[n, c, oh·stride + kh − pad, ow·stride + kw − pad]
/// ```
///
/// where `x` reads as zero outside the image (the padding).
pub fn conv2d(
    x: &Array4<f32>,
    w: &[f32],
    w_shape: [usize; 4],
    stride: usize,
    pad: usize,
) -> Array4<f32> {
    let (n_images, c_in, h, width) = x.dim();
    let [oc_out, c_w, kh_size, kw_size] = w_shape;
    assert_eq!(c_in, c_w, "input channels must match the weight");
    let oh_size = (h + 2 * pad - kh_size) / stride + 1;
    let ow_size = (width + 2 * pad - kw_size) / stride + 1;
    let x = x.as_standard_layout();
    let x = x.as_slice().expect("standard layout");
    let mut y = Array4::<f32>::zeros((n_images, oc_out, oh_size, ow_size));
    for n in 0..n_images {
        let image = &x[n * c_in * h * width..(n + 1) * c_in * h * width];
        let mut y_n = y.index_axis_mut(Axis(0), n);
        let y_n = y_n.as_slice_mut().expect("standard layout");
        // Each output channel is independent: compute them in parallel.
        y_n.par_chunks_mut(oh_size * ow_size)
            .enumerate()
            .for_each(|(oc, y_plane)| {
                let mut acc = vec![0.0f64; oh_size * ow_size];
                for c in 0..c_in {
                    let x_plane = &image[c * h * width..(c + 1) * h * width];
                    for kh in 0..kh_size {
                        for kw in 0..kw_size {
                            let weight = w[((oc * c_in + c) * kh_size + kh) * kw_size + kw] as f64;
                            for oh in 0..oh_size {
                                // Input row of this output row and kernel row; skip padding rows.
                                let ih = (oh * stride + kh) as isize - pad as isize;
                                if ih < 0 || ih >= h as isize {
                                    continue;
                                }
                                let x_row = &x_plane[ih as usize * width..][..width];
                                for ow in 0..ow_size {
                                    let iw = (ow * stride + kw) as isize - pad as isize;
                                    if iw >= 0 && iw < width as isize {
                                        acc[oh * ow_size + ow] +=
                                            weight * x_row[iw as usize] as f64;
                                    }
                                }
                            }
                        }
                    }
                }
                for (out, a) in y_plane.iter_mut().zip(&acc) {
                    *out = *a as f32;
                }
            });
    }
    y
}

/// Inference-mode BatchNorm, per channel `c`:
///
/// ```text
/// x, y: [N, C, H, W]
/// y[n, c, h, w] = γ[c] · (x[n, c, h, w] − μ[c]) / sqrt(σ²[c] + ε) + β[c]
/// ```
pub fn batch_norm(x: &Array4<f32>, bn: &BatchNorm<'_>) -> Array4<f32> {
    let mut y = x.clone();
    for (c, mut plane) in y.axis_iter_mut(Axis(1)).enumerate() {
        let inv_std = 1.0 / (bn.var[c] as f64 + bn.eps).sqrt();
        plane.mapv_inplace(|v| {
            (bn.gamma[c] as f64 * (v as f64 - bn.mean[c] as f64) * inv_std + bn.beta[c] as f64)
                as f32
        });
    }
    y
}

/// Rectified linear unit, element-wise: `y = max(x, 0)`.
pub fn relu(mut x: Array4<f32>) -> Array4<f32> {
    x.mapv_inplace(|v| v.max(0.0));
    x
}

/// Max-pool with a 3x3 window, stride 2, padding 1 (padding never wins: it is −∞).
///
/// ```text
/// x: [N, C, H, W]   y: [N, C, OH, OW],  OH = (H + 2 − 3) / 2 + 1
/// y[n, c, oh, ow] = max over kh, kw in 0..3 of x[n, c, 2·oh + kh − 1, 2·ow + kw − 1]
/// ```
pub fn max_pool_3x3_s2_p1(x: &Array4<f32>) -> Array4<f32> {
    let (n_images, channels, h, w) = x.dim();
    let (oh_size, ow_size) = crate::arch::max_pool_output_hw(h, w);
    let mut y = Array4::<f32>::zeros((n_images, channels, oh_size, ow_size));
    for ((n, c, oh, ow), out) in y.indexed_iter_mut() {
        let mut best = f32::NEG_INFINITY;
        for kh in 0..3 {
            for kw in 0..3 {
                let ih = (2 * oh + kh) as isize - 1;
                let iw = (2 * ow + kw) as isize - 1;
                if ih >= 0 && ih < h as isize && iw >= 0 && iw < w as isize {
                    best = best.max(x[[n, c, ih as usize, iw as usize]]);
                }
            }
        }
        *out = best;
    }
    y
}

/// Global average pool: the mean of each channel's plane.
///
/// ```text
/// x: [N, C, H, W]   y: [N, C]
/// y[n, c] = (1 / (H·W)) · Σ_h Σ_w x[n, c, h, w]
/// ```
pub fn global_avg_pool(x: &Array4<f32>) -> Array2<f32> {
    let (n_images, channels, h, w) = x.dim();
    let mut y = Array2::<f32>::zeros((n_images, channels));
    Zip::indexed(&mut y).for_each(|(n, c), out| {
        let sum: f64 = x
            .index_axis(Axis(0), n)
            .index_axis(Axis(0), c)
            .iter()
            .map(|&v| v as f64)
            .sum();
        *out = (sum / (h * w) as f64) as f32;
    });
    y
}

/// Fully connected layer.
///
/// ```text
/// x: [N, F]   w: [K, F]   b: [K]   y: [N, K]
/// y[n, k] = b[k] + Σ_f w[k, f] · x[n, f]
/// ```
pub fn linear(x: &Array2<f32>, w: &[f32], b: &[f32]) -> Array2<f32> {
    let (n_images, features) = x.dim();
    let classes = b.len();
    let mut y = Array2::<f32>::zeros((n_images, classes));
    for n in 0..n_images {
        for k in 0..classes {
            let dot: f64 = (0..features)
                .map(|f| w[k * features + f] as f64 * x[[n, f]] as f64)
                .sum();
            y[[n, k]] = (b[k] as f64 + dot) as f32;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    #[test]
    fn conv2d_matches_a_hand_computed_example() {
        // One 3x3 image, one 2x2 kernel of ones, stride 1, no padding: sums of 2x2 windows.
        let x = Array::from_shape_vec((1, 1, 3, 3), (1..=9).map(|v| v as f32).collect()).unwrap();
        let y = conv2d(&x, &[1.0; 4], [1, 1, 2, 2], 1, 0);
        assert_eq!(y.into_raw_vec_and_offset().0, vec![12.0, 16.0, 24.0, 28.0]);
        // Padding 1, stride 2, 3x3 kernel with only the centre set: picks x[2·oh − 1 + 1, ...].
        let mut k = [0.0f32; 9];
        k[4] = 1.0;
        let y = conv2d(&x, &k, [1, 1, 3, 3], 2, 1);
        assert_eq!(y.into_raw_vec_and_offset().0, vec![1.0, 3.0, 7.0, 9.0]);
    }

    #[test]
    fn max_pool_ignores_padding_and_picks_the_max() {
        let x =
            Array::from_shape_vec((1, 1, 4, 4), (0..16).map(|v| -(v as f32)).collect()).unwrap();
        let y = max_pool_3x3_s2_p1(&x);
        // Windows start at (-1,-1), (-1,1), (1,-1), (1,1): their maxima are the top-left cells.
        assert_eq!(y.into_raw_vec_and_offset().0, vec![0.0, -1.0, -4.0, -5.0]);
    }

    #[test]
    fn pool_and_linear() {
        let x =
            Array::from_shape_vec((1, 2, 2, 2), vec![1., 2., 3., 4., -1., -1., -1., -1.]).unwrap();
        let p = global_avg_pool(&x);
        assert_eq!(p.as_slice().unwrap(), &[2.5, -1.0]);
        let y = linear(&p, &[1.0, 2.0, 0.0, -1.0], &[0.5, 0.0]);
        assert_eq!(y.as_slice().unwrap(), &[0.5 + 2.5 - 2.0, 1.0]);
    }
}
