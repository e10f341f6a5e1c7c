//! The model every command runs: weights resolution, backend construction (INT8 detection
//! included), labels and the ISA, decided here once so that the command modules are leaves.

use crate::args::ModelArgs;
use crate::weights_store::{self, FetchOptions};
use anyhow::{bail, Context};
use resnet_core::backend::{Backend, BackendKind, BackendOptions, Int8Backend};
use resnet_core::cpu::Isa;
use resnet_core::labels::Labels;
use resnet_core::quantize::{calibrate_on_built_in_images, is_int8_file, QuantizedModel};
use resnet_core::weights::{sha256_hex, Weights};
use resnet_server::WeightsIdentity;
use std::path::{Path, PathBuf};

/// A backend ready to run, with the labels that name its outputs.
pub struct Model {
    pub backend: Box<dyn Backend>,
    pub labels: Labels,
    /// The weights file it was built from (after `--weights` / env / cache resolution).
    pub weights_path: PathBuf,
}

/// Loads weights and labels and builds the backend. Every failure here is a configuration error.
pub fn load_model(args: &ModelArgs) -> anyhow::Result<Model> {
    let fetch = FetchOptions::from_args(&args.download)?;
    let path = weights_store::resolve(args.weights.as_deref(), &fetch)?;
    let labels = load_labels(args.labels.as_deref())?;
    let isa = Isa::from_env_or_best()?;
    let backend = match args.backend {
        // One image per forward pass is the common case (classify, cam, trace): the batch-1
        // plan; the server's batches may be larger.
        BackendKind::Int8 => int8_backend(
            &path,
            isa,
            crate::tune::resolve_plan(&args.plan, BackendKind::Int8, 1, isa)?,
        )?,
        kind => {
            let weights = load_f32_weights(&path)?;
            let plan = crate::tune::resolve_plan(&args.plan, kind, 1, isa)?;
            let options = BackendOptions {
                isa,
                winograd: args.winograd,
                plan,
            };
            kind.create_owned(weights, &options)?
        }
    };
    log::debug!("backend {}: {}", backend.name(), backend.describe());
    Ok(Model {
        backend,
        labels,
        weights_path: path,
    })
}

/// `--labels FILE`, else the built-in ImageNet names.
pub fn load_labels(path: Option<&Path>) -> anyhow::Result<Labels> {
    Ok(match path {
        Some(p) => Labels::from_file(p)?,
        None => Labels::imagenet(),
    })
}

/// f32 weights from `path`; an INT8 model file is told apart with the flag that runs it.
pub fn load_f32_weights(path: &Path) -> anyhow::Result<Weights> {
    let weights = match Weights::load(path) {
        Ok(w) => w,
        Err(e) => {
            let quantised = std::fs::read(path).is_ok_and(|b| is_int8_file(&b));
            if quantised {
                bail!(
                    "{}: an INT8 model made by `resnet quantize`: run it with --backend int8",
                    path.display()
                );
            }
            return Err(e.into());
        }
    };
    if weights.is_synthetic() {
        warn_synthetic(&path.display().to_string());
    }
    Ok(weights)
}

/// The one warning for untrained weights, whichever command loads them.
pub fn warn_synthetic(name: &str) {
    log::warn!(
        "{name} holds synthetic weights (seeded random, untrained): predictions are meaningless"
    );
}

/// The `int8` backend for `path`: a quantised model file as is, or f32 weights quantised with
/// the default calibration ([`calibrate_on_built_in_images`], which says so).
pub fn int8_backend(
    path: &Path,
    isa: Isa,
    plan: Option<resnet_core::plan::ActivePlan>,
) -> anyhow::Result<Box<dyn Backend>> {
    let model = quantized_model(path, isa)?;
    Ok(Box::new(Int8Backend::planned(&model, isa, plan)))
}

/// The quantised model in `path`: an INT8 model file as it is, f32 weights calibrated on the
/// built-in photos first (which logs that it does, once, at info).
pub fn quantized_model(path: &Path, isa: Isa) -> anyhow::Result<QuantizedModel> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let name = path.display().to_string();
    if is_int8_file(&bytes) {
        let model = QuantizedModel::from_safetensors_bytes(&bytes, &name)?;
        if model.synthetic {
            warn_synthetic(&name);
        }
        return Ok(model);
    }
    let weights = Weights::from_bytes(&bytes, &name)?;
    if weights.is_synthetic() {
        warn_synthetic(&name);
    }
    Ok(calibrate_on_built_in_images(&weights, isa)?)
}

/// Reads the weights file `load_model` used again, for its digest and its `fc.weight`: the
/// backend keeps only its own prepared copy. Transient: dropped once the caller has what it
/// needs. An INT8 model file has no f32 `fc.weight`, so no activation maps.
pub fn weights_identity(path: &Path) -> anyhow::Result<WeightsIdentity> {
    Ok(weights_identity_and_f32(path)?.0)
}

/// Like [`weights_identity`], also handing back the f32 weights (`None` for an INT8 model
/// file), for what needs more of them than `fc.weight` (the explorer's BasicBlock branches).
pub fn weights_identity_and_f32(path: &Path) -> anyhow::Result<(WeightsIdentity, Option<Weights>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sha256 = sha256_hex(&bytes);
    let name = path.display().to_string();
    if is_int8_file(&bytes) {
        let model = QuantizedModel::from_safetensors_bytes(&bytes, &name)?;
        let identity = WeightsIdentity {
            source: name,
            sha256: Some(sha256),
            synthetic: model.synthetic,
            fc_weight: None,
        };
        return Ok((identity, None));
    }
    let weights = Weights::from_bytes(&bytes, &name)?;
    Ok((WeightsIdentity::of(&weights, Some(sha256)), Some(weights)))
}
