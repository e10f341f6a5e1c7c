//! Per-trace-point time of each backend at batch 1 (median of 20 runs), to see where time goes.
//!
//! `cargo run --release -p resnet-benches --example layer_profile [BATCH]`
use resnet_core::backend::{BackendKind, BackendOptions, LayerEvent, LayerObserver};
use resnet_core::weights::synthetic_weights;
use std::collections::BTreeMap;

struct Times(Vec<(String, f64)>);

impl LayerObserver for Times {
    fn on_layer(&mut self, e: &LayerEvent<'_>) {
        self.0
            .push((e.name.to_string(), e.elapsed.as_secs_f64() * 1e3));
    }
}

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let weights = synthetic_weights(0);
    let input = ndarray::Array4::<f32>::from_elem((batch, 3, 224, 224), 0.3);
    for kind in [BackendKind::Gemm, BackendKind::Native, BackendKind::Int8] {
        let backend = kind.create(&weights, &BackendOptions::default()).unwrap();
        let mut samples: BTreeMap<usize, (String, Vec<f64>)> = BTreeMap::new();
        for run in 0..23 {
            let mut t = Times(Vec::new());
            backend.forward(input.view(), &mut t).unwrap();
            if run >= 3 {
                for (i, (name, ms)) in t.0.into_iter().enumerate() {
                    samples
                        .entry(i)
                        .or_insert_with(|| (name, Vec::new()))
                        .1
                        .push(ms);
                }
            }
        }
        println!("{} (batch {batch}): median ms per trace point", kind.name());
        let mut total = 0.0;
        for (name, mut v) in samples.into_values() {
            v.sort_by(f64::total_cmp);
            let med = v[v.len() / 2];
            total += med;
            println!("  {name:<10} {med:7.3}");
        }
        println!("  {:<10} {total:7.3}", "sum");
    }
}
