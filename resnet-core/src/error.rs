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
    /// A backend name that is not one of `BackendKind::ALL` (`--backend`, a plan file).
    #[error("unknown backend '{name}' (available: {available})")]
    UnknownBackend {
        /// The name given.
        name: String,
        /// The names that exist, comma-separated.
        available: String,
    },
    /// A Winograd policy that is not `off`, `auto` or `all` (`--winograd`, `RESNET_WINOGRAD`).
    #[error("unknown Winograd policy '{value}' (use off, auto or all)")]
    UnknownWinogradPolicy {
        /// The value given.
        value: String,
    },
    /// A backend was asked for kernels of an instruction set this CPU does not have.
    #[error("backend '{backend}': this CPU does not support the {isa} kernels")]
    UnsupportedIsa {
        /// The backend's name.
        backend: &'static str,
        /// The instruction set asked for (`--isa`, `RESNET_ISA`).
        isa: resnet_kernels::cpu::Isa,
    },
    /// INT8 calibration was given no inputs.
    #[error("INT8 calibration needs at least one input image, and got none")]
    NoCalibrationInputs,
    /// INT8 calibration inputs of different sizes (calibration runs them in batches).
    #[error("calibration input {index} has shape {found:?}, but the first one has {expected:?} (calibration batches its inputs, so all must have the same size)")]
    CalibrationInputShape {
        /// The input's position in the list given.
        index: usize,
        /// The first input's shape.
        expected: Vec<usize>,
        /// This input's shape.
        found: Vec<usize>,
    },
    /// A backend did not report the network's trace points, each once and in order (a bug in
    /// that backend, found by [`crate::trace::record`]).
    #[error("backend '{backend}' reported the trace points {found:?}, not each of the network's once in order")]
    TracePoints {
        /// The backend's name.
        backend: String,
        /// What it reported.
        found: Vec<crate::arch::TracePoint>,
    },
    /// A backend reported a trace point without its output, or with an output of the wrong
    /// shape (a bug in that backend).
    #[error("backend '{backend}' did not hand over the output of {point} (expected shape {expected:?}, got {found:?})")]
    TraceOutput {
        /// The backend's name.
        backend: String,
        /// The trace point.
        point: crate::arch::TracePoint,
        /// The shape from the layer table.
        expected: Vec<usize>,
        /// The shape handed over (`[0]` when none was).
        found: Vec<usize>,
    },
    /// A backend did not report a trace point's output that was asked for (a bug in that
    /// backend).
    #[error("backend '{backend}' did not report the output of {point}")]
    MissingTraceOutput {
        /// The backend's name.
        backend: String,
        /// The trace point.
        point: crate::arch::TracePoint,
    },
    /// A [`crate::backend::Backend`] implemented outside this crate could not run a forward
    /// pass (for example the server's queue-backed backend of its watchers, when the queue is
    /// full or the server stops).
    #[error("backend '{backend}' failed: {reason}")]
    BackendFailed {
        /// The backend's name.
        backend: String,
        /// What went wrong.
        reason: String,
    },
    /// A trace point asked to be recomputed as a BasicBlock that is not one.
    #[error("{point} is not a BasicBlock (layer1.0 ... layer4.1)")]
    NotABlock {
        /// The trace point given.
        point: crate::arch::TracePoint,
    },
    /// A BasicBlock's input does not have the shape the block takes.
    #[error("{point} takes a [N, {channels}, H, W] feature map, its input has shape {found:?}")]
    BlockInputShape {
        /// The block.
        point: crate::arch::TracePoint,
        /// The input channels the block's first convolution takes.
        channels: usize,
        /// The shape given.
        found: Vec<usize>,
    },
    /// An 8-bit image made by this crate could not be encoded as PNG.
    #[error("cannot encode {what} as PNG: {reason}")]
    PngEncode {
        /// Which picture (`the channel sheet of layer2.0`).
        what: String,
        /// The encoder's message.
        reason: String,
    },
    /// A class index outside the classifier's classes (`--class`, `?class=`).
    #[error("class {class} out of range (the model has classes 0..{classes})")]
    ClassOutOfRange {
        /// The index asked for.
        class: usize,
        /// The number of classes.
        classes: usize,
    },
    /// A class activation map was asked for with tensors of the wrong size.
    #[error("class activation map from backend '{backend}': {tensor} has {found} {unit}, expected {expected}")]
    CamTensorSize {
        /// The backend whose pass gave the tensors.
        backend: String,
        /// Which tensor (`fc.weight`, `the logits`, `layer4.1`).
        tensor: String,
        /// What is counted (`values`, `channels`).
        unit: &'static str,
        /// Its size.
        found: usize,
        /// The size the network has.
        expected: usize,
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
