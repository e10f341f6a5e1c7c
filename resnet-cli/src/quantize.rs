//! `resnet quantize`: calibrate f32 weights on images and write an INT8 model file.

use crate::args::QuantizeArgs;
use crate::inputs::Input;
use anyhow::bail;
use ndarray::{Array2, Array3, ArrayView3, Axis};
use resnet_core::backend::{
    Backend, BackendKind, BackendOptions, Int8Backend, LayerEvent, LayerObserver, NoObserver,
    WinogradPolicy,
};
use resnet_core::cpu::Isa;
use resnet_core::decode::{decode_image_file, DecodeOptions};
use resnet_core::preprocess::preprocess;
use resnet_core::quantize::{augmented_inputs, calibrate, sqnr_db, Agreement, LayerPrecision};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The calibration images: the same expansion as `classify` (files, directories searched
/// recursively, glob patterns), keeping image files; a missing input is an error here, since
/// the calibration set decides the model.
fn calibration_files(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in crate::inputs::expand(args) {
        match input {
            Input::File(f) if resnet_core::decode::has_image_extension(&f) || args.contains(&f) => {
                files.push(f)
            }
            Input::File(_) => {}
            Input::Problem(p, why) => bail!("--calib {}: {why}", p.display()),
        }
    }
    if files.is_empty() {
        bail!("--calib: no image files found in {args:?}");
    }
    Ok(files)
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

pub fn run(args: QuantizeArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let method = args.method;
    let stem: LayerPrecision = args.stem.into();
    let fetch = crate::weights_store::FetchOptions::from_args(&args.download)?;
    let path = crate::weights_store::resolve(args.weights.as_deref(), &fetch)?;
    let weights = crate::model::load_f32_weights(&path)?;
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
                log::warn!("{e} (skipped)");
                failed += 1;
            }
        }
    }
    if inputs.is_empty() {
        bail!("no calibration image could be decoded");
    }
    log::info!(
        "{} images ({} skipped), {} inputs with {} augmented crops each, method {method}, stem {:?}",
        files.len() - failed,
        failed,
        inputs.len(),
        args.crops,
        stem
    );
    let bar = crate::inputs::progress_bar(inputs.len(), quiet, "inputs calibrated");
    let mut progress = |done: usize, _total: usize| bar.set_position(done as u64);
    let model = calibrate(&weights, &inputs, method, stem, isa, &mut progress)?;
    bar.finish_and_clear();
    model.save(&args.out)?;

    // How far INT8 is from f32 on the calibration inputs (not a held-out set: an optimistic
    // figure; `cargo test -p resnet-core --test int8` measures on held-out crops).
    let native = BackendKind::Native.create(
        &weights,
        &BackendOptions {
            isa,
            winograd: WinogradPolicy::Off,
            plan: None,
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
