//! The INT8 backend against the f32 `native` backend on synthetic weights, real photos and
//! augmented crops of them (issue #5's metrics, on centred logits: with random weights every
//! input gets nearly the same raw logits, so raw top-1 agreement would mean nothing).
//!
//! Calibration and evaluation use different crops (different seeds) of the repo's photos.
//! Thresholds are issue #5's: centred-logit relative L2 error <= 0.08, centred top-1 agreement
//! >= 80%, mean raw-logit cosine similarity >= 0.9995.

mod common;

use common::Capture;

use ndarray::{Array2, Array3, ArrayView3, Axis};
use resnet_core::backend::{Backend, BackendKind, BackendOptions, Int8Backend, NoObserver};
use resnet_core::cpu::Isa;
use resnet_core::decode::{decode_image_file, DecodeOptions};
use resnet_core::preprocess::preprocess;
use resnet_core::quantize::{
    augmented_inputs, calibrate, sqnr_db, Agreement, CalibrationMethod, LayerPrecision,
    QuantizedModel, DEFAULT_METHOD, DEFAULT_STEM,
};
use resnet_core::weights::{synthetic_weights, Weights};
use std::sync::OnceLock;

/// Each photo's standard preprocessing plus `crops` augmented crops from `seed`.
fn photo_set(crops: usize, seed: u64) -> Vec<Array3<f32>> {
    let mut out = Vec::new();
    for (i, name) in common::good_images().iter().enumerate() {
        let img = decode_image_file(&common::image(name), &DecodeOptions::default()).unwrap();
        out.push(preprocess(&img.rgb));
        out.extend(augmented_inputs(&img.rgb, crops, seed + i as u64));
    }
    out
}

struct Fixture {
    weights: Weights,
    calibration: Vec<Array3<f32>>,
    eval: Vec<Array3<f32>>,
    fp32: Array2<f32>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let weights = synthetic_weights(0);
        let calibration = photo_set(4, 100);
        let eval = photo_set(13, 9000);
        let native = BackendKind::Native
            .create(&weights, &BackendOptions::default())
            .unwrap();
        let fp32 = run_all(native.as_ref(), &eval);
        Fixture {
            weights,
            calibration,
            eval,
            fp32,
        }
    })
}

fn run_all(backend: &dyn Backend, inputs: &[Array3<f32>]) -> Array2<f32> {
    let mut rows = Vec::new();
    for chunk in inputs.chunks(8) {
        let views: Vec<ArrayView3<'_, f32>> = chunk.iter().map(|a| a.view()).collect();
        let batch = ndarray::stack(Axis(0), &views).unwrap();
        rows.push(backend.forward(batch.view(), &mut NoObserver).unwrap());
    }
    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
    ndarray::concatenate(Axis(0), &views).unwrap()
}

fn quantized(method: CalibrationMethod, stem: LayerPrecision) -> QuantizedModel {
    let f = fixture();
    calibrate(
        &f.weights,
        &f.calibration,
        method,
        stem,
        Isa::best_supported(),
        &mut |_, _| {},
    )
    .unwrap()
}

#[test]
fn int8_agrees_with_fp32_on_centred_logits() {
    let f = fixture();
    assert!(
        f.eval.len() >= 200,
        "only {} evaluation inputs",
        f.eval.len()
    );
    let model = quantized(DEFAULT_METHOD, DEFAULT_STEM);
    let int8 = Int8Backend::new(&model, Isa::best_supported());
    let logits = run_all(&int8, &f.eval);
    let m = Agreement::compute(&f.fp32, &logits);
    println!("int8 ({}) vs native f32: {m}", int8.describe());
    assert!(m.centred_rel_l2 <= 0.08, "{m}");
    assert!(m.centred_top1 >= 0.80, "{m}");
    assert!(m.raw_cosine_mean >= 0.9995, "{m}");
}

/// Every ISA's INT8 kernel computes the same codes: every trace point up to the average pool
/// is bit-identical on every ISA this CPU supports. Only the f32 classifier differs, by its f32
/// kernel's summation order (tolerance 1e-4 on logits of magnitude ~10: 512-term f32 sums
/// differ by ~1e-6).
#[test]
fn int8_backend_is_bit_exact_across_isas() {
    let f = fixture();
    let model = quantized(DEFAULT_METHOD, DEFAULT_STEM);
    let views: Vec<_> = f.eval[..3].iter().map(|a| a.view()).collect();
    let batch = ndarray::stack(Axis(0), &views).unwrap();
    let mut first: Option<(Isa, Capture)> = None;
    let mut tested = Vec::new();
    for isa in Isa::supported() {
        let mut got = Capture::default();
        let backend = Int8Backend::new(&model, isa);
        let traced = backend.forward(batch.view(), &mut got).unwrap();
        // Without a trace, the activations go between layers in frames where the line reads
        // in place (a trace reads them dense): the same logits, bit for bit.
        let plain = backend
            .forward(batch.view(), &mut resnet_core::backend::NoObserver)
            .unwrap();
        assert!(
            plain
                .iter()
                .map(|v| v.to_bits())
                .eq(traced.iter().map(|v| v.to_bits())),
            "{isa}: logits with and without a trace differ"
        );
        tested.push(isa);
        let Some((first_isa, want)) = &first else {
            first = Some((isa, got));
            continue;
        };
        assert_eq!(want.0.len(), got.0.len());
        for ((name, w), (_, g)) in want.0.iter().zip(&got.0) {
            if name == "fc" {
                let err = w.iter().zip(g).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= 1e-4, "{isa} vs {first_isa}: fc differs by {err}");
            } else {
                assert!(w == g, "{isa} differs from {first_isa} at {name}");
            }
        }
    }
    // The ISAs this CPU offers, as tools/test.sh read them from /proc/cpuinfo (outside the
    // code under test): each must have been compared.
    for isa in common::expected_isas() {
        assert!(
            tested.contains(&isa),
            "RESNET_EXPECT_ISA lists {isa}, but the INT8 backend was not run on it (tested: {tested:?})"
        );
    }
}

/// The file round trip: saved, loaded, same logits; and the metadata describes the model.
#[test]
fn int8_file_round_trip() {
    let f = fixture();
    let model = quantized(CalibrationMethod::MinMax, LayerPrecision::F32);
    let bytes = model.to_safetensors_bytes();
    assert!(resnet_core::quantize::is_int8_file(&bytes));
    assert_eq!(bytes, model.to_safetensors_bytes(), "deterministic bytes");
    let loaded = QuantizedModel::from_safetensors_bytes(&bytes, "mem").unwrap();
    assert_eq!(loaded.method, "minmax");
    assert_eq!(loaded.calibration_inputs, f.calibration.len());
    assert!(loaded.synthetic);
    assert_eq!(loaded.stem_precision(), LayerPrecision::F32);
    let batch = f.eval[0].view().insert_axis(Axis(0));
    let isa = Isa::best_supported();
    let a = Int8Backend::new(&model, isa)
        .forward(batch, &mut NoObserver)
        .unwrap();
    let b = Int8Backend::new(&loaded, isa)
        .forward(batch, &mut NoObserver)
        .unwrap();
    assert_eq!(a, b);
    // f32 weights are not a quantised model, and say so.
    let f32_bytes = f
        .weights
        .to_safetensors_bytes(resnet_core::weights::StoreDtype::F32);
    assert!(!resnet_core::quantize::is_int8_file(&f32_bytes));
    let err = QuantizedModel::from_safetensors_bytes(&f32_bytes, "w.safetensors").unwrap_err();
    assert!(err.to_string().contains("resnet quantize"), "{err}");
}

/// Per trace point SQNR of INT8 against f32 (where error enters), on a batch of 4 photos. Each
/// point must stay within 3 dB of what was measured for it (30.9-40.8 dB): a wrong scale, zero
/// point or layout gives <= 0 dB, and a real loss of accuracy more than 3 dB.
#[test]
fn int8_sqnr_per_layer() {
    let f = fixture();
    let model = quantized(DEFAULT_METHOD, DEFAULT_STEM);
    let views: Vec<_> = f.eval[..4].iter().map(|a| a.view()).collect();
    let batch = ndarray::stack(Axis(0), &views).unwrap();
    let native = BackendKind::Native
        .create(&f.weights, &BackendOptions::default())
        .unwrap();
    let (mut want, mut got) = (Capture::default(), Capture::default());
    native.forward(batch.view(), &mut want).unwrap();
    Int8Backend::new(&model, Isa::best_supported())
        .forward(batch.view(), &mut got)
        .unwrap();
    assert_eq!(want.0.len(), got.0.len());
    // Measured with these inputs and weights (2026-11-27 on the AMD EPYC, and identical on
    // 2026-12-02 on the Intel Xeon: INT8 outputs are bit-identical on every ISA; maxpool first
    // recorded then): each bound is 3 dB under its measurement, so a real loss of accuracy
    // fails while float noise in the f32 side cannot.
    let measured = [
        ("stem", 40.6),
        ("maxpool", 40.8),
        ("layer1.0", 38.8),
        ("layer1.1", 37.2),
        ("layer2.0", 35.3),
        ("layer2.1", 33.8),
        ("layer3.0", 31.8),
        ("layer3.1", 32.3),
        ("layer4.0", 31.0),
        ("layer4.1", 30.9),
        ("avgpool", 37.0),
        ("fc", 37.2),
    ];
    for (((name, w), (gname, g)), (mname, db_measured)) in want.0.iter().zip(&got.0).zip(measured) {
        assert_eq!(name, gname);
        assert_eq!(name, mname);
        let (w, g): (Vec<f32>, Vec<f32>) =
            (w.iter().copied().collect(), g.iter().copied().collect());
        let db = sqnr_db(&w, &g);
        println!("SQNR {name:<10} {db:6.1} dB (measured {db_measured} dB)");
        assert!(
            db > db_measured - 3.0,
            "{name}: SQNR {db:.1} dB, more than 3 dB under the {db_measured} dB measured"
        );
    }
}

/// Not a check: the measurement behind the default calibration method and the stem's
/// precision (run with `--ignored --nocapture`; figures in docs/int8.md).
#[test]
#[ignore = "a measurement report, not a check: run with --ignored --nocapture"]
fn int8_methods_report() {
    let f = fixture();
    for stem in [LayerPrecision::Int8, LayerPrecision::F32] {
        for method in [
            CalibrationMethod::MinMax,
            CalibrationMethod::Percentile(99.9),
            CalibrationMethod::Percentile(99.99),
            CalibrationMethod::Percentile(99.999),
            CalibrationMethod::Mse,
        ] {
            let model = quantized(method, stem);
            let logits = run_all(&Int8Backend::new(&model, Isa::best_supported()), &f.eval);
            let m = Agreement::compute(&f.fp32, &logits);
            println!("stem {stem:?}, {method}: {m}");
        }
    }
}

/// The AMX-INT8 kernel, run on the software model of the tile instructions (this repository's
/// machines have no AMX), computes the same codes as the kernel the registry picks for this CPU
/// (`avx512vnni_i32_12x32` here) at every trace point, bit for bit; the classifier, the same f32
/// kernel on the same features, too. One 64 x 64 crop: the model is far slower than the CPU.
#[test]
fn int8_backend_amx_model_is_bit_exact() {
    let f = fixture();
    let model = quantized(DEFAULT_METHOD, DEFAULT_STEM);
    let x = f.eval[0]
        .slice(ndarray::s![.., 80..144, 80..144])
        .to_owned()
        .insert_axis(Axis(0));
    let isa = Isa::best_supported();
    let mut want = Capture::default();
    Int8Backend::new(&model, isa)
        .forward(x.view(), &mut want)
        .unwrap();
    let mut got = Capture::default();
    let amx = Int8Backend::with_kernel(&model, isa, &resnet_kernels::int8::AMX_MODEL_KERNEL);
    assert!(amx.describe().contains("amxmodel_int8_i32_32x32"));
    amx.forward(x.view(), &mut got).unwrap();
    assert_eq!(want.0.len(), got.0.len());
    assert!(want.0.len() > 10, "every block reports");
    for ((name, w), (_, g)) in want.0.iter().zip(&got.0) {
        assert!(
            w == g,
            "AMX model differs from {} at {name}",
            resnet_kernels::int8::kernel_name(isa)
        );
    }
}
