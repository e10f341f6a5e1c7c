//! `resnet classify` and `resnet preprocess`.

use crate::args::{ClassifyArgs, DecodeArgs, ExifArg, Format, ModelArgs, PreprocessArgs};
use anyhow::{bail, Context};
use ndarray::{Array3, Array4, Axis};
use rayon::prelude::*;
use resnet_core::backend::{Backend, BackendKind, BackendOptions, NoObserver};
use resnet_core::decode::{DecodeOptions, ExifMode};
use resnet_core::input::{load_input, write_npy};
use resnet_core::labels::Labels;
use resnet_core::postprocess::{top_k, Prediction};
use resnet_core::weights::Weights;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A backend ready to run, with the labels that name its outputs.
pub struct Model {
    pub backend: Box<dyn Backend>,
    pub labels: Labels,
}

/// Finds the weights file: `--weights`, else `$RESNET_WEIGHTS`.
pub fn weights_path(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os("RESNET_WEIGHTS") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => bail!(
            "no weights given: pass --weights FILE.safetensors or set RESNET_WEIGHTS.\n\
             The official torchvision weights (resnet18-f37072fd.pth, converted to safetensors) \
             give real predictions; to try the tool without them, create synthetic \
             (random, untrained) weights with:\n    resnet weights synth --seed 0 --out synth.safetensors"
        ),
    }
}

/// Loads weights and labels and builds the backend. Every failure here is a configuration error.
pub fn load_model(args: &ModelArgs) -> anyhow::Result<Model> {
    let kind: BackendKind = args.backend.parse()?;
    let path = weights_path(args.weights.as_deref())?;
    if kind == BackendKind::Int8 {
        return crate::quantize::load_model(args, &path);
    }
    let weights = Weights::load(&path)?;
    if weights.is_synthetic() {
        eprintln!(
            "warning: {} holds synthetic weights (seeded random, untrained): predictions are meaningless",
            path.display()
        );
    }
    let labels = match &args.labels {
        Some(p) => Labels::from_file(p)?,
        None => Labels::imagenet(),
    };
    let isa = resnet_core::cpu::Isa::from_env_or_best()?;
    let backend = kind.create(&weights, &BackendOptions { isa })?;
    Ok(Model { backend, labels })
}

pub fn decode_options(args: &DecodeArgs) -> anyhow::Result<DecodeOptions> {
    if !(args.max_megapixels > 0.0 && args.max_megapixels.is_finite()) {
        bail!(
            "--max-megapixels must be a positive number, got {}",
            args.max_megapixels
        );
    }
    Ok(DecodeOptions {
        max_pixels: (args.max_megapixels * 1e6) as u64,
        exif: match args.exif {
            ExifArg::Apply => ExifMode::Apply,
            ExifArg::Ignore => ExifMode::Ignore,
        },
    })
}

#[derive(Serialize)]
struct JsonResult<'a> {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    predictions: Option<&'a [Prediction]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The outcome for one input.
struct Outcome {
    path: PathBuf,
    result: Result<(Vec<Prediction>, Vec<f32>), String>,
}

pub fn run(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    let opts = decode_options(&args.decode)?;
    let model = load_model(&args.model)?;
    let mut stdout = std::io::stdout().lock();
    let mut json: Vec<serde_json::Value> = Vec::new();
    let mut failed = 0usize;
    for chunk in args.inputs.chunks(args.batch_size as usize) {
        for outcome in classify_chunk(&model, chunk, &opts, args.top_k as usize) {
            if let Err(e) = &outcome.result {
                failed += 1;
                eprintln!("{e}");
            }
            match args.format {
                Format::Text => print_text(&mut stdout, &outcome)?,
                Format::Json => {
                    let item = match &outcome.result {
                        Ok((preds, logits)) => JsonResult {
                            path: outcome.path.display().to_string(),
                            predictions: Some(preds),
                            logits: args.logits.then_some(logits.as_slice()),
                            error: None,
                        },
                        Err(e) => JsonResult {
                            path: outcome.path.display().to_string(),
                            predictions: None,
                            logits: None,
                            error: Some(e.clone()),
                        },
                    };
                    json.push(serde_json::to_value(item)?);
                }
            }
        }
    }
    if args.format == Format::Json {
        serde_json::to_writer_pretty(&mut stdout, &json)?;
        writeln!(stdout)?;
    }
    stdout.flush()?;
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Decodes a chunk of inputs in parallel, runs the good ones as one batch, and returns one
/// outcome per input in input order.
fn classify_chunk(
    model: &Model,
    chunk: &[PathBuf],
    opts: &DecodeOptions,
    k: usize,
) -> Vec<Outcome> {
    let loaded: Vec<Result<Array3<f32>, String>> = chunk
        .par_iter()
        .map(|p| load_input(p, opts).map_err(|e| e.to_string()))
        .collect();
    let good: Vec<_> = loaded.iter().filter_map(|r| r.as_ref().ok()).collect();
    let logits = if good.is_empty() {
        None
    } else {
        let views: Vec<_> = good.iter().map(|a| a.view().insert_axis(Axis(0))).collect();
        let batch: Array4<f32> = ndarray::concatenate(Axis(0), &views).expect("same shapes");
        Some(
            model
                .backend
                .forward(batch.view(), &mut NoObserver)
                .map_err(|e| e.to_string()),
        )
    };
    let mut row = 0;
    chunk
        .iter()
        .zip(loaded)
        .map(|(path, input)| {
            let result = match (input, &logits) {
                (Err(e), _) => Err(e),
                (Ok(_), Some(Ok(l))) => {
                    let r = l.row(row).to_vec();
                    row += 1;
                    Ok((top_k(&r, k, &model.labels), r))
                }
                (Ok(_), Some(Err(e))) => Err(format!("{}: {e}", path.display())),
                (Ok(_), None) => unreachable!("a good input makes a batch"),
            };
            Outcome {
                path: path.clone(),
                result,
            }
        })
        .collect()
}

fn print_text(out: &mut impl Write, outcome: &Outcome) -> std::io::Result<()> {
    // A failed input was reported on stderr already: stdout carries data only.
    if let Ok((preds, _)) = &outcome.result {
        writeln!(out, "{}", outcome.path.display())?;
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
    }
    Ok(())
}

pub fn preprocess(args: PreprocessArgs) -> anyhow::Result<ExitCode> {
    let opts = decode_options(&args.decode)?;
    let input = load_input(&args.input, &opts)?;
    let batch = input.insert_axis(Axis(0));
    write_npy(&args.out, &batch).with_context(|| format!("writing {}", args.out.display()))?;
    Ok(ExitCode::SUCCESS)
}
