//! The INT8 model: its types ([`QuantizedModel`], [`QuantizedConv`], [`ActQuant`], the typed
//! [`Activation`] key) and its `.int8.safetensors` file format. A leaf of `quantize`: it
//! depends on nothing else in it, so the INT8 backend, which runs a [`QuantizedModel`], needs
//! only this module, and calibration, which makes one, depends on it rather than the reverse.

mod format;

pub use format::{is_int8_file, INT8_FORMAT};

use crate::arch::{ConvBn, ResNet18Arch, BLOCK_NAMES};
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

impl Activation {
    /// The activations convolution `conv` (a state-dict prefix: `conv1`, `layer2.0.conv2`,
    /// `layer2.0.downsample.0`) reads and writes; `None` for a name that is no convolution.
    /// A block's conv2 also adds the block's skip branch (its input, or the downsample's output).
    pub fn around_conv(conv: &str) -> Option<(Activation, Activation)> {
        if conv == "conv1" {
            return Some((Activation::Input, Activation::Stem));
        }
        let arch = ResNet18Arch::new();
        let (i, b) = arch.blocks.iter().enumerate().find(|(_, b)| {
            b.conv1.conv == conv
                || b.conv2.conv == conv
                || b.downsample.as_ref().is_some_and(|d| d.conv == conv)
        })?;
        let input = match i {
            0 => Activation::Stem,
            _ => Activation::Block(i - 1),
        };
        Some(if b.conv1.conv == conv {
            (input, Activation::Conv1(i))
        } else if b.conv2.conv == conv {
            (Activation::Conv1(i), Activation::Block(i))
        } else {
            (input, Activation::Downsample(i))
        })
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
