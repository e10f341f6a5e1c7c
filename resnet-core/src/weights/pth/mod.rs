//! Reading PyTorch `.pth` checkpoints without Python.
//!
//! `torch.save(state_dict, f)` (PyTorch >= 1.6) writes a zip archive:
//!
//! ```text
//! <name>/data.pkl      a pickle (protocol 2) of an OrderedDict: key -> tensor
//! <name>/data/<key>    one raw little-endian storage per <key>
//! <name>/byteorder     "little"
//! ```
//!
//! Each tensor in the pickle is a call `torch._utils._rebuild_tensor_v2(storage, offset, size,
//! stride, requires_grad, hooks)` whose `storage` is a *persistent id*
//! `("storage", torch.FloatStorage, "<key>", "cpu", numel)` pointing at `data/<key>`. Several
//! tensors may share one storage (views, slices at an offset, transposes).
//!
//! A pickle is a program for a stack machine, and Python's unpickler will call any function it
//! names. This reader is not an interpreter: it knows the handful of opcodes a state dict uses
//! and exactly these callables — `collections.OrderedDict`, `_rebuild_tensor_v2`,
//! `_rebuild_parameter` and the storage classes — and refuses anything else by name
//! ([`Error::ForbiddenPickle`]). Depth, memo, value count and tensor sizes are bounded, so a
//! hostile file costs bounded memory and time.
//!
//! The parts: [`archive`] reads the zip entries within their bounds, [`unpickle`] runs the
//! restricted unpickler over `data.pkl`, [`view`] copies each tensor's window out of its
//! storage, and [`write`](mod@write) lays a checkpoint out as `torch.save` does (for tests,
//! fixtures and `resnet weights convert`).

mod archive;
mod unpickle;
mod view;
mod write;

pub use write::{write, PthEntry};

use super::RawTensor;
use crate::error::{Error, Result};
use archive::{read_entry, MAX_PICKLE_BYTES};
use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use unpickle::{Unpickler, Value};
use view::{element_count, gather, MAX_ELEMENTS};

/// Reads a `.pth` checkpoint's tensors by key; `source` names the file in errors.
pub(super) fn read(bytes: &[u8], source: &str) -> Result<BTreeMap<String, RawTensor>> {
    let corrupt = |reason: String| Error::CorruptCheckpoint {
        path: source.to_string(),
        reason,
    };
    if !bytes.starts_with(b"PK\x03\x04") {
        if bytes.starts_with(&[0x80]) || bytes.starts_with(b"\x1f\x8b") {
            return Err(corrupt(
                "this is a legacy (pre-PyTorch-1.6, non-zip) checkpoint, which this reader does \
                 not support; re-save it with a current PyTorch: \
                 torch.save(torch.load(OLD, weights_only=True), NEW)"
                    .into(),
            ));
        }
        return Err(corrupt(if bytes.is_empty() {
            "the file is empty".into()
        } else {
            "not a zip archive (a .pth from torch.save starts with 'PK')".into()
        }));
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| corrupt(format!("corrupt zip archive: {e}")))?;
    let pickle_name = archive
        .file_names()
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .min()
        .map(str::to_string)
        .ok_or_else(|| corrupt("the zip archive has no data.pkl".into()))?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    if let Ok(order) = read_entry(&mut archive, bytes.len(), &format!("{prefix}byteorder"), 16) {
        if order != b"little" {
            return Err(corrupt(format!(
                "storages are stored {}-endian; only little-endian checkpoints are supported",
                String::from_utf8_lossy(&order)
            )));
        }
    }
    let pickle =
        read_entry(&mut archive, bytes.len(), &pickle_name, MAX_PICKLE_BYTES).map_err(corrupt)?;
    let root = Unpickler::new(&pickle, source).run()?;

    let entries = match root {
        Value::Dict(entries) => entries,
        other => {
            return Err(corrupt(format!(
                "the pickle holds a {}, not a state dict (a dict of tensors)",
                other.kind()
            )))
        }
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut total_elements = 0u64;
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        let key = match key {
            Value::Str(s) => s,
            other => return Err(corrupt(format!("a state-dict key is a {}", other.kind()))),
        };
        let tensor = match value {
            Value::Tensor(t) => t,
            other => {
                return Err(corrupt(format!(
                    "entry '{key}' is a {}, not a tensor",
                    other.kind()
                )))
            }
        };
        let numel = element_count(&tensor.shape)
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| {
                corrupt(format!(
                    "tensor '{key}' has shape {:?}, over the limit of {MAX_ELEMENTS} elements",
                    tensor.shape
                ))
            })?;
        total_elements += numel;
        if total_elements > MAX_ELEMENTS {
            return Err(corrupt(format!(
                "the tensors hold more than {MAX_ELEMENTS} elements in all"
            )));
        }
        if !storages.contains_key(&tensor.storage) {
            let name = format!("{prefix}data/{}", tensor.storage);
            let want = tensor.storage_numel * tensor.dtype.size() as u64;
            let data = read_entry(&mut archive, bytes.len(), &name, want).map_err(|e| {
                corrupt(format!(
                    "storage '{}' of tensor '{key}': {e}",
                    tensor.storage
                ))
            })?;
            storages.insert(tensor.storage.clone(), data);
        }
        let data = &storages[&tensor.storage];
        let values = gather(&tensor, data).map_err(|e| corrupt(format!("tensor '{key}': {e}")))?;
        out.insert(
            key,
            RawTensor {
                dtype: tensor.dtype.source_dtype(),
                shape: tensor.shape,
                values: super::Values::F32(values),
            },
        );
    }
    Ok(out)
}
