//! The one error type of `resnet-core`. Every variant names the input that caused it (a file
//! path, an upload's name, a tensor key) so that a message read alone says what to fix.

use std::path::Path;

/// Everything that can go wrong in `resnet-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What was being done ("cannot read", "cannot write").
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A weights file is not a readable safetensors file (truncated, corrupt header, ...).
    #[error("{path}: not a valid safetensors weights file: {reason}")]
    CorruptWeights {
        /// The weights file.
        path: String,
        /// What the parser found.
        reason: String,
    },
    /// A `.pth` file is not a readable PyTorch checkpoint (corrupt zip, bad pickle, storage too
    /// short for its tensor, legacy format, ...).
    #[error("{path}: not a readable PyTorch checkpoint: {reason}")]
    CorruptCheckpoint {
        /// The checkpoint file.
        path: String,
        /// What the reader found.
        reason: String,
    },
    /// A `.pth` pickle asks for something a state dict never needs (an arbitrary global such as
    /// `os.system`, an unknown opcode): refused, never executed.
    #[error("{path}: refused: the checkpoint's pickle uses {item}, which a PyTorch state dict never needs (this reader loads data only and executes nothing)")]
    ForbiddenPickle {
        /// The checkpoint file.
        path: String,
        /// The offending opcode or global, e.g. `GLOBAL posix.system`.
        item: String,
    },
    /// A tensor the model needs is absent.
    #[error("{path}: missing tensor '{key}' (expected shape {expected:?}); is this a torchvision ResNet-18 state dict?")]
    MissingTensor {
        /// The weights file.
        path: String,
        /// The torchvision state-dict key.
        key: String,
        /// Its expected shape.
        expected: Vec<usize>,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor '{key}' has shape {found:?}, expected {expected:?}")]
    WrongShape {
        /// The weights file.
        path: String,
        /// The torchvision state-dict key.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype that cannot be used for it.
    #[error("{path}: tensor '{key}' has dtype {found}, expected {expected}")]
    WrongDtype {
        /// The weights file.
        path: String,
        /// The torchvision state-dict key.
        key: String,
        /// The dtypes accepted for this key.
        expected: &'static str,
        /// The dtype in the file.
        found: String,
    },
    /// A tensor that ResNet-18 does not have.
    #[error("{path}: unexpected tensor '{key}' with shape {shape:?}: not part of torchvision's ResNet-18 (is this another model?)")]
    UnexpectedTensor {
        /// The weights file.
        path: String,
        /// The unknown key.
        key: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// An image could not be turned into pixels.
    #[error("{path}: {problem}")]
    Image {
        /// The image's file path or upload name.
        path: String,
        /// What is wrong with it.
        problem: ImageProblem,
    },
    /// A labels file is unusable.
    #[error("{path}: bad labels file: {reason}")]
    Labels {
        /// The labels file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `.npy` input is unusable.
    #[error("{path}: bad .npy input: {reason}")]
    Npy {
        /// The `.npy` file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A batch given to a backend does not have the shape it needs.
    #[error(
        "input batch has shape {found:?}, expected [N, 3, H, W] with N >= 1 and H, W >= {min_side}"
    )]
    InputShape {
        /// The shape given.
        found: Vec<usize>,
        /// The smallest spatial size the network accepts.
        min_side: usize,
    },
    /// An unknown backend name or a backend that cannot run here.
    #[error("backend '{name}': {reason}")]
    Backend {
        /// The backend's name.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            action,
            source,
        }
    }
}

/// What is wrong with an image.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageProblem {
    /// The file holds no bytes.
    #[error("empty file, not an image")]
    Empty,
    /// The bytes are not an image format this tool knows.
    #[error("not a recognised image (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    UnknownFormat,
    /// A known format that this tool does not decode (SVG, HEIC, ...).
    #[error("unsupported image format {0} (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)")]
    UnsupportedFormat(String),
    /// Width or height is zero.
    #[error("image has zero size ({width}x{height})")]
    ZeroSized {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The header declares more pixels than allowed (decompression bomb guard).
    #[error("image is {width}x{height} = {megapixels:.1} megapixels, over the limit of {limit_megapixels} megapixels (raise it with --max-megapixels)")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Declared size in megapixels.
        megapixels: f64,
        /// The configured limit.
        limit_megapixels: f64,
    },
    /// The data ends before the image does.
    #[error("truncated {format} image: {detail}")]
    Truncated {
        /// The format name.
        format: &'static str,
        /// What is missing.
        detail: String,
    },
    /// Decoding was stopped: the request it was for is gone (client left, deadline passed).
    #[error("decoding was cancelled (the request is gone)")]
    Cancelled,
    /// The decoder rejected the data.
    #[error("corrupt or undecodable {format} image: {detail}")]
    Corrupt {
        /// The format name.
        format: &'static str,
        /// The decoder's message.
        detail: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
