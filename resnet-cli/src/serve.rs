//! `resnet serve`: the HTTP service of `resnet-server`, with the model the CLI loads.

use crate::args::{ModelArgs, ServeArgs};
use crate::model::{load_model, weights_identity_and_f32};
use anyhow::{bail, Context};
use resnet_core::trace::branches::BlockWeights;
use resnet_server::{Config, ServedModel};
use std::process::ExitCode;
use std::time::Duration;

/// Classes per `--watch` event (the web page's panel shows them).
const WATCH_TOP_K: usize = 5;

pub fn run(args: ServeArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let mut config = config(&args)?;
    config.log_requests = !quiet;
    let threads = rayon::current_num_threads();
    let specs = crate::watch::parse_sources(&args.watch)?;
    let mut model = served_model(&args.model, threads)?;
    if !specs.is_empty() {
        let (options, filter) = args.watch_sources.settings(crate::watch::SettingsFor {
            decode: resnet_core::decode::DecodeOptions {
                max_pixels: config.max_pixels,
                exif: config.exif,
            },
            labels: &model.labels,
            top_k: WATCH_TOP_K,
            logits: false,
            keep_images: true,
            http_timeout_s: args.watch_timeout_s,
            http_timeout_flag: "--watch-timeout-s",
        })?;
        config.watch = Some(resnet_server::watch::WatchConfig {
            sources: specs,
            options,
            filter,
        });
    }
    for name in &args.trace_backend {
        let mut other = args.model.clone();
        other.backend = *name;
        let backend = load_model(&other)
            .with_context(|| format!("building --trace-backend {name}"))?
            .backend;
        model = model.with_other_backend(std::sync::Arc::from(backend));
    }
    resnet_server::run(config, model, threads)?;
    Ok(ExitCode::SUCCESS)
}

/// The model as `classify` loads it, plus what the server shows about its weights file
/// (SHA-256, synthetic or not), the `fc.weight` class activation maps need and, from f32
/// weights, the folded block weights `/v1/trace?block=` recomputes BasicBlocks with.
pub fn served_model(args: &ModelArgs, threads: usize) -> anyhow::Result<ServedModel> {
    let model = load_model(args)?;
    let (identity, f32_weights) = weights_identity_and_f32(&model.weights_path)?;
    let isa = resnet_core::cpu::Isa::from_env_or_best()?;
    let served = ServedModel::new(model.backend, model.labels, identity, isa, threads);
    Ok(match f32_weights {
        Some(w) => served.with_block_weights(BlockWeights::new(&w)),
        None => served,
    })
}

/// `--addr`, else `0.0.0.0:$PORT` when PORT is set (container platforms), else 127.0.0.1:8080.
fn listen_addr(
    addr: Option<std::net::SocketAddr>,
    port: Option<&str>,
) -> anyhow::Result<std::net::SocketAddr> {
    if let Some(a) = addr {
        return Ok(a);
    }
    match port.map(str::trim).filter(|p| !p.is_empty()) {
        None => Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 8080))),
        Some(p) => {
            let port: u16 = p
                .parse()
                .with_context(|| format!("the environment's PORT '{p}' is not a port number"))?;
            Ok(std::net::SocketAddr::from(([0, 0, 0, 0], port)))
        }
    }
}

fn positive_secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v > 0.0 && v.is_finite()) {
        bail!("--{name} must be a positive number, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn config(args: &ServeArgs) -> anyhow::Result<Config> {
    if !(args.batch_wait_ms >= 0.0 && args.batch_wait_ms.is_finite()) {
        bail!(
            "--batch-wait-ms must be zero or positive, got {}",
            args.batch_wait_ms
        );
    }
    if !(args.max_body_mb > 0.0 && args.max_body_mb <= 4096.0) {
        bail!(
            "--max-body-mb must be in (0, 4096], got {}",
            args.max_body_mb
        );
    }
    if !(args.max_megapixels > 0.0 && args.max_megapixels.is_finite()) {
        bail!(
            "--max-megapixels must be a positive number, got {}",
            args.max_megapixels
        );
    }
    let token = match &args.token {
        Some(t) => Some(t.clone()),
        None => std::env::var("RESNET_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    if !(args.drain_s >= 0.0 && args.drain_s <= 3600.0) {
        bail!("--drain-s must be from 0 to 3600, got {}", args.drain_s);
    }
    let defaults = Config::default();
    let config = Config {
        addr: listen_addr(args.addr, std::env::var("PORT").ok().as_deref())?,
        deepstack_port: args.deepstack_port,
        log_format: args.log_format,
        cors_origin: args.cors_origin.clone(),
        mqtt: args.mqtt_url.clone(),
        drain: Duration::from_secs_f64(args.drain_s),
        max_batch: args.max_batch as usize,
        batch_wait: Duration::from_secs_f64(args.batch_wait_ms / 1e3),
        queue: args.queue as usize,
        max_body_bytes: (args.max_body_mb * (1 << 20) as f64) as usize,
        max_pixels: (args.max_megapixels * 1e6) as u64,
        timeout: positive_secs("timeout-s", args.timeout_s)?,
        max_connections: args.max_connections as usize,
        header_read_timeout: positive_secs("header-timeout-s", args.header_timeout_s)?,
        token,
        history: args.history,
        history_file: args.history_file.clone(),
        exif: args.exif.into(),
        write_timeout: positive_secs("write-timeout-s", args.write_timeout_s)?,
        max_requests_per_connection: args.max_requests_per_connection as usize,
        max_inflight_bytes: u64::from(args.max_inflight_mb) << 20,
        max_concurrent_decodes: args
            .max_decodes
            .map_or(defaults.max_concurrent_decodes, |n| n as usize),
        ..defaults
    };
    config.validate()?;
    Ok(config)
}
