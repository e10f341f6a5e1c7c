//! The measurements behind a per-layer plan (`resnet tune`): every candidate of every
//! convolution of `native`, timed alone on its real folded weights and an input of its real
//! shape, checked against direct convolution, the fastest accepted one kept.

use super::folded::FoldedLayer;
use super::native::PackedLayer;
use crate::arch::{ConvBn, ResNet18Arch, INPUT_SIZE};
use crate::plan::{self, Candidate, LayerChoice, LayerPlan, Plan, PlanKey};
use crate::weights::Weights;
use resnet_kernels::cpu::Isa;
use resnet_kernels::winograd::WinogradScratch;
use std::time::{Duration, Instant};

/// A candidate is accepted when its largest error against direct convolution is within this
/// fraction of the layer's largest output magnitude: the bound the `backends_agree` tests hold
/// every intermediate activation of `native` to (1e-4 of the layer's largest magnitude).
pub const ACCURACY_BOUND: f64 = 1e-4;

/// What the tuner reports while it runs.
#[derive(Debug)]
pub enum TuneEvent<'a> {
    /// The total number of candidates to time.
    Total(usize),
    /// One candidate of `layer` was timed (or rejected).
    Timed {
        /// The convolution.
        layer: &'a str,
        /// The candidate.
        candidate: &'a Candidate,
    },
    /// The budget ran out: the remaining layers keep the heuristic's choice untimed.
    BudgetExhausted {
        /// Layers left untimed.
        layers_left: usize,
    },
}

/// Times the candidates of every convolution of `native` at `batch` on the current rayon pool,
/// within about `budget`, and returns the plan (key: this CPU, the pool's thread count, batch).
/// `winograd` is the heuristic's policy, kept for layers the budget leaves untimed.
pub fn tune_native(
    weights: &Weights,
    isa: Isa,
    batch: usize,
    winograd: super::WinogradPolicy,
    budget: Duration,
    events: &mut dyn FnMut(TuneEvent<'_>),
) -> Plan {
    let start = Instant::now();
    let threads = rayon::current_num_threads();
    let arch = ResNet18Arch::new();
    let table = arch.layer_table(INPUT_SIZE, INPUT_SIZE);
    let specs: Vec<&ConvBn> = arch.convs().collect();
    let shapes: Vec<[usize; 3]> = specs
        .iter()
        .map(|s| {
            table
                .iter()
                .find(|r| r.name == s.conv)
                .map(|r| r.input)
                .expect("every convolution is in the layer table")
        })
        .collect();
    let per_layer: Vec<Vec<LayerChoice>> = specs
        .iter()
        .zip(&shapes)
        .map(|(s, &[_, h, w])| {
            let g = s.geometry(batch, h, w);
            let tiles = batch * h.div_ceil(4) * w.div_ceil(4);
            plan::candidates(s, isa, g.m(), tiles, threads)
        })
        .collect();
    let total: usize = per_layer.iter().map(Vec::len).sum();
    events(TuneEvent::Total(total));
    // Each candidate's share of the budget; at least 3 timed runs each whatever the budget.
    let slice = budget.div_f64(total.max(1) as f64);
    let mut layers = Vec::new();
    let mut exhausted = false;
    for (i, (spec, choices)) in specs.iter().zip(per_layer).enumerate() {
        let fallback = plan::default_choice(spec, isa, winograd.applies(spec));
        if exhausted || start.elapsed() > budget {
            if !exhausted {
                events(TuneEvent::BudgetExhausted {
                    layers_left: specs.len() - i,
                });
                exhausted = true;
            }
            layers.push(LayerPlan {
                layer: spec.conv.clone(),
                choice: fallback,
                candidates: Vec::new(),
            });
            continue;
        }
        let [c, h, w] = shapes[i];
        let input = layer_input(spec, batch * c * h * w);
        let residual_needed = spec.conv.ends_with("conv2");
        let mut scratch = WinogradScratch::default();
        // The reference: direct convolution with the default blocking.
        let reference = {
            let d = plan::default_choice(spec, isa, false);
            let layer = PackedLayer::with_choice(FoldedLayer::new(weights, spec), &d);
            let mut out = Vec::new();
            let residual = residual_needed.then(|| residual_for(&layer, batch, h, w));
            layer.run(
                &input,
                (batch, h, w),
                &mut out,
                residual.as_deref(),
                true,
                &mut scratch,
            );
            out
        };
        let scale = reference.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
        let mut candidates = Vec::new();
        for choice in choices {
            let layer = PackedLayer::with_choice(FoldedLayer::new(weights, spec), &choice);
            let residual = residual_needed.then(|| residual_for(&layer, batch, h, w));
            let mut out = Vec::new();
            let run = |out: &mut Vec<f32>, scratch: &mut WinogradScratch| {
                layer.run(
                    &input,
                    (batch, h, w),
                    out,
                    residual.as_deref(),
                    true,
                    scratch,
                );
            };
            run(&mut out, &mut scratch);
            let err = out
                .iter()
                .zip(&reference)
                .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
            let max_rel_error = if scale > 0.0 { err / scale } else { err };
            let accepted = max_rel_error <= ACCURACY_BOUND && out.len() == reference.len();
            let median_ms = accepted.then(|| {
                let t0 = Instant::now();
                let mut times = Vec::new();
                while times.len() < 3 || (t0.elapsed() < slice && times.len() < 25) {
                    let t = Instant::now();
                    run(&mut out, &mut scratch);
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                times.sort_by(f64::total_cmp);
                times[times.len() / 2]
            });
            let candidate = Candidate {
                choice,
                median_ms,
                max_rel_error,
                accepted,
            };
            events(TuneEvent::Timed {
                layer: &spec.conv,
                candidate: &candidate,
            });
            candidates.push(candidate);
        }
        candidates.sort_by(|a, b| {
            let key = |c: &Candidate| c.median_ms.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        });
        let choice = candidates
            .iter()
            .find(|c| c.accepted)
            .map(|c| c.choice.clone())
            .unwrap_or(fallback);
        layers.push(LayerPlan {
            layer: spec.conv.clone(),
            choice,
            candidates,
        });
    }
    Plan {
        format: plan::FORMAT,
        backend: "native".into(),
        isa: isa.name().into(),
        key: PlanKey::current(threads, batch),
        created: String::new(),
        layers,
    }
}

/// A seeded input of the layer's kind: non-negative (a ReLU's output) for every layer but the
/// stem, whose input is a normalised image in about [-2, 2].
fn layer_input(spec: &ConvBn, len: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ len as u64;
    let stem = spec.conv == "conv1";
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            if stem {
                4.0 * u - 2.0
            } else {
                2.0 * u
            }
        })
        .collect()
}

/// A residual shaped like the layer's output (the skip connection of a block's conv2).
fn residual_for(layer: &PackedLayer, batch: usize, h: usize, w: usize) -> Vec<f32> {
    let g = layer.spec.geometry(batch, h, w);
    (0..g.m() * layer.spec.out_channels)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect()
}
