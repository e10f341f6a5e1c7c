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
mod metrics;
pub mod model;

pub use calibrate::{
    calibrate, calibrate_on_built_in_images, CalibrationMethod, CalibrationProgress,
};
pub use data::{augmented_inputs, default_calibration_inputs, DEFAULT_CALIBRATION_NAMES};
pub use metrics::{sqnr_db, Agreement};
pub use model::{
    activation_names, is_int8_file, ActQuant, Activation, LayerPrecision, QuantizedConv,
    QuantizedModel, INT8_FORMAT,
};
pub use resnet_kernels::int8::{
    kernel_name as int8_kernel_name, measure_peak_gops as measure_int8_peak_gops,
};

/// The calibration method used when none is given (chosen by measurement, see the README).
pub const DEFAULT_METHOD: CalibrationMethod = CalibrationMethod::Mse;
/// The stem's precision when none is given (chosen by measurement, see the README).
pub const DEFAULT_STEM: LayerPrecision = LayerPrecision::Int8;
