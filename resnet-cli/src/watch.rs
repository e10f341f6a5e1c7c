//! `resnet watch`: the watcher engine (crate `resnet-watch`) with the model, output, alert
//! actions and signals of the command line.

use crate::args::{DecodeArgs, ModelArgs};
use anyhow::Context;
use clap::{Args, ValueEnum};
use resnet_server::mqtt::Publisher;
use resnet_watch::alert::Actions;
use resnet_watch::webhook::Webhook;
use resnet_watch::{AlertRule, EventFilter, SourceSpec, WatchOptions, Watcher};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub const AFTER_HELP: &str = "Examples:
  resnet watch /srv/ftp/cam1                       # new snapshots dropped into a folder
  resnet watch http://cam.local/video.mjpg --fps 2 --motion 0.02
  resnet watch http://cam.local/snapshot.jpg --fps 0.5
  resnet watch front=rtsp://user:pass@cam.local/stream1 --alert person,dog --min-prob 0.6 \\
      --webhook http://127.0.0.1:9000/hook --save-dir alerts/
  resnet watch clip.mp4 --fps 1 --format text
  resnet watch front=rtsp://cam.local/stream1 --on-change --mqtt-url mqtt://broker.lan/resnet/front

Events are JSON lines on stdout (or text); problems with a frame are error events and the
watcher goes on. Ctrl-C or SIGTERM stops it with the output flushed. Exit code: 0, 1 when some
frames failed, 2 for a configuration error.";

/// Output formats of `watch`: one line per event, flushed as it happens.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFormat {
    Jsonl,
    Text,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// What to watch: a folder, an http(s) URL (MJPEG or snapshot), rtsp://..., a video file,
    /// a V4L2 device, or ffmpeg:INPUT for anything else ffmpeg reads. NAME=SOURCE names it in
    /// events.
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
    #[command(flatten)]
    pub gating: SourceArgs,
    /// POST each reported frame's event as JSON to this URL (in the background, with retries).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Save each reported frame as a JPEG in this folder (the event says where).
    #[arg(long, value_name = "DIR")]
    pub save_dir: Option<PathBuf>,
    /// Publish each reported event as JSON to this MQTT broker and topic:
    /// mqtt://[user:password@]host[:1883]/TOPIC (QoS 1, in the background; a broker that is
    /// down never holds the watcher up).
    #[arg(
        long,
        value_name = "URL",
        env = "RESNET_MQTT_URL",
        hide_env_values = true
    )]
    pub mqtt_url: Option<resnet_server::mqtt::MqttConfig>,
    /// Output format.
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: WatchFormat,
    /// How many classes per event.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top_k: u16,
    /// Include the 1000 raw logits in JSON events.
    #[arg(long)]
    pub logits: bool,
    /// HTTP connect and read timeout in seconds (a silent stream is reconnected after it).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub timeout_s: f64,
}

/// How sources are sampled, gated and read: the flags `resnet watch` and `resnet serve --watch`
/// share, turned into the watch crate's settings in one place ([`SourceArgs::settings`]).
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Most frames classified per second per stream (0: every frame). Folders are not sampled:
    /// every file is classified.
    #[arg(long, default_value_t = 2.0, value_name = "N")]
    pub fps: f64,
    /// Classify a frame only when it differs from the last classified one by more than T (mean
    /// absolute difference of small grey thumbnails, 0..1; 0.02 suits most cameras).
    #[arg(long, value_name = "T")]
    pub motion: Option<f64>,
    /// Report only frames where one of these classes (indices or label names, comma-separated)
    /// reaches --min-prob; with --webhook / --save-dir those are posted / saved.
    #[arg(long, value_delimiter = ',', value_name = "CLASSES")]
    pub alert: Vec<String>,
    /// Probability an --alert class must reach.
    #[arg(long, default_value_t = 0.5, value_name = "P")]
    pub min_prob: f32,
    /// Report a frame only when its top-1 class differs from the previous frame's (per source).
    #[arg(long)]
    pub on_change: bool,
    /// Folders: also classify the files already there (default: only new or replaced ones).
    #[arg(long)]
    pub existing: bool,
    /// Folders: poll every MS milliseconds instead of using file events (network shares).
    #[arg(long, value_name = "MS")]
    pub poll_ms: Option<u64>,
    /// Folders, when polling: how long a file must stay unchanged before it is taken.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub settle_ms: u64,
    /// Longest pause between reconnection attempts to a stream, in seconds.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub reconnect_max_s: f64,
    /// Largest MJPEG frame or snapshot accepted, in MiB.
    #[arg(long, default_value_t = 16.0, value_name = "MB")]
    pub max_frame_mb: f64,
}

/// What [`SourceArgs::settings`] needs besides the flags.
pub struct SettingsFor<'a> {
    pub decode: resnet_core::decode::DecodeOptions,
    pub labels: &'a resnet_core::labels::Labels,
    pub top_k: usize,
    pub logits: bool,
    pub keep_images: bool,
    /// HTTP connect and read timeout, seconds, and the flag that gave it.
    pub http_timeout_s: f64,
    pub http_timeout_flag: &'static str,
}

impl SourceArgs {
    /// The watcher's options (with the `--alert` rule resolved against the model's labels) and
    /// which events to report, validated.
    pub fn settings(&self, with: SettingsFor<'_>) -> anyhow::Result<(WatchOptions, EventFilter)> {
        let secs = |name: &str, v: f64| -> anyhow::Result<Duration> {
            anyhow::ensure!(
                v > 0.0 && v.is_finite(),
                "{name} must be a positive number of seconds, got {v}"
            );
            Ok(Duration::from_secs_f64(v))
        };
        anyhow::ensure!(
            self.max_frame_mb > 0.0 && self.max_frame_mb.is_finite(),
            "--max-frame-mb must be a positive number, got {}",
            self.max_frame_mb
        );
        let alert = if self.alert.is_empty() {
            None
        } else {
            Some(AlertRule::parse(&self.alert, with.labels, self.min_prob)?)
        };
        let filter = EventFilter {
            on_change: self.on_change,
            alerts_only: alert.is_some(),
        };
        let options = WatchOptions {
            decode: with.decode,
            fps: self.fps,
            motion: self.motion,
            top_k: with.top_k,
            logits: with.logits,
            keep_images: with.keep_images,
            alert,
            max_frame_bytes: (self.max_frame_mb * 1024.0 * 1024.0) as usize,
            settle: Duration::from_millis(self.settle_ms),
            poll: self.poll_ms.map(|ms| Duration::from_millis(ms.max(10))),
            existing: self.existing,
            reconnect_max: secs("--reconnect-max-s", self.reconnect_max_s)?,
            http_timeout: secs(with.http_timeout_flag, with.http_timeout_s)?,
            max_batch: 8,
        };
        Ok((options, filter))
    }
}

/// Parses each `SOURCE` or `NAME=SOURCE` argument.
pub fn parse_sources(args: &[String]) -> anyhow::Result<Vec<SourceSpec>> {
    Ok(args
        .iter()
        .map(|s| SourceSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Per webhook attempt, connect to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long queued webhook posts may take at exit.
const WEBHOOK_GRACE: Duration = Duration::from_secs(3);

pub fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let specs = parse_sources(&args.sources)?;
    let model = crate::model::load_model(&args.model)?;
    let webhook = args
        .webhook
        .as_deref()
        .map(|url| Webhook::start(url, WEBHOOK_TIMEOUT))
        .transpose()?;
    let mut actions = Actions::new(args.save_dir.as_deref(), webhook)?;
    let mqtt = args
        .mqtt_url
        .as_ref()
        .map(|c| Publisher::start(c, "watch"))
        .transpose()
        .context("starting the MQTT publisher")?;
    let (opts, filter) = args.gating.settings(SettingsFor {
        decode: args.decode.options()?,
        labels: &model.labels,
        top_k: args.top_k as usize,
        logits: args.logits,
        keep_images: actions.needs_images(),
        http_timeout_s: args.timeout_s,
        http_timeout_flag: "--timeout-s",
    })?;
    let watcher = Watcher::new(specs, opts)?;
    stop_on_signals(watcher.stopper())?;
    log::info!(
        "watching {} source{} with {}",
        args.sources.len(),
        if args.sources.len() == 1 { "" } else { "s" },
        model.backend.name()
    );
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let format = args.format;
    let summary = watcher.run(model.backend.as_ref(), &model.labels, |mut event| {
        if !filter.wants(&event) {
            return Ok(());
        }
        if let Some(e) = &event.error {
            log::debug!("{}: frame {}: {e}", event.source, event.frame);
        }
        actions.apply(&mut event);
        // Like the webhook and --save-dir: frames, not problems, are published.
        if let (Some(mqtt), None) = (&mqtt, &event.error) {
            mqtt.publish_json(&event);
        }
        match format {
            WatchFormat::Jsonl => {
                serde_json::to_writer(&mut out, &event)?;
                writeln!(out)?;
            }
            WatchFormat::Text => writeln!(out, "{}", event.to_text())?,
        }
        out.flush()
    });
    // Whatever ended the run, what was written so far reaches its reader.
    let flushed = out.flush();
    actions.finish(WEBHOOK_GRACE);
    if let Some(mqtt) = &mqtt {
        mqtt.finish(WEBHOOK_GRACE);
        let s = mqtt.stats();
        log::info!(
            "mqtt: {} event(s) published, {} dropped (queue full: broker down or slow)",
            s.published,
            s.dropped
        );
    }
    let summary = summary.context("writing events")?;
    flushed.context("writing events")?;
    for (name, stats) in watcher.stats() {
        let s = stats.snapshot();
        log::info!(
            "{name}: {} received, {} classified, {} skipped (--fps), {} gated (--motion), {} dropped (model busy), {} errors, {} reconnects",
            s.received, s.classified, s.skipped, s.gated, s.dropped, s.errors, s.reconnects
        );
    }
    Ok(if summary.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// SIGINT / SIGTERM stop the watcher cleanly (current frame finished, output flushed); a second
/// one exits at once.
fn stop_on_signals(stopper: resnet_watch::Stopper) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen > 1 {
                    std::process::exit(128 + signal);
                }
                log::info!("stopping (signal {signal}); again to quit at once");
                stopper.stop();
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
