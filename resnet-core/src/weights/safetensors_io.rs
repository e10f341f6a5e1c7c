//! Reading and writing the safetensors format (via the `safetensors` crate): f16 is widened to
//! f32 on read, bf16 kept as read ([`super::Values`]).

use super::{RawTensor, SourceDtype, Tensor, Values, META_SYNTHETIC};
use crate::error::{Error, Result};
use rayon::prelude::*;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};

/// The dtype tensors are stored in when writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoreDtype {
    /// IEEE single (lossless).
    #[default]
    F32,
    /// IEEE half (rounded to nearest even).
    F16,
    /// bfloat16 (rounded to nearest even).
    BF16,
}

impl std::str::FromStr for StoreDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(StoreDtype::F32),
            "f16" | "float16" | "half" => Ok(StoreDtype::F16),
            "bf16" | "bfloat16" => Ok(StoreDtype::BF16),
            _ => Err(format!("unknown dtype '{s}' (use f32, f16 or bf16)")),
        }
    }
}

pub(super) fn read(
    bytes: &[u8],
    source: &str,
) -> Result<(BTreeMap<String, RawTensor>, BTreeMap<String, String>)> {
    let corrupt = |e: safetensors::SafeTensorError| Error::CorruptWeights {
        path: source.to_string(),
        reason: e.to_string(),
    };
    let st = SafeTensors::deserialize(bytes).map_err(corrupt)?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let metadata: BTreeMap<String, String> = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    // Converting 46 MB is start-up's biggest single cost after the read: one tensor per thread.
    let converted: Vec<(String, RawTensor)> = st
        .tensors()
        .into_par_iter()
        .map(|(name, view)| {
            let data = view.data();
            let (dtype, values) = match view.dtype() {
                Dtype::F32 => (
                    SourceDtype::F32,
                    Values::F32(
                        data.chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect(),
                    ),
                ),
                Dtype::F16 => (
                    SourceDtype::F16,
                    Values::F32(
                        data.chunks_exact(2)
                            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                            .collect(),
                    ),
                ),
                // Kept as bit patterns: not widened (see `Values::Bf16`).
                Dtype::BF16 => (
                    SourceDtype::BF16,
                    Values::Bf16(
                        data.chunks_exact(2)
                            .map(|b| u16::from_le_bytes([b[0], b[1]]))
                            .collect(),
                    ),
                ),
                Dtype::I64 => (SourceDtype::I64, Values::F32(Vec::new())),
                other => (
                    SourceDtype::Other(dtype_name(other)),
                    Values::F32(Vec::new()),
                ),
            };
            (
                name,
                RawTensor {
                    dtype,
                    shape: view.shape().to_vec(),
                    values,
                },
            )
        })
        .collect();
    Ok((converted.into_iter().collect(), metadata))
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::BOOL => "BOOL",
        Dtype::U8 => "U8",
        Dtype::I8 => "I8",
        Dtype::I16 => "I16",
        Dtype::U16 => "U16",
        Dtype::I32 => "I32",
        Dtype::U32 => "U32",
        Dtype::U64 => "U64",
        Dtype::F64 => "F64",
        _ => "an unsupported dtype",
    }
}

pub(super) fn write(
    tensors: &HashMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    dtype: StoreDtype,
) -> Vec<u8> {
    let mut buffers: BTreeMap<String, (&str, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (key, t) in tensors {
        let (dt, bytes): (&str, Vec<u8>) = match (dtype, &t.values) {
            // bf16 stays bit for bit.
            (StoreDtype::BF16, Values::Bf16(bits)) => {
                ("BF16", bits.iter().flat_map(|b| b.to_le_bytes()).collect())
            }
            (StoreDtype::F32, v) => (
                "F32",
                v.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (StoreDtype::F16, v) => (
                "F16",
                v.to_f32()
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            (StoreDtype::BF16, v) => (
                "BF16",
                v.to_f32()
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
        };
        buffers.insert(key.clone(), (dt, t.shape.clone(), bytes));
        if let Some(bn) = key.strip_suffix(".running_var") {
            buffers.insert(
                format!("{bn}.num_batches_tracked"),
                ("I64", vec![], 0i64.to_le_bytes().to_vec()),
            );
        }
    }
    let mut meta = metadata.clone();
    meta.entry(META_SYNTHETIC.to_string())
        .or_insert_with(|| "false".to_string());
    meta.insert("format".into(), "pt".into());
    serialize_sorted(&buffers, &meta)
}

/// Lays out a safetensors file with tensors and metadata in key order.
///
/// The `safetensors` crate's writer keeps metadata in a `HashMap`, whose order changes from run
/// to run; synthetic weights must be the same bytes on every machine, so the header is written
/// here from ordered maps (the crate's reader still validates everything we write, see tests).
/// Each buffer is `(dtype as safetensors spells it, shape, little-endian bytes)`.
pub(crate) fn serialize_sorted(
    buffers: &BTreeMap<String, (&str, Vec<usize>, Vec<u8>)>,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut offset = 0usize;
    for (key, (dtype, shape, bytes)) in buffers {
        header.insert(
            key.clone(),
            serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [offset, offset + bytes.len()],
            }),
        );
        offset += bytes.len();
    }
    let mut header = serde_json::to_vec(&header).expect("a JSON map always serialises");
    // The format pads the header with spaces so that the data starts 8-byte aligned.
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, _, bytes) in buffers.values() {
        out.extend_from_slice(bytes);
    }
    out
}
