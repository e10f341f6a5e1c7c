//! ResNet-18 weights by torchvision's state-dict names: loading, validation, saving.
//!
//! A [`Weights`] value always holds exactly the tensors of torchvision's `resnet18()` with the
//! exact shapes, as f32 (f16 widened on load), except the convolution weights of a bf16 file,
//! kept as bf16 ([`Values::Bf16`]): every loader validates before it returns, so the model code
//! can look tensors up by name without further checks.

mod fold;
pub mod pth;
mod safetensors_io;
mod synthetic;

pub use fold::{fold_batch_norm, BatchNorm, FoldedConv};
pub(crate) use safetensors_io::serialize_sorted;
pub use safetensors_io::StoreDtype;
pub use synthetic::{synthetic_weights, SYNTHETIC_GENERATOR};

use crate::arch::{ResNet18Arch, TensorRole};
use crate::error::{Error, Result};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Metadata key that marks weights as synthetic (random, untrained).
pub const META_SYNTHETIC: &str = "resnet18_rs.synthetic";
/// Metadata key holding the seed of synthetic weights.
pub const META_SEED: &str = "resnet18_rs.seed";

/// One tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub values: Values,
}

impl Tensor {
    /// The values as f32 (a widened copy when they are stored bf16).
    pub fn values(&self) -> Cow<'_, [f32]> {
        self.values.to_f32()
    }

    /// The values of a tensor that loading always stores f32: BatchNorm's and the classifier's
    /// (only convolution weights keep a file's bf16, see [`Values::Bf16`]).
    ///
    /// # Panics
    /// If the tensor is stored bf16: a bug in the caller (asking for a convolution weight).
    pub fn f32_values(&self) -> &[f32] {
        match &self.values {
            Values::F32(v) => v,
            Values::Bf16(_) => panic!("a bf16-stored tensor read as f32 without widening"),
        }
    }
}

/// A tensor's values as held in memory.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// IEEE single: f32 and f16 files, and every BatchNorm and classifier tensor.
    F32(Vec<f32>),
    /// bfloat16 bit patterns exactly as a BF16 file holds them: the convolution weights of a
    /// `resnet weights convert --dtype bf16` file are not widened on load (half the memory);
    /// the backends widen one layer at a time while folding BatchNorm.
    Bf16(Vec<u16>),
}

impl Values {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::Bf16(v) => v.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32: borrowed, or widened (exactly: every bf16 is an f32).
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Values::F32(v) => Cow::Borrowed(v),
            Values::Bf16(v) => Cow::Owned(
                v.iter()
                    .map(|&b| f32::from_bits((b as u32) << 16))
                    .collect(),
            ),
        }
    }

    /// The first value that is not finite, if any.
    fn first_non_finite(&self) -> Option<f32> {
        match self {
            Values::F32(v) => v.iter().copied().find(|v| !v.is_finite()),
            // Exponent bits all ones: an infinity or a NaN.
            Values::Bf16(v) => v
                .iter()
                .find(|&&b| b & 0x7F80 == 0x7F80)
                .map(|&b| f32::from_bits((b as u32) << 16)),
        }
    }
}

/// A dtype a tensor can arrive in, before conversion to f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceDtype {
    /// IEEE single.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit integer (only `num_batches_tracked`).
    I64,
    /// Anything else, by name.
    Other(&'static str),
}

impl SourceDtype {
    /// The dtype's name as safetensors spells it (`F32`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SourceDtype::F32 => "F32",
            SourceDtype::F16 => "F16",
            SourceDtype::BF16 => "BF16",
            SourceDtype::I64 => "I64",
            SourceDtype::Other(n) => n,
        }
    }
}

/// A tensor as read from a file, before validation.
#[derive(Clone, Debug)]
pub struct RawTensor {
    /// Its dtype in the file.
    pub dtype: SourceDtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values: bf16 as read, f32 and f16 as f32 (empty for `I64` and `Other`).
    pub values: Values,
}

/// The validated weights of one ResNet-18.
#[derive(Clone, Debug)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    source: String,
    metadata: BTreeMap<String, String>,
}

/// The file formats weights can be read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsFormat {
    /// safetensors (what `resnet` writes and caches).
    Safetensors,
    /// A PyTorch checkpoint written by `torch.save(state_dict)` (zip format).
    Pth,
}

impl WeightsFormat {
    /// Tells the format from the first bytes: a `.pth` is a zip archive (or, in the refused
    /// legacy format, a bare pickle); anything else is treated as safetensors.
    pub fn sniff(bytes: &[u8]) -> WeightsFormat {
        if bytes.starts_with(b"PK") || bytes.starts_with(&[0x80, 0x02]) {
            WeightsFormat::Pth
        } else {
            WeightsFormat::Safetensors
        }
    }

    /// The name users know it by.
    pub fn name(self) -> &'static str {
        match self {
            WeightsFormat::Safetensors => "safetensors",
            WeightsFormat::Pth => "PyTorch .pth (zip)",
        }
    }
}

/// A weights file as read, before it is checked against ResNet-18 (for `resnet weights info`).
#[derive(Clone, Debug)]
pub struct RawWeights {
    /// The file's format.
    pub format: WeightsFormat,
    /// Every tensor, by key.
    pub tensors: BTreeMap<String, RawTensor>,
    /// The file's string metadata (safetensors only).
    pub metadata: BTreeMap<String, String>,
}

/// Reads every tensor of a weights file in either format; `source` names it in errors.
pub fn read_raw(bytes: &[u8], source: &str) -> Result<RawWeights> {
    let format = WeightsFormat::sniff(bytes);
    let (tensors, metadata) = match format {
        WeightsFormat::Pth => (pth::read(bytes, source)?, BTreeMap::new()),
        WeightsFormat::Safetensors => safetensors_io::read(bytes, source)?,
    };
    Ok(RawWeights {
        format,
        tensors,
        metadata,
    })
}

impl Weights {
    /// Loads a weights file: safetensors or a PyTorch `.pth` checkpoint (told apart by content),
    /// with torchvision key names.
    pub fn load(path: &Path) -> Result<Weights> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "cannot read weights", e))?;
        Weights::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses the bytes of a weights file in either format; `source` names them in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Weights> {
        let raw = read_raw(bytes, source)?;
        Weights::from_raw(raw.tensors, source, raw.metadata)
    }

    /// Validates raw tensors against torchvision's ResNet-18 state dict.
    ///
    /// Every parameter and statistic must be present with its exact shape and a float dtype;
    /// `num_batches_tracked` is optional (an i64 scalar when present); any other key is an error.
    pub fn from_raw(
        mut raw: BTreeMap<String, RawTensor>,
        source: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Weights> {
        let path = source.to_string();
        let mut tensors = HashMap::new();
        for expected in ResNet18Arch::new().expected_tensors() {
            let Some(t) = raw.remove(&expected.key) else {
                if expected.role == TensorRole::Counter {
                    continue;
                }
                return Err(Error::MissingTensor {
                    path,
                    key: expected.key,
                    expected: expected.shape,
                });
            };
            let shape_ok = t.shape == expected.shape
                // PyTorch saves num_batches_tracked as a 0-d tensor; some converters write [1].
                || (expected.role == TensorRole::Counter && t.shape == [1]);
            if !shape_ok {
                return Err(Error::WrongShape {
                    path,
                    key: expected.key,
                    expected: expected.shape,
                    found: t.shape,
                });
            }
            match (expected.role, t.dtype) {
                (TensorRole::Counter, SourceDtype::I64) => continue,
                (TensorRole::Counter, found) => {
                    return Err(Error::WrongDtype {
                        path,
                        key: expected.key,
                        expected: "I64",
                        found: found.name().into(),
                    })
                }
                (_, SourceDtype::F32 | SourceDtype::F16 | SourceDtype::BF16) => {}
                (_, found) => {
                    return Err(Error::WrongDtype {
                        path,
                        key: expected.key,
                        expected: "F32, F16 or BF16",
                        found: found.name().into(),
                    })
                }
            }
            if let Some(bad) = t.values.first_non_finite() {
                return Err(Error::CorruptWeights {
                    path,
                    reason: format!("tensor '{}' holds a non-finite value ({bad})", expected.key),
                });
            }
            if expected.key.ends_with("running_var") && t.values.to_f32().iter().any(|&v| v < 0.0) {
                return Err(Error::CorruptWeights {
                    path,
                    reason: format!("tensor '{}' holds a negative variance", expected.key),
                });
            }
            // Convolution weights (4-D) stay as the file holds them; the small tensors are
            // widened, so that BatchNorm and the classifier are always f32.
            let values = match t.values {
                Values::Bf16(bits) if expected.shape.len() != 4 => {
                    Values::F32(Values::Bf16(bits).to_f32().into_owned())
                }
                kept => kept,
            };
            tensors.insert(
                expected.key,
                Tensor {
                    shape: t.shape,
                    values,
                },
            );
        }
        if let Some((key, t)) = raw.into_iter().next() {
            return Err(Error::UnexpectedTensor {
                path,
                key,
                shape: t.shape,
            });
        }
        Ok(Weights {
            tensors,
            source: source.to_string(),
            metadata,
        })
    }

    /// The tensor stored under a torchvision key.
    ///
    /// # Panics
    /// If `key` is not a ResNet-18 key: loading validated the set of keys, so a miss is a bug
    /// in the caller, not bad input.
    pub fn tensor(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("'{key}' is not a ResNet-18 state-dict key"))
    }

    /// Frees the tensors of one convolution and its BatchNorm, once a backend has folded and
    /// packed them (so that a model being built never holds all weights twice). Looking them
    /// up afterwards is a bug and panics.
    pub fn release_conv_bn(&mut self, conv: &str, bn: &str) {
        self.tensors.remove(&format!("{conv}.weight"));
        for part in ["weight", "bias", "running_mean", "running_var"] {
            self.tensors.remove(&format!("{bn}.{part}"));
        }
    }

    /// The BatchNorm whose state-dict prefix is `prefix` (e.g. `layer1.0.bn1`).
    pub fn batch_norm(&self, prefix: &str) -> BatchNorm<'_> {
        BatchNorm {
            gamma: self.tensor(&format!("{prefix}.weight")).f32_values(),
            beta: self.tensor(&format!("{prefix}.bias")).f32_values(),
            mean: self.tensor(&format!("{prefix}.running_mean")).f32_values(),
            var: self.tensor(&format!("{prefix}.running_var")).f32_values(),
            eps: crate::arch::BN_EPS,
        }
    }

    /// Where the weights came from (a path, or a description).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The file's string metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Adds string metadata (saved with safetensors), e.g. where the weights came from.
    pub fn with_metadata<'a>(
        mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Weights {
        for (k, v) in entries {
            self.metadata.insert(k.to_string(), v.to_string());
        }
        self
    }

    /// True for seeded random weights from [`synthetic_weights`]: predictions made with them
    /// mean nothing, and every output that shows them says so.
    pub fn is_synthetic(&self) -> bool {
        self.metadata.get(META_SYNTHETIC).map(String::as_str) == Some("true")
    }

    /// Learned parameters (excluding BatchNorm running statistics).
    pub fn parameter_count(&self) -> usize {
        ResNet18Arch::new()
            .expected_tensors()
            .iter()
            .filter(|t| t.role == TensorRole::Parameter)
            .map(|t| self.tensor(&t.key).values.len())
            .sum()
    }

    /// Serialises to safetensors with torchvision's key names (plus an i64
    /// `num_batches_tracked` per BatchNorm, as in a real state dict), so that
    /// `torchvision.models.resnet18().load_state_dict(safetensors.torch.load_file(...))` takes it.
    pub fn to_safetensors_bytes(&self, dtype: StoreDtype) -> Vec<u8> {
        safetensors_io::write(&self.tensors, &self.metadata, dtype)
    }

    /// Serialises to a PyTorch checkpoint laid out as `torch.save(model.state_dict())` lays it
    /// out, in torchvision's key order (with a zero `num_batches_tracked` per BatchNorm), so
    /// that `resnet18().load_state_dict(torch.load(f, weights_only=True))` takes it.
    pub fn to_pth_bytes(&self, dtype: StoreDtype) -> Vec<u8> {
        let expected = ResNet18Arch::new().expected_tensors();
        let values: Vec<Option<Cow<'_, [f32]>>> = expected
            .iter()
            .map(|t| (t.role != TensorRole::Counter).then(|| self.tensor(&t.key).values()))
            .collect();
        let entries: Vec<(&str, pth::PthEntry<'_>)> = expected
            .iter()
            .zip(&values)
            .map(|(t, v)| {
                let entry = match v {
                    None => pth::PthEntry::Counter(0),
                    Some(v) => pth::PthEntry::Float(&self.tensor(&t.key).shape, v, dtype),
                };
                (t.key.as_str(), entry)
            })
            .collect();
        pth::write(&entries)
    }

    /// Writes [`Weights::to_safetensors_bytes`] to `path` (via a temporary file and a rename, so
    /// that a failed write never leaves a file that looks complete).
    pub fn save_safetensors(&self, path: &Path, dtype: StoreDtype) -> Result<()> {
        write_atomically(path, &self.to_safetensors_bytes(dtype))
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, "cannot write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, "cannot write", e)
    })
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
