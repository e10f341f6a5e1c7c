//! The shapes of the JSON bodies the server answers with, one type per body, so the API is
//! defined by the code (and can be described from it) rather than by ad-hoc `json!` literals.

use crate::history::Entry;
use crate::model::ModelInfo;
use resnet_core::postprocess::Prediction;
use serde::Serialize;
use utoipa::ToSchema;

/// Every error: `{"error": message, "code": code}`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    /// What went wrong and, where possible, how to fix it.
    pub error: &'a str,
    /// A stable machine-readable identifier (`queue_full`, `body_too_large`, ...).
    pub code: &'a str,
}

/// `/healthz` and `/readyz` when they answer 200.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` (alive) or `ready` (model loaded and warmed up).
    pub status: &'static str,
}

/// Milliseconds spent in each stage of one image's request.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Timing {
    /// Decoding the upload.
    pub decode: f64,
    /// Resize, crop and normalisation.
    pub preprocess: f64,
    /// Waiting in the inference queue.
    pub queue: f64,
    /// The forward pass of the batch it ran in.
    pub inference: f64,
    /// From the request's arrival to this answer.
    pub total: f64,
}

/// The uploaded image as decoded.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ImageInfo {
    /// Width in pixels (after EXIF orientation).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The detected format (`jpeg`, `png`, ...).
    pub format: &'static str,
}

/// `POST /v1/classify`, and each successful part of `/v1/classify/batch`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Classification {
    /// The part's file name (batch route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The top-k classes, most probable first.
    pub predictions: Vec<Prediction>,
    /// The backend that ran (`native`, `int8`, ...).
    pub backend: String,
    /// The model's name.
    pub model: String,
    /// True when the weights are seeded random ones: the labels then mean nothing.
    pub synthetic_weights: bool,
    /// How many images ran in the same forward pass.
    pub batch_size: usize,
    /// Where the time went.
    pub timing_ms: Timing,
    /// The image as decoded.
    pub image: ImageInfo,
}

/// A part of `/v1/classify/batch` that failed.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PartError {
    /// The part's file name.
    pub name: String,
    /// What went wrong.
    pub error: String,
    /// The stable error code the single-image route would answer with.
    pub code: &'static str,
    /// The HTTP status the single-image route would answer with.
    pub status: u16,
}

/// One result of `/v1/classify/batch`, in the order of the parts.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    /// The part was classified.
    Ok(Box<Classification>),
    /// The part failed; the others are unaffected.
    Failed(PartError),
}

/// `POST /v1/classify/batch`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One item per part.
    pub results: Vec<BatchItem>,
}

/// One element of `/predict`'s answer (the seed service's format).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PredictItem {
    /// Class name.
    pub label: String,
    /// Probability in percent, two decimals.
    pub probability: f64,
}

/// The limits in force, as `/v1/model` reports them.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Limits {
    /// Images per forward pass at most.
    pub max_batch: usize,
    /// How long the first waiting image waits for company.
    pub batch_wait_ms: f64,
    /// Images the inference queue holds.
    pub queue: usize,
    /// Request body size limit.
    pub max_body_bytes: usize,
    /// Decoded image size limit.
    pub max_megapixels: f64,
    /// Whole-request deadline.
    pub timeout_s: f64,
    /// Parts per `/v1/classify/batch` request.
    pub max_batch_parts: usize,
}

/// `GET /v1/model`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelResponse<'a> {
    /// The model, its backend and weights.
    #[serde(flatten)]
    pub info: &'a ModelInfo,
    /// The limits in force.
    pub limits: Limits,
    /// Entries `/v1/history` keeps.
    pub history: usize,
    /// The names of the `--watch` sources (their events: `/v1/events`).
    pub watch: Vec<String>,
}

/// `GET /v1/history`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    /// Entries kept at most.
    pub capacity: usize,
    /// True when the weights are seeded random ones.
    pub synthetic_weights: bool,
    /// Newest first.
    pub entries: Vec<Entry>,
}

/// A DeepStack / CodeProject.AI error: `{"success": false, "error": ...}`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct VisionError<'a> {
    /// Always false.
    pub success: bool,
    /// What went wrong (DeepStack's wording where it has one, e.g. "Incorrect api key").
    pub error: &'a str,
    /// This server's stable error code, as on the other routes.
    pub code: &'a str,
}

/// `POST /v1/vision/scene` (DeepStack / CodeProject.AI scene recognition).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SceneResult {
    /// Always true.
    pub success: bool,
    /// The top-1 class as a stable token (lower case, words joined by `_`).
    pub label: String,
    /// Its softmax probability, 0 to 1.
    pub confidence: f32,
    /// Its class index (two ImageNet classes share a name).
    pub index: usize,
    /// The class name as the labels file spells it.
    pub name: String,
    /// Milliseconds from the request's arrival to this answer (DeepStack's field).
    pub duration: u64,
    /// The same, under CodeProject.AI's name.
    #[serde(rename = "processMs")]
    pub process_ms: u64,
    /// The forward pass, in milliseconds (CodeProject.AI's field).
    #[serde(rename = "inferenceMs")]
    pub inference_ms: u64,
    /// True when the weights are seeded random ones: the label then means nothing.
    pub synthetic_weights: bool,
}

/// `POST /v1/vision/custom/list`, as CodeProject.AI answers it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CustomModels {
    /// Always true.
    pub success: bool,
    /// The custom detection models (none here).
    pub models: Vec<String>,
    /// Why the list is empty.
    pub message: &'static str,
}

/// A version, as CodeProject.AI describes it.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
    /// Pre-release tag.
    pub pre_release: Option<String>,
    /// Whether it is a security update.
    pub security_update: bool,
    /// Build number.
    pub build: u32,
    /// Installer file.
    pub file: Option<String>,
    /// Release notes.
    pub release_notes: String,
}

/// `GET /v1/status/updateavailable`, as CodeProject.AI answers it.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStatus {
    /// Always true.
    pub success: bool,
    /// A sentence for people.
    pub message: &'static str,
    /// The latest version known (this one).
    pub version: VersionInfo,
    /// The running version.
    pub current: VersionInfo,
    /// The latest version known (this one: the server does not look).
    pub latest: VersionInfo,
    /// Always false.
    pub update_available: bool,
}
