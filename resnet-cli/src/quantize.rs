//! `resnet quantize`, and loading the `int8` backend for `classify` (from a quantised model
//! file, or from f32 weights quantised on the fly).

use crate::args::QuantizeArgs;
use crate::classify::Model;
use anyhow::{bail, Context};
use ndarray::{Array2, Array3, ArrayView3, Axis};
use resnet_core::backend::{
    Backend, BackendKind, BackendOptions, Int8Backend, LayerEvent, LayerObserver, NoObserver,
    WinogradPolicy,
};
use resnet_core::cpu::Isa;
use resnet_core::decode::{decode_image_file, DecodeOptions};
use resnet_core::labels::Labels;
use resnet_core::preprocess::preprocess;
use resnet_core::quantize::{
    augmented_inputs, calibrate, is_int8_file, sqnr_db, Agreement, CalibrationMethod,
    LayerPrecision, QuantizedModel, DEFAULT_METHOD,
};
use resnet_core::weights::Weights;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The `int8` backend for `path`: a quantised model file as is, or f32 weights quantised with
/// the default calibration (and a note saying so).
pub fn int8_backend(path: &Path, isa: Isa) -> anyhow::Result<Box<dyn Backend>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let name = path.display().to_string();
    if is_int8_file(&bytes) {
        let model = QuantizedModel::from_safetensors_bytes(&bytes, &name)?;
        if model.synthetic {
            eprintln!("warning: {name} was quantised from synthetic weights (seeded random, untrained): predictions are meaningless");
        }
        return Ok(Box::new(Int8Backend::new(&model, isa)));
    }
    let weights = Weights::from_bytes(&bytes, &name)?;
    if weights.is_synthetic() {
        eprintln!("warning: {name} holds synthetic weights (seeded random, untrained): predictions are meaningless");
    }
    log::info!(
        "{name} holds f32 weights: quantising them on the fly with the default calibration \
         ({DEFAULT_METHOD} on the built-in photos and crops); `resnet quantize --calib DIR` calibrates on your own images"
    );
    Ok(Box::new(Int8Backend::from_weights(&weights, isa)?))
}

/// `classify --backend int8`.
pub fn load_model(args: &crate::args::ModelArgs, path: &Path) -> anyhow::Result<Model> {
    let labels = match &args.labels {
        Some(p) => Labels::from_file(p)?,
        None => Labels::imagenet(),
    };
    let isa = Isa::from_env_or_best()?;
    Ok(Model {
        backend: int8_backend(path, isa)?,
        labels,
    })
}

fn is_image_name(p: &Path) -> bool {
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    matches!(
        ext.as_str(),
        "jpg" | "jpeg" | "png" | "webp" | "gif" | "bmp" | "tif" | "tiff"
    )
}

/// The calibration images: files as given, directories' image files (sorted, not recursive).
fn calibration_files(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in args {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{}: cannot list", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && is_image_name(f))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        bail!("--calib: no image files found in {args:?}");
    }
    Ok(files)
}

fn progress_bar(done: usize, total: usize) {
    let width = 30;
    let filled = width * done / total.max(1);
    eprint!(
        "\rcalibrating [{}{}] {done}/{total}",
        "#".repeat(filled),
        " ".repeat(width - filled)
    );
    if done == total {
        eprintln!();
    }
}

#[derive(Default)]
struct Capture(Vec<(String, Vec<f32>)>);

impl LayerObserver for Capture {
    fn wants_outputs(&self) -> bool {
        true
    }
    fn on_layer(&mut self, e: &LayerEvent<'_>) {
        if let Some(out) = &e.output {
            self.0
                .push((e.name.to_string(), out.iter().copied().collect()));
        }
    }
}

fn run_all(backend: &dyn Backend, inputs: &[Array3<f32>]) -> anyhow::Result<Array2<f32>> {
    let mut rows = Vec::new();
    for chunk in inputs.chunks(8) {
        let views: Vec<ArrayView3<'_, f32>> = chunk.iter().map(|a| a.view()).collect();
        let batch = ndarray::stack(Axis(0), &views)?;
        rows.push(backend.forward(batch.view(), &mut NoObserver)?);
    }
    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
    Ok(ndarray::concatenate(Axis(0), &views)?)
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<ExitCode> {
    let method: CalibrationMethod = args.method.parse().map_err(anyhow::Error::msg)?;
    let stem = match args.stem.as_str() {
        "int8" => LayerPrecision::Int8,
        "f32" => LayerPrecision::F32,
        other => bail!("--stem {other}: use int8 or f32"),
    };
    let fetch = crate::weights_store::FetchOptions::new(None, None, false, false, 30)?;
    let path = crate::weights_store::resolve(args.weights.as_deref(), &fetch)?;
    let weights = Weights::load(&path)?;
    if weights.is_synthetic() {
        log::warn!(
            "{} holds synthetic weights (seeded random, untrained): the quantised model predicts nothing meaningful",
            path.display()
        );
    }
    let isa = Isa::from_env_or_best()?;
    let files = calibration_files(&args.calib)?;
    let mut inputs = Vec::new();
    let mut failed = 0;
    for (i, f) in files.iter().enumerate() {
        match decode_image_file(f, &DecodeOptions::default()) {
            Ok(img) => {
                inputs.push(preprocess(&img.rgb));
                inputs.extend(augmented_inputs(&img.rgb, args.crops, i as u64));
            }
            Err(e) => {
                eprintln!("{e} (skipped)");
                failed += 1;
            }
        }
    }
    if inputs.is_empty() {
        bail!("no calibration image could be decoded");
    }
    eprintln!(
        "{} images ({} skipped), {} inputs with {} augmented crops each, method {method}, stem {}",
        files.len() - failed,
        failed,
        inputs.len(),
        args.crops,
        args.stem
    );
    let model = calibrate(&weights, &inputs, method, stem, isa, &mut progress_bar)?;
    model.save(&args.out)?;

    // How far INT8 is from f32 on the calibration inputs (not a held-out set: an optimistic
    // figure; `cargo test -p resnet-core --test int8` measures on held-out crops).
    let native = BackendKind::Native.create(
        &weights,
        &BackendOptions {
            isa,
            winograd: WinogradPolicy::Off,
        },
    )?;
    let int8 = Int8Backend::new(&model, isa);
    let agreement = Agreement::compute(
        &run_all(native.as_ref(), &inputs)?,
        &run_all(&int8, &inputs)?,
    );
    let probe: Vec<_> = inputs[..inputs.len().min(4)]
        .iter()
        .map(|a| a.view())
        .collect();
    let batch = ndarray::stack(Axis(0), &probe)?;
    let (mut want, mut got) = (Capture::default(), Capture::default());
    native.forward(batch.view(), &mut want)?;
    int8.forward(batch.view(), &mut got)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {} ({} bytes): {}",
        args.out.display(),
        std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0),
        int8.describe()
    )?;
    writeln!(out, "int8 vs f32 on the calibration inputs: {agreement}")?;
    writeln!(
        out,
        "SQNR of int8 vs f32 per trace point ({} inputs):",
        probe.len()
    )?;
    for ((name, w), (_, g)) in want.0.iter().zip(&got.0) {
        writeln!(out, "  {name:<10} {:6.1} dB", sqnr_db(w, g))?;
    }
    Ok(ExitCode::SUCCESS)
}
