//! The model the server runs and what `/v1/model` says about it.

use resnet_core::backend::{Backend, BackendKind, BackendOptions};
use resnet_core::cpu::Isa;
use resnet_core::labels::Labels;
use resnet_core::trace::branches::BlockWeights;
use resnet_core::weights::Weights;
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// What `/v1/model` reports.
#[derive(Clone, Debug, Serialize, ToSchema)]
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
    /// Every backend `/v1/trace` can run (`?backend=`, `?compare=`): the main one first.
    pub backends: Vec<String>,
}

/// What the server knows about the weights behind a backend.
#[derive(Clone, Debug)]
pub struct WeightsIdentity {
    /// Where they came from (a path or a description).
    pub source: String,
    /// SHA-256 of the file, when they came from one.
    pub sha256: Option<String>,
    /// Synthetic (random, untrained) weights: predictions mean nothing.
    pub synthetic: bool,
    /// `fc.weight`, `[1000, 512]` row-major, for class activation maps (`None`: no `/v1/cam`,
    /// e.g. for an INT8 model file).
    pub fc_weight: Option<Vec<f32>>,
}

impl WeightsIdentity {
    /// The identity of f32 weights (with the file's digest when known).
    pub fn of(weights: &Weights, sha256: Option<String>) -> WeightsIdentity {
        WeightsIdentity {
            source: weights.source().into(),
            sha256,
            synthetic: weights.is_synthetic(),
            fc_weight: Some(weights.tensor("fc.weight").f32_values().to_vec()),
        }
    }
}

/// A prepared backend with its labels and the tensor class activation maps need.
pub struct ServedModel {
    /// The backend (shared with the inference thread).
    pub backend: Arc<dyn Backend>,
    /// The class names.
    pub labels: Labels,
    /// `fc.weight`, `[1000, 512]` row-major (for `/v1/cam`), when known.
    pub fc_weight: Option<Arc<Vec<f32>>>,
    /// What `/v1/model` reports.
    pub info: ModelInfo,
    /// More backends on the same weights, for `/v1/trace?backend=` and `?compare=` only
    /// (classification always runs [`Self::backend`]).
    pub others: Vec<Arc<dyn Backend>>,
    /// The BasicBlocks' folded f32 weights, for `/v1/trace?block=` (`None`: no f32 weights,
    /// e.g. an INT8 model file).
    pub blocks: Option<Arc<BlockWeights>>,
}

impl ServedModel {
    /// Wraps a backend built elsewhere (e.g. by the CLI's model loader).
    pub fn new(
        backend: Box<dyn Backend>,
        labels: Labels,
        weights: WeightsIdentity,
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
            weights_source: weights.source,
            weights_sha256: weights.sha256,
            synthetic_weights: weights.synthetic,
            backends: vec![backend.name().into()],
        };
        ServedModel {
            backend: Arc::from(backend),
            labels,
            fc_weight: weights.fc_weight.map(Arc::new),
            info,
            others: Vec::new(),
            blocks: None,
        }
    }

    /// Lets `/v1/trace?block=` recompute BasicBlocks with these weights (about 43 MB more).
    pub fn with_block_weights(mut self, blocks: BlockWeights) -> ServedModel {
        self.blocks = Some(Arc::new(blocks));
        self
    }

    /// Adds a backend `/v1/trace` can run or compare with (one per name: a second of the same
    /// name replaces the first).
    pub fn with_other_backend(mut self, backend: Arc<dyn Backend>) -> ServedModel {
        let name = backend.name();
        if name == self.backend.name() {
            return self;
        }
        self.others.retain(|b| b.name() != name);
        self.others.push(backend);
        self.info.backends = std::iter::once(self.backend.name())
            .chain(self.others.iter().map(|b| b.name()))
            .map(String::from)
            .collect();
        self
    }

    /// The served backend called `name`, if any.
    pub fn backend_named(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        std::iter::once(&self.backend)
            .chain(&self.others)
            .find(|b| b.name() == name)
    }

    /// Builds `kind` for `weights` with the built-in ImageNet labels and the block weights of
    /// `/v1/trace?block=` (tests, examples).
    pub fn build(
        kind: BackendKind,
        weights: &Weights,
        options: &BackendOptions,
        threads: usize,
    ) -> resnet_core::Result<ServedModel> {
        let backend = kind.create(weights, options)?;
        Ok(ServedModel::new(
            backend,
            Labels::imagenet(),
            WeightsIdentity::of(weights, None),
            options.isa,
            threads,
        )
        .with_block_weights(BlockWeights::new(weights)))
    }

    /// The same model sharing the same backend (the backend is `Sync`): lets tests start many
    /// servers without preparing the weights again.
    pub fn share(&self) -> ServedModel {
        ServedModel {
            backend: Arc::clone(&self.backend),
            labels: self.labels.clone(),
            fc_weight: self.fc_weight.clone(),
            info: self.info.clone(),
            others: self.others.clone(),
            blocks: self.blocks.clone(),
        }
    }
}
