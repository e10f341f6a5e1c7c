//! `resnet`: ResNet-18 image classification on the CPU.
#![forbid(unsafe_code)]

mod args;
mod batch;
mod bench;
mod cam;
mod classify;
mod eval;
mod inputs;
mod inspect;
mod model;
mod quantize;
mod serve;
mod trace;
mod tune;
mod watch;
mod weights_cmd;
mod weights_store;

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

/// Messages go to stderr as `level: message` (`note:` for info). Default level info; `--quiet`
/// errors only; `-v` debug, `-vv` trace; `RUST_LOG` overrides all of it. Colour follows the
/// terminal and honours `NO_COLOR`.
fn init_logging(quiet: bool, verbose: u8) {
    use std::io::Write;
    let level = match (quiet, verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format(|buf, record| {
            let word = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "note",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            let style = buf.default_level_style(record.level());
            writeln!(buf, "{style}{word}{style:#}: {}", record.args())
        })
        .init();
}

fn run(cli: args::Cli) -> anyhow::Result<ExitCode> {
    init_logging(cli.quiet, cli.verbose);
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {n} threads: {e}"))?;
    }
    match cli.command {
        args::Command::Classify(a) => classify::run(a, cli.quiet),
        args::Command::Preprocess(a) => classify::preprocess(a),
        args::Command::Weights(w) => weights_cmd::run(w),
        args::Command::Quantize(a) => quantize::run(a, cli.quiet),
        args::Command::Inspect(a) => inspect::run(a),
        args::Command::Bench(a) => bench::run(a),
        args::Command::Serve(a) => serve::run(a, cli.quiet),
        args::Command::Cam(a) => cam::run(a),
        args::Command::Tune(a) => tune::run(a, cli.quiet),
        args::Command::Trace(a) => trace::run(a),
        args::Command::Eval(a) => eval::run(a, cli.quiet),
        args::Command::Watch(a) => watch::run(a),
        args::Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut args::Cli::command(),
                "resnet",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `resnet ... | head` closes our stdout early: that is success, not an error.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
