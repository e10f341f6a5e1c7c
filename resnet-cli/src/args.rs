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
    /// Quantise weights to INT8, calibrating activations on images, for `--backend int8`.
    #[command(
        after_help = "Example:\n  resnet quantize --weights resnet18.safetensors --calib photos/ --out resnet18.int8.safetensors\n  resnet classify --backend int8 --weights resnet18.int8.safetensors cat.jpg"
    )]
    Quantize(QuantizeArgs),
    /// Show the layer table, the totals, the CPU features and the backends.
    #[command(after_help = "Example:\n  resnet inspect")]
    Inspect(InspectArgs),
}

/// Where weights and labels come from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Weights file (safetensors with torchvision key names). Default: $RESNET_WEIGHTS.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Backend that computes the network: native (fastest f32), int8 (calibrated INT8: give
    /// a `resnet quantize` file, or f32 weights to quantise on the fly), gemm (library
    /// baseline) or reference (textbook loops, slow).
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

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// f32 weights (safetensors, torchvision key names). Default: $RESNET_WEIGHTS.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Calibration images: files or directories (their image files, not recursive).
    #[arg(long, required = true, num_args = 1.., value_name = "DIR_OR_FILES")]
    pub calib: Vec<PathBuf>,
    /// How activation ranges are chosen: mse (least squared error, measured best), minmax,
    /// percentile (99.99) or percentile:P.
    #[arg(long, default_value = "mse")]
    pub method: String,
    /// Augmented crops per calibration image, besides its standard preprocessing.
    #[arg(long, default_value_t = 4)]
    pub crops: usize,
    /// Precision of the first convolution: int8 or f32.
    #[arg(long, default_value = "int8", value_parser = ["int8", "f32"])]
    pub stem: String,
    /// Output file.
    #[arg(long, value_name = "FILE.int8.safetensors")]
    pub out: PathBuf,
}
