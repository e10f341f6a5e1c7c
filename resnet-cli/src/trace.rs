//! `resnet trace`: one image through the network, layer by layer — what a student reads next
//! to the layer table of `resnet inspect`.

use crate::args::{Format, TraceArgs};
use crate::model::load_model;
use anyhow::Context;
use ndarray::{ArrayD, Axis};
use resnet_core::backend::{Backend, LayerEvent, LayerObserver};
use resnet_core::input::{load_input, write_npy};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;

/// One trace point as observed.
struct Point {
    name: String,
    shape: Vec<usize>,
    elapsed: Duration,
    output: ArrayD<f32>,
}

#[derive(Default)]
struct Recorder(Vec<Point>);

impl LayerObserver for Recorder {
    fn wants_outputs(&self) -> bool {
        true
    }

    fn on_layer(&mut self, e: &LayerEvent<'_>) {
        self.0.push(Point {
            name: e.name.to_string(),
            shape: e.shape.clone(),
            elapsed: e.elapsed,
            output: e
                .output
                .as_ref()
                .map(|o| o.to_owned())
                .unwrap_or_else(|| ArrayD::zeros(vec![0])),
        });
    }
}

/// Activation statistics of one layer's output.
#[derive(Serialize)]
struct Stats {
    min: f32,
    max: f32,
    mean: f64,
    std: f64,
    /// Fraction of exact zeros (what ReLU switched off).
    zeros: f64,
}

fn stats(values: &ArrayD<f32>) -> Stats {
    let n = values.len().max(1) as f64;
    let (mut min, mut max, mut sum, mut zeros) = (f32::INFINITY, f32::NEG_INFINITY, 0.0f64, 0usize);
    for &v in values {
        min = min.min(v);
        max = max.max(v);
        sum += v as f64;
        zeros += (v == 0.0) as usize;
    }
    let mean = sum / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    Stats {
        min,
        max,
        mean,
        std: var.sqrt(),
        zeros: zeros as f64 / n,
    }
}

/// How far `x` is from `reference`: the largest absolute difference, and the signal-to-
/// quantisation-noise ratio `10 log10(sum ref^2 / sum (ref - x)^2)` in dB (infinite when equal).
#[derive(Serialize)]
struct Comparison {
    max_abs_error: f32,
    sqnr_db: f64,
}

fn compare(reference: &ArrayD<f32>, x: &ArrayD<f32>) -> Comparison {
    let (mut signal, mut noise, mut max) = (0.0f64, 0.0f64, 0.0f32);
    for (&r, &v) in reference.iter().zip(x) {
        signal += (r as f64).powi(2);
        noise += (r as f64 - v as f64).powi(2);
        max = max.max((r - v).abs());
    }
    Comparison {
        max_abs_error: max,
        sqnr_db: if noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (signal / noise).log10()
        },
    }
}

#[derive(Serialize)]
struct Row {
    layer: String,
    shape: Vec<usize>,
    ms: f64,
    #[serde(flatten)]
    stats: Stats,
    #[serde(skip_serializing_if = "Option::is_none")]
    versus: Option<Comparison>,
}

fn record(backend: &dyn Backend, input: &ndarray::Array4<f32>) -> anyhow::Result<Recorder> {
    let mut rec = Recorder::default();
    backend.forward(input.view(), &mut rec)?;
    Ok(rec)
}

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let opts = args.decode.options()?;
    let model = load_model(&args.model)?;
    let input = load_input(&args.input, &opts)?.insert_axis(Axis(0));
    let rec = record(model.backend.as_ref(), &input)?;
    let other = match &args.compare {
        Some(kind) => {
            let mut other_args = args.model.clone();
            other_args.backend = *kind;
            let other = load_model(&other_args)?;
            Some((
                other.backend.name(),
                record(other.backend.as_ref(), &input)?,
            ))
        }
        None => None,
    };
    if let Some(dir) = &args.dump {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (i, p) in rec.0.iter().enumerate() {
            let path = dir.join(format!("{:02}_{}.npy", i + 1, p.name));
            write_npy(&path, &p.output.view())?;
        }
        log::info!("wrote {} layer outputs to {}", rec.0.len(), dir.display());
    }
    let rows: Vec<Row> = rec
        .0
        .iter()
        .map(|p| Row {
            layer: p.name.clone(),
            shape: p.shape.clone(),
            ms: p.elapsed.as_secs_f64() * 1e3,
            stats: stats(&p.output),
            versus: other.as_ref().and_then(|(_, o)| {
                o.0.iter()
                    .find(|q| q.name == p.name)
                    .map(|q| compare(&q.output, &p.output))
            }),
        })
        .collect();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Text => {
            println!(
                "backend {} on {}{}",
                model.backend.name(),
                args.input.display(),
                other
                    .as_ref()
                    .map(|(n, _)| format!(", compared with {n}"))
                    .unwrap_or_default()
            );
            print!(
                "{:<10} {:<16} {:>8} {:>10} {:>10} {:>10} {:>10} {:>7}",
                "layer", "shape", "ms", "min", "max", "mean", "std", "zeros"
            );
            if other.is_some() {
                print!(" {:>12} {:>9}", "max|err|", "SQNR dB");
            }
            println!();
            for r in &rows {
                let shape: Vec<String> = r.shape.iter().map(|d| d.to_string()).collect();
                print!(
                    "{:<10} {:<16} {:>8.3} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>6.1}%",
                    r.layer,
                    shape.join("x"),
                    r.ms,
                    r.stats.min,
                    r.stats.max,
                    r.stats.mean,
                    r.stats.std,
                    100.0 * r.stats.zeros
                );
                if let Some(c) = &r.versus {
                    print!(" {:>12.3e} {:>9.1}", c.max_abs_error, c.sqnr_db);
                }
                println!();
            }
            let total: f64 = rows.iter().map(|r| r.ms).sum();
            println!("total {total:.2} ms");
        }
    }
    Ok(ExitCode::SUCCESS)
}
