//! Every backend x every ISA this CPU supports against the reference backend, on real photos and
//! on random inputs of other sizes and batch sizes, checked at every trace point.
//!
//! Tolerance: logits within 1e-3 absolute (logits here have magnitude ~7; f32 GEMMs with
//! different summation orders drift by ~1e-5 over 20 layers) and identical top-5. Intermediate
//! activations within 1e-4 of the layer's largest magnitude.

mod common;

use common::{random_batch, Capture};

use ndarray::{Array4, Axis};
use resnet_core::arch::ResNet18Arch;
use resnet_core::backend::{BackendKind, BackendOptions, TracePoint, WinogradPolicy};
use resnet_core::cpu::Isa;
use resnet_core::postprocess::top_k_indices;
use resnet_core::preprocess::to_normalized_chw;
use resnet_core::weights::synthetic_weights;

/// The points and shapes the layer table says a forward pass of `batch` reports.
fn expected_points(batch: &Array4<f32>) -> Vec<(TracePoint, Vec<usize>)> {
    let (n, _, h, w) = batch.dim();
    ResNet18Arch::new()
        .trace_points(h, w)
        .into_iter()
        .map(|(p, shape)| (p, std::iter::once(n).chain(shape).collect()))
        .collect()
}

/// A pseudo-random input in the range of normalised images.
fn photo_batch() -> Array4<f32> {
    let names = [
        "cat_baseline.jpg.png",
        "astronaut_rgb.png.png",
        "flower.gif.png",
    ];
    let views: Vec<_> = names
        .iter()
        .map(|n| {
            let crop = image::open(common::data(&format!("preprocess/{n}")))
                .unwrap()
                .to_rgb8();
            to_normalized_chw(&crop).insert_axis(Axis(0))
        })
        .collect();
    let views: Vec<_> = views.iter().map(|v| v.view()).collect();
    ndarray::concatenate(Axis(0), &views).unwrap()
}

fn compare_all(batch: &Array4<f32>, what: &str) {
    let weights = synthetic_weights(0);
    let reference = BackendKind::Reference
        .create(&weights, &BackendOptions::default())
        .unwrap();
    let mut want = Capture::default();
    let want_logits = reference.forward(batch.view(), &mut want).unwrap();
    assert_eq!(
        want.1,
        expected_points(batch),
        "reference: trace points and shapes"
    );
    for kind in [BackendKind::Gemm, BackendKind::Native] {
        let isas = if kind == BackendKind::Native {
            Isa::supported()
        } else {
            vec![Isa::best_supported()]
        };
        // Native: every ISA, each without Winograd, with the shipped default, and with it on
        // every eligible layer.
        let policies = if kind == BackendKind::Native {
            vec![
                WinogradPolicy::Off,
                WinogradPolicy::Auto,
                WinogradPolicy::All,
            ]
        } else {
            vec![WinogradPolicy::Off]
        };
        for (isa, winograd) in isas
            .into_iter()
            .flat_map(|i| policies.iter().map(move |&p| (i, p)))
        {
            let backend = kind
                .create(
                    &weights,
                    &BackendOptions {
                        isa,
                        winograd,
                        plan: None,
                    },
                )
                .unwrap();
            let mut got = Capture::default();
            let logits = backend.forward(batch.view(), &mut got).unwrap();
            let names: Vec<_> = got.0.iter().map(|(n, _)| n.as_str()).collect();
            let want_names: Vec<_> = want.0.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, want_names, "{kind}/{isa}: trace points");
            assert_eq!(got.1, want.1, "{kind}/{isa}: trace points and shapes");
            for ((name, g), (_, w)) in got.0.iter().zip(&want.0) {
                let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let tol = 1e-4 * scale + 1e-5;
                let err = g
                    .iter()
                    .zip(w)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= tol,
                    "{what} {kind}/{isa}/winograd-{} at {name}: max error {err:e} > {tol:e}",
                    winograd.name()
                );
            }
            for i in 0..batch.dim().0 {
                let (g, w) = (logits.row(i).to_vec(), want_logits.row(i).to_vec());
                let (max, _, _) = common::diff_stats(&g, &w);
                assert!(
                    max <= 1e-3,
                    "{what} {kind}/{isa}/winograd-{} image {i}: logits differ by {max:e}",
                    winograd.name()
                );
                assert_eq!(
                    top_k_indices(&g, 5),
                    top_k_indices(&w, 5),
                    "{what} {kind}/{isa} image {i}: top-5"
                );
            }
            println!("{what}: {kind}/{isa} agrees with reference");
        }
    }
}

/// Every backend, INT8 included (which is not within the f32 tolerances of the others),
/// reports exactly the layer table's trace points, in order, with its shapes.
#[test]
fn every_backend_reports_the_layer_tables_trace_points() {
    let weights = synthetic_weights(0);
    let batch = random_batch(2, 67, 100, 11);
    for kind in BackendKind::ALL {
        let backend = kind.create(&weights, &BackendOptions::default()).unwrap();
        let mut got = Capture::default();
        backend.forward(batch.view(), &mut got).unwrap();
        assert_eq!(got.1, expected_points(&batch), "{kind}");
    }
}

#[test]
fn backends_agree_on_photos() {
    compare_all(&photo_batch(), "photos");
}

#[test]
fn backends_agree_on_random_inputs_of_other_shapes() {
    // Batch 2 at an odd size (layer4 is then 3x4 per image) and batch 1 at 224.
    compare_all(&random_batch(2, 67, 100, 5), "random 2x3x67x100");
    compare_all(&random_batch(1, 224, 224, 9), "random 1x3x224x224");
}
