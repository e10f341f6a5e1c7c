//! `resnet weights ...`: fetch, convert, describe and create weights files.

use crate::args::{Format, WeightsCommand};
use crate::weights_store::{self, FetchOptions};
use anyhow::Context;
use resnet_core::weights::{read_raw, sha256_hex, synthetic_weights, StoreDtype, Weights};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

pub fn run(cmd: WeightsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WeightsCommand::Fetch { download, force } => {
            let opts = FetchOptions::from_args(&download)?;
            let target = opts.cache_file()?;
            if target.is_file() && !force {
                log::info!("already cached (use --force to download again)");
            } else {
                weights_store::fetch(&opts)?;
            }
            println!("{}", target.display());
            Ok(ExitCode::SUCCESS)
        }
        WeightsCommand::Convert { input, out, dtype } => {
            let bytes = std::fs::read(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let digest = sha256_hex(&bytes);
            let weights = Weights::from_bytes(&bytes, &input.display().to_string())?;
            drop(bytes);
            let weights = weights.with_metadata([("resnet18_rs.source_sha256", digest.as_str())]);
            save(&weights, &out, dtype)?;
            log::info!(
                "wrote {} ({} parameters, {dtype:?}) from {}",
                out.display(),
                weights.parameter_count(),
                input.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        WeightsCommand::Info { file, format } => info(&file, format),
        WeightsCommand::Synth { seed, out, dtype } => {
            save(&synthetic_weights(seed), &out, dtype)?;
            log::info!(
                "wrote {} (synthetic seed {seed}: random, untrained weights for tests and benchmarks)",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes safetensors, or a PyTorch checkpoint when `out` ends in `.pth` / `.pt`.
fn save(weights: &Weights, out: &Path, dtype: StoreDtype) -> anyhow::Result<()> {
    let is_pth = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("pth") || e.eq_ignore_ascii_case("pt"));
    if is_pth {
        resnet_core::weights::write_atomically(out, &weights.to_pth_bytes(dtype))?;
    } else {
        weights.save_safetensors(out, dtype)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Info {
    file: String,
    format: &'static str,
    bytes: u64,
    sha256: String,
    official: String,
    tensors: usize,
    parameters: u64,
    dtypes: BTreeMap<&'static str, usize>,
    batch_norm_statistics: String,
    resnet18: String,
    synthetic: bool,
}

fn info(file: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let source = file.display().to_string();
    let raw = read_raw(&bytes, &source)?;
    let sha256 = sha256_hex(&bytes);
    let m = weights_store::manifest();
    let official = if sha256 == m.sha256 {
        format!("yes: this is {} ({})", m.name, m.url)
    } else if raw.metadata.get("resnet18_rs.source_sha256") == Some(&m.sha256) {
        format!("converted from {} (source SHA-256 matches)", m.name)
    } else {
        format!("no (official SHA-256 starts {})", m.sha256_prefix)
    };
    let is_stat = |k: &str| k.ends_with(".running_mean") || k.ends_with(".running_var");
    let mut dtypes = BTreeMap::new();
    let mut parameters = 0u64;
    for (key, t) in &raw.tensors {
        *dtypes.entry(t.dtype.name()).or_insert(0) += 1;
        if !is_stat(key) && !key.ends_with("num_batches_tracked") {
            parameters += t.shape.iter().product::<usize>() as u64;
        }
    }
    let means = raw
        .tensors
        .keys()
        .filter(|k| k.ends_with(".running_mean"))
        .count();
    let vars = raw
        .tensors
        .keys()
        .filter(|k| k.ends_with(".running_var"))
        .count();
    let batch_norm_statistics = match (means, vars) {
        (0, 0) => "absent (not an inference checkpoint: BatchNorm cannot be folded)".to_string(),
        (m, v) => format!("present ({m} running_mean, {v} running_var)"),
    };
    let synthetic = raw
        .metadata
        .get(resnet_core::weights::META_SYNTHETIC)
        .is_some_and(|v| v == "true");
    let tensors = raw.tensors.len();
    let resnet18 = match Weights::from_raw(raw.tensors, &source, raw.metadata) {
        Ok(_) => "valid torchvision ResNet-18 state dict".to_string(),
        Err(e) => format!("not usable: {e}"),
    };
    let info = Info {
        file: source,
        format: raw.format.name(),
        bytes: bytes.len() as u64,
        sha256,
        official,
        tensors,
        parameters,
        dtypes,
        batch_norm_statistics,
        resnet18,
        synthetic,
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&info)?),
        Format::Text => {
            let dtypes: Vec<String> = info
                .dtypes
                .iter()
                .map(|(d, n)| format!("{d} x{n}"))
                .collect();
            println!("file        {}", info.file);
            println!("format      {}", info.format);
            println!("size        {} bytes", info.bytes);
            println!("sha256      {}", info.sha256);
            println!("official    {}", info.official);
            println!("tensors     {}", info.tensors);
            println!("parameters  {}", info.parameters);
            println!("dtypes      {}", dtypes.join(", "));
            println!("batchnorm   {}", info.batch_norm_statistics);
            println!("resnet-18   {}", info.resnet18);
            if info.synthetic {
                println!("synthetic   yes: seeded random weights, predictions are meaningless");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
