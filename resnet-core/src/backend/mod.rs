//! The `Backend` trait: one interface, several ways to compute ResNet-18.
//!
//! A backend is built once from [`Weights`] (this is where it folds BatchNorm, packs or quantises
//! weights) and then runs batches `[N, 3, H, W]` -> logits `[N, 1000]` as often as needed, from
//! any thread. While it runs it reports every trace point of
//! [`ResNet18Arch::trace_points`](crate::arch::ResNet18Arch::trace_points) to a
//! [`LayerObserver`], so tracing, profiling and class activation maps work the same for every
//! backend.

mod bf16;
pub(crate) mod folded;
mod gemm;
mod int8;
mod native;
pub(crate) mod reference;
pub mod tune;

pub use bf16::Bf16Backend;
pub use gemm::GemmBackend;
pub use int8::Int8Backend;
pub use native::NativeBackend;
pub(crate) use native::Tap;
pub use reference::ReferenceBackend;

pub use crate::arch::TracePoint;
use crate::error::{Error, Result};
use crate::weights::Weights;
use ndarray::{Array2, ArrayView4, ArrayViewD};
use resnet_kernels::aligned::{AlignedVec, Plain};
use resnet_kernels::amx::{Frame, InPlaceLayout};
use resnet_kernels::cpu::Isa;
use resnet_kernels::gemm::ConvGeometry;
use resnet_kernels::pool::{max_pool_3x3_s2_p1_nhwc, max_pool_3x3_s2_p1_nhwc_framed, PoolValue};
use std::time::{Duration, Instant};

/// A way of computing ResNet-18, prepared for one set of weights.
pub trait Backend: Send + Sync {
    /// The backend's name as the CLI spells it.
    fn name(&self) -> &'static str;

    /// One line saying how it computes (kernels, ISA), for `resnet inspect` and logs.
    fn describe(&self) -> String;

    /// Runs a batch `[N, 3, H, W]` (normalised as in [`crate::preprocess`]) to logits `[N, 1000]`.
    fn forward(
        &self,
        batch: ArrayView4<'_, f32>,
        observer: &mut dyn LayerObserver,
    ) -> Result<Array2<f32>>;
}

/// Receives one event per trace point during a forward pass.
pub trait LayerObserver {
    /// Whether the backend should hand over each layer's output (costs a copy in some backends).
    fn wants_outputs(&self) -> bool {
        false
    }

    /// Called after each trace point, in network order.
    fn on_layer(&mut self, event: &LayerEvent<'_>);
}

/// What a backend reports after each trace point.
#[derive(Debug)]
pub struct LayerEvent<'a> {
    /// The trace point.
    pub point: TracePoint,
    /// Its name (torchvision module name, or `stem`): `point.name()`.
    pub name: &'static str,
    /// Output shape, `[N, C, H, W]` or `[N, F]`.
    pub shape: Vec<usize>,
    /// Time spent computing this point since the previous one.
    pub elapsed: Duration,
    /// The output in NCHW / NF order, when [`LayerObserver::wants_outputs`] said so.
    pub output: Option<ArrayViewD<'a, f32>>,
}

/// Times the stretch between trace points and forwards each point to an observer.
pub(crate) struct Reporter<'o> {
    observer: &'o mut dyn LayerObserver,
    clock: Instant,
}

impl<'o> Reporter<'o> {
    pub(crate) fn new(observer: &'o mut dyn LayerObserver) -> Self {
        Reporter {
            observer,
            clock: Instant::now(),
        }
    }

    /// Reports trace point `point` with its NCHW shape, and its output when there is one.
    pub(crate) fn report_shape(
        &mut self,
        point: TracePoint,
        shape: &[usize],
        out: Option<ArrayViewD<'_, f32>>,
    ) {
        let elapsed = self.clock.elapsed();
        self.observer.on_layer(&LayerEvent {
            point,
            name: point.name(),
            shape: shape.to_vec(),
            elapsed,
            output: out,
        });
        self.clock = Instant::now();
    }

    /// Reports trace point `point` whose output is `out` (NCHW or NF).
    pub(crate) fn report(&mut self, point: TracePoint, out: ArrayViewD<'_, f32>) {
        let shape = out.shape().to_vec();
        let wants = self.observer.wants_outputs();
        self.report_shape(point, &shape, wants.then_some(out));
    }
}

/// Buffers kept between forward passes: each pass takes one set (or a fresh default one when
/// every set is in use by a concurrent pass) and gives it back, so in steady state no pass
/// allocates and concurrent passes never share buffers.
pub(crate) struct WorkspacePool<W>(std::sync::Mutex<Vec<W>>);

impl<W: Default> WorkspacePool<W> {
    pub(crate) fn new() -> Self {
        WorkspacePool(std::sync::Mutex::new(Vec::new()))
    }

    /// Runs `f` with a workspace from the pool, then returns the workspace to it.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        let mut ws = self
            .0
            .lock()
            .map(|mut p| p.pop())
            .unwrap_or(None)
            .unwrap_or_default();
        let out = f(&mut ws);
        if let Ok(mut pool) = self.0.lock() {
            pool.push(ws);
        }
        out
    }
}

/// An observer that ignores everything.
pub struct NoObserver;

impl LayerObserver for NoObserver {
    fn on_layer(&mut self, _event: &LayerEvent<'_>) {}
}

/// The backends this build offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Direct convolution loops, unfolded BatchNorm, no SIMD: the textbook and the oracle.
    Reference,
    /// NCHW im2col + `matrixmultiply`, BatchNorm folded, unfused passes: the library baseline.
    Gemm,
    /// resnet-kernels' packed micro-kernels, NHWC, fused epilogues: the fast path.
    Native,
    /// Calibrated INT8: `u8 x s8` kernels with fused requantisation, NHWC `u8` activations.
    Int8,
    /// bf16 weights and activations, f32 accumulation (`vdpbf16ps` on AVX512-BF16).
    Bf16,
}

impl BackendKind {
    /// Every backend, in order of sophistication.
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Reference,
        BackendKind::Gemm,
        BackendKind::Native,
        BackendKind::Int8,
        BackendKind::Bf16,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Reference => "reference",
            BackendKind::Gemm => "gemm",
            BackendKind::Native => "native",
            BackendKind::Int8 => "int8",
            BackendKind::Bf16 => "bf16",
        }
    }

    /// The plans this backend runs with (`resnet tune`), if it has any.
    pub fn plan_backend(self) -> Option<crate::plan::PlanBackend> {
        match self {
            BackendKind::Native => Some(crate::plan::PlanBackend::Native),
            BackendKind::Int8 => Some(crate::plan::PlanBackend::Int8),
            BackendKind::Bf16 => Some(crate::plan::PlanBackend::Bf16),
            _ => None,
        }
    }

    /// How this backend computes on `isa`, without building it (for `resnet inspect`).
    pub fn describe(self, isa: Isa) -> String {
        match self {
            BackendKind::Reference => "direct convolution loops, f64 accumulation, no SIMD (quality: reference)".into(),
            BackendKind::Gemm => "NCHW im2col + matrixmultiply::sgemm, unfused passes (quality: library)".into(),
            BackendKind::Native => format!(
                "packed GEMM kernel {}, NHWC, implicit im2col, fused epilogue, Winograd F(4x4,3x3) on the 3x3 stride-1 convolutions of layer1-3 by default (quality: intrinsics)",
                resnet_kernels::gemm::kernel_name(isa)
            ),
            BackendKind::Int8 => format!(
                "INT8 kernel {}, NHWC u8 activations, per-channel weights, fused requantisation; fc f32 (quality: intrinsics)",
                resnet_kernels::int8::kernel_name(isa)
            ),
            BackendKind::Bf16 => format!(
                "bf16 kernel {}, NHWC bf16 activations, bf16 weights after BN folding, f32 accumulation, fused epilogue rounding to bf16; fc f32 (quality: bf16)",
                resnet_kernels::bf16::kernel_name(isa)
            ),
        }
    }

    /// Like [`BackendKind::create`], taking the weights so that a backend that repacks them
    /// (`native`) can free each tensor once packed instead of copying them all first.
    pub fn create_owned(
        self,
        weights: Weights,
        options: &BackendOptions,
    ) -> Result<Box<dyn Backend>> {
        match self {
            BackendKind::Native => {
                self.check_isa(options)?;
                Ok(Box::new(NativeBackend::from_weights_planned(
                    weights,
                    options.isa,
                    options.winograd,
                    options.plan.clone(),
                )))
            }
            BackendKind::Bf16 => {
                self.check_isa(options)?;
                Ok(Box::new(Bf16Backend::planned(
                    weights,
                    options.isa,
                    options.plan.clone(),
                )))
            }
            _ => self.create(&weights, options),
        }
    }

    fn check_isa(self, options: &BackendOptions) -> Result<()> {
        if options.isa.is_supported() {
            Ok(())
        } else {
            Err(Error::UnsupportedIsa {
                backend: self.name(),
                isa: options.isa,
            })
        }
    }

    /// Builds the backend for these weights. `Int8` quantises them first, which runs a
    /// calibration on the built-in photos
    /// ([`crate::quantize::calibrate_on_built_in_images`], logged at info); to use a calibrated
    /// `.int8.safetensors` file, build [`Int8Backend::new`] from
    /// [`crate::quantize::QuantizedModel::load`] instead.
    pub fn create(self, weights: &Weights, options: &BackendOptions) -> Result<Box<dyn Backend>> {
        self.check_isa(options)?;
        Ok(match self {
            BackendKind::Reference => Box::new(ReferenceBackend::new(weights)),
            BackendKind::Gemm => Box::new(GemmBackend::new(weights)),
            BackendKind::Native => Box::new(NativeBackend::from_weights_planned(
                weights.clone(),
                options.isa,
                options.winograd,
                options.plan.clone(),
            )),
            BackendKind::Int8 => Box::new(Int8Backend::planned(
                &crate::quantize::calibrate_on_built_in_images(weights, options.isa)?,
                options.isa,
                options.plan.clone(),
            )),
            BackendKind::Bf16 => Box::new(Bf16Backend::planned(
                weights.clone(),
                options.isa,
                options.plan.clone(),
            )),
        })
    }
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::UnknownBackend {
                name: s.to_string(),
                available: BackendKind::ALL.map(|k| k.name()).join(", "),
            })
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Options common to all backends.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Instruction-set level for the kernels (ignored by `reference`).
    pub isa: Isa,
    /// Which 3x3 stride-1 convolutions `native` runs with Winograd F(4x4, 3x3).
    pub winograd: WinogradPolicy,
    /// A per-layer plan for `native` (overrides `winograd` and the default blocking per layer)
    /// or for `int8` and `bf16` (the kernel, blocking and in-place reading per layer), for the
    /// backend it was made for.
    pub plan: Option<crate::plan::ActivePlan>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            isa: Isa::best_supported(),
            winograd: WinogradPolicy::default(),
            plan: None,
        }
    }
}

/// Which 3x3 stride-1 convolutions use Winograd F(4x4, 3x3) instead of the direct GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WinogradPolicy {
    /// None: every convolution is a direct (implicit im2col) GEMM.
    Off,
    /// Layers with at most 256 input channels (ResNet-18's layer1 to layer3), where it measured
    /// 1.5-2.4x faster alone (`winograd_layers`, 2026-11-28). Against layer2-3 only, it made the
    /// whole network about 10% faster at batch 1 (`resnet bench`, both builds run alternately)
    /// for 1.5 MB more memory. layer4's 512-channel filters would take 4x their memory (85 MB
    /// more) and run slower at batch 1, where the layer is memory-bound.
    #[default]
    Auto,
    /// Every 3x3 stride-1 convolution.
    All,
}

impl WinogradPolicy {
    /// The name as `RESNET_WINOGRAD` and `--winograd` spell it.
    pub fn name(self) -> &'static str {
        match self {
            WinogradPolicy::Off => "off",
            WinogradPolicy::Auto => "auto",
            WinogradPolicy::All => "all",
        }
    }

    /// Whether `layer` runs with Winograd under this policy.
    pub fn applies(self, layer: &crate::arch::ConvBn) -> bool {
        let eligible = layer.kernel == 3 && layer.stride == 1 && layer.padding == 1;
        match self {
            WinogradPolicy::Off => false,
            WinogradPolicy::Auto => eligible && layer.in_channels <= 256,
            WinogradPolicy::All => eligible,
        }
    }
}

impl std::str::FromStr for WinogradPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(WinogradPolicy::Off),
            "auto" => Ok(WinogradPolicy::Auto),
            "all" => Ok(WinogradPolicy::All),
            _ => Err(Error::UnknownWinogradPolicy {
                value: s.to_string(),
            }),
        }
    }
}

/// How a layer's input and output buffers are laid out (the `int8` and `bf16` backends on AMX
/// lines): dense NHWC, or a [`Frame`], the padded layout the in-place path reads a stride-1
/// layer from, written by the layer before so that no copy is made.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Framing {
    /// The input is a frame of the layer's input ([`InPlaceLayout::Framed`]).
    pub input: bool,
    /// The output goes into this frame, for the next layer to read framed.
    pub output: Option<Frame>,
    /// The residual is read from this frame (the block's input, framed for its conv1).
    pub residual: Option<Frame>,
}

impl Framing {
    /// Dense in, dense out.
    pub(super) const DENSE: Framing = Framing {
        input: false,
        output: None,
        residual: None,
    };
}

/// What the framing rule needs of a BasicBlock at one input size: its convolutions' geometries,
/// the layouts they read their input in place in (`None`: packed), and whether it has a
/// downsample.
pub(super) struct BlockShape {
    pub g1: ConvGeometry,
    pub g2: ConvGeometry,
    pub conv1: Option<InPlaceLayout>,
    pub conv2: Option<InPlaceLayout>,
    pub downsample: bool,
}

impl BlockShape {
    /// The geometries of a block's two convolutions at its input size `(n, h, w)` (conv2's
    /// input is conv1's output).
    pub fn geometries(
        conv1: &crate::arch::ConvBn,
        conv2: &crate::arch::ConvBn,
        (n, h, w): (usize, usize, usize),
    ) -> (ConvGeometry, ConvGeometry) {
        let (oh, ow) = conv1.output_hw(h, w);
        (conv1.geometry(n, h, w), conv2.geometry(n, oh, ow))
    }

    /// The frame conv1 writes its output into so that conv2 reads it without a copy: when
    /// both read their input in place with the padded layout (conv2 then at stride 1).
    pub fn inner_frame(&self) -> Option<Frame> {
        let padded = Some(InPlaceLayout::Padded);
        (self.conv1 == padded && self.conv2 == padded)
            .then(|| Frame::for_input(&self.g2))
            .flatten()
    }

    /// The frame the layer before writes this block's input into so that the block reads it
    /// without a copy: conv1 reads in place with the padded layout at stride 1, there is no
    /// downsample (the skip is that input), and conv2 reads in place (its epilogue reads the
    /// residual from the frame). The writer must run in place too (the packed path's tiles
    /// cross output rows).
    pub fn input_frame(&self) -> Option<Frame> {
        let conv1_padded = self.conv1 == Some(InPlaceLayout::Padded);
        (!self.downsample && conv1_padded && self.conv2.is_some())
            .then(|| Frame::for_input(&self.g1))
            .flatten()
    }

    /// The frames of this block's pass, `(conv1's output, the block's output)`: the second
    /// when conv2 runs in place and `next` (the next block at this block's output size) reads
    /// its input framed, unless `tracing` (a trace reads the blocks' outputs dense).
    pub fn frames(
        &self,
        next: Option<&BlockShape>,
        tracing: bool,
    ) -> (Option<Frame>, Option<Frame>) {
        let inner = self.inner_frame();
        let conv2_in_place = inner.is_some() || self.conv2.is_some();
        let output = next
            .filter(|_| conv2_in_place && !tracing)
            .and_then(BlockShape::input_frame);
        (inner, output)
    }
}

/// Checks a batch's shape: `[N, 3, H, W]`, N >= 1, H and W at least 32 (the network's stride).
pub(crate) fn check_batch_shape(batch: &ArrayView4<'_, f32>) -> Result<()> {
    let s = batch.shape();
    if s[0] == 0 || s[1] != 3 || s[2] < 32 || s[3] < 32 {
        return Err(Error::InputShape {
            found: s.to_vec(),
            min_side: 32,
        });
    }
    Ok(())
}

/// The stem and its max-pool, a group of images at a time: `stem(first, count, out)` writes
/// the stem output of images `first..first + count` (`[count, sh, sw, c]`, NHWC) into `out`,
/// which is pooled into those images' part of `pooled` while it is in cache. At batch 8 the whole batch's stem
/// output (12.8 MB of bf16, 25.7 MB of f32) went through memory twice, written and read back by
/// the pool. A group has one image per thread, so that a plan's blocking tuned on the whole
/// batch (the bf16 stem's: one work item per image) still gives every thread work. `keep`
/// receives the batch's stem output when a caller needs it (a trace, the calibration's probe).
/// With a `frame`, `pooled` is written in it (zeros around each image, for the first block to
/// read in place without a copy).
pub(super) fn stem_and_pool_in_groups<T: PoolValue + Plain + Default>(
    n: usize,
    (sh, sw, c): (usize, usize, usize),
    mut stem: impl FnMut(usize, usize, &mut AlignedVec<T>),
    out: &mut AlignedVec<T>,
    (pooled, frame): (&mut AlignedVec<T>, Option<Frame>),
    mut keep: Option<&mut AlignedVec<T>>,
) {
    let (ph, pw) = crate::arch::max_pool_output_hw(sh, sw);
    let image_stem = sh * sw * c;
    let image_pooled = match frame {
        Some(f) => {
            assert!(
                (f.batch, f.h, f.w, f.ch) == (n, ph, pw, c),
                "the frame does not hold the pool's output"
            );
            pooled.resize_for_overwrite(f.len());
            f.clear(pooled, T::default());
            (ph + 2 * f.pad) * (pw + 2 * f.pad) * c
        }
        None => {
            pooled.resize_for_overwrite(n * ph * pw * c);
            ph * pw * c
        }
    };
    if let Some(k) = keep.as_deref_mut() {
        k.resize_for_overwrite(n * image_stem);
    }
    let group = rayon::current_num_threads().max(1);
    for first in (0..n).step_by(group) {
        let count = group.min(n - first);
        stem(first, count, out);
        let images = &out[..count * image_stem];
        if let Some(k) = keep.as_deref_mut() {
            k[first * image_stem..][..count * image_stem].copy_from_slice(images);
        }
        let dst = &mut pooled[first * image_pooled..][..count * image_pooled];
        match frame {
            Some(f) => max_pool_3x3_s2_p1_nhwc_framed(images, (count, sh, sw, c), dst, f.pad),
            None => max_pool_3x3_s2_p1_nhwc(images, count, sh, sw, c, dst),
        }
    }
}
