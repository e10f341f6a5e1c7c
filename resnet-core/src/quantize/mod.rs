//! Post-training INT8 quantisation of ResNet-18: calibration on real images, a self-describing
//! `.int8.safetensors` format, and the accuracy metrics that compare it with f32.
//!
//! - **Weights**: BatchNorm is folded first ([`crate::weights::fold_batch_norm`]); then each
//!   output channel of each convolution gets a symmetric `i8` scale `max|w| / 127` (round half
//!   to even, clamp to `[-127, 127]`). The folded bias stays `f32` in the file and becomes an
//!   `i32` in accumulator units when a backend is prepared.
//! - **Activations**: one `u8` scale and zero point per tensor, from the f32 network's values on
//!   calibration inputs ([`CalibrationMethod`]). Post-ReLU tensors get zero point 0.
//! - **Kept in f32**: the classifier only. The kernels' design note (`resnet_kernels::int8`)
//!   says how the INT8 arithmetic works; which layers use it was measured (synthetic weights
//!   seed 0, calibration on 85 photos/crops, evaluation on 238 other crops, `cargo test -p
//!   resnet-core --test int8 int8_methods_report -- --ignored --nocapture`):
//!
//!   | choice | centred rel. L2 | centred top-1 | raw cosine (mean) | batch-1 time of the layer |
//!   |---|---|---|---|---|
//!   | stem INT8 (default) | 0.0456 | 92.0% | 0.999898 | 0.76 ms (quantise input, u8 im2col, INT8 GEMM) |
//!   | stem f32 | 0.0447 | 91.2% | 0.999899 | 1.18 ms (the `native` f32 stem, same run) + quantising its output |
//!
//!   The f32 stem buys nothing measurable (the two differ by less than the spread between
//!   calibration methods) and costs over 1.5x the time, so the stem is INT8. The `fc` layer
//!   (512 x 1000, 0.03% of the MACs, 0.05-0.07 ms at batch 1) stays f32: quantising it could
//!   save at most that, and its input, an average of 49 codes, carries more precision than a
//!   `u8` would keep.
//! - **Calibration method**, same measurement: `mse` 0.0456 / 92.0%, `minmax` 0.0434 / 87.8%,
//!   `percentile:99.999` 0.0547 / 90.8%, `percentile:99.99` 0.0730 / 87.8%,
//!   `percentile:99.9` 0.277 / 63.0%: clipping the tails hurts this network, and `mse` (the
//!   default) has the best top-1 agreement and worst-case cosine (0.999816).
//!
//! The [`backend::Int8Backend`](crate::backend::Int8Backend) runs a [`QuantizedModel`].

mod calibrate;
mod data;
mod format;
mod metrics;

pub use calibrate::{calibrate, CalibrationMethod, CalibrationProgress};
pub use data::{augmented_inputs, default_calibration_inputs, DEFAULT_CALIBRATION_NAMES};
pub use format::{is_int8_file, INT8_FORMAT};
pub use metrics::{sqnr_db, Agreement};
pub use resnet_kernels::int8::{
    kernel_name as int8_kernel_name, measure_peak_gops as measure_int8_peak_gops,
};

use crate::arch::{ConvBn, ResNet18Arch, BLOCK_NAMES};

/// The calibration method used when none is given (chosen by measurement, see the README).
pub const DEFAULT_METHOD: CalibrationMethod = CalibrationMethod::Mse;
/// The stem's precision when none is given (chosen by measurement, see the README).
pub const DEFAULT_STEM: LayerPrecision = LayerPrecision::Int8;
use std::collections::BTreeMap;

/// How one activation tensor is stored: real value `scale · (q − zero_point)`, `q` in `[0, 255]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQuant {
    /// Step between codes.
    pub scale: f32,
    /// The code of 0.0.
    pub zero_point: u8,
}

impl ActQuant {
    /// The `u8` quantisation of the range `[lo, hi]` (widened to contain 0, so that zero, ReLU
    /// and padding are exact): zero point 0 when `lo >= 0`.
    pub fn from_range(lo: f32, hi: f32) -> ActQuant {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let span = (hi - lo).max(1e-8);
        let scale = span / 255.0;
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        ActQuant { scale, zero_point }
    }

    /// `q` for a real value.
    pub fn quantize(&self, x: f32) -> u8 {
        resnet_kernels::int8::quantize_u8(x, 1.0 / self.scale, self.zero_point as i32)
    }

    /// The real value of a code.
    pub fn dequantize(&self, q: u8) -> f32 {
        self.scale * (q as i32 - self.zero_point as i32) as f32
    }
}

/// Numeric precision a layer runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerPrecision {
    /// `u8 x s8` GEMM with requantisation.
    Int8,
    /// f32 packed GEMM (its output is quantised for the next layer).
    F32,
}

/// One convolution after BN folding and quantisation.
#[derive(Clone, Debug)]
pub struct QuantizedConv {
    /// The layer.
    pub spec: ConvBn,
    /// `[OC, C, KH, KW]` codes, symmetric per output channel.
    pub weight: Vec<i8>,
    /// One scale per output channel.
    pub weight_scale: Vec<f32>,
    /// The folded f32 weights, kept only when the layer runs in f32.
    pub weight_f32: Option<Vec<f32>>,
    /// The folded BatchNorm shift, one per output channel.
    pub bias: Vec<f32>,
}

impl QuantizedConv {
    /// Quantises folded weights `[OC, C, KH, KW]` per output channel (symmetric, `[-127, 127]`).
    pub fn new(spec: ConvBn, folded: &[f32], bias: Vec<f32>, precision: LayerPrecision) -> Self {
        let oc = spec.out_channels;
        let per = folded.len() / oc;
        let mut weight = Vec::with_capacity(folded.len());
        let mut weight_scale = Vec::with_capacity(oc);
        for row in folded.chunks_exact(per) {
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            weight_scale.push(scale);
            weight.extend(
                row.iter()
                    .map(|&w| (w / scale).round_ties_even().clamp(-127.0, 127.0) as i8),
            );
        }
        QuantizedConv {
            spec,
            weight,
            weight_scale,
            weight_f32: (precision == LayerPrecision::F32).then(|| folded.to_vec()),
            bias,
        }
    }

    /// The precision this layer runs in.
    pub fn precision(&self) -> LayerPrecision {
        if self.weight_f32.is_some() {
            LayerPrecision::F32
        } else {
            LayerPrecision::Int8
        }
    }

    /// `[OC, C, KH, KW]` -> the `K x N` GEMM operand of an NHWC convolution
    /// (`b[((kh·KW + kw)·C + c)·OC + oc]`), for any element type.
    pub(crate) fn khwc_by_oc<T: Copy + Default>(&self, w: &[T]) -> Vec<T> {
        let [oc_n, c_n, k, _] = self.spec.weight_shape();
        let mut b = vec![T::default(); w.len()];
        for oc in 0..oc_n {
            for c in 0..c_n {
                for kh in 0..k {
                    for kw in 0..k {
                        b[((kh * k + kw) * c_n + c) * oc_n + oc] =
                            w[((oc * c_n + c) * k + kh) * k + kw];
                    }
                }
            }
        }
        b
    }
}

/// A quantised ResNet-18: everything the INT8 backend needs, and what the file stores.
#[derive(Clone, Debug)]
pub struct QuantizedModel {
    /// Every convolution, keyed by its torchvision conv prefix (`layer2.0.downsample.0`).
    pub convs: BTreeMap<String, QuantizedConv>,
    /// Activation quantisation by tensor name: `input`, `stem`, `{block}.conv1`,
    /// `{block}.downsample`, `{block}` (see [`activation_names`]).
    pub activations: BTreeMap<String, ActQuant>,
    /// The classifier, f32, `[1000, 512]` as torchvision stores it.
    pub fc_weight: Vec<f32>,
    /// `[1000]`.
    pub fc_bias: Vec<f32>,
    /// Calibration method, as [`CalibrationMethod`]'s `Display` spells it.
    pub method: String,
    /// Number of calibration inputs.
    pub calibration_inputs: usize,
    /// Where the f32 weights came from.
    pub source: String,
    /// Whether those weights were synthetic (random, untrained).
    pub synthetic: bool,
}

/// An activation tensor that gets its own quantisation (scale and zero point). The one
/// place that names them: the model file's keys, the INT8 backend and calibration's f32 probe
/// all go through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// The network's input (the normalised image).
    Input,
    /// The stem's conv + bn + ReLU (the max-pool keeps its quantisation).
    Stem,
    /// Block `i`'s first conv + bn + ReLU.
    Conv1(usize),
    /// Block `i`'s downsample conv + bn (blocks 2, 4 and 6).
    Downsample(usize),
    /// Block `i`'s output.
    Block(usize),
}

impl Activation {
    /// Every quantised activation, in network order.
    pub fn all() -> Vec<Activation> {
        let arch = ResNet18Arch::new();
        let mut all = vec![Activation::Input, Activation::Stem];
        for (i, b) in arch.blocks.iter().enumerate() {
            all.push(Activation::Conv1(i));
            if b.downsample.is_some() {
                all.push(Activation::Downsample(i));
            }
            all.push(Activation::Block(i));
        }
        all
    }

    /// The tensor's key in the model file: `input`, `stem`, `layer2.0.conv1`,
    /// `layer2.0.downsample`, `layer2.0`.
    pub fn key(self) -> String {
        let block = |i: usize| BLOCK_NAMES.get(i).copied().unwrap_or("layer?");
        match self {
            Activation::Input => "input".into(),
            Activation::Stem => "stem".into(),
            Activation::Conv1(i) => format!("{}.conv1", block(i)),
            Activation::Downsample(i) => format!("{}.downsample", block(i)),
            Activation::Block(i) => block(i).into(),
        }
    }
}

/// Keys of the activation tensors that get a quantisation, in network order.
pub fn activation_names() -> Vec<String> {
    Activation::all().into_iter().map(Activation::key).collect()
}

impl QuantizedModel {
    /// The quantisation of activation `a`.
    ///
    /// # Panics
    /// If absent (loading checks that every one of [`Activation::all`] is present).
    pub fn act(&self, a: Activation) -> ActQuant {
        let key = a.key();
        *self
            .activations
            .get(&key)
            .unwrap_or_else(|| panic!("no activation quantisation for '{key}'"))
    }

    /// The convolution whose torchvision prefix is `conv`.
    ///
    /// # Panics
    /// If absent (loading checks that all are present).
    pub fn conv(&self, conv: &str) -> &QuantizedConv {
        self.convs
            .get(conv)
            .unwrap_or_else(|| panic!("no quantised convolution '{conv}'"))
    }

    /// The stem's precision.
    pub fn stem_precision(&self) -> LayerPrecision {
        self.conv("conv1").precision()
    }
}
