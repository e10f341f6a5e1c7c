//! The reference backend: ResNet-18 written as a textbook.
//!
//! One short function per layer type, each computing exactly the formula in its doc comment with
//! plain loops: no im2col, no BatchNorm folding, no SIMD, no `unsafe`. Sums are accumulated in
//! f64, so this backend is also the most accurate one: every other backend is tested against it.
//!
//! Tensors are `ndarray` arrays in NCHW order: `N` images, `C` channels, `H` rows, `W` columns.
//! Only the output-channel loop of [`conv2d`] runs in parallel (rayon); everything else is serial.

use super::folded::FoldedLayer;
use super::{check_batch_shape, Backend, LayerObserver, Reporter, TracePoint};
use crate::arch::{BasicBlock, ConvBn, ResNet18Arch};
use crate::error::Result;
use crate::weights::{BatchNorm, Weights};
use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Axis, Zip};
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
        let values = w.values();
        let w = ArrayView4::from_shape(cb.weight_shape(), &values[..])
            .expect("Weights checks every tensor's shape when it is built");
        let y = conv2d(x, w, cb.stride, cb.padding);
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
        // `trace.report(point, y)` tells the observer that trace point `point` is done: its
        // name, output shape and the time since the previous point, plus a view of `y` itself
        // when the observer asks for outputs (`resnet trace`, the golden tests). It computes
        // nothing and copies nothing here.
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
        let fc_w = ArrayView2::from_shape((fc_w.shape[0], fc_w.shape[1]), fc_w.f32_values())
            .expect("Weights checks every tensor's shape when it is built");
        let logits = linear(&pooled, fc_w, fc_b.f32_values());
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
#[allow(non_snake_case)] // sizes keep the formula's capital letters, indices its small ones
pub fn conv2d(x: &Array4<f32>, w: ArrayView4<'_, f32>, stride: usize, pad: usize) -> Array4<f32> {
    let (N, C, H, W) = x.dim();
    let (OC, C_of_w, KH, KW) = w.dim();
    assert_eq!(C, C_of_w, "input channels must match the weight");
    let OH = (H + 2 * pad - KH) / stride + 1;
    let OW = (W + 2 * pad - KW) / stride + 1;
    let mut y = Array4::<f32>::zeros((N, OC, OH, OW));
    for n in 0..N {
        let mut y_n = y.index_axis_mut(Axis(0), n);
        let y_n = y_n
            .as_slice_mut()
            .expect("a fresh array is in standard layout");
        // Each output plane y[n, oc, .., ..] is independent: one rayon task per `oc`.
        y_n.par_chunks_mut(OH * OW)
            .enumerate()
            .for_each(|(oc, y_plane)| {
                // The formula's loop nest is (oh, ow) outside and the sum over (c, kh, kw)
                // inside. Here the sum's loops are moved outside (oh, ow), with one f64
                // accumulator per output element, so each weight w[oc, c, kh, kw] is read once
                // per plane and the innermost loop walks one input row. The reordering is
                // legal and exact: every output element still receives its terms in the
                // formula's order (c, then kh, then kw), so each sum, rounding included, is
                // the one the formula's nest computes.
                let mut acc = vec![0.0f64; OH * OW];
                for c in 0..C {
                    let x_nc = x.index_axis(Axis(0), n).index_axis_move(Axis(0), c);
                    for kh in 0..KH {
                        for kw in 0..KW {
                            let w_k = w[[oc, c, kh, kw]] as f64;
                            for oh in 0..OH {
                                let ih = (oh * stride + kh) as isize - pad as isize;
                                if ih < 0 || ih >= H as isize {
                                    continue; // a padding row: every term is zero
                                }
                                let x_row = x_nc.row(ih as usize);
                                for ow in 0..OW {
                                    let iw = (ow * stride + kw) as isize - pad as isize;
                                    if iw >= 0 && iw < W as isize {
                                        acc[oh * OW + ow] += w_k * x_row[iw as usize] as f64;
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

/// A convolution with its BatchNorm folded in ([`crate::weights::fold_batch_norm`]: weights
/// scaled per output channel, one bias each), the form the fast backends compute:
///
/// ```text
/// y[n, oc, oh, ow] = conv2d(x, w')[n, oc, oh, ow] + b'[oc]
/// ```
///
/// Used to recompute what happens inside a BasicBlock ([`crate::trace::branches`]), which the
/// fast backends fuse away.
pub(crate) fn folded_conv(x: &Array4<f32>, layer: &FoldedLayer) -> Array4<f32> {
    let w = ArrayView4::from_shape(layer.spec.weight_shape(), &layer.conv.weight)
        .expect("fold_batch_norm keeps the weight's length");
    let mut y = conv2d(x, w, layer.spec.stride, layer.spec.padding);
    for (mut plane, &b) in y.axis_iter_mut(Axis(1)).zip(&layer.conv.bias) {
        plane += b;
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
#[allow(non_snake_case)] // sizes keep the formula's capital letters
pub fn max_pool_3x3_s2_p1(x: &Array4<f32>) -> Array4<f32> {
    let (N, C, H, W) = x.dim();
    let (OH, OW) = crate::arch::max_pool_output_hw(H, W);
    let mut y = Array4::<f32>::zeros((N, C, OH, OW));
    for ((n, c, oh, ow), out) in y.indexed_iter_mut() {
        let mut best = f32::NEG_INFINITY;
        for kh in 0..3 {
            for kw in 0..3 {
                let ih = (2 * oh + kh) as isize - 1;
                let iw = (2 * ow + kw) as isize - 1;
                if ih >= 0 && ih < H as isize && iw >= 0 && iw < W as isize {
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
#[allow(non_snake_case)] // sizes keep the formula's capital letters
pub fn global_avg_pool(x: &Array4<f32>) -> Array2<f32> {
    let (N, C, H, W) = x.dim();
    let mut y = Array2::<f32>::zeros((N, C));
    Zip::indexed(&mut y).for_each(|(n, c), out| {
        let sum: f64 = x
            .index_axis(Axis(0), n)
            .index_axis(Axis(0), c)
            .iter()
            .map(|&v| v as f64)
            .sum();
        *out = (sum / (H * W) as f64) as f32;
    });
    y
}

/// Fully connected layer.
///
/// ```text
/// x: [N, F]   w: [K, F]   b: [K]   y: [N, K]
/// y[n, k] = b[k] + Σ_f w[k, f] · x[n, f]
/// ```
#[allow(non_snake_case)] // sizes keep the formula's capital letters
pub fn linear(x: &Array2<f32>, w: ArrayView2<'_, f32>, b: &[f32]) -> Array2<f32> {
    let (N, F) = x.dim();
    let (K, F_of_w) = w.dim();
    assert_eq!(
        (F, K),
        (F_of_w, b.len()),
        "features and classes must match the weight"
    );
    let mut y = Array2::<f32>::zeros((N, K));
    for n in 0..N {
        for k in 0..K {
            let dot: f64 = (0..F).map(|f| w[[k, f]] as f64 * x[[n, f]] as f64).sum();
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
        let ones = [1.0; 4];
        let y = conv2d(
            &x,
            ArrayView4::from_shape((1, 1, 2, 2), &ones).unwrap(),
            1,
            0,
        );
        assert_eq!(y.into_raw_vec_and_offset().0, vec![12.0, 16.0, 24.0, 28.0]);
        // Padding 1, stride 2, 3x3 kernel with only the centre set: picks x[2·oh − 1 + 1, ...].
        let mut k = [0.0f32; 9];
        k[4] = 1.0;
        let y = conv2d(&x, ArrayView4::from_shape((1, 1, 3, 3), &k).unwrap(), 2, 1);
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
        let w = [1.0, 2.0, 0.0, -1.0];
        let y = linear(&p, ArrayView2::from_shape((2, 2), &w).unwrap(), &[0.5, 0.0]);
        assert_eq!(y.as_slice().unwrap(), &[0.5 + 2.5 - 2.0, 1.0]);
    }
}
