//! Per-trace-point time of each backend, and of `native` under each Winograd policy, side by
//! side in one run (median of 20 runs each), to see where time goes.
//!
//! `cargo run --release -p resnet-benches --example layer_profile [BATCH] [CONFIG...]`
//!
//! `PROFILE_MIN=1` prints each point's fastest run instead of its median. `PROFILE_PLAN=FILE`
//! runs the configurations of that plan's backend with it (for example a cached plan of
//! `resnet tune`, to see the network's own per-layer times beside the tuner's).
//! CONFIGs (default: all of them): gemm, native/wino-off, native/wino-auto, native/wino-all,
//! int8, bf16. The kernels are the best this CPU runs (`RESNET_ISA` chooses another level).
use resnet_core::backend::{
    BackendKind, BackendOptions, LayerEvent, LayerObserver, WinogradPolicy,
};
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
    let all = [
        ("gemm", BackendKind::Gemm, WinogradPolicy::Off),
        ("native/wino-off", BackendKind::Native, WinogradPolicy::Off),
        (
            "native/wino-auto",
            BackendKind::Native,
            WinogradPolicy::Auto,
        ),
        ("native/wino-all", BackendKind::Native, WinogradPolicy::All),
        ("int8", BackendKind::Int8, WinogradPolicy::Off),
        ("bf16", BackendKind::Bf16, WinogradPolicy::Off),
    ];
    // PROFILE_MIN=1: the fastest run of each point instead of the median (steadier for an A/B
    // comparison of two builds on a shared machine).
    let use_min = std::env::var_os("PROFILE_MIN").is_some();
    let wanted: Vec<String> = std::env::args().skip(2).collect();
    let configs: Vec<_> = all
        .into_iter()
        .filter(|(label, _, _)| wanted.is_empty() || wanted.iter().any(|w| w == label))
        .collect();
    assert!(!configs.is_empty(), "no such configuration: {wanted:?}");
    let plan = std::env::var_os("PROFILE_PLAN").map(|path| {
        let path = std::path::PathBuf::from(path);
        let plan = resnet_core::plan::Plan::load(&path).expect("PROFILE_PLAN: a valid plan file");
        resnet_core::plan::ActivePlan {
            plan: std::sync::Arc::new(plan),
            path,
        }
    });
    let mut columns: Vec<Vec<(String, f64)>> = Vec::new();
    for &(_, kind, winograd) in &configs {
        let options = BackendOptions {
            winograd,
            plan: plan
                .clone()
                .filter(|p| kind.plan_backend() == Some(p.plan.backend)),
            ..BackendOptions::default()
        };
        let backend = kind.create(&weights, &options).unwrap();
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
        columns.push(
            samples
                .into_values()
                .map(|(name, mut v)| {
                    v.sort_by(f64::total_cmp);
                    (name, if use_min { v[0] } else { v[v.len() / 2] })
                })
                .collect(),
        );
    }
    let stat = if use_min { "fastest" } else { "median" };
    println!("batch {batch}: {stat} ms per trace point (20 runs each)");
    print!("  {:<10}", "");
    for (label, _, _) in &configs {
        print!(" {label:>17}");
    }
    println!();
    for (i, (name, _)) in columns[0].iter().enumerate() {
        print!("  {name:<10}");
        for col in &columns {
            print!(" {:>17.3}", col[i].1);
        }
        println!();
    }
    print!("  {:<10}", "sum");
    for col in &columns {
        print!(" {:>17.3}", col.iter().map(|(_, ms)| ms).sum::<f64>());
    }
    println!();
}
