//! The bf16 backend against the f32 `native` backend on synthetic weights and the repository's
//! test photos: identical top-5 (up to the near-ties of random weights, see the test) and logits
//! within a measured bound, every trace point within a bound relative to its layer's magnitude,
//! and every ISA's bf16 kernel agreeing.
//!
//! Bounds (measured on an Intel Xeon, Sapphire Rapids class, 2026-12-02, with margin): bf16 keeps
//! 8 significant bits (relative rounding 2^-9 = 0.2%), and the input, every weight and every
//! layer's output are rounded once. Measured: trace points 4e-3 to 9e-3 of their largest magnitude,
//! logits 2.1e-3 to 3.8e-3 of theirs; the bounds are 2e-2 and 1e-2.

mod common;

use common::Capture;

use ndarray::{Array2, Array4, Axis};
use resnet_core::backend::{Backend, BackendKind, BackendOptions, Bf16Backend, NoObserver};
use resnet_core::cpu::Isa;
use resnet_core::decode::{decode_image_file, DecodeOptions};
use resnet_core::postprocess::top_k_indices;
use resnet_core::preprocess::preprocess;
use resnet_core::weights::synthetic_weights;

fn photos() -> Array4<f32> {
    let views: Vec<_> = common::good_images()
        .iter()
        .map(|name| {
            let img = decode_image_file(&common::image(name), &DecodeOptions::default()).unwrap();
            preprocess(&img.rgb)
        })
        .collect();
    let views: Vec<_> = views.iter().map(|v| v.view()).collect();
    ndarray::stack(Axis(0), &views).unwrap()
}

/// Per-image errors, shown in scientific notation.
struct Errors(Vec<f32>);

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.0.iter().map(|e| format!("{e:.2e}")).collect();
        write!(f, "[{}]", shown.join(", "))
    }
}

fn max_abs(x: impl IntoIterator<Item = f32>) -> f32 {
    x.into_iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Relative error of each image's logits: `max |bf16 - f32| / max |f32|`.
fn logit_errors(got: &Array2<f32>, want: &Array2<f32>) -> Vec<f32> {
    got.rows()
        .into_iter()
        .zip(want.rows())
        .map(|(g, w)| max_abs(g.iter().zip(&w).map(|(a, b)| a - b)) / max_abs(w.iter().copied()))
        .collect()
}

#[test]
fn bf16_agrees_with_native_on_photos() {
    let weights = synthetic_weights(0);
    let batch = photos();
    assert!(batch.dim().0 >= 5, "only {} photos", batch.dim().0);
    let native = BackendKind::Native
        .create(&weights, &BackendOptions::default())
        .unwrap();
    let mut want = Capture::default();
    let want_logits = native.forward(batch.view(), &mut want).unwrap();
    let bf16 = Bf16Backend::new(&weights, Isa::best_supported());
    let mut got = Capture::default();
    let logits = bf16.forward(batch.view(), &mut got).unwrap();
    let names: Vec<_> = got.0.iter().map(|(n, _)| n.as_str()).collect();
    let want_names: Vec<_> = want.0.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, want_names, "trace points");
    for ((name, g), (_, w)) in got.0.iter().zip(&want.0) {
        let rel = max_abs(g.iter().zip(w).map(|(a, b)| a - b)) / max_abs(w.iter().copied());
        println!("{name}: max |bf16 - f32| / max |f32| = {rel:.2e}");
        assert!(rel <= 2e-2, "{name}: relative error {rel:e} > 2e-2");
    }
    let errors = Errors(logit_errors(&logits, &want_logits));
    println!(
        "{} ({}): per-image logit error (max |d| / max |logit|): {errors}",
        bf16.name(),
        bf16.describe()
    );
    let mut identical = 0;
    for (i, e) in errors.0.iter().enumerate() {
        assert!(
            *e <= 1e-2,
            "image {i}: logits differ by {e:e} of their magnitude"
        );
        let (g, w) = (logits.row(i).to_vec(), want_logits.row(i).to_vec());
        let (got5, want5) = (top_k_indices(&g, 5), top_k_indices(&w, 5));
        if got5 == want5 {
            identical += 1;
            continue;
        }
        // Random weights give every class nearly the same logit: a rank whose f32 margin to
        // the next is below this image's bf16 error (twice the largest logit difference) is a
        // tie bf16 cannot resolve. Every rank with a larger margin must agree.
        let diff = 2.0 * max_abs(g.iter().zip(&w).map(|(a, b)| a - b));
        let ranked = top_k_indices(&w, 6);
        for r in 0..5 {
            let margin = w[ranked[r]] - w[ranked[r + 1]];
            if margin > diff {
                assert_eq!(
                    got5[..=r],
                    want5[..=r],
                    "image {i}: top-{} (margin {margin:e} > {diff:e})",
                    r + 1
                );
            }
        }
        println!(
            "image {i}: top-5 {got5:?} vs f32 {want5:?}: f32 margins {:?} vs bf16 error {diff:.2e}",
            (0..5)
                .map(|r| w[ranked[r]] - w[ranked[r + 1]])
                .collect::<Vec<_>>()
        );
    }
    println!(
        "top-5 identical on {identical} of {} photos",
        errors.0.len()
    );
}

/// Every ISA's bf16 kernel gives the same network within bf16 rounding: the f32 sums differ by
/// summation order only (~1e-6), but a layer output near a rounding boundary can round to the
/// neighbouring bf16 value (2^-8 relative), and that spreads: bound 1e-2 of the logits' magnitude.
#[test]
fn bf16_backend_agrees_across_isas() {
    let weights = synthetic_weights(0);
    let batch = photos().slice_move(ndarray::s![..2, .., .., ..]);
    let mut first: Option<(Isa, Array2<f32>)> = None;
    let mut kernels = Vec::new();
    for isa in Isa::supported() {
        let kernel = resnet_kernels::bf16::kernel_name(isa);
        if kernels.contains(&kernel) {
            continue;
        }
        kernels.push(kernel);
        let logits = Bf16Backend::new(&weights, isa)
            .forward(batch.view(), &mut NoObserver)
            .unwrap();
        match &first {
            None => first = Some((isa, logits)),
            Some((first_isa, want)) => {
                let errors = Errors(logit_errors(&logits, want));
                println!("{isa} vs {first_isa}: {errors}");
                assert!(
                    errors.0.iter().all(|&e| e <= 1e-2),
                    "{isa} vs {first_isa}: {errors}"
                );
            }
        }
    }
    let expect = std::env::var("RESNET_EXPECT_ISA").unwrap_or_default();
    if expect.split(',').any(|n| n.trim() == "avx512bf16") {
        assert!(
            kernels.contains(&"avx512bf16_f32_12x32"),
            "RESNET_EXPECT_ISA names avx512bf16 but the backend ran only {kernels:?}"
        );
    }
}

#[test]
fn bf16_backend_is_deterministic_and_checks_shapes() {
    let weights = synthetic_weights(0);
    let backend = BackendKind::Bf16
        .create(&weights, &BackendOptions::default())
        .unwrap();
    assert_eq!(backend.name(), "bf16");
    let x = photos().slice_move(ndarray::s![..1, .., .., ..]);
    let a = backend.forward(x.view(), &mut NoObserver).unwrap();
    let b = backend.forward(x.view(), &mut NoObserver).unwrap();
    assert_eq!(a, b);
    let small = Array4::<f32>::zeros((1, 3, 16, 16));
    assert!(backend.forward(small.view(), &mut NoObserver).is_err());
}

/// A batch gives each image what that image gives alone, bit for bit: the logits (no trace:
/// the stem and its pool run one image per thread at a time, here groups of 2 and 1 on 2
/// threads, without keeping the batch's stem output) and,
/// traced, every trace point, the stem's included (kept for the trace). Every layer computes
/// each output pixel from its own image only, so nothing may change with the batch.
#[test]
fn bf16_batch_equals_its_images_one_at_a_time() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(batch_equals_its_images_one_at_a_time);
}

fn batch_equals_its_images_one_at_a_time() {
    let weights = synthetic_weights(0);
    let backend = Bf16Backend::new(&weights, Isa::best_supported());
    let batch = photos().slice_move(ndarray::s![..3, .., .., ..]);
    let logits = backend.forward(batch.view(), &mut NoObserver).unwrap();
    let mut traced = Capture::default();
    let traced_logits = backend.forward(batch.view(), &mut traced).unwrap();
    assert_eq!(logits, traced_logits, "the trace changed the logits");
    for i in 0..3 {
        let one = batch.slice(ndarray::s![i..i + 1, .., .., ..]);
        let mut alone = Capture::default();
        let got = backend.forward(one, &mut alone).unwrap();
        assert_eq!(got.row(0), logits.row(i), "image {i}: logits");
        for ((name, a), (_, b)) in alone.0.iter().zip(&traced.0) {
            assert_eq!(
                a.index_axis(Axis(0), 0),
                b.index_axis(Axis(0), i),
                "image {i} at {name}"
            );
        }
    }
}

/// An input value that is not finite (an infinity in image 1) sends its group of images to the
/// stem's written windows (the stem's input is otherwise made straight from the f32 images, and
/// read with tile rows that run past each window, where an infinity would meet zero weights and
/// make NaN beside it): the infinity reaches only the stem outputs whose 7 x 7 windows hold it,
/// every other stem output is bit for bit the finite batch's, and the other images' logits do
/// not change. On 2 threads: groups of images 0-1 (with the infinity) and 2 (without).
#[test]
fn bf16_stem_keeps_an_infinity_inside_its_windows() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        let weights = synthetic_weights(0);
        let backend = Bf16Backend::new(&weights, Isa::best_supported());
        let finite = photos().slice_move(ndarray::s![..3, .., .., ..]);
        let (image, y, x) = (1, 100, 61);
        let mut with_inf = finite.clone();
        with_inf[[image, 1, y, x]] = f32::INFINITY;
        let (mut a, mut b) = (Capture::default(), Capture::default());
        let want = backend.forward(finite.view(), &mut a).unwrap();
        let got = backend.forward(with_inf.view(), &mut b).unwrap();
        for i in [0, 2] {
            assert_eq!(got.row(i), want.row(i), "image {i}: logits");
        }
        let stem = |c: &Capture| {
            let (name, out) = &c.0[0];
            assert_eq!(name, "stem");
            out.clone()
        };
        let (want, got) = (stem(&a), stem(&b));
        let covers = |o: usize, p: usize| (2 * o..2 * o + 7).contains(&(p + 3));
        let mut hit = 0;
        for ((idx, w), g) in want.indexed_iter().zip(got.iter()) {
            let (n, oy, ox) = (idx[0], idx[2], idx[3]);
            if n == image && covers(oy, y) && covers(ox, x) {
                hit += 1;
                continue;
            }
            assert_eq!(w.to_bits(), g.to_bits(), "stem output {idx:?}: {w} vs {g}");
        }
        let reach = |p: usize| (0..112).filter(|&o| covers(o, p)).count();
        assert_eq!(
            hit,
            64 * reach(y) * reach(x),
            "the windows holding the infinity"
        );
    });
}

/// A `weights convert --dtype bf16` file runs without its convolution weights widened on load
/// (`Values::Bf16`, folded one layer at a time): the same logits, bit for bit, as the same
/// values loaded as f32 (widening a bf16 is exact, so nothing may change but memory).
#[test]
fn bf16_file_runs_unwidened_with_the_same_results() {
    use resnet_core::weights::{StoreDtype, Values, Weights};
    let bytes = synthetic_weights(0).to_safetensors_bytes(StoreDtype::BF16);
    let kept = Weights::from_bytes(&bytes, "bf16 file").unwrap();
    assert!(matches!(
        kept.tensor("layer2.0.conv1.weight").values,
        Values::Bf16(_)
    ));
    let widened = kept.to_safetensors_bytes(StoreDtype::F32);
    let widened = Weights::from_bytes(&widened, "the same values in f32").unwrap();
    assert!(matches!(
        widened.tensor("layer2.0.conv1.weight").values,
        Values::F32(_)
    ));
    let x = photos().slice_move(ndarray::s![..2, .., .., ..]);
    for kind in [BackendKind::Bf16, BackendKind::Native] {
        let run = |w: &Weights| {
            let backend = kind.create(w, &BackendOptions::default()).unwrap();
            backend.forward(x.view(), &mut NoObserver).unwrap()
        };
        assert_eq!(run(&kept), run(&widened), "{kind:?}");
    }
}

/// The AMX-BF16 kernel, run on the software model of `tdpbf16ps` (no AMX on this repository's
/// machines), gives the network of the registry's bf16 kernel for this CPU within bf16
/// rounding: products are exact in f32 and only the summation order differs (the SDM's even
/// and odd partial sums per instruction), but a layer output near a rounding boundary can round
/// to the neighbouring bf16 value and that spreads: the bound of `bf16_backend_agrees_across_isas`,
/// 1e-2 of the logits' magnitude. One 64 x 64 crop: the model is far slower than the CPU.
#[test]
fn bf16_backend_amx_model_agrees() {
    let weights = synthetic_weights(0);
    let x = photos()
        .slice_move(ndarray::s![..1, .., 80..144, 80..144])
        .as_standard_layout()
        .to_owned();
    let isa = Isa::best_supported();
    let want = Bf16Backend::new(&weights, isa)
        .forward(x.view(), &mut NoObserver)
        .unwrap();
    let amx = Bf16Backend::with_kernel(weights, isa, &resnet_kernels::bf16::AMX_MODEL_KERNEL);
    assert!(amx.describe().contains("amxmodel_bf16_f32_32x32"));
    let got = amx.forward(x.view(), &mut NoObserver).unwrap();
    let errors = Errors(logit_errors(&got, &want));
    println!(
        "amx model vs {}: {errors}",
        resnet_kernels::bf16::kernel_name(isa)
    );
    assert!(errors.0.iter().all(|&e| e <= 1e-2), "{errors}");
}

/// Without a trace the activations go between the in-place layers in frames (amx::Frame: the
/// padded layout the next layer reads, no copy); a trace reads them dense, so it turns those
/// frames off. Both must give the same logits, bit for bit, on every line this CPU runs.
#[test]
fn bf16_logits_with_and_without_a_trace_are_identical() {
    let weights = synthetic_weights(0);
    let batch = photos().slice_move(ndarray::s![..2, .., .., ..]);
    for isa in Isa::supported() {
        let backend = Bf16Backend::new(&weights, isa);
        let plain = backend.forward(batch.view(), &mut NoObserver).unwrap();
        let mut capture = Capture::default();
        let traced = backend.forward(batch.view(), &mut capture).unwrap();
        assert!(
            plain
                .iter()
                .map(|v| v.to_bits())
                .eq(traced.iter().map(|v| v.to_bits())),
            "{isa}: logits with and without a trace differ"
        );
    }
}
