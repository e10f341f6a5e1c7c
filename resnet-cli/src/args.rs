//! Command-line arguments (clap derive). clap's value parsers produce the library's typed
//! values (`BackendKind`, `WinogradPolicy`, `Isa`, `CalibrationMethod`, `StoreDtype`, ...)
//! directly, so a command never parses a string itself; the few conversions that need more
//! than one flag live here too (`DecodeArgs::options`).

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};
use resnet_core::backend::{BackendKind, WinogradPolicy};
use resnet_core::cpu::Isa;
use resnet_core::decode::{DecodeOptions, ExifMode};
use resnet_core::quantize::{CalibrationMethod, LayerPrecision};
use resnet_core::weights::StoreDtype;
use std::path::PathBuf;

/// ResNet-18 image classification on the CPU, written from scratch in Rust.
#[derive(Parser, Debug)]
#[command(name = "resnet", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads for inference (default: the CPUs this process may use).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Only errors on stderr: no warnings (such as the synthetic-weights one), no notes, no
    /// progress bar.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// More messages on stderr. The default shows warnings and notes; -v adds debug lines (the
    /// backend and the kernels it chose, the per-layer plan in use, how the inputs are
    /// batched); -vv adds trace lines (each batch's inference time, and what libraries trace,
    /// such as the weights download).
    /// RUST_LOG overrides all of it, e.g. RUST_LOG=debug.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Classify images (or preprocessed .npy tensors) and print the top-k classes.
    #[command(
        after_help = "Example:\n  resnet classify --weights resnet18.safetensors photos/cat.jpg photos/dog.png\n  resnet classify --weights resnet18.safetensors --format json --logits cat.jpg"
    )]
    Classify(ClassifyArgs),
    /// Write the network's input for an image (torchvision's Resize(256), CenterCrop(224),
    /// ToTensor, Normalize) as a 1x3x224x224 float32 .npy.
    #[command(after_help = "Example:\n  resnet preprocess cat.jpg --out cat.npy")]
    Preprocess(PreprocessArgs),
    /// Create, convert and describe weights files.
    #[command(subcommand)]
    Weights(WeightsCommand),
    /// Time the backends side by side: median and p90 latency, images/s, GFLOP/s, % of peak.
    #[command(
        after_help = "Example:\n  resnet bench --backend gemm,native --batch 1,8 --iters 20\n  resnet bench --backend all --format json"
    )]
    Bench(BenchArgs),
    /// Quantise weights to INT8, calibrating activations on images, for `--backend int8`.
    #[command(
        after_help = "Example:\n  resnet quantize --weights resnet18.safetensors --calib photos/ --out resnet18.int8.safetensors\n  resnet classify --backend int8 --weights resnet18.int8.safetensors cat.jpg"
    )]
    Quantize(QuantizeArgs),
    /// Show the layer table, the totals, the CPU features and the backends.
    #[command(after_help = "Example:\n  resnet inspect")]
    Inspect(InspectArgs),
    /// Run one image and print every layer's output shape, time and activation statistics;
    /// optionally dump each output as .npy or compare two backends layer by layer.
    #[command(
        after_help = "Example:\n  resnet trace cat.jpg\n  resnet trace cat.jpg --dump layers/   # layers/01_stem.npy ... 12_fc.npy (NCHW float32)\n  resnet trace cat.jpg --backend native --compare reference\n  resnet trace cat.jpg --compare int8 --html cat_explorer.html   # open in any browser, no server"
    )]
    Trace(TraceArgs),
    /// Top-1 / top-5 accuracy over a labelled image set (ImageNet validation layout
    /// DIR/<wnid>/*.JPEG, or a flat folder with a `filename,index` labels file).
    #[command(
        after_help = "Example:\n  resnet eval imagenet/val --limit 1000\n  resnet eval photos/ --labels-file labels.csv --format json"
    )]
    Eval(EvalArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  resnet completions bash > ~/.local/share/bash-completion/completions/resnet\n  resnet completions zsh > ~/.zfunc/_resnet\n  resnet completions fish > ~/.config/fish/completions/resnet.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Serve classification over HTTP (JSON API, web page, metrics) with dynamic batching.
    #[command(
        after_help = "Example:\n  resnet serve --weights resnet18.safetensors --addr 127.0.0.1:8080\n  curl -F file=@cat.jpg http://127.0.0.1:8080/v1/classify"
    )]
    Serve(ServeArgs),
    /// Time every convolution's candidate strategies on this CPU and cache the fastest as a
    /// per-layer plan, which the backend (`native`, `int8`, `bf16`) then uses (see
    /// docs/kernels.md).
    #[command(
        after_help = "Example:\n  resnet tune --batch 1,8 --budget-s 60\n  resnet bench --plan off,auto"
    )]
    Tune(crate::tune::TuneArgs),
    /// Write the class activation map of an image ("where did the network look") as a PNG.
    #[command(
        after_help = "Example:\n  resnet cam cat.jpg --out cat_cam.png --weights resnet18.safetensors"
    )]
    Cam(CamArgs),
    /// Classify what cameras produce as it arrives: new files in folders, MJPEG or snapshot
    /// URLs, RTSP streams, video files and devices (through ffmpeg); one event per frame.
    #[command(after_help = crate::watch::AFTER_HELP)]
    Watch(crate::watch::WatchArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (port 0 picks a free port). Default: 0.0.0.0:$PORT when the
    /// environment has PORT (as container platforms set it), else 127.0.0.1:8080.
    #[arg(long)]
    pub addr: Option<std::net::SocketAddr>,
    /// Also serve every route on this port of the same address: DeepStack and CodeProject.AI
    /// clients often assume 5000 or 32168. Same limits, queue, metrics and shutdown.
    #[arg(long, value_name = "PORT")]
    pub deepstack_port: Option<u16>,
    /// Most images run through the network together.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_batch: u16,
    /// How long the first queued image waits for others to join its batch, in milliseconds.
    #[arg(long, default_value_t = 2.0, value_name = "MS")]
    pub batch_wait_ms: f64,
    /// Images that may wait for the model; beyond that requests get 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,
    /// Largest request body, in MiB (413 above it).
    #[arg(long, default_value_t = 10.0, value_name = "MB")]
    pub max_body_mb: f64,
    /// Refuse images larger than this many megapixels (422, checked before decoding).
    #[arg(long, default_value_t = 64.0, value_name = "MP")]
    pub max_megapixels: f64,
    /// Whole-request deadline in seconds, upload included (504 after it).
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub timeout_s: f64,
    /// Most connections open at once; beyond it new ones are closed at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a client has to send its request headers.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub header_timeout_s: f64,
    /// Require 'Authorization: Bearer TOKEN' on every route but /, /healthz and /readyz.
    /// Default: $RESNET_TOKEN.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Recognitions kept in memory for /v1/history and the page (0: none).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub history: usize,
    /// Also append every recognition to this JSON-lines file (and reload it at start).
    #[arg(long, value_name = "FILE.jsonl")]
    pub history_file: Option<PathBuf>,
    /// Apply the EXIF orientation of uploads (as viewers do) or ignore it (as torchvision does).
    #[arg(long, value_enum, default_value = "apply")]
    pub exif: ExifArg,
    /// Access log lines as text or as one JSON object per line (with the X-Request-Id).
    #[arg(long, default_value = "text", value_name = "text|json")]
    pub log_format: resnet_server::ops::LogFormat,
    /// Answer cross-origin browsers from ORIGIN ('*' for any): CORS headers and OPTIONS
    /// preflights. Off by default.
    #[arg(long, value_name = "ORIGIN")]
    pub cors_origin: Option<String>,
    /// After SIGTERM, seconds during which /readyz and /v2/health/ready say 503 while requests
    /// are still served, before the listener closes (give load balancers time to notice).
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    pub drain_s: f64,
    /// Also build this backend on the same weights for POST /v1/trace?backend= and ?compare=
    /// (the explorer page's SQNR strip); repeatable. Classification still runs --backend.
    #[arg(long, value_name = "BACKEND")]
    pub trace_backend: Vec<BackendKind>,
    /// Publish each recognition as JSON to this MQTT broker and topic:
    /// mqtt://[user:password@]host[:1883]/TOPIC (QoS 1; never slows a request: a broker that
    /// is down or slow gets its messages dropped and counted in /metrics). docs/protocols.md.
    #[arg(
        long,
        value_name = "URL",
        env = "RESNET_MQTT_URL",
        hide_env_values = true
    )]
    pub mqtt_url: Option<resnet_server::mqtt::MqttConfig>,
    /// Seconds an answer may go without a byte written (a client that does not read) before
    /// its connection is closed and its slot freed.
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    pub write_timeout_s: f64,
    /// Most requests answered on one connection (pipelined or kept alive).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_requests_per_connection: u32,
    /// Memory for request data in flight, in MiB: half for bodies (503 with Retry-After when
    /// full), half for decoded pixels (decodes wait their turn). At least twice --max-body-mb.
    #[arg(long, default_value_t = 512, value_name = "MB", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inflight_mb: u32,
    /// Most images decoded at once (default: the number of CPUs); smaller photos also get one
    /// extra slot.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_decodes: Option<u32>,
    /// Classify these sources inside the server, as `resnet watch` does (same SOURCE syntax,
    /// NAME=SOURCE names one): their frames go through the server's inference queue, into
    /// /v1/history and /metrics, and stream from GET /v1/events. Repeatable.
    #[arg(long = "watch", value_name = "SOURCE", num_args = 1..)]
    pub watch: Vec<String>,
    #[command(flatten, next_help_heading = "Watch sources (with --watch)")]
    pub watch_sources: crate::watch::SourceArgs,
    /// --watch: HTTP connect and read timeout in seconds (a silent stream is reconnected).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub watch_timeout_s: f64,
}

#[derive(Args, Debug)]
pub struct CamArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Class to explain (default: the top-1 class).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..1000))]
    pub class: Option<u16>,
    /// Opacity of the heat map over the image, 0 to 1.
    #[arg(long, default_value_t = 0.45)]
    pub alpha: f32,
    /// The image.
    pub input: PathBuf,
    /// What the map is drawn over: the whole original image with the region the network saw
    /// outlined, or the 224x224 crop itself.
    #[arg(long, default_value = "original", value_name = "original|crop")]
    pub view: resnet_core::cam::CamView,
    /// Where to write the PNG.
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
}

/// Where weights and labels come from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Weights file: safetensors or a PyTorch .pth state dict, with torchvision key names.
    /// Default: $RESNET_WEIGHTS, else the cache, else download the official weights.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub download: DownloadArgs,
    /// Backend that computes the network: native (fastest f32), int8 (calibrated INT8: give
    /// a `resnet quantize` file, or f32 weights to quantise on the fly), bf16 (bf16 weights and
    /// activations, f32 sums; AMX-BF16 or AVX512-BF16 where the CPU has them), gemm (library
    /// baseline) or reference (textbook loops, slow).
    #[arg(long, default_value = "native", value_name = "NAME")]
    pub backend: BackendKind,
    /// Which 3x3 stride-1 convolutions `native` runs with Winograd F(4x4, 3x3): off, auto
    /// (layer1-3) or all.
    #[arg(
        long,
        default_value = "auto",
        value_name = "POLICY",
        env = "RESNET_WINOGRAD"
    )]
    pub winograd: WinogradPolicy,
    /// Per-layer plan for `native`, `int8` or `bf16`: auto (the cached `resnet tune` plan of the
    /// backend for this CPU and thread count, if any), off (the built-in heuristic) or a FILE.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|off|FILE",
        env = "RESNET_PLAN"
    )]
    pub plan: resnet_core::plan::PlanChoice,
    /// Class names: a JSON array or one name per line, exactly 1000 (default: built-in ImageNet).
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
}

/// How missing weights are downloaded.
#[derive(Args, Debug, Clone)]
pub struct DownloadArgs {
    /// Download the weights from this URL instead of the official one (a mirror).
    /// Default: $RESNET_WEIGHTS_URL, else the official URL in weights/manifest.json.
    #[arg(long = "url", value_name = "URL")]
    pub url: Option<String>,
    /// Expected SHA-256 of the downloaded file (full digest or a prefix of at least 8 hex
    /// digits). Default: $RESNET_WEIGHTS_SHA256, else the official file's.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Never use the network (also: RESNET_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Allow plain http to hosts other than loopback.
    #[arg(long)]
    pub allow_http: bool,
    /// Connect and read timeout of the download, in seconds.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub download_timeout_s: u64,
}

/// How images are decoded.
#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Apply the EXIF orientation (as viewers do) or ignore it (as torchvision does).
    #[arg(long, value_enum, default_value = "apply")]
    pub exif: ExifArg,
    /// Refuse images larger than this many megapixels (checked before decoding).
    #[arg(long, default_value_t = 64.0, value_name = "MP")]
    pub max_megapixels: f64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExifArg {
    Apply,
    Ignore,
}

impl From<ExifArg> for ExifMode {
    fn from(e: ExifArg) -> ExifMode {
        match e {
            ExifArg::Apply => ExifMode::Apply,
            ExifArg::Ignore => ExifMode::Ignore,
        }
    }
}

impl DecodeArgs {
    /// The decoder's options, validated.
    pub fn options(&self) -> anyhow::Result<DecodeOptions> {
        if !(self.max_megapixels > 0.0 && self.max_megapixels.is_finite()) {
            bail!(
                "--max-megapixels must be a positive number, got {}",
                self.max_megapixels
            );
        }
        Ok(DecodeOptions {
            max_pixels: (self.max_megapixels * 1e6) as u64,
            exif: self.exif.into(),
        })
    }
}

/// Precision of the first convolution in `resnet quantize`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StemArg {
    Int8,
    F32,
}

impl From<StemArg> for LayerPrecision {
    fn from(s: StemArg) -> LayerPrecision {
        match s {
            StemArg::Int8 => LayerPrecision::Int8,
            StemArg::F32 => LayerPrecision::F32,
        }
    }
}

/// One item of `bench --backend`: a backend, or `all` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendSelection {
    All,
    One(BackendKind),
}

impl std::str::FromStr for BackendSelection {
    type Err = resnet_core::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(BackendSelection::All);
        }
        s.parse().map(BackendSelection::One)
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Output formats of `classify`: jsonl and csv stream one line per image as it finishes.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassifyFormat {
    Text,
    Json,
    Jsonl,
    Csv,
}

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// How many classes to print per input.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top_k: u16,
    /// Output format: text, json (one array), jsonl or csv (one line per image, streamed).
    #[arg(long, value_enum, default_value = "text")]
    pub format: ClassifyFormat,
    /// Include the 1000 raw logits in JSON / JSONL output.
    #[arg(long)]
    pub logits: bool,
    /// Images run through the network together (the next batch is decoded meanwhile).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch_size: u16,
    /// Image files, directories (searched recursively for images and .npy, in sorted order),
    /// or glob patterns such as 'photos/**/*.jpg'. A .npy holds a preprocessed float32
    /// [3,224,224] or [1,3,224,224].
    #[arg(required_unless_present = "files_from", value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Also read inputs from FILE, one path per line ('-': standard input).
    #[arg(long, value_name = "FILE|-")]
    pub files_from: Option<PathBuf>,
    /// Keep only share I of N (1 <= I <= N), chosen by a stable hash of each input's path, so
    /// N machines given the same list take disjoint shares that add up to the whole.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::batch::Shard>,
    /// Append JSON lines to OUT instead of printing, skipping the inputs OUT already has (a
    /// torn last line from a crash is cut off first): rerun the same command to finish a job.
    #[arg(long, value_name = "OUT.jsonl")]
    pub resume: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// The image (or a preprocessed .npy).
    pub input: PathBuf,
    /// Write every trace point's output as DIR/NN_name.npy (NCHW float32, as PyTorch hooks see it).
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// Also run this backend and print per-layer max abs error and SQNR against it.
    #[arg(long, value_name = "BACKEND")]
    pub compare: Option<BackendKind>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Also write the explorer page (layers, times, feature maps, top classes, activation maps)
    /// with this trace in it, as one self-contained HTML file that opens without a server.
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// Channels per feature map drawn in the --html file (the most active ones; at most 16 per
    /// stage of a recomputed BasicBlock).
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
    pub maps: u16,
    /// Also recompute every BasicBlock stage by stage from its input (conv1-bn-relu, conv2-bn,
    /// identity or downsample, their sum, the ReLU'd output) and print their statistics; JSON
    /// then prints {"layers": [...], "blocks": [...]}. An --html file always carries them.
    #[arg(long)]
    pub branches: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// The image set: DIR/<wnid>/*.JPEG (ImageNet layout), or a folder named by --labels-file.
    pub dir: PathBuf,
    /// `filename,index` lines (a header line is allowed), filenames relative to DIR.
    #[arg(long, value_name = "FILE")]
    pub labels_file: Option<PathBuf>,
    /// Evaluate only the first N images (in sorted order).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Images run through the network together.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch_size: u16,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct PreprocessArgs {
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// The image.
    pub input: PathBuf,
    /// Where to write the .npy.
    #[arg(long, value_name = "FILE.npy")]
    pub out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Download the official torchvision weights, verify their SHA-256 and cache them as
    /// safetensors (in $RESNET_CACHE, else ~/.cache/resnet18-rs); prints the cached path.
    #[command(
        after_help = "Example:\n  resnet weights fetch\n  resnet weights fetch --url https://mirror.example/resnet18-f37072fd.pth"
    )]
    Fetch {
        #[command(flatten)]
        download: DownloadArgs,
        /// Download again even if the cache has the file.
        #[arg(long)]
        force: bool,
    },
    /// Convert weights (a PyTorch .pth or safetensors) to safetensors, or to .pth when OUT ends
    /// in .pth; the weights are checked to be a complete ResNet-18 first.
    #[command(
        after_help = "Example:\n  resnet weights convert resnet18-f37072fd.pth resnet18.safetensors --dtype f16"
    )]
    Convert {
        /// Input weights file.
        input: PathBuf,
        /// Output file (.safetensors, or .pth).
        out: PathBuf,
        /// Storage dtype of the output.
        #[arg(long, default_value = "f32", value_name = "f32|f16|bf16")]
        dtype: StoreDtype,
    },
    /// Describe a weights file: format, tensors, parameters, dtypes, SHA-256, whether it is the
    /// official checkpoint, whether BatchNorm statistics are present, whether it is a valid
    /// ResNet-18.
    #[command(after_help = "Example:\n  resnet weights info resnet18-f37072fd.pth")]
    Info {
        /// The weights file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Write seeded random weights with realistic statistics (untrained: for tests and
    /// benchmarks), as safetensors, or as a PyTorch .pth when OUT ends in .pth.
    #[command(after_help = "Example:\n  resnet weights synth --seed 0 --out synth.safetensors")]
    Synth {
        /// The seed: the same seed gives the same bytes on every machine.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Storage dtype.
        #[arg(long, default_value = "f32", value_name = "f32|f16|bf16")]
        dtype: StoreDtype,
    },
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Also check and describe this weights file.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Weights (default: $RESNET_WEIGHTS, else synthetic weights, which time the same).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Backends to time, comma-separated, or `all`.
    #[arg(long, value_delimiter = ',', default_value = "gemm,native")]
    pub backend: Vec<BackendSelection>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Timed runs per backend and batch (after 2 warm-up runs; the reference backend does 3).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Kernel ISA level for every backend timed (default: $RESNET_ISA, else the best this CPU
    /// supports); a family without a kernel of that level runs its best one below it.
    #[arg(long)]
    pub isa: Option<Isa>,
    /// Winograd policies to time `native` with, comma-separated: off, auto (layer1-3), all.
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    pub winograd: Vec<WinogradPolicy>,
    /// Per-layer plans to time `native`, `int8` and `bf16` with, comma-separated: auto (the backend's
    /// cached plan for this CPU, threads and batch), off (the heuristic) or FILEs; `--plan
    /// off,auto` times both.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "auto",
        env = "RESNET_PLAN"
    )]
    pub plan: Vec<resnet_core::plan::PlanChoice>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// f32 weights (safetensors or .pth, torchvision key names). Default: $RESNET_WEIGHTS, else the cache, else download.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub download: DownloadArgs,
    /// Calibration images: files, directories (searched recursively, as `classify` does) or
    /// glob patterns.
    #[arg(long, required = true, num_args = 1.., value_name = "DIR_OR_FILES")]
    pub calib: Vec<PathBuf>,
    /// How activation ranges are chosen: mse (least squared error, measured best), minmax,
    /// percentile (99.99) or percentile:P.
    #[arg(long, default_value = "mse")]
    pub method: CalibrationMethod,
    /// Augmented crops per calibration image, besides its standard preprocessing.
    #[arg(long, default_value_t = 4)]
    pub crops: usize,
    /// Precision of the first convolution: int8 or f32.
    #[arg(long, value_enum, default_value = "int8")]
    pub stem: StemArg,
    /// Output file.
    #[arg(long, value_name = "FILE.int8.safetensors")]
    pub out: PathBuf,
}
