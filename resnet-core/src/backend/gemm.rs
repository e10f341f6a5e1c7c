//! The "library GEMM" baseline: classic NCHW im2col + `matrixmultiply::sgemm`, BatchNorm folded,
//! and bias, residual and ReLU as separate passes over memory. It is what a first optimised
//! implementation looks like; `native` is otherwise identical but packs, fuses and uses NHWC.

use super::folded::{FoldedLayer, FoldedResNet18};
use super::{check_batch_shape, Backend, LayerObserver, Reporter, TracePoint};
use crate::error::Result;
use ndarray::{Array2, Array4, ArrayView4};
use rayon::prelude::*;
use resnet_kernels::library_gemm::{im2col_nchw, sgemm_library};
use resnet_kernels::pool::{global_avg_pool_nchw, max_pool_3x3_s2_p1_nchw};

/// im2col + `matrixmultiply`, unfused.
pub struct GemmBackend {
    model: FoldedResNet18,
}

impl GemmBackend {
    /// Folds BatchNorm into the convolutions.
    pub fn new(weights: &crate::weights::Weights) -> GemmBackend {
        GemmBackend {
            model: FoldedResNet18::new(weights),
        }
    }
}

/// conv (+ folded BN) of a batch `[N, C, H, W]`: per image, `out[OC, P] = W[OC, K] · cols[K, P]`,
/// the output channels split across threads; then the bias as its own pass.
fn conv(x: &Array4<f32>, layer: &FoldedLayer) -> Array4<f32> {
    let (n, c, h, w) = x.dim();
    let s = &layer.spec;
    let (oh, ow) = s.output_hw(h, w);
    let (oc_n, k, p) = (s.out_channels, c * s.kernel * s.kernel, oh * ow);
    let mut y = Array4::<f32>::zeros((n, oc_n, oh, ow));
    let x = x.as_slice().expect("standard layout");
    let y_slice = y.as_slice_mut().expect("standard layout");
    let mut cols = Vec::new();
    for (img, out) in x
        .chunks_exact(c * h * w)
        .zip(y_slice.chunks_exact_mut(oc_n * p))
    {
        im2col_nchw(img, (c, h, w), s.kernel, s.stride, s.padding, &mut cols);
        // Rows of W (output channels) in chunks of 16, one sgemm per chunk, in parallel.
        let rows = 16;
        out.par_chunks_mut(rows * p)
            .zip(layer.conv.weight.par_chunks(rows * k))
            .for_each(|(out_rows, w_rows)| {
                sgemm_library(w_rows.len() / k, p, k, w_rows, &cols, out_rows);
            });
        for (plane, b) in out.chunks_exact_mut(p).zip(&layer.conv.bias) {
            plane.iter_mut().for_each(|v| *v += b);
        }
    }
    y
}

fn relu(x: &mut Array4<f32>) {
    x.mapv_inplace(|v| v.max(0.0));
}

impl Backend for GemmBackend {
    fn name(&self) -> &'static str {
        "gemm"
    }

    fn describe(&self) -> String {
        "NCHW im2col + matrixmultiply::sgemm, BatchNorm folded, bias/residual/ReLU as separate passes"
            .into()
    }

    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        observer: &mut dyn LayerObserver,
    ) -> Result<Array2<f32>> {
        check_batch_shape(&batch)?;
        let mut trace = Reporter::new(observer);
        let m = &self.model;

        let mut x = conv(&batch.as_standard_layout().to_owned(), &m.stem);
        relu(&mut x);
        trace.report(TracePoint::Stem, x.view().into_dyn());
        let (n, c, h, w) = x.dim();
        let (ph, pw) = crate::arch::max_pool_output_hw(h, w);
        let mut pooled = Array4::<f32>::zeros((n, c, ph, pw));
        max_pool_3x3_s2_p1_nchw(
            x.as_slice().unwrap(),
            n * c,
            h,
            w,
            pooled.as_slice_mut().unwrap(),
        );
        let mut x = pooled;
        trace.report(TracePoint::MaxPool, x.view().into_dyn());

        for block in &m.blocks {
            let mut out = conv(&x, &block.conv1);
            relu(&mut out);
            let mut out = conv(&out, &block.conv2);
            let identity = match &block.downsample {
                Some(ds) => conv(&x, ds),
                None => x,
            };
            out += &identity;
            relu(&mut out);
            x = out;
            trace.report(block.point, x.view().into_dyn());
        }

        let (n, c, h, w) = x.dim();
        let mut features = Array2::<f32>::zeros((n, c));
        global_avg_pool_nchw(
            x.as_slice().unwrap(),
            n * c,
            h * w,
            features.as_slice_mut().unwrap(),
        );
        trace.report(TracePoint::AvgPool, features.view().into_dyn());
        // fc: logits[N, 1000] = features[N, 512] · W^T (W^T prepared once, in `new`).
        let classes = m.fc_bias.len();
        let mut logits = Array2::<f32>::zeros((n, classes));
        sgemm_library(
            n,
            classes,
            c,
            features.as_slice().unwrap(),
            &m.fc_weight_t,
            logits.as_slice_mut().unwrap(),
        );
        logits += &ndarray::aview1(&m.fc_bias);
        trace.report(TracePoint::Fc, logits.view().into_dyn());
        Ok(logits)
    }
}
