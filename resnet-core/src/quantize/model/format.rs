//! The `.int8.safetensors` file: a self-describing quantised ResNet-18.
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `{conv}.weight_q` | I8 | `[OC, C, KH, KW]` | weight codes, symmetric per output channel (BN folded) |
//! | `{conv}.weight_scale` | F32 | `[OC]` | real weight = code x scale |
//! | `{conv}.bias` | F32 | `[OC]` | the folded BatchNorm shift |
//! | `{conv}.weight` | F32 | `[OC, C, KH, KW]` | folded f32 weights, only for layers kept in f32 |
//! | `{tensor}.act_scale`, `{tensor}.act_zero_point` | F32, U8 | `[1]` | activation `u8` quantisation |
//! | `fc.weight`, `fc.bias` | F32 | `[1000, 512]`, `[1000]` | the classifier, f32 |
//!
//! Metadata: `format` = [`INT8_FORMAT`], the calibration method and set size, the scheme in
//! words, the source of the f32 weights and whether they were synthetic.

use super::{activation_names, ActQuant, QuantizedConv, QuantizedModel};
use crate::arch::{ResNet18Arch, FC_IN, NUM_CLASSES};
use crate::error::{Error, Result};
use crate::weights::{write_atomically, META_SYNTHETIC};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` metadata value of a quantised model file.
pub const INT8_FORMAT: &str = "resnet18-rs int8 v1";

const SCHEME: &str = "weights: symmetric int8 per output channel after BatchNorm folding; \
    activations: uint8 per tensor with zero point (real = scale * (q - zero_point)); fc in f32";

/// Whether `bytes` are a quantised model file (its `format` metadata says so).
pub fn is_int8_file(bytes: &[u8]) -> bool {
    SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, h)| h.metadata().as_ref()?.get("format").cloned())
        .is_some_and(|f| f == INT8_FORMAT)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl QuantizedModel {
    /// The file's bytes (tensors and metadata in key order: the same model gives the same bytes).
    pub fn to_safetensors_bytes(&self) -> Vec<u8> {
        let mut t: BTreeMap<String, (&str, Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (name, c) in &self.convs {
            let shape = c.spec.weight_shape().to_vec();
            let oc = vec![c.spec.out_channels];
            t.insert(
                format!("{name}.weight_q"),
                (
                    "I8",
                    shape.clone(),
                    c.weight.iter().map(|&w| w as u8).collect(),
                ),
            );
            t.insert(
                format!("{name}.weight_scale"),
                ("F32", oc.clone(), f32_bytes(&c.weight_scale)),
            );
            t.insert(format!("{name}.bias"), ("F32", oc, f32_bytes(&c.bias)));
            if let Some(w) = &c.weight_f32 {
                t.insert(format!("{name}.weight"), ("F32", shape, f32_bytes(w)));
            }
        }
        for (name, q) in &self.activations {
            t.insert(
                format!("{name}.act_scale"),
                ("F32", vec![1], f32_bytes(&[q.scale])),
            );
            t.insert(
                format!("{name}.act_zero_point"),
                ("U8", vec![1], vec![q.zero_point]),
            );
        }
        t.insert(
            "fc.weight".into(),
            ("F32", vec![NUM_CLASSES, FC_IN], f32_bytes(&self.fc_weight)),
        );
        t.insert(
            "fc.bias".into(),
            ("F32", vec![NUM_CLASSES], f32_bytes(&self.fc_bias)),
        );
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), INT8_FORMAT.to_string());
        meta.insert("resnet18_rs.int8.scheme".into(), SCHEME.into());
        meta.insert("resnet18_rs.int8.method".into(), self.method.clone());
        meta.insert(
            "resnet18_rs.int8.calibration_inputs".into(),
            self.calibration_inputs.to_string(),
        );
        meta.insert(
            "resnet18_rs.int8.stem".into(),
            format!("{:?}", self.stem_precision()).to_lowercase(),
        );
        meta.insert(
            "resnet18_rs.int8.weights_source".into(),
            self.source.clone(),
        );
        meta.insert(META_SYNTHETIC.into(), self.synthetic.to_string());

        crate::weights::serialize_sorted(&t, &meta)
    }

    /// Writes the file (via a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(path, &self.to_safetensors_bytes())
    }

    /// Reads a quantised model file.
    pub fn load(path: &Path) -> Result<QuantizedModel> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(path, "cannot read quantised model", e))?;
        QuantizedModel::from_safetensors_bytes(&bytes, &path.display().to_string())
    }

    /// Parses and validates a quantised model; `source` names it in errors.
    pub fn from_safetensors_bytes(bytes: &[u8], source: &str) -> Result<QuantizedModel> {
        let bad = |reason: String| Error::CorruptWeights {
            path: source.to_string(),
            reason,
        };
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(INT8_FORMAT) {
            return Err(bad(format!(
                "not a quantised model (metadata 'format' is {:?}, expected '{INT8_FORMAT}'); create one with `resnet quantize`",
                meta.get("format")
            )));
        }
        let get = |key: &str, dtype: Dtype, shape: &[usize]| -> Result<Vec<u8>> {
            let view = st
                .tensor(key)
                .map_err(|_| bad(format!("missing tensor '{key}'")))?;
            if view.dtype() != dtype || view.shape() != shape {
                return Err(bad(format!(
                    "tensor '{key}' is {:?} {:?}, expected {dtype:?} {shape:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            Ok(view.data().to_vec())
        };
        let f32s = |b: Vec<u8>| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let mut convs = BTreeMap::new();
        for spec in ResNet18Arch::new().convs() {
            let name = &spec.conv;
            let shape = spec.weight_shape();
            let oc = [spec.out_channels];
            let weight: Vec<i8> = get(&format!("{name}.weight_q"), Dtype::I8, &shape)?
                .into_iter()
                .map(|b| b as i8)
                .collect();
            let weight_scale = f32s(get(&format!("{name}.weight_scale"), Dtype::F32, &oc)?);
            if weight_scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(bad(format!(
                    "'{name}.weight_scale' holds a non-positive scale"
                )));
            }
            let bias = f32s(get(&format!("{name}.bias"), Dtype::F32, &oc)?);
            let weight_f32 = match st.tensor(&format!("{name}.weight")) {
                Ok(_) => Some(f32s(get(&format!("{name}.weight"), Dtype::F32, &shape)?)),
                Err(_) => None,
            };
            convs.insert(
                name.clone(),
                QuantizedConv {
                    spec: spec.clone(),
                    weight,
                    weight_scale,
                    weight_f32,
                    bias,
                },
            );
        }
        let mut activations = BTreeMap::new();
        for name in activation_names() {
            let scale = f32s(get(&format!("{name}.act_scale"), Dtype::F32, &[1])?)[0];
            if !(scale.is_finite() && scale > 0.0) {
                return Err(bad(format!("'{name}.act_scale' is not a positive number")));
            }
            let zero_point = get(&format!("{name}.act_zero_point"), Dtype::U8, &[1])?[0];
            activations.insert(name, ActQuant { scale, zero_point });
        }
        let model = QuantizedModel {
            convs,
            activations,
            fc_weight: f32s(get("fc.weight", Dtype::F32, &[NUM_CLASSES, FC_IN])?),
            fc_bias: f32s(get("fc.bias", Dtype::F32, &[NUM_CLASSES])?),
            method: meta
                .get("resnet18_rs.int8.method")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            calibration_inputs: meta
                .get("resnet18_rs.int8.calibration_inputs")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            source: meta
                .get("resnet18_rs.int8.weights_source")
                .cloned()
                .unwrap_or_else(|| source.to_string()),
            synthetic: meta.get(META_SYNTHETIC).map(String::as_str) == Some("true"),
        };
        Ok(model)
    }
}
