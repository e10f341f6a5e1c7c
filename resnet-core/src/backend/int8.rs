//! The INT8 backend: `u8` NHWC activations, per-channel `i8` weights, resnet-kernels'
//! `u8 x s8` GEMM with the requantisation, residual add and ReLU fused in its epilogue; im2col
//! and pooling on the 8-bit data, so no layer goes back to f32 until the average pool. The
//! classifier stays f32 (see [`crate::quantize`]). It runs a [`QuantizedModel`] and knows
//! nothing of how one is made: from the quantize module it uses only the leaf
//! [`crate::quantize::model`].

use super::folded::{nchw_to_nhwc, nhwc_to_nchw, FoldedLayer};
use super::native::{classifier, PackedLayer};
use super::{
    check_batch_shape, Backend, BlockShape, Framing, LayerObserver, Reporter, WinogradPolicy,
    WorkspacePool,
};
use crate::arch::{ConvBn, ResNet18Arch, TracePoint};
use crate::error::Result;
use crate::plan::ActivePlan;
use crate::quantize::model::{ActQuant, Activation, LayerPrecision, QuantizedConv, QuantizedModel};
use crate::weights::FoldedConv;
use ndarray::{Array2, ArrayView4};
use resnet_kernels::aligned::{AlignedVec, Plain};
use resnet_kernels::cpu::Isa;
use resnet_kernels::gemm::PackedB;
use resnet_kernels::int8::{
    self, avg_pool_u8_nhwc, conv_u8s8_in_place, gemm_u8s8, quantize_nchw_to_nhwc_u8,
    round_half_even_i32, ASource8, InPlaceLayout, Int8Kernel, Output8, PackedB8, Requant,
    Residual8,
};
use resnet_kernels::pool::{max_pool_3x3_s2_p1_nhwc, max_pool_3x3_s2_p1_nhwc_framed};
use resnet_kernels::tiling::Blocking;
use resnet_kernels::winograd::WinogradScratch;

/// One convolution prepared for the INT8 kernel: packed codes, `i32` bias (zero-point
/// correction folded in) and per-channel requantisation multipliers.
pub(super) struct Int8Layer {
    spec: ConvBn,
    weights: PackedB8,
    /// How the kernel reads the input in place ([`conv_u8s8_in_place`]), when it does instead
    /// of packing an im2col.
    in_place: Option<InPlaceLayout>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    input: ActQuant,
    output: ActQuant,
}

impl Int8Layer {
    pub(super) fn new(
        conv: &QuantizedConv,
        input: ActQuant,
        output: ActQuant,
        (kernel, blocking, in_place): (&'static Int8Kernel, Blocking, bool),
    ) -> Int8Layer {
        let s = &conv.spec;
        let codes = conv.khwc_by_oc(&conv.weight);
        let weight_scale = &conv.weight_scale;
        // Whether a layout applies does not depend on the image size: any geometry will do.
        let geometry = s.geometry(1, s.kernel, s.kernel);
        let layout = in_place
            .then(|| int8::in_place_layout(&geometry))
            .flatten()
            .filter(|_| kernel.reads_in_place());
        let weights = match layout {
            Some(InPlaceLayout::WindowRows) => int8::pack_window_rows(
                &codes,
                s.kernel,
                s.in_channels,
                s.out_channels,
                kernel,
                blocking,
            ),
            _ => {
                let k = s.in_channels * s.kernel * s.kernel;
                PackedB8::with_kernel(&codes, k, s.out_channels, kernel, blocking)
            }
        };
        let (sx, zx) = (input.scale as f64, input.zero_point as i32);
        let bias = conv
            .bias
            .iter()
            .zip(weight_scale)
            .zip(weights.column_sums())
            .map(|((&b, &sw), &colsum)| {
                round_half_even_i32(b as f64 / (sx * sw as f64)) - zx * colsum
            })
            .collect();
        let scale = weight_scale
            .iter()
            .map(|&sw| (sx * sw as f64 / output.scale as f64) as f32)
            .collect();
        let in_place = layout.filter(|&l| int8::in_place_applies(&geometry, &weights, l));
        Int8Layer {
            spec: s.clone(),
            weights,
            in_place,
            bias,
            scale,
            input,
            output,
        }
    }

    /// Convolution `conv` of `model` with the quantisation of the activations it reads and
    /// writes ([`Activation::around_conv`]).
    pub(super) fn for_conv(
        model: &QuantizedModel,
        conv: &str,
        line: (&'static Int8Kernel, Blocking, bool),
    ) -> Int8Layer {
        let (input, output) = Activation::around_conv(conv).expect("a convolution of the network");
        Int8Layer::new(model.conv(conv), model.act(input), model.act(output), line)
    }

    /// `out = requant(conv(input) [+ residual])` on NHWC codes, the input, output and
    /// residual framed as `framing` says (frames need the in-place path); returns the output
    /// height, width.
    pub(super) fn run(
        &self,
        input: &[u8],
        (n, h, w): (usize, usize, usize),
        out: &mut AlignedVec<u8>,
        residual: Option<(&[u8], ActQuant)>,
        relu: bool,
        framing: Framing,
    ) -> (usize, usize) {
        let s = &self.spec;
        let geometry = s.geometry(n, h, w);
        let oc = s.out_channels;
        let out = grow(out, framing.output.map_or(geometry.m() * oc, |f| f.len()));
        let requant = Requant {
            bias: &self.bias,
            scale: &self.scale,
            residual: residual.map(|(data, q)| Residual8 {
                data,
                ld: oc,
                zero_point: q.zero_point as i32,
                scale: q.scale / self.output.scale,
                frame: framing.residual,
            }),
            zero_point: self.output.zero_point,
            relu,
        };
        let layout = if framing.input {
            Some(InPlaceLayout::Framed)
        } else {
            self.in_place
        };
        if let Some(layout) = layout {
            conv_u8s8_in_place(
                input,
                &geometry,
                self.input.zero_point,
                &self.weights,
                (out, oc, framing.output),
                &requant,
                layout,
            );
        } else {
            let source = ASource8::Conv {
                input,
                geometry,
                pad: self.input.zero_point,
            };
            gemm_u8s8(
                &source,
                &self.weights,
                Output8::U8 {
                    c: out,
                    ldc: oc,
                    requant,
                },
            );
        }
        (geometry.out_h(), geometry.out_w())
    }
}

enum Stem {
    Int8(Int8Layer),
    /// f32 convolution on the f32 input; its output is quantised with `output`.
    F32 {
        layer: PackedLayer,
        output: ActQuant,
    },
}

struct Int8Block {
    point: TracePoint,
    conv1: Int8Layer,
    conv2: Int8Layer,
    downsample: Option<Int8Layer>,
}

impl Int8Block {
    /// The block at input size `(n, h, w)`, as the framing rule sees it.
    fn shape(&self, input: (usize, usize, usize)) -> BlockShape {
        let (g1, g2) = BlockShape::geometries(&self.conv1.spec, &self.conv2.spec, input);
        BlockShape {
            g1,
            g2,
            conv1: self.conv1.in_place,
            conv2: self.conv2.in_place,
            downsample: self.downsample.is_some(),
        }
    }
}

#[derive(Default)]
struct Workspace {
    x: AlignedVec<u8>,
    t: AlignedVec<u8>,
    skip: AlignedVec<u8>,
    y: AlignedVec<u8>,
    xf: Vec<f32>,
    tf: AlignedVec<f32>,
    features: Vec<f32>,
}

/// INT8 ResNet-18: `u8 x s8` kernels with fused requantisation, NHWC `u8` activations.
pub struct Int8Backend {
    /// The kernel of the layers no plan entry chose.
    kernel: &'static Int8Kernel,
    /// The per-layer plan the layers were packed by, if any.
    plan: Option<ActivePlan>,
    /// Whether some layer runs on AMX (its tiles are released after each forward pass).
    uses_amx: bool,
    input: ActQuant,
    stem: Stem,
    blocks: Vec<Int8Block>,
    last: ActQuant,
    fc: PackedB,
    fc_bias: Vec<f32>,
    calibration: String,
    workspaces: WorkspacePool<Workspace>,
}

impl Int8Backend {
    /// Prepares a quantised model for `isa`'s INT8 kernel.
    pub fn new(model: &QuantizedModel, isa: Isa) -> Int8Backend {
        Int8Backend::with_kernel(model, isa, resnet_kernels::int8::kernel_for(isa))
    }

    /// Prepares a quantised model for a given INT8 kernel line (`isa` still chooses the f32
    /// kernels of the stem, when it is f32, and of the classifier). For tests that name a line
    /// outside the registry's selection, e.g. [`resnet_kernels::int8::AMX_MODEL_KERNEL`].
    ///
    /// # Panics
    /// If this CPU cannot run `kernel` (as `PackedB8::with_kernel`).
    pub fn with_kernel(
        model: &QuantizedModel,
        isa: Isa,
        kernel: &'static Int8Kernel,
    ) -> Int8Backend {
        Int8Backend::build(model, isa, kernel, None)
    }

    /// [`Int8Backend::new`] with a per-layer plan (an `int8` plan, validated when it was
    /// loaded): each convolution is packed with its entry's kernel and blocking; `None` runs
    /// the heuristic.
    pub fn planned(model: &QuantizedModel, isa: Isa, plan: Option<ActivePlan>) -> Int8Backend {
        Int8Backend::build(model, isa, resnet_kernels::int8::kernel_for(isa), plan)
    }

    fn build(
        model: &QuantizedModel,
        isa: Isa,
        kernel: &'static Int8Kernel,
        plan: Option<ActivePlan>,
    ) -> Int8Backend {
        if let Some(p) = &plan {
            debug_assert_eq!(p.plan.backend, crate::plan::PlanBackend::Int8);
        }
        // Each convolution's kernel, blocking and method: its plan entry, else `kernel` with its
        // default blocking, in place where the heuristic says (from the layer's output width
        // at the standard 224 x 224 input).
        let arch = ResNet18Arch::new();
        let inputs = arch.convs_with_inputs(crate::arch::INPUT_SIZE, crate::arch::INPUT_SIZE);
        let mut uses_amx = false;
        let mut line = |conv: &str| {
            let chosen = match plan.as_ref().and_then(|p| p.plan.choice(conv)) {
                Some(c) => {
                    let line = c
                        .int8_kernel_line()
                        .expect("validated plan names a registered INT8 kernel");
                    (line, c.blocking(), c.method == crate::plan::Method::InPlace)
                }
                None => {
                    let &(spec, [_, h, w]) = inputs
                        .iter()
                        .find(|(s, _)| s.conv == conv)
                        .expect("a convolution of the network");
                    let width = spec.output_hw(h, w).1;
                    let in_place = crate::plan::in_place_by_default(kernel, spec, width);
                    (kernel, kernel.default_blocking(), in_place)
                }
            };
            uses_amx |= chosen.0.info.isa == Isa::Amx;
            chosen
        };
        let input = model.act(Activation::Input);
        let stem_conv = model.conv("conv1");
        let stem = match stem_conv.precision() {
            LayerPrecision::Int8 => Stem::Int8(Int8Layer::for_conv(model, "conv1", line("conv1"))),
            LayerPrecision::F32 => Stem::F32 {
                layer: PackedLayer::new(
                    FoldedLayer {
                        spec: stem_conv.spec.clone(),
                        conv: FoldedConv {
                            weight: stem_conv.weight_f32.clone().expect("f32 layer"),
                            bias: stem_conv.bias.clone(),
                        },
                    },
                    isa,
                    WinogradPolicy::Off,
                ),
                output: model.act(Activation::Stem),
            },
        };
        let mut layer = |spec: &ConvBn| Int8Layer::for_conv(model, &spec.conv, line(&spec.conv));
        let blocks: Vec<Int8Block> = arch
            .blocks
            .iter()
            .map(|b| Int8Block {
                point: b.point(),
                conv1: layer(&b.conv1),
                conv2: layer(&b.conv2),
                downsample: b.downsample.as_ref().map(&mut layer),
            })
            .collect();
        let current = blocks.last().expect("ResNet-18 has blocks").conv2.output;
        let classes = model.fc_bias.len();
        let features = model.fc_weight.len() / classes;
        let mut fc_t = vec![0.0; model.fc_weight.len()];
        for k in 0..classes {
            for f in 0..features {
                fc_t[f * classes + k] = model.fc_weight[k * features + f];
            }
        }
        log::debug!(
            "int8 backend built: INT8 kernel {}, f32 kernel {} for the classifier (ISA {isa})",
            kernel.info.name,
            resnet_kernels::gemm::kernel_name(isa)
        );
        if let Some(p) = &plan {
            log::debug!("int8: per-layer plan {} in use", p.path.display());
        }
        Int8Backend {
            kernel,
            plan,
            uses_amx,
            input,
            stem,
            blocks,
            last: current,
            fc: PackedB::new(&fc_t, features, classes, isa),
            fc_bias: model.fc_bias.clone(),
            calibration: format!("{} on {} inputs", model.method, model.calibration_inputs),
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
        let report = |trace: &mut Reporter<'_>,
                      point: TracePoint,
                      data: &[u8],
                      q: ActQuant,
                      (h, w, c): (usize, usize, usize)| {
            let out = if wants {
                let real: Vec<f32> = data.iter().map(|&v| q.dequantize(v)).collect();
                nhwc_to_nchw(&real, n, h, w, c)
            } else {
                ndarray::ArrayD::zeros(vec![0])
            };
            trace.report_shape(point, &[n, c, h, w], wants.then(|| out.view()));
        };

        // Buffers only grow (`grow`), so a steady state never zeroes memory; each tensor is the
        // first n·h·w·c bytes of its buffer.
        // Stem: conv1 + bn1 + relu, then max-pool on the codes.
        let stem_q = match &self.stem {
            Stem::Int8(layer) => {
                let x = grow(&mut ws.x, input.len());
                quantize_nchw_to_nhwc_u8(
                    input,
                    n,
                    c_in,
                    h * w,
                    1.0 / self.input.scale,
                    self.input.zero_point as i32,
                    x,
                );
                (h, w) = layer.run(x, (n, h, w), &mut ws.t, None, true, Framing::DENSE);
                layer.output
            }
            Stem::F32 { layer, output } => {
                ws.xf.resize(input.len(), 0.0);
                nchw_to_nhwc(input, n, c_in, h * w, &mut ws.xf);
                (h, w) = layer.run(
                    &ws.xf,
                    (n, h, w),
                    &mut ws.tf,
                    None,
                    true,
                    &mut WinogradScratch::default(),
                );
                let t = grow(&mut ws.t, ws.tf.len());
                for (q, &v) in t.iter_mut().zip(ws.tf.iter()) {
                    *q = output.quantize(v);
                }
                *output
            }
        };
        let mut c = 64;
        let len = |h: usize, w: usize, c: usize| n * h * w * c;
        report(
            &mut trace,
            TracePoint::Stem,
            &ws.t[..len(h, w, c)],
            stem_q,
            (h, w, c),
        );
        let (ph, pw) = crate::arch::max_pool_output_hw(h, w);
        // The pool writes straight into the frame the first block reads (see the blocks'
        // loop below), unless a trace reads its output.
        let pool_frame = self
            .blocks
            .first()
            .and_then(|first| first.shape((n, ph, pw)).input_frame())
            .filter(|_| !wants);
        match pool_frame {
            Some(frame) => {
                let x = grow(&mut ws.x, frame.len());
                frame.clear(x, stem_q.zero_point);
                max_pool_3x3_s2_p1_nhwc_framed(&ws.t[..len(h, w, c)], (n, h, w, c), x, frame.pad);
            }
            None => max_pool_3x3_s2_p1_nhwc(
                &ws.t[..len(h, w, c)],
                n,
                h,
                w,
                c,
                grow(&mut ws.x, len(ph, pw, c)),
            ),
        }
        (h, w) = (ph, pw);
        report(
            &mut trace,
            TracePoint::MaxPool,
            &ws.x[..len(h, w, c)],
            stem_q,
            (h, w, c),
        );

        // Where both sides read in place, a layer writes its output straight into the padded
        // layout (a frame) the next one reads, as the bf16 backend does (see there).
        // `x_frame`: the frame `ws.x` is in, if any.
        let mut x_q = stem_q;
        let mut x_frame = pool_frame;
        for (i, block) in self.blocks.iter().enumerate() {
            let shape = block.shape((n, h, w));
            let (oh, ow) = (shape.g2.in_h, shape.g2.in_w);
            let next = self.blocks.get(i + 1).map(|b| b.shape((n, oh, ow)));
            let (t_frame, y_frame) = shape.frames(next.as_ref(), wants);
            let x = &ws.x[..x_frame.map_or(len(h, w, c), |f| f.len())];
            // Residual branch, first conv: conv1 + bn1 + relu.
            let framing = Framing {
                input: x_frame.is_some(),
                output: t_frame,
                residual: None,
            };
            block
                .conv1
                .run(x, (n, h, w), &mut ws.t, None, true, framing);
            let oc = block.conv2.spec.out_channels;
            // Skip branch: the input, or downsample conv + bn (whose input is never framed).
            let skip: (&[u8], ActQuant) = match &block.downsample {
                Some(ds) => {
                    ds.run(x, (n, h, w), &mut ws.skip, None, false, Framing::DENSE);
                    (&ws.skip[..len(oh, ow, oc)], ds.output)
                }
                None => (x, x_q),
            };
            // conv2 + bn2 + residual add + relu, requantised in the epilogue.
            let t_len = t_frame.map_or(len(oh, ow, block.conv1.spec.out_channels), |f| f.len());
            let framing = Framing {
                input: t_frame.is_some(),
                output: y_frame,
                residual: x_frame.filter(|_| block.downsample.is_none()),
            };
            block.conv2.run(
                &ws.t[..t_len],
                (n, oh, ow),
                &mut ws.y,
                Some(skip),
                true,
                framing,
            );
            x_frame = y_frame;
            std::mem::swap(&mut ws.x, &mut ws.y);
            (h, w, c) = (oh, ow, oc);
            x_q = block.conv2.output;
            report(
                &mut trace,
                block.point,
                &ws.x[..len(h, w, c)],
                x_q,
                (h, w, c),
            );
        }
        let x = &ws.x[..len(h, w, c)];

        ws.features.resize(n * c, 0.0);
        avg_pool_u8_nhwc(
            x,
            n,
            h * w,
            c,
            self.last.scale,
            self.last.zero_point as i32,
            &mut ws.features,
        );
        classifier(&ws.features, n, &self.fc, &self.fc_bias, &mut trace)
    }
}

impl Backend for Int8Backend {
    fn name(&self) -> &'static str {
        "int8"
    }

    fn describe(&self) -> String {
        let kernels = match &self.plan {
            None => format!(
                "INT8 kernel {}, plan: off (built-in heuristic)",
                self.kernel.info.name
            ),
            Some(p) => format!(
                "INT8 kernels {}, plan: {}",
                p.plan.kernel_counts(),
                p.path.display()
            ),
        };
        format!(
            "{kernels}, NHWC u8 activations, per-channel int8 weights, stem {}, fc f32; calibration {}",
            match self.stem {
                Stem::Int8(_) => "int8",
                Stem::F32 { .. } => "f32",
            },
            self.calibration
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

/// The first `len` elements of `buf`, growing it (with zeros) if it is shorter, never shrinking.
fn grow<T: Plain + Default>(buf: &mut AlignedVec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    &mut buf[..len]
}
