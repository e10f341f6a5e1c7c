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

use super::{RawTensor, SourceDtype};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};

/// Largest `data.pkl` accepted (ResNet-18's is 15 KB).
const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Deepest nesting of containers (a state dict needs 4: dict, tensor args, size tuple).
const MAX_NESTING: usize = 32;
/// Most values the pickle may create, counting copies made by memo lookups: bounds the
/// "billion laughs" expansion of one list fetched from the memo again and again.
const MAX_VALUES: usize = 4 << 20;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 20;
/// Most MARKs open at once.
const MAX_MARKS: usize = 1 << 10;
/// Largest tensor, and largest total, in elements (1 Gi f32 = 4 GiB).
const MAX_ELEMENTS: u64 = 1 << 30;
/// Most dimensions of one tensor.
const MAX_DIMS: usize = 8;

/// The storage classes a state dict may name, with their element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StorageDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
}

impl StorageDtype {
    fn from_class(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "FloatStorage" => StorageDtype::F32,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "DoubleStorage" => StorageDtype::F64,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ByteStorage" => StorageDtype::U8,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 => 2,
            StorageDtype::U8 => 1,
        }
    }

    fn source_dtype(self) -> SourceDtype {
        match self {
            StorageDtype::F32 => SourceDtype::F32,
            StorageDtype::F16 => SourceDtype::F16,
            StorageDtype::BF16 => SourceDtype::BF16,
            StorageDtype::I64 => SourceDtype::I64,
            StorageDtype::F64 => SourceDtype::Other("F64"),
            StorageDtype::I32 => SourceDtype::Other("I32"),
            StorageDtype::U8 => SourceDtype::Other("U8"),
        }
    }

    /// Converts one element to f32, for the float types a model can use.
    fn to_f32(self, b: &[u8]) -> Option<f32> {
        match self {
            StorageDtype::F32 => Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            StorageDtype::F16 => Some(half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            StorageDtype::BF16 => Some(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            _ => None,
        }
    }
}

/// The only callables a state dict's pickle may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageDtype),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Global> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch", class) => StorageDtype::from_class(class).map(Global::Storage),
            _ => None,
        }
    }
}

/// A tensor as the pickle describes it: a window onto a storage.
#[derive(Clone, Debug, PartialEq)]
struct TensorRef {
    dtype: StorageDtype,
    storage: String,
    storage_numel: u64,
    offset: u64,
    shape: Vec<usize>,
    stride: Vec<u64>,
}

/// The values a state dict's pickle can build.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage {
        dtype: StorageDtype,
        key: String,
        numel: u64,
    },
    Tensor(TensorRef),
}

impl Value {
    /// Nesting depth (0 for scalars). Bounded by [`MAX_NESTING`] for every value the reader
    /// builds, so this recursion is too.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(v) | Value::List(v) => 1 + v.iter().map(Value::depth).max().unwrap_or(0),
            Value::Dict(kv) => {
                1 + kv
                    .iter()
                    .map(|(k, v)| k.depth().max(v.depth()))
                    .max()
                    .unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Number of values in this one, itself included.
    fn count(&self) -> usize {
        match self {
            Value::Tuple(v) | Value::List(v) => 1 + v.iter().map(Value::count).sum::<usize>(),
            Value::Dict(kv) => 1 + kv.iter().map(|(k, v)| k.count() + v.count()).sum::<usize>(),
            _ => 1,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class",
            Value::Storage { .. } => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

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
                values,
            },
        );
    }
    Ok(out)
}

/// How much larger than the whole archive one entry may decompress to. torch.save stores
/// entries uncompressed (ratio 1); this only bounds what a deflate bomb can allocate.
const MAX_EXPANSION: u64 = 16;

/// Reads one zip entry, refusing more than `limit` bytes, and more than [`MAX_EXPANSION`]
/// times the archive's size (so a deflate bomb cannot grow).
fn read_entry(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    archive_len: usize,
    name: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let archive_len = archive_len as u64;
    let limit = limit.min(archive_len.saturating_mul(MAX_EXPANSION));
    let entry = archive
        .by_name(name)
        .map_err(|e| format!("zip entry '{name}': {e}"))?;
    let mut data = Vec::new();
    entry
        .take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("zip entry '{name}' cannot be read: {e}"))?;
    if data.len() as u64 > limit {
        return Err(format!("zip entry '{name}' is larger than {limit} bytes"));
    }
    Ok(data)
}

fn element_count(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
}

/// Copies a tensor's elements out of its storage in row-major order, honouring offset and
/// strides (views, slices, transposes), after checking that every element lies inside the
/// storage. Integer tensors are checked but not converted (`num_batches_tracked` only).
fn gather(t: &TensorRef, storage: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let elem = t.dtype.size();
    let stored = storage.len() as u64 / elem as u64;
    if stored < t.storage_numel {
        return Err(format!(
            "storage '{}' holds {stored} elements, the checkpoint declares {}",
            t.storage, t.storage_numel
        ));
    }
    let numel = element_count(&t.shape).unwrap_or(u64::MAX);
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The farthest element the view touches; strides are non-negative in PyTorch.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &s)| {
            (d as u64 - 1)
                .checked_mul(s)
                .and_then(|x| acc.checked_add(x))
        })
        .unwrap_or(u64::MAX);
    if last >= t.storage_numel {
        return Err(format!(
            "shape {:?} with strides {:?} at offset {} reaches element {last}, but storage '{}' \
             has only {} elements",
            t.shape, t.stride, t.offset, t.storage, t.storage_numel
        ));
    }
    if t.dtype.to_f32(&[0; 8]).is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(numel as usize);
    let mut index = vec![0usize; t.shape.len()];
    let mut pos = t.offset;
    loop {
        let at = pos as usize * elem;
        out.push(t.dtype.to_f32(&storage[at..at + elem]).unwrap_or(f32::NAN));
        // Advance the multi-index like an odometer, innermost dimension first.
        let mut dim = t.shape.len();
        loop {
            if dim == 0 {
                return Ok(out);
            }
            dim -= 1;
            index[dim] += 1;
            pos += t.stride[dim];
            if index[dim] < t.shape[dim] {
                break;
            }
            pos -= t.stride[dim] * t.shape[dim] as u64;
            index[dim] = 0;
        }
    }
}

/// The restricted unpickler: a stack, a memo and a mark stack, and nothing that can call out.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    source: &'a str,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    values: usize,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], source: &'a str) -> Self {
        Unpickler {
            data,
            pos: 0,
            source,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            values: 0,
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::CorruptCheckpoint {
            path: self.source.to_string(),
            reason: format!("data.pkl at byte {}: {}", self.pos, reason.into()),
        }
    }

    fn forbidden(&self, item: String) -> Error {
        Error::ForbiddenPickle {
            path: self.source.to_string(),
            item,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err(self.corrupt("the pickle ends in the middle of an opcode (truncated)"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .take(256)
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.corrupt("GLOBAL name is unterminated or too long"))?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| self.corrupt("GLOBAL name is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s)
    }

    fn string(&mut self, len: usize) -> Result<String> {
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("string is not UTF-8"))
    }

    /// Counts `n` values built or copied against [`MAX_VALUES`].
    fn charge(&mut self, n: usize) -> Result<()> {
        self.values += n;
        if self.values > MAX_VALUES {
            return Err(self.corrupt(format!("more than {MAX_VALUES} values (expansion bomb?)")));
        }
        Ok(())
    }

    /// Pushes a value whose parts are already counted (one new value).
    fn push(&mut self, v: Value) -> Result<()> {
        self.charge(1)?;
        if v.depth() > MAX_NESTING {
            return Err(self.corrupt(format!("values nested deeper than {MAX_NESTING}")));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.corrupt("stack underflow"));
        }
        Ok(self.stack.pop().expect("length checked above"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.corrupt("an opcode needs a MARK and there is none"))?;
        Ok(self.stack.split_off(mark))
    }

    fn top_mut(&mut self) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.corrupt("stack underflow"));
        }
        Ok(self.stack.last_mut().expect("length checked above"))
    }

    fn memo_put(&mut self, index: u32) -> Result<()> {
        let v = self
            .stack
            .last()
            .ok_or_else(|| self.corrupt("memo store with an empty stack"))?
            .clone();
        self.charge(v.count())?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(self.corrupt(format!("more than {MAX_MEMO} memo entries")));
        }
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<()> {
        let v = self
            .memo
            .get(&index)
            .ok_or_else(|| self.corrupt(format!("memo entry {index} is used before it is set")))?
            .clone();
        self.charge(v.count())?;
        self.push(v)
    }

    /// Adds key/value pairs to the dict under them on the stack.
    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.corrupt("SETITEMS with an odd number of values"));
        }
        let nesting = items.iter().map(Value::depth).max().unwrap_or(0);
        if nesting + 1 > MAX_NESTING {
            return Err(self.corrupt(format!("values nested deeper than {MAX_NESTING}")));
        }
        let source = self.source;
        match self.top_mut()? {
            Value::Dict(entries) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
            }
            other => {
                return Err(Error::CorruptCheckpoint {
                    path: source.to_string(),
                    reason: format!("SETITEM on a {}, not a dict", other.kind()),
                })
            }
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        if items.iter().map(Value::depth).max().unwrap_or(0) + 1 > MAX_NESTING {
            return Err(self.corrupt(format!("values nested deeper than {MAX_NESTING}")));
        }
        let source = self.source;
        match self.top_mut()? {
            Value::List(list) => list.extend(items),
            other => {
                return Err(Error::CorruptCheckpoint {
                    path: source.to_string(),
                    reason: format!("APPEND on a {}, not a list", other.kind()),
                })
            }
        }
        Ok(())
    }

    /// Runs the pickle to its STOP and returns the value it built.
    fn run(mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.corrupt(format!("unknown pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    // FRAME (protocol 4): a length prefix for buffering; nothing to do.
                    self.take(8)?;
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.corrupt(format!("more than {MAX_MARKS} open MARKs")));
                    }
                    self.marks.push(self.stack.len());
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))?
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v.into()))?
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(self.corrupt(format!("{n}-byte integer is too large")));
                    }
                    let b = self.take(n)?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push(Value::Float(v))?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s))?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s))?
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(i.into())?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    // STACK_GLOBAL (protocol 4): module and name come from the stack.
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                        _ => return Err(self.corrupt("STACK_GLOBAL without two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_storage(pid)?;
                    self.push(storage)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD: sets attributes (a state dict's `_metadata`); data only, ignored.
                    let _state = self.pop()?;
                    match self.top_mut()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => {
                            let kind = other.kind();
                            return Err(self.forbidden(format!("BUILD on a {kind}")));
                        }
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top_mut()?.clone();
                    self.charge(v.count())?;
                    self.push(v)?
                }
                other => {
                    self.pos = at;
                    return Err(self.forbidden(format!(
                        "opcode 0x{other:02x} ({}) at byte {at}",
                        opcode_name(other)
                    )));
                }
            }
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::resolve(module, name) {
            Some(g) => self.push(Value::Global(g)),
            None => Err(self.forbidden(format!("GLOBAL {module}.{name}"))),
        }
    }

    /// `("storage", torch.FloatStorage, "<key>", "cpu", numel)` -> a storage reference.
    fn persistent_storage(&self, pid: Value) -> Result<Value> {
        if let Value::Tuple(items) = &pid {
            if let [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), Value::Str(_location), Value::Int(numel)] =
                items.as_slice()
            {
                if tag == "storage"
                    && *numel >= 0
                    && !key.is_empty()
                    && key.len() <= 64
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Ok(Value::Storage {
                        dtype: *dtype,
                        key: key.clone(),
                        numel: *numel as u64,
                    });
                }
            }
        }
        Err(self.corrupt(format!("persistent id {pid:?} is not a storage reference")))
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Tuple(args) = args else {
            return Err(self.corrupt(format!("REDUCE arguments are a {}", args.kind())));
        };
        match callable {
            Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Value::Global(Global::RebuildTensorV2) => self.rebuild_tensor(args),
            Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
                Some(Value::Tensor(t)) => Ok(Value::Tensor(t)),
                _ => Err(self.corrupt("_rebuild_parameter without a tensor")),
            },
            Value::Global(g) => {
                Err(self.forbidden(format!("a call of {g:?} with {} arguments", args.len())))
            }
            other => Err(self.forbidden(format!("a call of a {}", other.kind()))),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    fn rebuild_tensor(&self, args: Vec<Value>) -> Result<Value> {
        let bad = |what: &str| self.corrupt(format!("_rebuild_tensor_v2: {what}"));
        if !(6..=7).contains(&args.len()) {
            return Err(bad(&format!("{} arguments, expected 6 or 7", args.len())));
        }
        let Value::Storage { dtype, key, numel } = &args[0] else {
            return Err(bad("the first argument is not a storage"));
        };
        let Value::Int(offset) = args[1] else {
            return Err(bad("the storage offset is not an integer"));
        };
        let ints = |v: &Value| -> Option<Vec<i64>> {
            match v {
                Value::Tuple(items) => items
                    .iter()
                    .map(|x| match x {
                        Value::Int(i) => Some(*i),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            }
        };
        let size = ints(&args[2]).ok_or_else(|| bad("the size is not a tuple of integers"))?;
        let stride = ints(&args[3]).ok_or_else(|| bad("the stride is not a tuple of integers"))?;
        if size.len() != stride.len() || size.len() > MAX_DIMS {
            return Err(bad(&format!(
                "size {size:?} and stride {stride:?} do not describe a tensor of at most {MAX_DIMS} dimensions"
            )));
        }
        if offset < 0 || size.iter().chain(&stride).any(|&x| x < 0) {
            return Err(bad(&format!(
                "negative offset, size or stride (offset {offset}, size {size:?}, stride {stride:?})"
            )));
        }
        let shape: Vec<usize> = size.iter().map(|&d| d as usize).collect();
        if element_count(&shape).is_none_or(|n| n > MAX_ELEMENTS) {
            return Err(bad(&format!(
                "shape {shape:?} is over the limit of {MAX_ELEMENTS} elements"
            )));
        }
        Ok(Value::Tensor(TensorRef {
            dtype: *dtype,
            storage: key.clone(),
            storage_numel: *numel,
            offset: offset as u64,
            shape,
            stride: stride.iter().map(|&s| s as u64).collect(),
        }))
    }
}

/// Names of the pickle opcodes this reader refuses, for error messages.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST: builds an arbitrary object",
        b'o' => "OBJ: builds an arbitrary object",
        0x81 => "NEWOBJ: builds an arbitrary object",
        0x92 => "NEWOBJ_EX: builds an arbitrary object",
        b'P' => "PERSID",
        b'S' | b'V' | b'I' | b'L' | b'F' | b'g' | b'p' | b'd' => {
            "a text-protocol (protocol 0) opcode"
        }
        0x82..=0x84 => "EXT: extension registry",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "not a pickle opcode a state dict uses",
    }
}

/// One state-dict entry to write.
pub enum PthEntry<'a> {
    /// A float tensor: shape and row-major values, stored in the given dtype.
    Float(&'a [usize], &'a [f32], super::StoreDtype),
    /// A 0-d int64 tensor (`num_batches_tracked`).
    Counter(i64),
}

/// Writes a checkpoint exactly as `torch.save(state_dict)` lays it out (protocol-2 pickle of an
/// OrderedDict of `_rebuild_tensor_v2` calls, one contiguous storage per tensor), so that
/// `torch.load(f, weights_only=True)` reads it.
pub fn write(entries: &[(&str, PthEntry<'_>)]) -> Vec<u8> {
    use std::io::Write;
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    }
    fn int_tuple(p: &mut Vec<u8>, v: &[usize]) {
        p.push(b'(');
        for &x in v {
            int(p, x);
        }
        p.push(b't');
    }
    let mut pickle = b"\x80\x02ccollections\nOrderedDict\nq\x00)R(".to_vec();
    let mut storages: Vec<Vec<u8>> = Vec::new();
    for (key, entry) in entries {
        let (class, shape, bytes): (&str, &[usize], Vec<u8>) = match entry {
            PthEntry::Float(shape, values, dtype) => {
                let bytes: Vec<u8> = match dtype {
                    super::StoreDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    super::StoreDtype::F16 => values
                        .iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                    super::StoreDtype::BF16 => values
                        .iter()
                        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                        .collect(),
                };
                let class = match dtype {
                    super::StoreDtype::F32 => "FloatStorage",
                    super::StoreDtype::F16 => "HalfStorage",
                    super::StoreDtype::BF16 => "BFloat16Storage",
                };
                (class, shape, bytes)
            }
            PthEntry::Counter(n) => ("LongStorage", &[], n.to_le_bytes().to_vec()),
        };
        let numel: usize = shape.iter().product();
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        unicode(&mut pickle, key);
        pickle.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        unicode(&mut pickle, "storage");
        pickle.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
        unicode(&mut pickle, &storages.len().to_string());
        unicode(&mut pickle, "cpu");
        int(&mut pickle, numel);
        pickle.extend_from_slice(b"tQ");
        int(&mut pickle, 0);
        int_tuple(&mut pickle, shape);
        int_tuple(&mut pickle, &stride);
        // requires_grad=False, backward_hooks=OrderedDict() (memo 0 holds the class).
        pickle.extend_from_slice(b"\x89h\x00)RtR");
        storages.push(bytes);
    }
    pickle.extend_from_slice(b"u.");

    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    // torch.save stores entries uncompressed (and aligned, which readers do not require).
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |name: String, data: &[u8]| -> std::io::Result<()> {
        zip.start_file(name, stored)?;
        zip.write_all(data)
    };
    let written = (|| -> std::io::Result<()> {
        put("archive/data.pkl".into(), &pickle)?;
        put("archive/byteorder".into(), b"little")?;
        for (i, data) in storages.iter().enumerate() {
            put(format!("archive/data/{i}"), data)?;
        }
        put("archive/version".into(), b"3\n")
    })();
    written.expect("writing a zip archive to memory cannot fail");
    zip.finish()
        .expect("finishing a zip archive in memory cannot fail")
        .into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pickle: &[u8]) -> Result<Value> {
        Unpickler::new(pickle, "test.pkl").run()
    }

    #[test]
    fn refuses_arbitrary_globals_by_name() {
        let err = run(b"\x80\x02cposix\nsystem\nq\x00X\x01\x00\x00\x00x\x85R.").unwrap_err();
        assert!(matches!(err, Error::ForbiddenPickle { .. }), "{err}");
        assert!(err.to_string().contains("GLOBAL posix.system"), "{err}");
    }

    #[test]
    fn refuses_object_building_opcodes() {
        let err = run(b"\x80\x02(X\x01\x00\x00\x00xo.").unwrap_err();
        assert!(err.to_string().contains("opcode 0x6f (OBJ"), "{err}");
    }

    #[test]
    fn memo_expansion_is_bounded() {
        // A list doubled by memo lookups 40 times would hold 2^40 values.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            p.extend_from_slice(b"(h\x00h\x00lq\x00");
        }
        p.push(b'.');
        let err = run(&p).unwrap_err().to_string();
        assert!(
            err.contains("values nested deeper") || err.contains("expansion"),
            "{err}"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 100));
        p.push(b'.');
        let err = run(&p).unwrap_err().to_string();
        assert!(err.contains("nested deeper than 32"), "{err}");
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        let err = run(b"\x80\x02X\x10\x00\x00\x00ab").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = run(b"\x80\x02}").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn stack_underflow_is_an_error() {
        let err = run(b"\x80\x02s.").unwrap_err().to_string();
        assert!(err.contains("stack underflow"), "{err}");
    }

    #[test]
    fn gather_honours_strides_and_checks_bounds() {
        let storage: Vec<u8> = (0..6u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = TensorRef {
            dtype: StorageDtype::F32,
            storage: "0".into(),
            storage_numel: 6,
            offset: 0,
            shape: vec![3, 2],
            stride: vec![1, 3],
        };
        assert_eq!(
            gather(&t, &storage).unwrap(),
            [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        let shifted = TensorRef {
            offset: 1,
            ..t.clone()
        };
        assert!(gather(&shifted, &storage)
            .unwrap_err()
            .contains("reaches element 6"));
        let short = TensorRef {
            storage_numel: 7,
            ..t
        };
        assert!(gather(&short, &storage)
            .unwrap_err()
            .contains("holds 6 elements"));
    }
}
