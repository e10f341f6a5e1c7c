//! `resnet weights ...`: create, convert and describe weights files.

use crate::args::WeightsCommand;
use resnet_core::weights::{synthetic_weights, StoreDtype};
use std::process::ExitCode;

pub fn run(cmd: WeightsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WeightsCommand::Synth { seed, out, dtype } => {
            let dtype: StoreDtype = dtype.parse().map_err(anyhow::Error::msg)?;
            synthetic_weights(seed).save_safetensors(&out, dtype)?;
            eprintln!(
                "wrote {} (synthetic seed {seed}: random, untrained weights for tests and benchmarks)",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
