//! The HTTP service of resnet18-rs: `resnet serve`.
//!
//! hyper 1.x on tokio. Requests are parsed and images decoded and preprocessed on tokio's
//! threads (decoding on the blocking pool), then queued for **one inference thread** that
//! batches them dynamically ([`batcher`]): the first waiting image waits up to `batch_wait` for
//! others, up to `max_batch`, and the batch runs as one forward pass, which the backend spreads
//! over the cores itself. The queue is bounded; when it is full a request gets 503 with
//! `Retry-After` instead of growing memory.
//!
//! Routes (see [`routes`]): `POST /v1/classify`, `/v1/classify/batch`, `/v1/cam`, `/predict`
//! (the seed service's API), `GET /`, `/healthz`, `/readyz`, `/metrics`, `/v1/model`,
//! `/v1/history`. Each recognition goes to the history and, with `--mqtt-url`, to an MQTT
//! broker ([`mqtt`]). Every error is `{"error": ..., "code": ...}` with its status; the handler
//! never fails, so no request can stop the server.
//!
//! ```no_run
//! use resnet_core::backend::BackendKind;
//! use resnet_server::{Config, ServedModel};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let weights = resnet_core::weights::Weights::load("resnet18.safetensors".as_ref())?;
//! let options = resnet_core::backend::BackendOptions::default();
//! let model = ServedModel::build(BackendKind::Native, &weights, &options, 2)?;
//! resnet_server::run(Config::default(), model, 2)?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
pub mod batcher;
pub mod body;
pub mod budget;
pub mod config;
pub mod declared_length;
pub mod error;
pub mod explore;
pub mod history;
pub mod kserve;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod ops;
pub mod pages;
pub mod routes;
pub mod server;
pub mod watch;
pub mod write_deadline;

pub use config::Config;
pub use error::{ApiError, ServerError};
pub use model::{ModelInfo, ServedModel, WeightsIdentity};
pub use server::{run, Server};
