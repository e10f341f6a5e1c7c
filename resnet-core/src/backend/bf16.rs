//! The bf16 backend: weights rounded to bf16 after BatchNorm folding, NHWC bf16 activations
//! between layers (each written, rounded to nearest even, by the previous layer's fused
//! epilogue), f32 accumulation, on resnet-kernels' bf16 GEMM (`vdpbf16ps` where the CPU has
//! AVX512-BF16, the portable twin elsewhere) with the folded-BN bias, residual add and ReLU in
//! the epilogue; on the AMX lines the stride-1 convolutions that
//! [`bf16_in_place_preferred`] picks read their input in place instead of packing an im2col
//! (bit-identical); a per-layer plan (`resnet tune --backend bf16`) chooses each convolution's
//! kernel line, blocking and whether it reads in place instead. Max-pool on
//! the bf16 values (exact: it only compares). What stays f32: the
//! folded biases (added to the f32 sums), the global average pool's sums and the classifier
//! (0.5 M MACs of 1.8 G, through the native backend's head), as in the INT8 backend.
//!
//! Where bf16 error enters: the input is rounded once to bf16 (8 significant bits), each weight
//! once, and each layer's output once; `resnet trace --backend bf16 --compare native` shows it
//! point by point.

use super::folded::{fc_weight_transposed, nhwc_to_nchw, FoldedLayer};
use super::native::classifier;
use super::{
    check_batch_shape, stem_and_pool_in_groups, Backend, BlockShape, Framing, LayerObserver,
    Reporter, WorkspacePool,
};
use crate::arch::{ConvBn, ResNet18Arch, TracePoint};
use crate::error::Result;
use crate::plan::{bf16_in_place_by_default, ActivePlan, LayerChoice, Method};
use crate::weights::Weights;
use ndarray::{Array2, ArrayView4};
use rayon::prelude::*;
use resnet_kernels::aligned::AlignedVec;
use resnet_kernels::bf16::{
    avg_pool_bf16_nhwc, conv_bf16_in_place, f32_to_bf16, gemm_bf16, in_place_applies,
    in_place_layout, kernel_for, nchw_to_nhwc_bf16, pack_window_rows, window_rows_input_bf16,
    ASourceBf16, Bf16, Bf16Kernel, EpilogueBf16, InPlaceLayout, OutputBf16, PackedBBf16,
};
use resnet_kernels::cpu::Isa;
use resnet_kernels::gemm::{ConvGeometry, PackedB};
use resnet_kernels::tiling::Blocking;

/// Whether a convolution reads its input in place ([`conv_bf16_in_place`]) or packs an im2col.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InPlaceRule {
    /// A plan's [`Method::InPlace`]: wherever the kernel line and the shape allow.
    Always,
    /// A plan's [`Method::Direct`]: the im2col.
    Never,
    /// No plan: per call, where [`bf16_in_place_by_default`] says so for the call's geometry
    /// (its batch).
    Heuristic,
}

/// What a convolution is packed and run with: its kernel line, blocking and in-place rule.
pub(super) type Bf16Line = (&'static Bf16Kernel, Blocking, InPlaceRule);

/// A plan entry's line (validated plans and the tuner's candidates name registered bf16
/// kernels).
pub(super) fn planned_line(choice: &LayerChoice) -> Bf16Line {
    let kernel = choice
        .bf16_kernel_line()
        .expect("a validated plan or candidate names a registered bf16 kernel");
    let rule = if choice.method == Method::InPlace {
        InPlaceRule::Always
    } else {
        InPlaceRule::Never
    };
    (kernel, choice.blocking(), rule)
}

/// One convolution prepared for the bf16 kernel: packed bf16 weights and the f32 bias.
pub(super) struct Bf16Layer {
    pub(super) spec: ConvBn,
    weights: PackedBBf16,
    bias: Vec<f32>,
    /// The weights are packed for [`InPlaceLayout::WindowRows`] (the stem on AMX lines).
    window_rows: bool,
    rule: InPlaceRule,
}

impl Bf16Layer {
    /// Rounds and packs a folded convolution for `kernel` with `blocking`; `rule` says whether
    /// it reads its input in place.
    pub(super) fn new(layer: FoldedLayer, (kernel, blocking, rule): Bf16Line) -> Bf16Layer {
        let s = layer.spec.clone();
        let b = layer.weights_khwc_by_oc();
        let mut rounded = vec![Bf16::ZERO; b.len()];
        f32_to_bf16(&b, &mut rounded);
        drop(b);
        // On the AMX lines a convolution whose kernel row fits one tile row (the stem's 7 x 3)
        // reads its windows in place rather than packing an im2col of 3-channel runs.
        let window_rows = rule != InPlaceRule::Never
            && kernel.reads_in_place()
            && in_place_layout(&s.geometry(1, s.kernel, s.kernel))
                == Some(InPlaceLayout::WindowRows);
        let weights = if window_rows {
            pack_window_rows(
                &rounded,
                s.kernel,
                s.in_channels,
                s.out_channels,
                kernel,
                blocking,
            )
        } else {
            PackedBBf16::with_kernel(
                &rounded,
                s.in_channels * s.kernel * s.kernel,
                s.out_channels,
                kernel,
                blocking,
            )
        };
        Bf16Layer {
            weights,
            spec: s,
            bias: layer.conv.bias,
            window_rows,
            rule,
        }
    }

    /// The layout this layer reads its input in at `geometry`, if in place (the plan's rule,
    /// or the heuristic's for the batch).
    fn layout(&self, geometry: &ConvGeometry) -> Option<InPlaceLayout> {
        if self.window_rows {
            return Some(InPlaceLayout::WindowRows);
        }
        let wanted = match self.rule {
            InPlaceRule::Always => true,
            InPlaceRule::Never => false,
            InPlaceRule::Heuristic => bf16_in_place_by_default(self.weights.kernel(), geometry),
        };
        (wanted && in_place_applies(geometry, &self.weights, InPlaceLayout::Padded))
            .then_some(InPlaceLayout::Padded)
    }

    /// `out = epilogue(conv(input))` on NHWC bf16, the input and output framed as `framing`
    /// says; returns the output height and width.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &self,
        input: &[Bf16],
        (n, h, w): (usize, usize, usize),
        out: &mut AlignedVec<Bf16>,
        residual: Option<&[Bf16]>,
        relu: bool,
        framing: Framing,
    ) -> (usize, usize) {
        let layout = if framing.input {
            Some(InPlaceLayout::Framed)
        } else {
            self.layout(&self.spec.geometry(n, h, w))
        };
        self.run_in(input, (n, h, w), out, residual, relu, framing, layout)
    }

    /// The stem with ReLU, from `n` NCHW f32 images (the network's input, `h x w`): where it
    /// reads window rows (the AMX lines), its input is made straight from them in `scratch`
    /// ([`window_rows_input_bf16`], one pass); otherwise, or where a value rounds to an
    /// infinity or a NaN, they are converted to NHWC bf16 in `scratch` first. The same result
    /// either way, bit for bit.
    pub(super) fn run_stem(
        &self,
        images: &[f32],
        (n, h, w): (usize, usize, usize),
        out: &mut AlignedVec<Bf16>,
        scratch: &mut AlignedVec<Bf16>,
    ) {
        let geometry = self.spec.geometry(n, h, w);
        let prepared = self.window_rows
            && in_place_applies(&geometry, &self.weights, InPlaceLayout::StridedRows)
            && window_rows_input_bf16(images, &geometry, scratch);
        if prepared {
            let layout = Some(InPlaceLayout::StridedRows);
            self.run_in(scratch, (n, h, w), out, None, true, Framing::DENSE, layout);
            return;
        }
        scratch.resize_for_overwrite(images.len());
        nchw_to_nhwc_bf16(images, n, self.spec.in_channels, h * w, scratch);
        self.run(scratch, (n, h, w), out, None, true, Framing::DENSE);
    }

    /// [`Bf16Layer::run`] reading the input in `layout` (`None`: the im2col).
    #[allow(clippy::too_many_arguments)]
    fn run_in(
        &self,
        input: &[Bf16],
        (n, h, w): (usize, usize, usize),
        out: &mut AlignedVec<Bf16>,
        residual: Option<&[Bf16]>,
        relu: bool,
        framing: Framing,
        layout: Option<InPlaceLayout>,
    ) -> (usize, usize) {
        let geometry = self.spec.geometry(n, h, w);
        let oc = self.spec.out_channels;
        let epilogue = EpilogueBf16 {
            bias: Some(&self.bias),
            residual: residual.map(|r| (r, oc)),
            relu,
            residual_frame: framing.residual,
        };
        let output = match framing.output {
            Some(frame) => {
                out.resize_for_overwrite(frame.len());
                OutputBf16::Framed { c: out, frame }
            }
            None => {
                out.resize_for_overwrite(geometry.m() * oc);
                OutputBf16::Bf16 { c: out, ldc: oc }
            }
        };
        match layout {
            Some(layout) => {
                conv_bf16_in_place(input, &geometry, &self.weights, output, &epilogue, layout)
            }
            None => gemm_bf16(
                &ASourceBf16::Conv { input, geometry },
                &self.weights,
                output,
                &epilogue,
            ),
        }
        (geometry.out_h(), geometry.out_w())
    }
}

struct Bf16Block {
    point: TracePoint,
    conv1: Bf16Layer,
    conv2: Bf16Layer,
    downsample: Option<Bf16Layer>,
}

impl Bf16Block {
    /// The block at input size `(n, h, w)`, as the framing rule sees it.
    fn shape(&self, input: (usize, usize, usize)) -> BlockShape {
        let (g1, g2) = BlockShape::geometries(&self.conv1.spec, &self.conv2.spec, input);
        BlockShape {
            conv1: self.conv1.layout(&g1),
            conv2: self.conv2.layout(&g2),
            downsample: self.downsample.is_some(),
            g1,
            g2,
        }
    }
}

/// Activation buffers of one forward pass, kept between calls.
#[derive(Default)]
struct Workspace {
    x: AlignedVec<Bf16>,
    t: AlignedVec<Bf16>,
    skip: AlignedVec<Bf16>,
    y: AlignedVec<Bf16>,
    features: Vec<f32>,
}

/// bf16 weights and activations, f32 accumulation, fused epilogues, NHWC.
pub struct Bf16Backend {
    /// The kernel of the layers no plan entry chose.
    kernel: &'static Bf16Kernel,
    /// The per-layer plan the layers were packed by, if any.
    plan: Option<ActivePlan>,
    /// Whether some layer runs on AMX (its tiles are released after each forward pass).
    uses_amx: bool,
    stem: Bf16Layer,
    blocks: Vec<Bf16Block>,
    fc: PackedB,
    fc_bias: Vec<f32>,
    weight_bytes: usize,
    workspaces: WorkspacePool<Workspace>,
}

impl Bf16Backend {
    /// Folds BatchNorm, rounds and packs every convolution for `isa`'s bf16 kernel, from a copy
    /// of `weights` (see [`Bf16Backend::from_weights`], which needs no copy).
    pub fn new(weights: &Weights, isa: Isa) -> Bf16Backend {
        Bf16Backend::from_weights(weights.clone(), isa)
    }

    /// Folds, rounds and packs one block at a time (its convolutions in parallel), freeing each
    /// block's f32 tensors as soon as they are packed.
    pub fn from_weights(weights: Weights, isa: Isa) -> Bf16Backend {
        Bf16Backend::with_kernel(weights, isa, kernel_for(isa))
    }

    /// [`Bf16Backend::from_weights`] with a per-layer plan (a `bf16` plan, validated when it
    /// was loaded): each convolution is packed with its entry's kernel and blocking and reads
    /// its input in place or not as the entry says; `None` runs the heuristic.
    pub fn planned(weights: Weights, isa: Isa, plan: Option<ActivePlan>) -> Bf16Backend {
        Bf16Backend::build(weights, isa, kernel_for(isa), plan)
    }

    /// As [`Bf16Backend::from_weights`] with a given bf16 kernel line (`isa` still chooses the
    /// classifier's f32 kernel). For tests that name a line outside the registry's selection,
    /// e.g. [`resnet_kernels::bf16::AMX_MODEL_KERNEL`].
    ///
    /// # Panics
    /// If this CPU cannot run `kernel` (as `PackedBBf16::with_kernel`).
    pub fn with_kernel(weights: Weights, isa: Isa, kernel: &'static Bf16Kernel) -> Bf16Backend {
        Bf16Backend::build(weights, isa, kernel, None)
    }

    fn build(
        mut weights: Weights,
        isa: Isa,
        kernel: &'static Bf16Kernel,
        plan: Option<ActivePlan>,
    ) -> Bf16Backend {
        if let Some(p) = &plan {
            debug_assert_eq!(p.plan.backend, crate::plan::PlanBackend::Bf16);
        }
        // Each convolution's kernel, blocking and rule: its plan entry, else `kernel` with its
        // default blocking and the heuristic.
        let line = |conv: &str| match plan.as_ref().and_then(|p| p.plan.choice(conv)) {
            Some(c) => planned_line(c),
            None => (kernel, kernel.default_blocking(), InPlaceRule::Heuristic),
        };
        let arch = ResNet18Arch::new();
        let fc_bias = weights.tensor("fc.bias").f32_values().to_vec();
        let fc_t = fc_weight_transposed(&weights);
        let classes = fc_bias.len();
        let fc = PackedB::new(&fc_t, fc_t.len() / classes, classes, isa);
        drop(fc_t);
        let mut pack_and_release = |specs: &[&ConvBn]| -> Vec<Bf16Layer> {
            let packed: Vec<Bf16Layer> = specs
                .par_iter()
                .map(|spec| Bf16Layer::new(FoldedLayer::new(&weights, spec), line(&spec.conv)))
                .collect();
            for spec in specs {
                weights.release_conv_bn(&spec.conv, &spec.bn);
            }
            packed
        };
        let stem = pack_and_release(&[&arch.stem]).remove(0);
        let blocks: Vec<Bf16Block> = arch
            .blocks
            .iter()
            .map(|b| {
                let mut specs = vec![&b.conv1, &b.conv2];
                specs.extend(b.downsample.as_ref());
                let mut layers = pack_and_release(&specs).into_iter();
                Bf16Block {
                    point: b.point(),
                    conv1: layers.next().expect("conv1"),
                    conv2: layers.next().expect("conv2"),
                    downsample: layers.next(),
                }
            })
            .collect();
        let layers = || {
            std::iter::once(&stem).chain(blocks.iter().flat_map(|b| {
                [&b.conv1, &b.conv2]
                    .into_iter()
                    .chain(b.downsample.as_ref())
            }))
        };
        let weight_bytes = layers().map(|l| l.weights.bytes()).sum();
        let uses_amx = layers().any(|l| l.weights.kernel().info.isa == Isa::Amx);
        if let Some(p) = &plan {
            log::debug!("bf16: per-layer plan {} in use", p.path.display());
        }
        Bf16Backend {
            kernel,
            plan,
            uses_amx,
            stem,
            blocks,
            fc,
            fc_bias,
            weight_bytes,
            workspaces: WorkspacePool::new(),
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
        let input = batch.as_standard_layout();
        let input = input.as_slice().expect("standard layout");
        let report =
            |trace: &mut Reporter<'_>, point: TracePoint, data: &[Bf16], [h, w, c]: [usize; 3]| {
                let out = wants.then(|| {
                    let real: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
                    nhwc_to_nchw(&real, n, h, w, c)
                });
                trace.report_shape(point, &[n, c, h, w], out.as_ref().map(|o| o.view()));
            };

        // Stem: conv1 + bn1 + relu fused, then max-pool, one image per thread at a time (see
        // `stem_and_pool_in_groups`); the batch's stem output is kept (in `skip`) only for a
        // trace.
        let mut c = self.stem.spec.out_channels;
        let (sh, sw) = self.stem.spec.output_hw(h, w);
        // The pool writes its output straight into the frame the first block reads (see the
        // blocks' loop below), unless a trace reads it.
        let (ph, pw) = crate::arch::max_pool_output_hw(sh, sw);
        let pool_frame = self
            .blocks
            .first()
            .and_then(|first| first.shape((n, ph, pw)).input_frame())
            .filter(|_| !wants);
        // The input is rounded to bf16 once, a group of images at a time, into the layout the
        // stem reads (in `y`, free until the first block): see `Bf16Layer::run_stem`.
        let (scratch, image_in) = (&mut ws.y, c_in * h * w);
        stem_and_pool_in_groups(
            n,
            (sh, sw, c),
            |first, count, out| {
                let images = &input[first * image_in..][..count * image_in];
                self.stem.run_stem(images, (count, h, w), out, scratch);
            },
            &mut ws.t,
            (&mut ws.x, pool_frame),
            wants.then_some(&mut ws.skip),
        );
        // Without a trace the stem's output of the batch is not kept: only its shape is reported.
        let stem_out: &[Bf16] = if wants { &ws.skip } else { &[] };
        report(&mut trace, TracePoint::Stem, stem_out, [sh, sw, c]);
        (h, w) = (ph, pw);
        report(&mut trace, TracePoint::MaxPool, &ws.x, [h, w, c]);

        // Where both sides read in place, a layer writes its output straight into the padded
        // layout (a frame) the next one reads, which then copies nothing: conv1 into conv2's,
        // and a block's output into the next block's (within a stage; not while tracing, whose
        // reports read the blocks' outputs dense). `x_frame`: the frame `ws.x` is in, if any.
        let mut x_frame = pool_frame;
        for (i, block) in self.blocks.iter().enumerate() {
            let shape = block.shape((n, h, w));
            let (oh, ow) = (shape.g2.in_h, shape.g2.in_w);
            let next = self.blocks.get(i + 1).map(|b| b.shape((n, oh, ow)));
            let (t_frame, y_frame) = shape.frames(next.as_ref(), wants);
            // Residual branch, first conv: conv1 + bn1 + relu.
            let framing = Framing {
                input: x_frame.is_some(),
                output: t_frame,
                residual: None,
            };
            block
                .conv1
                .run(&ws.x, (n, h, w), &mut ws.t, None, true, framing);
            // Skip branch: the input, or downsample conv + bn (whose input is never framed:
            // see `BlockShape::input_frame`).
            let skip: &[Bf16] = match &block.downsample {
                Some(ds) => {
                    ds.run(&ws.x, (n, h, w), &mut ws.skip, None, false, Framing::DENSE);
                    &ws.skip
                }
                None => &ws.x,
            };
            // Second conv: conv2 + bn2 + residual add + relu, all in the epilogue.
            let framing = Framing {
                input: t_frame.is_some(),
                output: y_frame,
                residual: if block.downsample.is_some() {
                    None
                } else {
                    x_frame
                },
            };
            block
                .conv2
                .run(&ws.t, (n, oh, ow), &mut ws.y, Some(skip), true, framing);
            x_frame = y_frame;
            std::mem::swap(&mut ws.x, &mut ws.y);
            (h, w, c) = (oh, ow, block.conv2.spec.out_channels);
            report(&mut trace, block.point, &ws.x, [h, w, c]);
        }

        ws.features.resize(n * c, 0.0);
        avg_pool_bf16_nhwc(&ws.x, n, h * w, c, &mut ws.features);
        classifier(&ws.features, n, &self.fc, &self.fc_bias, &mut trace)
    }
}

impl Backend for Bf16Backend {
    fn name(&self) -> &'static str {
        "bf16"
    }

    fn describe(&self) -> String {
        let kernels = match &self.plan {
            None => format!(
                "bf16 kernel {}, plan: off (built-in heuristic)",
                self.kernel.info.name
            ),
            Some(p) => format!(
                "bf16 kernels {}, plan: {}",
                p.plan.kernel_counts(),
                p.path.display()
            ),
        };
        format!(
            "{kernels}, NHWC bf16 activations, bf16 weights after BN folding ({:.1} MB packed), f32 accumulation, fused bias+residual+ReLU rounding to bf16; fc f32",
            self.weight_bytes as f64 / 1e6
        )
    }

    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        observer: &mut dyn LayerObserver,
    ) -> Result<Array2<f32>> {
        check_batch_shape(&batch)?;
        let logits = self
            .workspaces
            .with(|ws| self.forward_in(batch, ws, observer));
        // The tile configuration lives for one forward pass (see `release_thread_tiles`).
        if self.uses_amx {
            resnet_kernels::amx::release_thread_tiles();
        }
        Ok(logits)
    }
}
