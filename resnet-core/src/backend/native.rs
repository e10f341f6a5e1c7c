//! The native backend: resnet-kernels' packed GEMM with the epilogue fused, in NHWC.
//!
//! - **Layout NHWC** (channels innermost): a convolution is then `C[pixels, OC] = A[pixels, K] ·
//!   B[K, OC]` with the batch folded into the pixel rows, output channels (always a multiple of 64)
//!   along the SIMD lanes so no tile is ever ragged in N, and the im2col row of a pixel made of
//!   contiguous channel runs, which the kernel packs straight from the input (implicit im2col:
//!   nothing is materialised).
//! - **Weights packed once**, here in `new`, for the chosen ISA's micro-kernel.
//! - **Fused epilogue**: folded-BN bias, the residual add and ReLU happen on the register tile.
//! - **Winograd F(4x4, 3x3)** for 3x3 stride-1 convolutions chosen by [`WinogradPolicy`]: 4x
//!   fewer multiplications, at the price of 4x the weight memory for those layers and transforms
//!   around the GEMMs (see `resnet_kernels::winograd`).
//! - **Buffers reused**: each forward takes a workspace from a pool and gives it back; in steady
//!   state no layer allocates.

use super::folded::{fc_weight_transposed, nchw_to_nhwc, nhwc_to_nchw, FoldedLayer};
use super::{
    check_batch_shape, stem_and_pool_in_groups, Backend, LayerObserver, Reporter, WorkspacePool,
};
use crate::arch::{ResNet18Arch, TracePoint};
use crate::error::Result;
use crate::plan::{default_choice, ActivePlan, LayerChoice, Method};
use ndarray::{Array2, ArrayView4};
use rayon::prelude::*;
use resnet_kernels::aligned::AlignedVec;
use resnet_kernels::cpu::Isa;
use resnet_kernels::gemm::{kernel_name, sgemm_packed, ASource, Epilogue, PackedB};
use resnet_kernels::pool::global_avg_pool_nhwc;
use resnet_kernels::winograd::{conv3x3_winograd, Conv3x3Shape, WinogradScratch, WinogradWeights};

pub use super::WinogradPolicy;

/// How a layer's convolution is computed.
enum LayerWeights {
    /// Implicit im2col + packed GEMM.
    Gemm(PackedB),
    /// Winograd F(4x4, 3x3) (3x3, stride 1, padding 1 only).
    Winograd(WinogradWeights),
}

pub(super) struct PackedLayer {
    pub(super) spec: crate::arch::ConvBn,
    weights: LayerWeights,
    bias: Vec<f32>,
}

impl PackedLayer {
    /// Packs a folded layer, dropping each intermediate copy as soon as the next exists.
    pub(super) fn new(layer: FoldedLayer, isa: Isa, policy: WinogradPolicy) -> PackedLayer {
        let choice = default_choice(&layer.spec, isa, policy.applies(&layer.spec));
        PackedLayer::with_choice(layer, &choice)
    }

    /// Packs a folded layer the way a plan's choice says (a validated choice: the method
    /// applies, the kernel runs here).
    pub(super) fn with_choice(layer: FoldedLayer, choice: &LayerChoice) -> PackedLayer {
        let s = layer.spec.clone();
        let kernel = choice
            .kernel_line()
            .expect("validated plan names a registered kernel");
        let weights = match choice.method {
            Method::Winograd => LayerWeights::Winograd(WinogradWeights::with_kernel(
                &layer.conv.weight,
                s.in_channels,
                s.out_channels,
                kernel,
                choice.blocking(),
            )),
            // In place is an int8 method: validation keeps it out of native plans.
            Method::Direct | Method::InPlace => {
                let b = layer.weights_khwc_by_oc();
                LayerWeights::Gemm(PackedB::with_kernel(
                    &b,
                    s.in_channels * s.kernel * s.kernel,
                    s.out_channels,
                    kernel,
                    choice.blocking(),
                ))
            }
        };
        PackedLayer {
            spec: s,
            weights,
            bias: layer.conv.bias,
        }
    }

    /// `out = epilogue(conv(input))` for an NHWC batch; returns the output height and width.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &self,
        input: &[f32],
        (n, h, w): (usize, usize, usize),
        out: &mut AlignedVec<f32>,
        residual: Option<&[f32]>,
        relu: bool,
        scratch: &mut WinogradScratch,
    ) -> (usize, usize) {
        let s = &self.spec;
        let geometry = s.geometry(n, h, w);
        let oc = s.out_channels;
        out.resize_for_overwrite(geometry.m() * oc);
        let epi = Epilogue {
            bias: Some(&self.bias),
            residual: residual.map(|r| (r, oc)),
            relu,
        };
        match &self.weights {
            LayerWeights::Gemm(b) => sgemm_packed(
                &ASource::Conv {
                    input,
                    geometry,
                    pad: 0.0,
                },
                b,
                out,
                oc,
                &epi,
            ),
            LayerWeights::Winograd(u) => conv3x3_winograd(
                input,
                Conv3x3Shape { batch: n, h, w },
                u,
                &epi,
                out,
                scratch,
            ),
        }
        (geometry.out_h(), geometry.out_w())
    }
}

/// Receives a [`Tap`]'s NHWC tensor and its `[n, h, w, c]`.
pub(crate) type TapFn<'f> = dyn FnMut(Tap, &[f32], [usize; 4]) + 'f;

/// A tensor of the forward pass that [`NativeBackend::probe`] shows, NHWC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tap {
    /// The input batch.
    Input,
    /// The stem's conv + bn + ReLU, before max-pooling.
    Stem,
    /// The max-pool's output.
    MaxPool,
    /// Block `i`'s first conv + bn + ReLU.
    Conv1(usize),
    /// Block `i`'s downsample conv + bn.
    Downsample(usize),
    /// Block `i`'s output, after the residual add and ReLU.
    Block(usize),
}

struct PackedBlock {
    /// The block's position, 0 (`layer1.0`) to 7.
    index: usize,
    conv1: PackedLayer,
    conv2: PackedLayer,
    downsample: Option<PackedLayer>,
}

/// Activation buffers of one forward pass, kept between calls.
#[derive(Default)]
struct Workspace {
    x: AlignedVec<f32>,
    t: AlignedVec<f32>,
    skip: AlignedVec<f32>,
    y: AlignedVec<f32>,
    features: Vec<f32>,
    winograd: WinogradScratch,
}

/// Packed GEMM micro-kernels with fused epilogues, NHWC.
pub struct NativeBackend {
    isa: Isa,
    winograd: WinogradPolicy,
    /// The per-layer plan the layers were packed by, if any.
    plan: Option<ActivePlan>,
    stem: PackedLayer,
    blocks: Vec<PackedBlock>,
    fc: PackedB,
    fc_bias: Vec<f32>,
    workspaces: WorkspacePool<Workspace>,
}

impl NativeBackend {
    /// Folds BatchNorm and packs every weight matrix for `isa`'s micro-kernel, from a copy of
    /// `weights` (see [`NativeBackend::from_weights`], which needs no copy).
    pub fn new(
        weights: &crate::weights::Weights,
        isa: Isa,
        winograd: WinogradPolicy,
    ) -> NativeBackend {
        NativeBackend::from_weights(weights.clone(), isa, winograd)
    }

    /// Folds BatchNorm and packs every weight matrix for `isa`'s micro-kernel, one block at a
    /// time (its two or three convolutions in parallel), freeing each block's tensors as soon as
    /// they are packed: the model never holds the weights twice, which keeps the peak memory
    /// of a start near the size of the packed weights.
    pub fn from_weights(
        weights: crate::weights::Weights,
        isa: Isa,
        winograd: WinogradPolicy,
    ) -> NativeBackend {
        NativeBackend::from_weights_planned(weights, isa, winograd, None)
    }

    /// [`NativeBackend::from_weights`] with a per-layer plan (validated against the layer table
    /// when it was loaded): each convolution is packed as its plan entry says; `None` runs the
    /// built-in heuristic (`winograd` and the default blocking).
    pub fn from_weights_planned(
        mut weights: crate::weights::Weights,
        isa: Isa,
        winograd: WinogradPolicy,
        plan: Option<ActivePlan>,
    ) -> NativeBackend {
        let arch = ResNet18Arch::new();
        let fc_bias = weights.tensor("fc.bias").f32_values().to_vec();
        let fc_t = fc_weight_transposed(&weights);
        let classes = fc_bias.len();
        let features = fc_t.len() / classes;
        let fc = PackedB::new(&fc_t, features, classes, isa);
        drop(fc_t);
        let mut pack_and_release = |specs: &[&crate::arch::ConvBn]| -> Vec<PackedLayer> {
            let packed: Vec<PackedLayer> = specs
                .par_iter()
                .map(|spec| {
                    let layer = FoldedLayer::new(&weights, spec);
                    match plan.as_ref().and_then(|p| p.plan.choice(&spec.conv)) {
                        Some(choice) => PackedLayer::with_choice(layer, choice),
                        None => PackedLayer::new(layer, isa, winograd),
                    }
                })
                .collect();
            for spec in specs {
                weights.release_conv_bn(&spec.conv, &spec.bn);
            }
            packed
        };
        let stem = pack_and_release(&[&arch.stem]).remove(0);
        let blocks = arch
            .blocks
            .iter()
            .map(|b| {
                let mut specs = vec![&b.conv1, &b.conv2];
                specs.extend(b.downsample.as_ref());
                let mut layers = pack_and_release(&specs).into_iter();
                PackedBlock {
                    index: b.index,
                    conv1: layers.next().expect("conv1"),
                    conv2: layers.next().expect("conv2"),
                    downsample: layers.next(),
                }
            })
            .collect();
        log::debug!(
            "native backend built: f32 kernel {} (ISA {isa}), Winograd {}",
            kernel_name(isa),
            winograd.name()
        );
        if let Some(p) = &plan {
            log::debug!("native: per-layer plan {} in use", p.path.display());
        }
        NativeBackend {
            isa,
            winograd,
            plan,
            stem,
            blocks,
            fc,
            fc_bias,
            workspaces: WorkspacePool::new(),
        }
    }

    /// The convolutional part of the network (stem, max-pool, the eight blocks) on `batch`,
    /// leaving the last block's output in `ws.x`. Each tensor listed in [`Tap`] is shown to `tap`
    /// in NHWC with its `[n, h, w, c]`, the moment it is computed. Returns the final `(h, w, c)`.
    fn run_convolutions(
        &self,
        batch: ArrayView4<'_, f32>,
        ws: &mut Workspace,
        keep_stem: bool,
        tap: &mut TapFn<'_>,
    ) -> (usize, usize, usize) {
        let (n, c_in, mut h, mut w) = batch.dim();
        // The input, NHWC, in `y` (free until the first block).
        ws.y.resize_for_overwrite(n * h * w * c_in);
        let input = batch.as_standard_layout();
        let input = input.as_slice().expect("standard layout");
        nchw_to_nhwc(input, n, c_in, h * w, &mut ws.y);
        tap(Tap::Input, &ws.y, [n, h, w, c_in]);

        // Stem: conv1 + bn1 + relu fused, then max-pool, one image per thread at a time (see
        // `stem_and_pool_in_groups`); the batch's stem output is kept (in `skip`) only when
        // `keep_stem`.
        let mut c = self.stem.spec.out_channels;
        let (sh, sw) = self.stem.spec.output_hw(h, w);
        let winograd = &mut ws.winograd;
        let (input, image_in) = (&ws.y, c_in * h * w);
        stem_and_pool_in_groups(
            n,
            (sh, sw, c),
            |first, count, out| {
                let images = &input[first * image_in..][..count * image_in];
                self.stem
                    .run(images, (count, h, w), out, None, true, winograd);
            },
            &mut ws.t,
            (&mut ws.x, None),
            keep_stem.then_some(&mut ws.skip),
        );
        // Without `keep_stem` the stem's output of the batch is not kept: the tap gets no data.
        let stem_out: &[f32] = if keep_stem { &ws.skip } else { &[] };
        tap(Tap::Stem, stem_out, [n, sh, sw, c]);
        (h, w) = crate::arch::max_pool_output_hw(sh, sw);
        tap(Tap::MaxPool, &ws.x, [n, h, w, c]);

        for block in &self.blocks {
            // Residual branch, first conv: conv1 + bn1 + relu.
            let (oh, ow) =
                block
                    .conv1
                    .run(&ws.x, (n, h, w), &mut ws.t, None, true, &mut ws.winograd);
            let mid = block.conv1.spec.out_channels;
            tap(Tap::Conv1(block.index), &ws.t, [n, oh, ow, mid]);
            // Skip branch: the input, or downsample conv + bn.
            let skip: &[f32] = match &block.downsample {
                Some(ds) => {
                    ds.run(
                        &ws.x,
                        (n, h, w),
                        &mut ws.skip,
                        None,
                        false,
                        &mut ws.winograd,
                    );
                    tap(Tap::Downsample(block.index), &ws.skip, [n, oh, ow, mid]);
                    &ws.skip
                }
                None => &ws.x,
            };
            // Second conv: conv2 + bn2 + residual add + relu, all in the epilogue.
            block.conv2.run(
                &ws.t,
                (n, oh, ow),
                &mut ws.y,
                Some(skip),
                true,
                &mut ws.winograd,
            );
            std::mem::swap(&mut ws.x, &mut ws.y);
            (h, w, c) = (oh, ow, block.conv2.spec.out_channels);
            tap(Tap::Block(block.index), &ws.x, [n, h, w, c]);
        }
        (h, w, c)
    }

    /// Runs the convolutional part of the network on `batch`, showing `tap` every tensor of
    /// [`Tap`] in NHWC: what INT8 calibration records its activation ranges from.
    pub(crate) fn probe(&self, batch: ArrayView4<'_, f32>, tap: &mut TapFn<'_>) {
        self.workspaces
            .with(|ws| self.run_convolutions(batch, ws, true, tap));
    }

    fn forward_in(
        &self,
        batch: ArrayView4<'_, f32>,
        ws: &mut Workspace,
        observer: &mut dyn LayerObserver,
    ) -> Array2<f32> {
        let wants = observer.wants_outputs();
        let mut trace = Reporter::new(observer);
        let n = batch.dim().0;
        // The trace points are the stem, the max-pool and each block (torchvision's modules).
        let (h, w, c) =
            self.run_convolutions(batch, ws, wants, &mut |point, data, [n, h, w, c]| {
                let point = match point {
                    Tap::Stem => TracePoint::Stem,
                    Tap::MaxPool => TracePoint::MaxPool,
                    Tap::Block(i) => TracePoint::Block(i),
                    Tap::Input | Tap::Conv1(_) | Tap::Downsample(_) => return,
                };
                let out = wants.then(|| nhwc_to_nchw(data, n, h, w, c));
                trace.report_shape(point, &[n, c, h, w], out.as_ref().map(|o| o.view()));
            });

        ws.features.resize(n * c, 0.0);
        global_avg_pool_nhwc(&ws.x, n, h * w, c, &mut ws.features);
        classifier(&ws.features, n, &self.fc, &self.fc_bias, &mut trace)
    }
}

/// The classifier head shared by the native and INT8 backends: reports `features` (`[n, C]`,
/// the global average pool) as `avgpool`, then runs `fc` as one packed GEMM with the bias in
/// its epilogue and reports the logits as `fc`.
pub(super) fn classifier(
    features: &[f32],
    n: usize,
    fc: &PackedB,
    fc_bias: &[f32],
    trace: &mut Reporter<'_>,
) -> Array2<f32> {
    let c = features.len() / n;
    let view = ndarray::ArrayView2::from_shape((n, c), features).expect("n x c");
    trace.report(TracePoint::AvgPool, view.into_dyn());
    let classes = fc_bias.len();
    let mut logits = Array2::<f32>::zeros((n, classes));
    sgemm_packed(
        &ASource::Matrix {
            data: features,
            rows: n,
            lda: c,
        },
        fc,
        logits.as_slice_mut().expect("standard layout"),
        classes,
        &Epilogue {
            bias: Some(fc_bias),
            residual: None,
            relu: false,
        },
    );
    trace.report(TracePoint::Fc, logits.view().into_dyn());
    logits
}

impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    fn describe(&self) -> String {
        match &self.plan {
            None => format!(
                "packed GEMM, kernel {}, NHWC, implicit im2col, fused bias+residual+ReLU, Winograd F(4x4,3x3): {}, plan: off (built-in heuristic)",
                kernel_name(self.isa),
                self.winograd.name()
            ),
            Some(p) => {
                let winograd = p
                    .plan
                    .layers
                    .iter()
                    .filter(|l| l.choice.method == Method::Winograd)
                    .count();
                format!(
                    "packed GEMM, kernel {}, NHWC, implicit im2col, fused bias+residual+ReLU, plan: {} ({winograd} of {} convolutions Winograd)",
                    kernel_name(self.isa),
                    p.path.display(),
                    p.plan.layers.len()
                )
            }
        }
    }

    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        observer: &mut dyn LayerObserver,
    ) -> Result<Array2<f32>> {
        check_batch_shape(&batch)?;
        Ok(self
            .workspaces
            .with(|ws| self.forward_in(batch, ws, observer)))
    }
}
