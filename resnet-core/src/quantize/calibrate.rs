//! Calibration: run the f32 network on real inputs, record every quantised tensor's values, and
//! turn them into `u8` ranges by one of three methods.

use super::model::{ActQuant, Activation, LayerPrecision, QuantizedConv, QuantizedModel};
use crate::arch::ResNet18Arch;
use crate::backend::{NativeBackend, Tap, WinogradPolicy};
use crate::error::{Error, Result};
use crate::weights::Weights;
use ndarray::{Array3, Array4, ArrayView3, Axis};
use resnet_kernels::cpu::Isa;
use std::collections::{BTreeMap, HashMap};

/// How a tensor's calibration values become its `u8` range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CalibrationMethod {
    /// The smallest and largest value seen: nothing clips, the step is widest.
    MinMax,
    /// The given percentile of the values (and its mirror for signed tensors): rare outliers
    /// clip, the step shrinks.
    Percentile(f64),
    /// The clipping range (a fraction of the min/max range, 1% steps) that minimises the mean
    /// squared quantisation error over the recorded values.
    Mse,
}

impl std::fmt::Display for CalibrationMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalibrationMethod::MinMax => f.write_str("minmax"),
            CalibrationMethod::Percentile(p) => write!(f, "percentile:{p}"),
            CalibrationMethod::Mse => f.write_str("mse"),
        }
    }
}

impl std::str::FromStr for CalibrationMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "minmax" => Ok(CalibrationMethod::MinMax),
            "mse" => Ok(CalibrationMethod::Mse),
            "percentile" => Ok(CalibrationMethod::Percentile(99.99)),
            other => match other.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 50.0 && p <= 100.0 => Ok(CalibrationMethod::Percentile(p)),
                _ => Err(format!(
                    "unknown calibration method '{s}' (use minmax, percentile, percentile:P with 50 < P <= 100, or mse)"
                )),
            },
        }
    }
}

/// What calibration reports as it goes.
pub trait CalibrationProgress {
    /// `done` of `total` inputs have run through the f32 network.
    fn progress(&mut self, done: usize, total: usize);
}

impl<F: FnMut(usize, usize)> CalibrationProgress for F {
    fn progress(&mut self, done: usize, total: usize) {
        self(done, total)
    }
}

/// Values recorded per tensor: every 8192nd-or-so value (the stride is odd, so that it visits
/// every channel of the NHWC layout) plus the exact minimum and maximum.
#[derive(Default)]
struct TensorStats {
    min: f32,
    max: f32,
    samples: Vec<f32>,
}

const SAMPLES_PER_CALL: usize = 8192;

impl TensorStats {
    fn record(&mut self, data: &[f32]) {
        if self.samples.is_empty() {
            self.min = f32::INFINITY;
            self.max = f32::NEG_INFINITY;
        }
        for &v in data {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        let stride = (data.len() / SAMPLES_PER_CALL).max(1) | 1;
        self.samples.extend(data.iter().step_by(stride));
    }

    fn range(&mut self, method: CalibrationMethod) -> (f32, f32) {
        match method {
            CalibrationMethod::MinMax => (self.min, self.max),
            CalibrationMethod::Percentile(p) => {
                self.samples.sort_by(f32::total_cmp);
                let at = |q: f64| {
                    let i = ((self.samples.len() - 1) as f64 * q).round() as usize;
                    self.samples[i]
                };
                let hi = at(p / 100.0).min(self.max);
                let lo = if self.min < 0.0 {
                    at(1.0 - p / 100.0).max(self.min)
                } else {
                    0.0
                };
                (lo, hi)
            }
            CalibrationMethod::Mse => {
                let mut best = (f64::INFINITY, (self.min, self.max));
                for step in 1..=100 {
                    let f = step as f32 / 100.0;
                    let (lo, hi) = (self.min.min(0.0) * f, self.max.max(0.0) * f);
                    let q = ActQuant::from_range(lo, hi);
                    let err: f64 = self
                        .samples
                        .iter()
                        .map(|&v| {
                            let d = (q.dequantize(q.quantize(v)) - v) as f64;
                            d * d
                        })
                        .sum();
                    if err < best.0 {
                        best = (err, (lo, hi));
                    }
                }
                best.1
            }
        }
    }
}

/// Quantises `weights`: BN folded, convolutions per-channel `i8` (the stem in `stem`
/// precision), activations calibrated on `inputs` (`[3, H, W]` normalised images) by `method`.
/// The f32 forward passes run on `isa`'s kernels, 8 inputs at a time.
pub fn calibrate(
    weights: &Weights,
    inputs: &[Array3<f32>],
    method: CalibrationMethod,
    stem: LayerPrecision,
    isa: Isa,
    progress: &mut dyn CalibrationProgress,
) -> Result<QuantizedModel> {
    if inputs.is_empty() {
        return Err(Error::NoCalibrationInputs);
    }
    let expected = inputs[0].shape();
    if let Some((index, input)) = inputs
        .iter()
        .enumerate()
        .find(|(_, a)| a.shape() != expected)
    {
        return Err(Error::CalibrationInputShape {
            index,
            expected: expected.to_vec(),
            found: input.shape().to_vec(),
        });
    }
    // The f32 network whose tensors the INT8 backend's quantisations stand for: `native`
    // without Winograd (whose rounding the INT8 direct convolutions do not share).
    let probe = NativeBackend::new(weights, isa, WinogradPolicy::Off);
    let mut stats: HashMap<Activation, TensorStats> = HashMap::new();
    let mut done = 0;
    progress.progress(0, inputs.len());
    for chunk in inputs.chunks(8) {
        let views: Vec<ArrayView3<'_, f32>> = chunk.iter().map(|a| a.view()).collect();
        let batch: Array4<f32> =
            ndarray::stack(Axis(0), &views).expect("the shapes were checked equal above");
        crate::backend::check_batch_shape(&batch.view())?;
        probe.probe(batch.view(), &mut |tap, data, _| {
            if let Some(a) = activation_of(tap) {
                stats.entry(a).or_default().record(data)
            }
        });
        done += chunk.len();
        progress.progress(done, inputs.len());
    }
    let mut activations = BTreeMap::new();
    for a in Activation::all() {
        let s = stats
            .get_mut(&a)
            .unwrap_or_else(|| panic!("the f32 probe did not report '{}'", a.key()));
        let (lo, hi) = s.range(method);
        activations.insert(a.key(), ActQuant::from_range(lo, hi));
    }
    Ok(quantize_weights(
        weights,
        activations,
        method.to_string(),
        inputs.len(),
        stem,
    ))
}

/// The INT8 activation whose range a tensor of the f32 pass calibrates, if any: all but the
/// max-pool, which keeps its input's quantisation.
fn activation_of(tap: Tap) -> Option<Activation> {
    Some(match tap {
        Tap::Input => Activation::Input,
        Tap::Stem => Activation::Stem,
        Tap::MaxPool => return None,
        Tap::Conv1(i) => Activation::Conv1(i),
        Tap::Downsample(i) => Activation::Downsample(i),
        Tap::Block(i) => Activation::Block(i),
    })
}

/// Quantises f32 `weights` for the INT8 backend when no calibrated model file was given:
/// **this runs a calibration**, on the built-in set of
/// [`default_calibration_inputs`](super::default_calibration_inputs) (the three photos of
/// [`DEFAULT_CALIBRATION_NAMES`](super::DEFAULT_CALIBRATION_NAMES), copied from
/// `testdata/images` into the library, each with 7 augmented crops: 24 inputs), with
/// [`DEFAULT_METHOD`](super::DEFAULT_METHOD) and [`DEFAULT_STEM`](super::DEFAULT_STEM), on
/// `isa`'s kernels. Those photos are not the user's data, so the ranges are generic; a model
/// calibrated on one's own images ([`calibrate`], `resnet quantize --calib DIR`) is the better
/// choice. Logged once at info level, since it takes a second or two and changes the numbers.
pub fn calibrate_on_built_in_images(weights: &Weights, isa: Isa) -> Result<QuantizedModel> {
    let inputs = super::default_calibration_inputs()?;
    log::info!(
        "{}: f32 weights for the int8 backend: quantising them now, calibrated ({}, stem {:?}) on          the {} built-in inputs ({} and their crops), not on your images;          `resnet quantize --calib DIR` calibrates on your own",
        weights.source(),
        super::DEFAULT_METHOD,
        super::DEFAULT_STEM,
        inputs.len(),
        super::DEFAULT_CALIBRATION_NAMES.join(", ")
    );
    calibrate(
        weights,
        &inputs,
        super::DEFAULT_METHOD,
        super::DEFAULT_STEM,
        isa,
        &mut |_, _| {},
    )
}

/// The weight half of quantisation (no calibration needed).
pub(crate) fn quantize_weights(
    weights: &Weights,
    activations: BTreeMap<String, ActQuant>,
    method: String,
    calibration_inputs: usize,
    stem: LayerPrecision,
) -> QuantizedModel {
    let arch = ResNet18Arch::new();
    let mut convs = BTreeMap::new();
    for spec in arch.convs() {
        let w = weights.tensor(&format!("{}.weight", spec.conv));
        let folded = crate::weights::fold_batch_norm(&w.values(), &weights.batch_norm(&spec.bn));
        let precision = if spec.conv == "conv1" {
            stem
        } else {
            LayerPrecision::Int8
        };
        convs.insert(
            spec.conv.clone(),
            QuantizedConv::new(spec.clone(), &folded.weight, folded.bias, precision),
        );
    }
    QuantizedModel {
        convs,
        activations,
        fc_weight: weights.tensor("fc.weight").f32_values().to_vec(),
        fc_bias: weights.tensor("fc.bias").f32_values().to_vec(),
        method,
        calibration_inputs,
        source: weights.source().to_string(),
        synthetic: weights.is_synthetic(),
    }
}
