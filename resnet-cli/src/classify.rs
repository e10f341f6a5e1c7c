//! `resnet classify` and `resnet preprocess`.

use crate::args::{ClassifyArgs, ClassifyFormat, PreprocessArgs};
use crate::model::load_model;
use anyhow::Context;
use ndarray::Axis;
use resnet_core::input::{load_input, write_npy};
use resnet_core::postprocess::{top_k, Prediction};
use serde::Serialize;
use std::io::Write;
use std::process::ExitCode;

#[derive(Serialize)]
struct JsonResult<'a> {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    predictions: Option<&'a [Prediction]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

pub fn run(args: ClassifyArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let opts = args.decode.options()?;
    let model = load_model(&args.model)?;
    let plan = crate::batch::plan(&args)?;
    let inputs = plan.inputs;
    log::debug!(
        "{} inputs, batches of {}, backend {}",
        inputs.len(),
        args.batch_size,
        model.backend.name()
    );
    let format = plan.format;
    let mut out = std::io::BufWriter::new(plan.sink);
    let k = args.top_k as usize;
    let bar = crate::inputs::progress_bar(inputs.len(), quiet, "images");
    let mut csv_out = (format == ClassifyFormat::Csv).then(|| csv_header(k));
    if let Some(header) = csv_out.take() {
        out.write_all(&header)?;
    }
    if format == ClassifyFormat::Json {
        writeln!(out, "[")?;
    }
    let mut failed = 0usize;
    let mut done = 0usize;
    let streaming = matches!(format, ClassifyFormat::Jsonl | ClassifyFormat::Csv);
    crate::inputs::run_batches(
        &model,
        &inputs,
        args.batch_size as usize,
        &opts,
        |outcome| {
            let preds = outcome
                .result
                .as_ref()
                .map(|logits| top_k(logits, k, &model.labels));
            if let Err(e) = &outcome.result {
                failed += 1;
                bar.suspend(|| eprintln!("{e}"));
            }
            let json = || JsonResult {
                path: outcome.path.display().to_string(),
                predictions: preds.as_ref().ok().map(Vec::as_slice),
                logits: args
                    .logits
                    .then_some(outcome.result.as_ref().ok().map(Vec::as_slice))
                    .flatten(),
                error: outcome.result.as_ref().err().map(String::as_str),
            };
            match format {
                ClassifyFormat::Text => {
                    // A failed input was reported on stderr already: stdout carries data only.
                    if let Ok(preds) = &preds {
                        print_text(&mut out, &outcome.path, preds)?;
                    }
                }
                ClassifyFormat::Json => {
                    if done > 0 {
                        writeln!(out, ",")?;
                    }
                    serde_json::to_writer_pretty(&mut out, &json())?;
                }
                ClassifyFormat::Jsonl => {
                    serde_json::to_writer(&mut out, &json())?;
                    writeln!(out)?;
                }
                ClassifyFormat::Csv => {
                    out.write_all(&csv_row(&outcome.path, &preds, k)?)?;
                }
            }
            if streaming {
                out.flush()?;
            }
            done += 1;
            bar.inc(1);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    if format == ClassifyFormat::Json {
        if done > 0 {
            writeln!(out)?;
        }
        writeln!(out, "]")?;
    }
    out.flush()?;
    if failed > 0 {
        log::warn!("{failed} of {} inputs failed", inputs.len());
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `path,error,index_1,label_1,probability_1,...` up to `k`.
fn csv_header(k: usize) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["path".to_string(), "error".to_string()];
    for r in 1..=k {
        header.extend([
            format!("index_{r}"),
            format!("label_{r}"),
            format!("probability_{r}"),
        ]);
    }
    w.write_record(&header).expect("in-memory CSV");
    w.into_inner().expect("in-memory CSV")
}

fn csv_row(
    path: &std::path::Path,
    preds: &Result<Vec<Prediction>, &String>,
    k: usize,
) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut row = vec![path.display().to_string()];
    match preds {
        Ok(preds) => {
            row.push(String::new());
            for p in preds {
                row.extend([
                    p.index.to_string(),
                    p.label.clone(),
                    format!("{:.6}", p.probability),
                ]);
            }
        }
        Err(e) => {
            row.push(e.to_string());
            row.extend(std::iter::repeat_n(String::new(), 3 * k));
        }
    }
    w.write_record(&row)?;
    Ok(w.into_inner()?)
}

fn print_text(
    out: &mut impl Write,
    path: &std::path::Path,
    preds: &[Prediction],
) -> std::io::Result<()> {
    writeln!(out, "{}", path.display())?;
    for p in preds {
        writeln!(
            out,
            "  {:>2}. {:>6.2}%  {:<4} {}",
            p.rank,
            100.0 * p.probability,
            p.index,
            p.label
        )?;
    }
    Ok(())
}

pub fn preprocess(args: PreprocessArgs) -> anyhow::Result<ExitCode> {
    let opts = args.decode.options()?;
    let input = load_input(&args.input, &opts)?;
    let batch = input.insert_axis(Axis(0));
    write_npy(&args.out, &batch.view())
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(ExitCode::SUCCESS)
}
