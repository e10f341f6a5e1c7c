//! `resnet`: ResNet-18 image classification on the CPU.
#![forbid(unsafe_code)]

mod args;
mod bench;
mod cam;
mod classify;
mod inspect;
mod serve;
mod weights_cmd;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: args::Cli) -> anyhow::Result<ExitCode> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {n} threads: {e}"))?;
    }
    match cli.command {
        args::Command::Classify(a) => classify::run(a),
        args::Command::Preprocess(a) => classify::preprocess(a),
        args::Command::Weights(w) => weights_cmd::run(w),
        args::Command::Inspect(a) => inspect::run(a),
        args::Command::Bench(a) => bench::run(a),
        args::Command::Serve(a) => serve::run(a),
        args::Command::Cam(a) => cam::run(a),
    }
}

/// `resnet ... | head` closes our stdout early: that is success, not an error.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
