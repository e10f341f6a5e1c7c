//! The restricted unpickler: runs a state dict's `data.pkl` without calling out.

use super::view::{element_count, TensorRef, MAX_ELEMENTS};
use crate::error::{Error, Result};
use crate::weights::SourceDtype;
use std::collections::HashMap;

/// Deepest nesting of containers (a state dict needs 4: dict, tensor args, size tuple).
const MAX_NESTING: usize = 32;
/// Most values the pickle may create, counting copies made by memo lookups: bounds the
/// "billion laughs" expansion of one list fetched from the memo again and again.
const MAX_VALUES: usize = 4 << 20;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 20;
/// Most MARKs open at once.
const MAX_MARKS: usize = 1 << 10;
/// Most dimensions of one tensor.
const MAX_DIMS: usize = 8;

/// The pickle opcodes, named as Python's `pickletools` names them. The reader, the refusal
/// messages ([`opcode_name`]) and the writer all use these names.
pub(super) mod opcodes {
    // Protocol 2+ framing and control.
    /// Protocol version follows (1 byte).
    pub const PROTO: u8 = 0x80;
    /// Frame length follows (8 bytes), protocol 4.
    pub const FRAME: u8 = 0x95;
    /// End of the pickle: the top of the stack is the result.
    pub const STOP: u8 = b'.';
    /// Pushes a mark onto the mark stack.
    pub const MARK: u8 = b'(';
    /// Discards the top of the stack.
    pub const POP: u8 = b'0';
    /// Duplicates the top of the stack.
    pub const DUP: u8 = b'2';

    // Scalars.
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    /// 1-byte unsigned integer.
    pub const BININT1: u8 = b'K';
    /// 2-byte unsigned integer.
    pub const BININT2: u8 = b'M';
    /// 4-byte signed integer.
    pub const BININT: u8 = b'J';
    /// Integer of n (1-byte length) little-endian two's-complement bytes.
    pub const LONG1: u8 = 0x8a;
    /// 8-byte big-endian float.
    pub const BINFLOAT: u8 = b'G';
    /// UTF-8 string, 4-byte length.
    pub const BINUNICODE: u8 = b'X';
    /// UTF-8 string, 1-byte length.
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    /// Byte string (Python 2 str), 4-byte length.
    pub const BINSTRING: u8 = b'T';
    /// Byte string (Python 2 str), 1-byte length.
    pub const SHORT_BINSTRING: u8 = b'U';
    /// Bytes, 4-byte length.
    pub const BINBYTES: u8 = b'B';
    /// Bytes, 1-byte length.
    pub const SHORT_BINBYTES: u8 = b'C';

    // Containers.
    pub const EMPTY_TUPLE: u8 = b')';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_DICT: u8 = b'}';
    /// Tuple of everything above the topmost mark.
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    /// List of everything above the topmost mark.
    pub const LIST: u8 = b'l';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';

    // The memo.
    /// Stores the top of the stack at a 1-byte index.
    pub const BINPUT: u8 = b'q';
    /// Stores the top of the stack at a 4-byte index.
    pub const LONG_BINPUT: u8 = b'r';
    /// Stores the top of the stack at the next index (protocol 4).
    pub const MEMOIZE: u8 = 0x94;
    /// Pushes the memo entry at a 1-byte index.
    pub const BINGET: u8 = b'h';
    /// Pushes the memo entry at a 4-byte index.
    pub const LONG_BINGET: u8 = b'j';

    // Names and calls: only resolved against [`super::Global`].
    /// `module\nname\n` follow as text lines.
    pub const GLOBAL: u8 = b'c';
    /// Module and name come from the stack (protocol 4).
    pub const STACK_GLOBAL: u8 = 0x93;
    /// Persistent id from the stack (a storage reference in a checkpoint).
    pub const BINPERSID: u8 = b'Q';
    /// Calls the callable under the top with the argument tuple on top.
    pub const REDUCE: u8 = b'R';
    /// Sets an object's state.
    pub const BUILD: u8 = b'b';

    // Opcodes the reader refuses (named in its error messages).
    pub const INST: u8 = b'i';
    pub const OBJ: u8 = b'o';
    pub const NEWOBJ: u8 = 0x81;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const PERSID: u8 = b'P';
    pub const STRING: u8 = b'S';
    pub const UNICODE: u8 = b'V';
    pub const INT: u8 = b'I';
    pub const LONG: u8 = b'L';
    pub const FLOAT: u8 = b'F';
    pub const GET: u8 = b'g';
    pub const PUT: u8 = b'p';
    pub const DICT: u8 = b'd';
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

/// The storage classes a state dict may name, with their element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StorageDtype {
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

    pub(super) fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 => 2,
            StorageDtype::U8 => 1,
        }
    }

    pub(super) fn source_dtype(self) -> SourceDtype {
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
    pub(super) fn to_f32(self, b: &[u8]) -> Option<f32> {
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
pub(super) enum Global {
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

/// The values a state dict's pickle can build.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Value {
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

    pub(super) fn kind(&self) -> &'static str {
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
/// The restricted unpickler: a stack, a memo and a mark stack, and nothing that can call out.
pub(super) struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    source: &'a str,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    values: usize,
}

impl<'a> Unpickler<'a> {
    pub(super) fn new(data: &'a [u8], source: &'a str) -> Self {
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
    pub(super) fn run(mut self) -> Result<Value> {
        use opcodes::*;
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                PROTO => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.corrupt(format!("unknown pickle protocol {proto}")));
                    }
                }
                FRAME => {
                    // FRAME (protocol 4): a length prefix for buffering; nothing to do.
                    self.take(8)?;
                }
                STOP => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                MARK => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.corrupt(format!("more than {MAX_MARKS} open MARKs")));
                    }
                    self.marks.push(self.stack.len());
                }
                NONE => self.push(Value::None)?,
                NEWTRUE => self.push(Value::Bool(true))?,
                NEWFALSE => self.push(Value::Bool(false))?,
                BININT1 => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?
                }
                BININT2 => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()))?
                }
                BININT => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v.into()))?
                }
                LONG1 => {
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
                BINFLOAT => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push(Value::Float(v))?
                }
                BINUNICODE => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s))?
                }
                SHORT_BINUNICODE => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s))?
                }
                BINSTRING | BINBYTES => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                SHORT_BINSTRING | SHORT_BINBYTES => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                EMPTY_TUPLE => self.push(Value::Tuple(Vec::new()))?,
                EMPTY_LIST => self.push(Value::List(Vec::new()))?,
                EMPTY_DICT => self.push(Value::Dict(Vec::new()))?,
                TUPLE => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = (op - TUPLE1 + 1) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))?
                }
                LIST => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?
                }
                APPEND => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                APPENDS => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                SETITEMS => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                BINPUT => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?
                }
                LONG_BINPUT => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                MEMOIZE => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?
                }
                BINGET => {
                    let i = self.u8()?;
                    self.memo_get(i.into())?
                }
                LONG_BINGET => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                STACK_GLOBAL => {
                    // STACK_GLOBAL (protocol 4): module and name come from the stack.
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                        _ => return Err(self.corrupt("STACK_GLOBAL without two strings")),
                    }
                }
                BINPERSID => {
                    let pid = self.pop()?;
                    let storage = self.persistent_storage(pid)?;
                    self.push(storage)?
                }
                REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?
                }
                BUILD => {
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
                POP => {
                    self.pop()?;
                }
                DUP => {
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
    use opcodes::*;
    match op {
        INST => "INST: builds an arbitrary object",
        OBJ => "OBJ: builds an arbitrary object",
        NEWOBJ => "NEWOBJ: builds an arbitrary object",
        NEWOBJ_EX => "NEWOBJ_EX: builds an arbitrary object",
        PERSID => "PERSID",
        STRING | UNICODE | INT | LONG | FLOAT | GET | PUT | DICT => {
            "a text-protocol (protocol 0) opcode"
        }
        EXT1 | EXT2 | EXT4 => "EXT: extension registry",
        BYTEARRAY8 => "BYTEARRAY8",
        NEXT_BUFFER => "NEXT_BUFFER",
        READONLY_BUFFER => "READONLY_BUFFER",
        _ => "not a pickle opcode a state dict uses",
    }
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
}
