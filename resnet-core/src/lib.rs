//! The ResNet-18 model of resnet18-rs.
//!
//! Data flows through these modules in order:
//!
//! 1. [`decode`]: image bytes -> 8-bit RGB, as PIL decodes them (EXIF, alpha, 16-bit, limits).
//! 2. [`preprocess`]: torchvision's `Resize(256)`, `CenterCrop(224)`, `ToTensor`, `Normalize`,
//!    bit-exact with PIL's resampling.
//! 3. [`backend`]: a [`backend::Backend`] built from [`weights::Weights`] runs `[N, 3, 224, 224]`
//!    to logits `[N, 1000]`, following the layer table of [`arch`].
//! 4. [`postprocess`]: softmax and top-k, named by [`labels`].
//!
//! [`quantize`] turns f32 weights into a calibrated INT8 model for the `int8` backend.
//!
//! ```no_run
//! use resnet_core::{backend::{BackendKind, BackendOptions, NoObserver}, decode, labels::Labels,
//!                   postprocess, preprocess, weights::Weights};
//! # fn main() -> Result<(), resnet_core::Error> {
//! let weights = Weights::load("resnet18.safetensors".as_ref())?;
//! let backend = BackendKind::Reference.create(&weights, &BackendOptions::default())?;
//! let image = decode::decode_image_file("cat.jpg".as_ref(), &Default::default())?;
//! let input = preprocess::preprocess(&image.rgb).insert_axis(ndarray::Axis(0));
//! let logits = backend.forward(input.view(), &mut NoObserver)?;
//! let top5 = postprocess::top_k(logits.row(0).as_slice().unwrap(), 5, &Labels::imagenet());
//! println!("{} ({:.1}%)", top5[0].label, 100.0 * top5[0].probability);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod arch;
pub mod backend;
pub mod cam;
pub mod decode;
mod error;
pub mod input;
pub mod labels;
pub mod plan;
pub mod postprocess;
pub mod preprocess;
pub mod quantize;
pub mod time;
pub mod trace;
pub mod weights;

pub use error::{Error, ImageProblem, Result};
pub use resnet_kernels::cpu;
pub use resnet_kernels::registry;

/// The machine's measured FMA peak in GFLOP/s on the current thread pool (see
/// `resnet_kernels::peak`).
pub fn kernels_peak_gflops(isa: cpu::Isa) -> f64 {
    resnet_kernels::peak::measure_peak_gflops(isa)
}

/// The measured bf16 peak (GFLOP/s, all threads of the current pool) of the bf16 kernel `isa`
/// selects: `tdpbf16ps` on AMX, `vdpbf16ps` with AVX512-BF16, else the scalar twin.
pub fn bf16_peak_gflops(isa: cpu::Isa) -> f64 {
    resnet_kernels::bf16::measure_peak_gflops(isa)
}

/// The name of the bf16 kernel `isa` selects.
pub fn bf16_kernel_name(isa: cpu::Isa) -> &'static str {
    resnet_kernels::bf16::kernel_name(isa)
}
