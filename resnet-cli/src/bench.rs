//! `resnet bench`: every backend timed side by side in one run, on the same weights and input.

use crate::args::{BackendSelection, BenchArgs, Format};
use anyhow::bail;
use resnet_core::arch::{ResNet18Arch, INPUT_SIZE};
use resnet_core::backend::{BackendKind, BackendOptions, NoObserver, WinogradPolicy};
use resnet_core::cpu::Isa;
use resnet_core::plan::PlanChoice;
use resnet_core::weights::{synthetic_weights, Weights};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Serialize)]
struct Row {
    backend: String,
    kernel: String,
    batch: usize,
    threads: usize,
    runs: usize,
    median_ms: f64,
    p90_ms: f64,
    images_per_s: f64,
    gflops: f64,
    percent_of_peak: f64,
}

#[derive(Serialize)]
struct Report {
    weights: String,
    synthetic_weights: bool,
    isa: String,
    threads: usize,
    peak_gflops: f64,
    peak_method: &'static str,
    /// Measured INT8 peak (GOP/s) of the int8 kernel's instruction; int8 rows' % peak uses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    int8_peak_gops: Option<f64>,
    /// Measured bf16 peak (GFLOP/s) of the bf16 kernel's instruction; bf16 rows' % peak uses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    bf16_peak_gflops: Option<f64>,
    rows: Vec<Row>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let isa = match args.isa {
        Some(isa) => {
            if !isa.is_supported() {
                bail!("--isa {isa}: not supported by this CPU");
            }
            isa
        }
        None => Isa::from_env_or_best()?,
    };
    let kinds: Vec<BackendKind> = if args.backend.contains(&BackendSelection::All) {
        BackendKind::ALL.to_vec()
    } else {
        args.backend
            .iter()
            .filter_map(|b| match b {
                BackendSelection::One(k) => Some(*k),
                BackendSelection::All => None,
            })
            .collect()
    };
    if args.batch.contains(&0) || args.iters == 0 {
        bail!("--batch sizes and --iters must be at least 1");
    }
    // A quantised model file times the int8 backend only.
    let weights_path = args
        .weights
        .clone()
        .or_else(|| std::env::var_os("RESNET_WEIGHTS").map(Into::into));
    let int8_file = weights_path
        .as_ref()
        .filter(|p| std::fs::read(p).is_ok_and(|b| resnet_core::quantize::is_int8_file(&b)));
    if let Some(path) = int8_file.filter(|_| kinds.iter().any(|k| *k != BackendKind::Int8)) {
        bail!(
            "{} is a quantised model: only --backend int8 can run it",
            path.display()
        );
    }
    // Speed does not depend on the values, so bench never downloads: given or cached weights,
    // else synthetic ones (and the report says which).
    let offline = crate::weights_store::FetchOptions::offline_only()?;
    let weights = match crate::weights_store::resolve(args.weights.as_deref(), &offline) {
        Ok(_) if int8_file.is_some() => synthetic_weights(0),
        Ok(p) => Weights::load(&p)?,
        Err(_) => {
            log::info!("no weights given or cached: timing synthetic weights (seed 0); speed does not depend on the values");
            synthetic_weights(0)
        }
    };
    let threads = rayon::current_num_threads();
    let peak = resnet_core::kernels_peak_gflops(isa);
    let int8_peak = kinds
        .contains(&BackendKind::Int8)
        .then(|| resnet_core::quantize::measure_int8_peak_gops(isa));
    let bf16_peak = kinds
        .contains(&BackendKind::Bf16)
        .then(|| resnet_core::bf16_peak_gflops(isa));
    let macs: usize = ResNet18Arch::new()
        .layer_table(INPUT_SIZE, INPUT_SIZE)
        .iter()
        .map(|r| r.macs)
        .sum();
    // Native runs once per --winograd policy x --plan choice, int8 and bf16 once per --plan
    // choice, the others once. A plan is keyed by batch size, so a planned backend is built per batch.
    let policies: Vec<WinogradPolicy> = args.winograd.clone();
    let plans: Vec<PlanChoice> = args.plan.clone();
    let mut configs: Vec<(BackendKind, WinogradPolicy, PlanChoice, String)> = Vec::new();
    for kind in &kinds {
        if *kind == BackendKind::Native {
            for &p in &policies {
                for plan in &plans {
                    let mut label = "native".to_string();
                    if policies.len() > 1 {
                        label += &format!("/wino-{}", p.name());
                    }
                    if plans.len() > 1 {
                        label += &format!("/plan-{plan}");
                    }
                    configs.push((*kind, p, plan.clone(), label));
                }
            }
        } else if kind.plan_backend().is_some() {
            for plan in &plans {
                let mut label = kind.name().to_string();
                if plans.len() > 1 {
                    label += &format!("/plan-{plan}");
                }
                configs.push((*kind, WinogradPolicy::Off, plan.clone(), label));
            }
        } else {
            configs.push((
                *kind,
                WinogradPolicy::Off,
                PlanChoice::Off,
                kind.name().to_string(),
            ));
        }
    }
    let mut rows = Vec::new();
    for (kind, winograd, plan_choice, label) in &configs {
        let build = |batch: usize| -> anyhow::Result<Box<dyn resnet_core::backend::Backend>> {
            let plan = crate::tune::resolve_plan(plan_choice, *kind, batch, isa)?;
            let options = BackendOptions {
                isa,
                winograd: *winograd,
                plan: plan.clone(),
            };
            Ok(match (kind, int8_file) {
                (BackendKind::Int8, Some(path)) => crate::model::int8_backend(path, isa, plan)?,
                // With f32 weights, `create` calibrates on the built-in photos and says so.
                _ => kind.create(&weights, &options)?,
            })
        };
        let planned = kind.plan_backend().is_some() && *plan_choice != PlanChoice::Off;
        let shared = if planned { None } else { Some(build(1)?) };
        for &batch in &args.batch {
            let own;
            let backend: &dyn resnet_core::backend::Backend = match shared.as_deref() {
                Some(b) => b,
                None => {
                    own = build(batch)?;
                    own.as_ref()
                }
            };
            let input = ndarray::Array4::<f32>::from_shape_fn(
                (batch, 3, INPUT_SIZE, INPUT_SIZE),
                |(n, c, h, w)| ((n * 7 + c * 13 + h * 3 + w) % 17) as f32 / 8.0 - 1.0,
            );
            let runs = if *kind == BackendKind::Reference {
                args.iters.min(3)
            } else {
                args.iters
            };
            for _ in 0..2.min(runs) {
                backend.forward(input.view(), &mut NoObserver)?;
            }
            let mut times: Vec<f64> = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    backend
                        .forward(input.view(), &mut NoObserver)
                        .map(|_| t.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<Result<_, _>>()?;
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let p90 = times[((times.len() as f64 * 0.9).ceil() as usize).clamp(1, times.len()) - 1];
            let gflops = 2.0 * macs as f64 * batch as f64 / (median / 1e3) / 1e9;
            rows.push(Row {
                backend: label.clone(),
                kernel: backend.describe(),
                batch,
                threads,
                runs,
                median_ms: median,
                p90_ms: p90,
                images_per_s: batch as f64 / (median / 1e3),
                gflops,
                percent_of_peak: 100.0 * gflops
                    / match kind {
                        BackendKind::Int8 => int8_peak,
                        BackendKind::Bf16 => bf16_peak,
                        _ => None,
                    }
                    .unwrap_or(peak),
            });
        }
    }
    let report = Report {
        weights: weights.source().to_string(),
        synthetic_weights: weights.is_synthetic(),
        isa: isa.to_string(),
        threads,
        peak_gflops: peak,
        peak_method:
            "independent FMA chains on every thread at once, best of 3 (resnet_kernels::peak)",
        int8_peak_gops: int8_peak,
        bf16_peak_gflops: bf16_peak,
        rows,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => {
            println!(
                "threads {threads}, isa {isa}, measured FMA peak {peak:.0} GFLOP/s, {:.3} GMACs per image{}",
                macs as f64 / 1e9,
                if report.synthetic_weights { ", synthetic weights" } else { "" }
            );
            if let Some(p) = int8_peak {
                println!(
                    "measured INT8 peak {p:.0} GOP/s ({}): the int8 rows' % peak",
                    resnet_core::quantize::int8_kernel_name(isa)
                );
            }
            if let Some(p) = bf16_peak {
                println!(
                    "measured bf16 peak {p:.0} GFLOP/s ({}): the bf16 rows' % peak",
                    resnet_core::bf16_kernel_name(isa)
                );
            }
            println!(
                "{:<10} {:>5} {:>10} {:>10} {:>9} {:>9} {:>7}",
                "backend", "batch", "median ms", "p90 ms", "images/s", "GFLOP/s", "% peak"
            );
            for r in &report.rows {
                println!(
                    "{:<10} {:>5} {:>10.2} {:>10.2} {:>9.1} {:>9.1} {:>6.1}%",
                    r.backend,
                    r.batch,
                    r.median_ms,
                    r.p90_ms,
                    r.images_per_s,
                    r.gflops,
                    r.percent_of_peak
                );
            }
            // What each row ran (a planned native backend differs per batch: one plan each).
            let mut shown: Vec<(&str, &str)> = Vec::new();
            for r in &report.rows {
                if !shown.contains(&(r.backend.as_str(), r.kernel.as_str())) {
                    shown.push((&r.backend, &r.kernel));
                    println!("{} (batch {}): {}", r.backend, r.batch, r.kernel);
                }
            }
            if configs
                .iter()
                .any(|(k, w, _, _)| *k == BackendKind::Native && *w != WinogradPolicy::Off)
            {
                println!("GFLOP/s count the direct convolution's 1.814 GMACs per image: with Winograd they are effective rates, and % of peak can pass 100%");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
