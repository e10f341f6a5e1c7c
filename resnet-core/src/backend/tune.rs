//! The measurements behind a per-layer plan (`resnet tune`): every candidate of every
//! convolution of `native` (or `int8`, or `bf16`), timed alone on its real folded (or
//! quantised) weights and an input of its real shape, checked against the heuristic's direct
//! convolution, the fastest accepted one kept. What differs between the backends is how a layer
//! is built and run and what "accepted" means (within 1e-4 for f32, bit-identical codes for
//! INT8, one bf16 rounding step for bf16); the budget, the timing and the choice are shared
//! ([`Tuner`]).

use super::bf16::{planned_line, Bf16Layer};
use super::folded::FoldedLayer;
use super::int8::Int8Layer;
use super::native::PackedLayer;
use super::Framing;
use crate::arch::{ConvBn, ResNet18Arch, INPUT_SIZE};
use crate::plan::{self, Candidate, LayerChoice, LayerPlan, Plan, PlanBackend, PlanKey};
use crate::quantize::model::{Activation, LayerPrecision, QuantizedModel};
use crate::weights::Weights;
use resnet_kernels::aligned::{AlignedVec, Plain};
use resnet_kernels::bf16::{f32_to_bf16, Bf16};
use resnet_kernels::cpu::Isa;
use resnet_kernels::gemm::ConvGeometry;
use resnet_kernels::winograd::WinogradScratch;
use std::time::{Duration, Instant};

/// A candidate is accepted when its largest error against direct convolution is within this
/// fraction of the layer's largest output magnitude: the bound the `backends_agree` tests hold
/// every intermediate activation of `native` to (1e-4 of the layer's largest magnitude).
pub const ACCURACY_BOUND: f64 = 1e-4;

/// A `bf16` candidate is accepted when its largest difference from the heuristic's im2col
/// output is within this fraction of the layer's largest output magnitude: one unit in the last
/// place of a bf16 at that magnitude is at most 2^-7 of it, and a candidate that sums in another
/// order (another kernel line, the stem's window rows) may round a sum to the neighbouring bf16.
/// On one AMX line every other candidate is bit-identical (the sums continue in the tiles in
/// the same order).
pub const BF16_ACCURACY_BOUND: f64 = 1.0 / 128.0;

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

/// The budget, timing and choice every tuner shares: the convolutions in network order with
/// their input shapes, each candidate's share of the budget, and the plan being made.
struct Tuner<'e> {
    start: Instant,
    budget: Duration,
    /// Each candidate's share of the budget.
    slice: Duration,
    specs: Vec<ConvBn>,
    /// `[c, h, w]` of each convolution's input.
    shapes: Vec<[usize; 3]>,
    layers: Vec<LayerPlan>,
    exhausted: bool,
    events: &'e mut dyn FnMut(TuneEvent<'_>),
}

impl<'e> Tuner<'e> {
    /// The convolutions and their input shapes; `candidates(spec, geometry, tiles)` gives each
    /// layer's candidates (its geometry at `batch`, Winograd's tiles), whose total is reported
    /// and shares the budget.
    fn new(
        batch: usize,
        budget: Duration,
        events: &'e mut dyn FnMut(TuneEvent<'_>),
        candidates: impl Fn(&ConvBn, &ConvGeometry, usize) -> Vec<LayerChoice>,
    ) -> (Tuner<'e>, Vec<Vec<LayerChoice>>) {
        let arch = ResNet18Arch::new();
        let (specs, shapes): (Vec<ConvBn>, Vec<[usize; 3]>) = arch
            .convs_with_inputs(INPUT_SIZE, INPUT_SIZE)
            .into_iter()
            .map(|(c, input)| (c.clone(), input))
            .unzip();
        let per_layer: Vec<Vec<LayerChoice>> = specs
            .iter()
            .zip(&shapes)
            .map(|(s, &[_, h, w])| {
                let tiles = batch * h.div_ceil(4) * w.div_ceil(4);
                candidates(s, &s.geometry(batch, h, w), tiles)
            })
            .collect();
        let total: usize = per_layer.iter().map(Vec::len).sum();
        events(TuneEvent::Total(total));
        let tuner = Tuner {
            start: Instant::now(),
            budget,
            // At least 3 timed runs each whatever the budget.
            slice: budget.div_f64(total.max(1) as f64),
            specs,
            shapes,
            layers: Vec::new(),
            exhausted: false,
            events,
        };
        (tuner, per_layer)
    }

    /// Whether layer `i` is still timed; when the budget has run out, it (and every later
    /// layer) keeps `fallback` untimed, and the first such layer reports it.
    fn in_budget(&mut self, i: usize, fallback: &LayerChoice) -> bool {
        if !self.exhausted && self.start.elapsed() > self.budget {
            (self.events)(TuneEvent::BudgetExhausted {
                layers_left: self.specs.len() - i,
            });
            self.exhausted = true;
        }
        if self.exhausted {
            self.layers.push(LayerPlan {
                layer: self.specs[i].conv.clone(),
                choice: fallback.clone(),
                candidates: Vec::new(),
            });
        }
        !self.exhausted
    }

    /// The median of at least 3 runs of `run`, within the candidate's share of the budget, each
    /// after [`evict_private_caches`].
    fn median_ms(&self, mut run: impl FnMut()) -> f64 {
        let t0 = Instant::now();
        let mut times = Vec::new();
        while times.len() < 3 || (t0.elapsed() < self.slice && times.len() < 25) {
            evict_private_caches();
            let t = Instant::now();
            run();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    }

    /// Layer `i`'s candidate `choice`, timed by `run` (within its share of the budget) when it
    /// was `accepted`, and reported.
    fn candidate(
        &mut self,
        i: usize,
        choice: LayerChoice,
        (max_rel_error, accepted): (f64, bool),
        run: impl FnMut(),
    ) -> Candidate {
        let median_ms = accepted.then(|| self.median_ms(run));
        let candidate = Candidate {
            choice,
            median_ms,
            max_rel_error,
            accepted,
        };
        (self.events)(TuneEvent::Timed {
            layer: &self.specs[i].conv,
            candidate: &candidate,
        });
        candidate
    }

    /// Layer `i`'s `choices` for a backend whose candidates are checked against its own
    /// heuristic (`int8`, `bf16`): the reference is `fallback`'s kernel and blocking with A
    /// packed (so the in-place candidates are checked against the im2col path); each choice is
    /// built (`build`), run once (`run`) and judged against it (`judge(out, reference)`:
    /// `(max_rel_error, accepted)`; outputs of another length are refused), then timed if
    /// accepted; the entry is chosen as [`Tuner::choose`] does.
    fn try_choices<L, T: Plain>(
        &mut self,
        (i, choices, fallback): (usize, Vec<LayerChoice>, LayerChoice),
        build: impl Fn(&LayerChoice) -> L,
        run: impl Fn(&L, &mut AlignedVec<T>),
        judge: impl Fn(&[T], &[T]) -> (f64, bool),
    ) {
        let mut reference = AlignedVec::new();
        let packed = LayerChoice {
            method: plan::Method::Direct,
            ..fallback.clone()
        };
        run(&build(&packed), &mut reference);
        let mut candidates = Vec::new();
        for choice in choices {
            let layer = build(&choice);
            let mut out = AlignedVec::new();
            run(&layer, &mut out);
            let (max_rel_error, accepted) = judge(&out, &reference);
            let accepted = accepted && out.len() == reference.len();
            candidates.push(self.candidate(i, choice, (max_rel_error, accepted), || {
                run(&layer, &mut out)
            }));
        }
        self.choose(i, candidates, fallback);
    }

    /// Layer `i`'s entry: the fastest accepted candidate, else `fallback`; candidates fastest
    /// first.
    fn choose(&mut self, i: usize, mut candidates: Vec<Candidate>, fallback: LayerChoice) {
        candidates.sort_by(|a, b| {
            let key = |c: &Candidate| c.median_ms.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        });
        let choice = candidates
            .iter()
            .find(|c| c.accepted)
            .map(|c| c.choice.clone())
            .unwrap_or(fallback);
        self.layers.push(LayerPlan {
            layer: self.specs[i].conv.clone(),
            choice,
            candidates,
        });
    }

    fn plan(self, backend: PlanBackend, isa: Isa, batch: usize) -> Plan {
        Plan {
            format: plan::FORMAT,
            backend,
            isa: isa.name().into(),
            key: PlanKey::current(rayon::current_num_threads(), batch),
            created: String::new(),
            layers: self.layers,
        }
    }
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
    let threads = rayon::current_num_threads();
    let (mut tuner, per_layer) = Tuner::new(batch, budget, events, |spec, g, tiles| {
        plan::candidates(spec, isa, g.m(), tiles, threads)
    });
    for (i, choices) in per_layer.into_iter().enumerate() {
        let spec = tuner.specs[i].clone();
        let fallback = plan::default_choice(&spec, isa, winograd.applies(&spec));
        if !tuner.in_budget(i, &fallback) {
            continue;
        }
        let [c, h, w] = tuner.shapes[i];
        let input = layer_input(&spec, batch * c * h * w);
        let residual_needed = spec.conv.ends_with("conv2");
        let mut scratch = WinogradScratch::default();
        // The reference: direct convolution with the default blocking.
        let reference = {
            let d = plan::default_choice(&spec, isa, false);
            let layer = PackedLayer::with_choice(FoldedLayer::new(weights, &spec), &d);
            let mut out = AlignedVec::new();
            let residual = residual_needed.then(|| residual_for(&layer.spec, batch, h, w));
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
        let mut candidates = Vec::new();
        for choice in choices {
            let layer = PackedLayer::with_choice(FoldedLayer::new(weights, &spec), &choice);
            let residual = residual_needed.then(|| residual_for(&layer.spec, batch, h, w));
            let mut out = AlignedVec::new();
            let run = |out: &mut AlignedVec<f32>, scratch: &mut WinogradScratch| {
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
            let max_rel_error = max_rel_error(
                out.iter()
                    .zip(&reference)
                    .map(|(&a, &b)| (a as f64, b as f64)),
            );
            let accepted = max_rel_error <= ACCURACY_BOUND && out.len() == reference.len();
            candidates.push(tuner.candidate(i, choice, (max_rel_error, accepted), || {
                run(&mut out, &mut scratch)
            }));
        }
        tuner.choose(i, candidates, fallback);
    }
    tuner.plan(PlanBackend::Native, isa, batch)
}

/// Times the candidates of every convolution of `int8` ([`plan::candidates_int8`]: kernel lines
/// and blockings) at `batch` on the current thread pool, within about `budget`. A candidate is
/// accepted only when its output codes equal the heuristic's bit for bit (integer sums: any
/// difference is a bug). An f32 stem (a model quantised with `--stem f32`) is not an INT8 layer:
/// it keeps the heuristic's entry, untimed.
pub fn tune_int8(
    model: &QuantizedModel,
    isa: Isa,
    batch: usize,
    budget: Duration,
    events: &mut dyn FnMut(TuneEvent<'_>),
) -> Plan {
    let threads = rayon::current_num_threads();
    let (mut tuner, per_layer) = Tuner::new(batch, budget, events, |spec, g, _| {
        let int8_layer = spec.conv != "conv1" || model.stem_precision() == LayerPrecision::Int8;
        if int8_layer {
            plan::candidates_int8(spec, isa, g.m(), g.out_w(), threads)
        } else {
            Vec::new()
        }
    });
    for (i, choices) in per_layer.into_iter().enumerate() {
        let spec = tuner.specs[i].clone();
        let [c, h, w] = tuner.shapes[i];
        let fallback = plan::default_choice_int8(&spec, isa, spec.output_hw(h, w).1);
        if !tuner.in_budget(i, &fallback) {
            continue;
        }
        if choices.is_empty() {
            tuner.choose(i, Vec::new(), fallback);
            continue;
        }
        let input = codes(batch * c * h * w, 0x5EED ^ i as u64);
        // conv2 adds the block's skip branch: codes shaped like its output. Which quantisation
        // they carry does not matter for timing and bit-exactness (the same for every
        // candidate): the block output's.
        let residual = spec.conv.ends_with("conv2").then(|| {
            let g = spec.geometry(batch, h, w);
            let (_, out_q) = Activation::around_conv(&spec.conv).expect("a convolution");
            (
                codes(g.m() * spec.out_channels, 0xB10C ^ i as u64),
                model.act(out_q),
            )
        });
        let relu = !spec.conv.contains("downsample");
        let build = |choice: &LayerChoice| {
            let line = choice
                .int8_kernel_line()
                .expect("candidates name registered INT8 kernels");
            Int8Layer::for_conv(
                model,
                &spec.conv,
                (
                    line,
                    choice.blocking(),
                    choice.method == plan::Method::InPlace,
                ),
            )
        };
        let run = |layer: &Int8Layer, out: &mut AlignedVec<u8>| {
            let skip = residual.as_ref().map(|(r, q)| (r.as_slice(), *q));
            layer.run(&input, (batch, h, w), out, skip, relu, Framing::DENSE);
        };
        // Integer sums: any difference is a bug, and the candidate is never chosen.
        let judge = |out: &[u8], reference: &[u8]| {
            let worst = out
                .iter()
                .zip(reference)
                .map(|(&a, &b)| a.abs_diff(b))
                .max()
                .unwrap_or(0);
            // Codes apart, relative to the code range.
            (f64::from(worst) / 255.0, worst == 0)
        };
        tuner.try_choices((i, choices, fallback), build, run, judge);
    }
    if isa == Isa::Amx {
        resnet_kernels::amx::release_thread_tiles();
    }
    tuner.plan(PlanBackend::Int8, isa, batch)
}

/// Times the candidates of every convolution of `bf16` ([`plan::candidates_bf16`]: kernel lines,
/// blockings, A packed or read in place) at `batch` on the current thread pool, within about
/// `budget`. A candidate is accepted when its output is within [`BF16_ACCURACY_BOUND`] of the
/// heuristic's kernel with A packed (so the in-place candidates are checked against the im2col
/// path).
pub fn tune_bf16(
    weights: &Weights,
    isa: Isa,
    batch: usize,
    budget: Duration,
    events: &mut dyn FnMut(TuneEvent<'_>),
) -> Plan {
    let threads = rayon::current_num_threads();
    let (mut tuner, per_layer) = Tuner::new(batch, budget, events, |spec, g, _| {
        plan::candidates_bf16(spec, isa, g, threads)
    });
    for (i, choices) in per_layer.into_iter().enumerate() {
        let spec = tuner.specs[i].clone();
        let [c, h, w] = tuner.shapes[i];
        let fallback = plan::default_choice_bf16(isa, &spec.geometry(batch, h, w));
        if !tuner.in_budget(i, &fallback) {
            continue;
        }
        let to_bf16 = |v: Vec<f32>| {
            let mut out = vec![Bf16::ZERO; v.len()];
            f32_to_bf16(&v, &mut out);
            out
        };
        let input = to_bf16(layer_input(&spec, batch * c * h * w));
        let residual = spec
            .conv
            .ends_with("conv2")
            .then(|| to_bf16(residual_for(&spec, batch, h, w)));
        let relu = !spec.conv.contains("downsample");
        let build = |choice: &LayerChoice| {
            Bf16Layer::new(FoldedLayer::new(weights, &spec), planned_line(choice))
        };
        let run = |layer: &Bf16Layer, out: &mut AlignedVec<Bf16>| {
            layer.run(
                &input,
                (batch, h, w),
                out,
                residual.as_deref(),
                relu,
                Framing::DENSE,
            );
        };
        let judge = |out: &[Bf16], reference: &[Bf16]| {
            let pairs = out.iter().zip(reference);
            let err = max_rel_error(pairs.map(|(a, b)| (a.to_f32() as f64, b.to_f32() as f64)));
            (err, err <= BF16_ACCURACY_BOUND)
        };
        tuner.try_choices((i, choices, fallback), build, run, judge);
    }
    if isa == Isa::Amx {
        resnet_kernels::amx::release_thread_tiles();
    }
    tuner.plan(PlanBackend::Bf16, isa, batch)
}

/// The largest difference of `(got, want)` pairs relative to the largest `|want|` (absolute
/// when every `want` is zero): what a candidate's output is accepted by.
fn max_rel_error(pairs: impl Iterator<Item = (f64, f64)>) -> f64 {
    let (err, scale) = pairs.fold((0.0f64, 0.0f64), |(e, s), (got, want)| {
        (e.max((got - want).abs()), s.max(want.abs()))
    });
    if scale > 0.0 {
        err / scale
    } else {
        err
    }
}

/// Bytes each thread writes to push a layer's weights and activations out of its core's
/// private caches (2 MiB of L2 per core on the Xeon model 167, 1 MiB on the EPYC).
const EVICT_BYTES: usize = 8 << 20;

thread_local! {
    static EVICT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes [`EVICT_BYTES`] on every thread of the pool, so that the next timed run of a layer
/// starts as it does inside the network, where the other layers ran since its last pass: its
/// weights and input no longer in the cores' L2 (in L3 at most). Timed warm, the candidates
/// that stream their weights through L2 looked better than they are in the network (the fifth
/// session's bf16 plans on the Xeon model 167: 14.4 ms of tuned layers against 16.6 for the
/// heuristic's, but no gain in `bench`).
fn evict_private_caches() {
    rayon::broadcast(|_| {
        EVICT.with(|b| {
            let mut b = b.borrow_mut();
            b.resize(EVICT_BYTES, 0);
            let round = b[0].wrapping_add(1);
            b.iter_mut().step_by(64).for_each(|v| *v = round);
        })
    });
}

/// Seeded `u8` codes (an INT8 layer's input or skip branch).
fn codes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8
        })
        .collect()
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
fn residual_for(spec: &ConvBn, batch: usize, h: usize, w: usize) -> Vec<f32> {
    let g = spec.geometry(batch, h, w);
    (0..g.m() * spec.out_channels)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect()
}
