//! The native backend: resnet-kernels' packed GEMM with the epilogue fused, in NHWC.
//!
//! - **Layout NHWC** (channels innermost): a convolution is then `C[pixels, OC] = A[pixels, K] ·
//!   B[K, OC]` with the batch folded into the pixel rows, output channels (always a multiple of 64)
//!   along the SIMD lanes so no tile is ever ragged in N, and the im2col row of a pixel made of
//!   contiguous channel runs, which the kernel packs straight from the input (implicit im2col:
//!   nothing is materialised).
//! - **Weights packed once**, here in `new`, for the chosen ISA's micro-kernel.
//! - **Fused epilogue**: folded-BN bias, the residual add and ReLU happen on the register tile.
//! - **Buffers reused**: each forward takes a workspace from a pool and gives it back; in steady
//!   state no layer allocates.

use super::folded::{fc_weight_transposed, nhwc_to_nchw, FoldedLayer};
use super::{check_batch_shape, Backend, LayerObserver, Reporter};
use crate::arch::ResNet18Arch;
use crate::error::Result;
use ndarray::{Array2, ArrayView4};
use resnet_kernels::cpu::Isa;
use resnet_kernels::gemm::{kernel_name, sgemm_packed, ASource, ConvGeometry, Epilogue, PackedB};
use resnet_kernels::pool::{global_avg_pool_nhwc, max_pool_3x3_s2_p1_nhwc};
use std::sync::Mutex;

/// One convolution's packed f32 weights and bias (also the INT8 backend's f32 layers).
pub(super) struct PackedLayer {
    pub(super) spec: crate::arch::ConvBn,
    weights: PackedB,
    bias: Vec<f32>,
}

impl PackedLayer {
    pub(super) fn new(layer: &FoldedLayer, isa: Isa) -> PackedLayer {
        let s = &layer.spec;
        PackedLayer {
            spec: s.clone(),
            weights: PackedB::new(
                &layer.weights_khwc_by_oc(),
                s.in_channels * s.kernel * s.kernel,
                s.out_channels,
                isa,
            ),
            bias: layer.conv.bias.clone(),
        }
    }

    /// `out = epilogue(conv(input))` for an NHWC batch; returns the output height and width.
    pub(super) fn run(
        &self,
        input: &[f32],
        (n, h, w): (usize, usize, usize),
        out: &mut Vec<f32>,
        residual: Option<&[f32]>,
        relu: bool,
    ) -> (usize, usize) {
        let s = &self.spec;
        let geometry = ConvGeometry {
            batch: n,
            in_h: h,
            in_w: w,
            in_c: s.in_channels,
            kernel: s.kernel,
            stride: s.stride,
            pad: s.padding,
        };
        let oc = s.out_channels;
        out.resize(geometry.m() * oc, 0.0);
        let epi = Epilogue {
            bias: Some(&self.bias),
            residual: residual.map(|r| (r, oc)),
            relu,
        };
        sgemm_packed(
            &ASource::Conv { input, geometry },
            &self.weights,
            out,
            oc,
            &epi,
        );
        (geometry.out_h(), geometry.out_w())
    }
}

struct PackedBlock {
    name: String,
    conv1: PackedLayer,
    conv2: PackedLayer,
    downsample: Option<PackedLayer>,
}

/// Activation buffers of one forward pass, kept between calls.
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    t: Vec<f32>,
    skip: Vec<f32>,
    y: Vec<f32>,
    features: Vec<f32>,
}

/// Packed GEMM micro-kernels with fused epilogues, NHWC.
pub struct NativeBackend {
    isa: Isa,
    stem: PackedLayer,
    blocks: Vec<PackedBlock>,
    fc: PackedB,
    fc_bias: Vec<f32>,
    workspaces: Mutex<Vec<Workspace>>,
}

impl NativeBackend {
    /// Folds BatchNorm and packs every weight matrix for `isa`'s micro-kernel, one layer at a
    /// time, so that only one folded copy of a layer exists beside the packed ones (this keeps
    /// the peak memory of a start at about weights + packed weights).
    pub fn new(weights: &crate::weights::Weights, isa: Isa) -> NativeBackend {
        let arch = ResNet18Arch::new();
        let pack = |spec| PackedLayer::new(&FoldedLayer::new(weights, spec), isa);
        let fc_bias = weights.tensor("fc.bias").data.clone();
        let fc_t = fc_weight_transposed(weights);
        let classes = fc_bias.len();
        let features = fc_t.len() / classes;
        NativeBackend {
            isa,
            stem: pack(&arch.stem),
            blocks: arch
                .blocks
                .iter()
                .map(|b| PackedBlock {
                    name: b.name.clone(),
                    conv1: pack(&b.conv1),
                    conv2: pack(&b.conv2),
                    downsample: b.downsample.as_ref().map(pack),
                })
                .collect(),
            fc: PackedB::new(&fc_t, features, classes, isa),
            fc_bias,
            workspaces: Mutex::new(Vec::new()),
        }
    }

    fn forward_in(
        &self,
        batch: ArrayView4<'_, f32>,
        ws: &mut Workspace,
        observer: &mut dyn LayerObserver,
    ) -> Array2<f32> {
        let wants = observer.wants_outputs();
        let mut trace = Reporter::new(observer);
        let (n, c_in, mut h, mut w) = batch.dim();
        // NCHW -> NHWC.
        ws.x.resize(n * h * w * c_in, 0.0);
        let input = batch.as_standard_layout();
        let input = input.as_slice().expect("standard layout");
        for (b, image) in input.chunks_exact(c_in * h * w).enumerate() {
            let out = &mut ws.x[b * h * w * c_in..][..h * w * c_in];
            for (ch, plane) in image.chunks_exact(h * w).enumerate() {
                for (p, &v) in plane.iter().enumerate() {
                    out[p * c_in + ch] = v;
                }
            }
        }
        let report =
            |trace: &mut Reporter<'_>, name: &str, data: &[f32], h: usize, w: usize, c: usize| {
                let out = if wants {
                    nhwc_to_nchw(data, n, h, w, c)
                } else {
                    ndarray::ArrayD::zeros(vec![0])
                };
                trace.report_shape(name, &[n, c, h, w], wants.then(|| out.view()));
            };

        // Stem: conv1 + bn1 + relu fused, then max-pool.
        (h, w) = self.stem.run(&ws.x, (n, h, w), &mut ws.t, None, true);
        let mut c = self.stem.spec.out_channels;
        report(&mut trace, "stem", &ws.t, h, w, c);
        let (ph, pw) = crate::arch::max_pool_output_hw(h, w);
        ws.x.resize(n * ph * pw * c, 0.0);
        max_pool_3x3_s2_p1_nhwc(&ws.t, n, h, w, c, &mut ws.x);
        (h, w) = (ph, pw);
        report(&mut trace, "maxpool", &ws.x, h, w, c);

        for block in &self.blocks {
            // Residual branch, first conv: conv1 + bn1 + relu.
            let (oh, ow) = block.conv1.run(&ws.x, (n, h, w), &mut ws.t, None, true);
            // Skip branch: the input, or downsample conv + bn.
            let skip: &[f32] = match &block.downsample {
                Some(ds) => {
                    ds.run(&ws.x, (n, h, w), &mut ws.skip, None, false);
                    &ws.skip
                }
                None => &ws.x,
            };
            // Second conv: conv2 + bn2 + residual add + relu, all in the epilogue.
            block
                .conv2
                .run(&ws.t, (n, oh, ow), &mut ws.y, Some(skip), true);
            std::mem::swap(&mut ws.x, &mut ws.y);
            (h, w, c) = (oh, ow, block.conv2.spec.out_channels);
            report(&mut trace, &block.name, &ws.x, h, w, c);
        }

        ws.features.resize(n * c, 0.0);
        global_avg_pool_nhwc(&ws.x, n, h * w, c, &mut ws.features);
        let features = Array2::from_shape_vec((n, c), ws.features.clone()).expect("n x c");
        trace.report("avgpool", features.view().into_dyn());
        let classes = self.fc_bias.len();
        let mut logits = Array2::<f32>::zeros((n, classes));
        let epi = Epilogue {
            bias: Some(&self.fc_bias),
            residual: None,
            relu: false,
        };
        sgemm_packed(
            &ASource::Matrix {
                data: &ws.features,
                rows: n,
                lda: c,
            },
            &self.fc,
            logits.as_slice_mut().expect("standard layout"),
            classes,
            &epi,
        );
        trace.report("fc", logits.view().into_dyn());
        logits
    }
}

impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    fn describe(&self) -> String {
        format!(
            "packed GEMM, kernel {}, NHWC, implicit im2col, fused bias+residual+ReLU",
            kernel_name(self.isa)
        )
    }

    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        observer: &mut dyn LayerObserver,
    ) -> Result<Array2<f32>> {
        check_batch_shape(&batch)?;
        let mut ws = self
            .workspaces
            .lock()
            .map(|mut p| p.pop())
            .unwrap_or(None)
            .unwrap_or_default();
        let logits = self.forward_in(batch, &mut ws, observer);
        if let Ok(mut pool) = self.workspaces.lock() {
            pool.push(ws);
        }
        Ok(logits)
    }
}
