//! Errors: [`ApiError`] is what a request gets back (a status and a JSON body); [`ServerError`]
//! is what can stop the server from starting.

use hyper::StatusCode;
use resnet_core::ImageProblem;

/// A failed request: the HTTP status, a stable machine-readable code and a human message.
/// Rendered as `{"error": message, "code": code}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable identifier (`queue_full`, `body_too_large`, ...).
    pub code: &'static str,
    /// What went wrong and, where possible, how to fix it.
    pub message: String,
    /// Seconds for a `Retry-After` header (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 500: a bug or a failure of the model, never the client's fault.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Maps a `resnet-core` error met while handling an upload to a status.
    pub fn from_core(err: resnet_core::Error) -> ApiError {
        match &err {
            resnet_core::Error::Image { problem, .. } => {
                let (status, code) = match problem {
                    ImageProblem::TooManyPixels { .. } => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "image_too_large")
                    }
                    ImageProblem::UnsupportedFormat(_) => (
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_image_format",
                    ),
                    ImageProblem::Empty => (StatusCode::BAD_REQUEST, "empty_image"),
                    ImageProblem::UnknownFormat => (StatusCode::BAD_REQUEST, "not_an_image"),
                    ImageProblem::ZeroSized { .. } => (StatusCode::BAD_REQUEST, "zero_sized_image"),
                    ImageProblem::Truncated { .. } => (StatusCode::BAD_REQUEST, "truncated_image"),
                    ImageProblem::Corrupt { .. } => (StatusCode::BAD_REQUEST, "corrupt_image"),
                    // Only seen when the request is already over; its answer goes nowhere.
                    ImageProblem::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
                };
                ApiError::new(status, code, err.to_string())
            }
            _ => ApiError::internal(err.to_string()),
        }
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime or a thread could not be started.
    #[error("cannot start the server's {what}: {source}")]
    Start {
        /// Which part.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The history file could not be opened or read.
    #[error("history file {path}: {source}")]
    History {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A `--watch` source or option is unusable (ffmpeg missing, bad range).
    #[error(transparent)]
    Watch(#[from] resnet_watch::WatchError),
    /// A setting is out of range.
    #[error("invalid server setting: {0}")]
    Config(String),
}
