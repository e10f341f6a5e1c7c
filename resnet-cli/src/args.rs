//! Command-line arguments (clap derive), converted and validated by each command.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// ResNet-18 image classification on the CPU, written from scratch in Rust.
#[derive(Parser, Debug)]
#[command(name = "resnet", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads for inference (default: the CPUs this process may use).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

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
    /// Show the layer table, the totals, the CPU features and the backends.
    #[command(after_help = "Example:\n  resnet inspect")]
    Inspect(InspectArgs),
    /// Serve classification over HTTP (JSON API, web page, metrics) with dynamic batching.
    #[command(
        after_help = "Example:\n  resnet serve --weights resnet18.safetensors --addr 127.0.0.1:8080\n  curl -F file=@cat.jpg http://127.0.0.1:8080/v1/classify"
    )]
    Serve(ServeArgs),
    /// Write the class activation map of an image ("where did the network look") as a PNG.
    #[command(
        after_help = "Example:\n  resnet cam cat.jpg --out cat_cam.png --weights resnet18.safetensors"
    )]
    Cam(CamArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
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
    /// No log line per request.
    #[arg(long)]
    pub quiet: bool,
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
    /// Where to write the PNG (the 224x224 crop the network saw, with the heat map over it).
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
}

/// Where weights and labels come from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Weights file (safetensors with torchvision key names). Default: $RESNET_WEIGHTS.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Backend that computes the network: native (fastest), gemm (library baseline) or
    /// reference (textbook loops, slow).
    #[arg(long, default_value = "native", value_name = "NAME")]
    pub backend: String,
    /// Class names: a JSON array or one name per line, exactly 1000 (default: built-in ImageNet).
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
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

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
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
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Include the 1000 raw logits in JSON output.
    #[arg(long)]
    pub logits: bool,
    /// Images run through the network together.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch_size: u16,
    /// Image files, or .npy files holding a preprocessed float32 [3,224,224] or [1,3,224,224].
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
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
    /// Write seeded random weights with realistic statistics (untrained: for tests and benchmarks).
    #[command(after_help = "Example:\n  resnet weights synth --seed 0 --out synth.safetensors")]
    Synth {
        /// The seed: the same seed gives the same bytes on every machine.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file.
        #[arg(long, value_name = "FILE.safetensors")]
        out: PathBuf,
        /// Storage dtype.
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
        dtype: String,
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
    pub backend: Vec<String>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Timed runs per backend and batch (after 2 warm-up runs; the reference backend does 3).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Kernel ISA for `native` (default: $RESNET_ISA, else the best this CPU supports).
    #[arg(long)]
    pub isa: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}
