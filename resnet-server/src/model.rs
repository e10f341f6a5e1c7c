//! The model the server runs and what `/v1/model` says about it.

use resnet_core::backend::{Backend, BackendKind, BackendOptions};
use resnet_core::cpu::Isa;
use resnet_core::labels::Labels;
use resnet_core::weights::Weights;
use serde::Serialize;
use std::sync::Arc;

/// What `/v1/model` reports.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// The architecture (`resnet18`).
    pub name: String,
    /// The backend's CLI name.
    pub backend: String,
    /// How the backend computes (kernel, ISA).
    pub description: String,
    /// The kernel ISA level.
    pub isa: String,
    /// Threads the backend computes with.
    pub threads: usize,
    /// Number of class names.
    pub labels: usize,
    /// Where the weights came from.
    pub weights_source: String,
    /// SHA-256 of the weights file, when it came from a file.
    pub weights_sha256: Option<String>,
    /// True for synthetic (random, untrained) weights: predictions mean nothing.
    pub synthetic_weights: bool,
}

/// A prepared backend with its labels and the tensor class activation maps need.
pub struct ServedModel {
    /// The backend (shared with the inference thread).
    pub backend: Arc<dyn Backend>,
    /// The class names.
    pub labels: Labels,
    /// `fc.weight`, `[1000, 512]` row-major (for `/v1/cam`).
    pub fc_weight: Arc<Vec<f32>>,
    /// What `/v1/model` reports.
    pub info: ModelInfo,
}

impl ServedModel {
    /// Wraps a backend built elsewhere (e.g. by the CLI's model loader). `weights` supplies
    /// `fc.weight`, the synthetic flag and the source name; `sha256` is the file's digest.
    pub fn new(
        backend: Box<dyn Backend>,
        labels: Labels,
        weights: &Weights,
        sha256: Option<String>,
        isa: Isa,
        threads: usize,
    ) -> ServedModel {
        let info = ModelInfo {
            name: "resnet18".into(),
            backend: backend.name().into(),
            description: backend.describe(),
            isa: isa.to_string(),
            threads,
            labels: labels.len(),
            weights_source: weights.source().into(),
            weights_sha256: sha256,
            synthetic_weights: weights.is_synthetic(),
        };
        ServedModel {
            backend: Arc::from(backend),
            labels,
            fc_weight: Arc::new(weights.tensor("fc.weight").data.clone()),
            info,
        }
    }

    /// Builds `kind` for `weights` with the built-in ImageNet labels (tests, examples).
    pub fn build(
        kind: BackendKind,
        weights: &Weights,
        isa: Isa,
        threads: usize,
    ) -> resnet_core::Result<ServedModel> {
        let backend = kind.create(
            weights,
            &BackendOptions {
                isa,
                ..Default::default()
            },
        )?;
        Ok(ServedModel::new(
            backend,
            Labels::imagenet(),
            weights,
            None,
            isa,
            threads,
        ))
    }

    /// The same model sharing the same backend (the backend is `Sync`): lets tests start many
    /// servers without preparing the weights again.
    pub fn share(&self) -> ServedModel {
        ServedModel {
            backend: Arc::clone(&self.backend),
            labels: self.labels.clone(),
            fc_weight: Arc::clone(&self.fc_weight),
            info: self.info.clone(),
        }
    }
}
