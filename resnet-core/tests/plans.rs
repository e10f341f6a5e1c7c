//! Every candidate a per-layer plan can choose (`resnet tune`'s candidates: direct GEMM with each
//! blocking, Winograd with each, on the kernel this CPU selects) against the reference backend at
//! every trace point, with the tolerances of `backends_agree`: intermediate activations within
//! 1e-4 of the layer's largest magnitude (+1e-5), logits within 1e-3, identical top-5.
//!
//! Plan `j` gives every layer its `j`-th candidate (wrapping where a layer has fewer), so each
//! candidate of each layer runs in some plan, inside a whole network.
//!
//! The `int8` candidates (kernel lines and blockings) must not change a single bit: integer sums
//! do not depend on the order, so every trace point and the logits equal the heuristic's.
//!
//! The `bf16` candidates on the AMX line are bit-identical too; those on another line are held
//! to the bf16 backend's own bounds.

mod common;

use common::{random_batch, Capture};
use resnet_core::arch::{ResNet18Arch, INPUT_SIZE};
use resnet_core::backend::{Backend, BackendKind, BackendOptions};
use resnet_core::backend::{Bf16Backend, Int8Backend};
use resnet_core::cpu::Isa;
use resnet_core::plan::{self, ActivePlan, LayerPlan, Method, Plan, PlanBackend, PlanKey};
use resnet_core::postprocess::top_k_indices;
use resnet_core::weights::synthetic_weights;
use resnet_kernels::gemm::ConvGeometry;
use std::sync::Arc;

/// Every convolution's name and candidates at `batch` (`candidates(spec, geometry)`).
type PerLayer = Vec<(String, Vec<plan::LayerChoice>)>;

fn per_layer(
    batch: usize,
    candidates: impl Fn(&resnet_core::arch::ConvBn, &ConvGeometry) -> Vec<plan::LayerChoice>,
) -> PerLayer {
    ResNet18Arch::new()
        .convs_with_inputs(INPUT_SIZE, INPUT_SIZE)
        .into_iter()
        .map(|(spec, [_, h, w])| {
            let g = spec.geometry(batch, h, w);
            (spec.conv.clone(), candidates(spec, &g))
        })
        .collect()
}

/// Plan `j`: every layer's `j`-th candidate (wrapping where a layer has fewer).
fn plan_j(
    backend: PlanBackend,
    isa: Isa,
    batch: usize,
    per_layer: &[(String, Vec<plan::LayerChoice>)],
    j: usize,
) -> Plan {
    Plan {
        format: plan::FORMAT,
        backend,
        isa: isa.name().into(),
        key: PlanKey::current(rayon::current_num_threads(), batch),
        created: String::new(),
        layers: per_layer
            .iter()
            .map(|(name, c)| LayerPlan {
                layer: name.clone(),
                choice: c[j % c.len()].clone(),
                candidates: vec![],
            })
            .collect(),
    }
}

#[test]
fn every_plan_candidate_agrees_with_reference_at_every_trace_point() {
    let batch = 2;
    let isa = Isa::best_supported();
    let threads = rayon::current_num_threads();
    let per_layer = per_layer(batch, |spec, g| {
        let tiles = batch * g.in_h.div_ceil(4) * g.in_w.div_ceil(4);
        plan::candidates(spec, isa, g.m(), tiles, threads)
    });
    let most = per_layer.iter().map(|(_, c)| c.len()).max().unwrap();
    assert!(
        per_layer
            .iter()
            .any(|(_, c)| c.iter().any(|c| c.method == Method::Winograd)),
        "Winograd candidates exist"
    );

    let weights = synthetic_weights(0);
    let input = random_batch(batch, INPUT_SIZE, INPUT_SIZE, 5);
    let reference = BackendKind::Reference
        .create(&weights, &BackendOptions::default())
        .unwrap();
    let mut want = Capture::default();
    let want_logits = reference.forward(input.view(), &mut want).unwrap();

    for j in 0..most {
        let plan = plan_j(PlanBackend::Native, isa, batch, &per_layer, j);
        plan.validate().unwrap();
        let options = BackendOptions {
            isa,
            plan: Some(ActivePlan {
                plan: Arc::new(plan.clone()),
                path: format!("candidate-{j}").into(),
            }),
            ..BackendOptions::default()
        };
        let backend = BackendKind::Native.create(&weights, &options).unwrap();
        assert!(backend.describe().contains(&format!("candidate-{j}")));
        let mut got = Capture::default();
        let logits = backend.forward(input.view(), &mut got).unwrap();
        assert_eq!(got.0.len(), want.0.len(), "plan {j}: trace points");
        for ((name, g), (want_name, w)) in got.0.iter().zip(&want.0) {
            assert_eq!(name, want_name);
            let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let tol = 1e-4 * scale + 1e-5;
            let err = g
                .iter()
                .zip(w)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            let choices: Vec<String> = plan.layers.iter().map(|l| l.choice.label()).collect();
            assert!(
                err <= tol,
                "plan {j} at {name}: max error {err:e} > {tol:e} ({choices:?})"
            );
        }
        for i in 0..batch {
            let (g, w) = (logits.row(i).to_vec(), want_logits.row(i).to_vec());
            let max = g
                .iter()
                .zip(&w)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(max <= 1e-3, "plan {j} image {i}: logits differ by {max:e}");
            assert_eq!(
                top_k_indices(&g, 5),
                top_k_indices(&w, 5),
                "plan {j} image {i}"
            );
        }
    }
}

#[test]
fn every_int8_plan_candidate_is_bit_identical_to_the_heuristic() {
    let batch = 2;
    let isa = Isa::best_supported();
    let threads = rayon::current_num_threads();
    let per_layer = per_layer(batch, |spec, g| {
        plan::candidates_int8(spec, isa, g.m(), g.out_w(), threads)
    });
    let most = per_layer.iter().map(|(_, c)| c.len()).max().unwrap();
    assert!(most >= 4, "blockings and kernels to try: {most}");

    let model =
        resnet_core::quantize::calibrate_on_built_in_images(&synthetic_weights(0), isa).unwrap();
    let input = random_batch(batch, INPUT_SIZE, INPUT_SIZE, 6);
    let heuristic = Int8Backend::new(&model, isa);
    let mut want = Capture::default();
    let want_logits = heuristic.forward(input.view(), &mut want).unwrap();

    for j in 0..most {
        let plan = plan_j(PlanBackend::Int8, isa, batch, &per_layer, j);
        plan.validate().unwrap();
        let choices: Vec<String> = plan.layers.iter().map(|l| l.choice.label()).collect();
        let backend = Int8Backend::planned(
            &model,
            isa,
            Some(ActivePlan {
                plan: Arc::new(plan),
                path: format!("int8-candidate-{j}").into(),
            }),
        );
        assert!(backend.describe().contains(&format!("int8-candidate-{j}")));
        let mut got = Capture::default();
        let logits = backend.forward(input.view(), &mut got).unwrap();
        assert_eq!(got.0.len(), want.0.len(), "plan {j}: trace points");
        for ((name, g), (want_name, w)) in got.0.iter().zip(&want.0) {
            assert_eq!(name, want_name);
            assert!(
                g == w,
                "plan {j} at {name}: not bit-identical ({choices:?})"
            );
        }
        assert_eq!(logits, want_logits, "plan {j}: logits ({choices:?})");
    }
}

/// The `bf16` candidates (kernel lines, blockings, A packed or read in place): on the AMX line
/// they must not change a single bit (the sums continue in the tiles in the same order, and the
/// in-place reads hold what the im2col holds), the stem's reading apart; a plan that also uses
/// another line (the AVX512-BF16 kernel, another summation order) or reads the stem otherwise
/// may round a layer's output to the neighbouring bf16, which spreads: within 2e-2 of each
/// trace point's largest magnitude and the same top-5, the bounds `tests/bf16.rs` holds the
/// backend to against f32.
#[test]
fn every_bf16_plan_candidate_agrees_with_the_heuristic() {
    let batch = 2;
    let isa = Isa::best_supported();
    let threads = rayon::current_num_threads();
    let per_layer = per_layer(batch, |spec, g| {
        plan::candidates_bf16(spec, isa, g, threads)
    });
    let most = per_layer.iter().map(|(_, c)| c.len()).max().unwrap();
    assert!(most >= 4, "blockings and kernels to try: {most}");

    let weights = synthetic_weights(0);
    let input = random_batch(batch, INPUT_SIZE, INPUT_SIZE, 7);
    let heuristic = Bf16Backend::new(&weights, isa);
    let mut want = Capture::default();
    let want_logits = heuristic.forward(input.view(), &mut want).unwrap();
    let heuristic_line = resnet_kernels::bf16::kernel_for(isa);

    for j in 0..most {
        let plan = plan_j(PlanBackend::Bf16, isa, batch, &per_layer, j);
        plan.validate().unwrap();
        let choices: Vec<String> = plan.layers.iter().map(|l| l.choice.label()).collect();
        // The stem's window rows pair its K values otherwise than its im2col (each 7 x 3 row
        // padded to 32), so the two round their sums differently.
        let stem_as_heuristic = plan.layers[0].choice.method == per_layer[0].1[0].method;
        let exact = heuristic_line.reads_in_place()
            && stem_as_heuristic
            && plan
                .layers
                .iter()
                .all(|l| l.choice.kernel == heuristic_line.info.name);
        let options = BackendOptions {
            isa,
            plan: Some(ActivePlan {
                plan: Arc::new(plan),
                path: format!("bf16-candidate-{j}").into(),
            }),
            ..BackendOptions::default()
        };
        let backend = BackendKind::Bf16.create(&weights, &options).unwrap();
        assert!(backend.describe().contains(&format!("bf16-candidate-{j}")));
        let mut got = Capture::default();
        let logits = backend.forward(input.view(), &mut got).unwrap();
        assert_eq!(got.0.len(), want.0.len(), "plan {j}: trace points");
        for ((name, g), (want_name, w)) in got.0.iter().zip(&want.0) {
            assert_eq!(name, want_name);
            if exact {
                assert!(
                    g == w,
                    "plan {j} at {name}: not bit-identical ({choices:?})"
                );
            } else {
                let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let err = g
                    .iter()
                    .zip(w)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= 2e-2 * scale,
                    "plan {j} at {name}: max error {err:e} > 2e-2 x {scale:e} ({choices:?})"
                );
            }
        }
        for i in 0..batch {
            let (g, w) = (logits.row(i).to_vec(), want_logits.row(i).to_vec());
            if exact {
                assert_eq!(g, w, "plan {j} image {i}: logits ({choices:?})");
            } else {
                assert_eq!(
                    top_k_indices(&g, 5),
                    top_k_indices(&w, 5),
                    "plan {j} image {i} ({choices:?})"
                );
            }
        }
    }
}
