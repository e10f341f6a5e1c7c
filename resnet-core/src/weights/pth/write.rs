//! Writing a `.pth` checkpoint as `torch.save` lays it out.

use super::unpickle::opcodes;
use crate::weights::StoreDtype;
use std::io::Cursor;

/// One state-dict entry to write.
pub enum PthEntry<'a> {
    /// A float tensor: shape and row-major values, stored in the given dtype.
    Float(&'a [usize], &'a [f32], StoreDtype),
    /// A 0-d int64 tensor (`num_batches_tracked`).
    Counter(i64),
}

/// Writes a checkpoint exactly as `torch.save(state_dict)` lays it out (protocol-2 pickle of an
/// OrderedDict of `_rebuild_tensor_v2` calls, one contiguous storage per tensor), so that
/// `torch.load(f, weights_only=True)` reads it.
pub fn write(entries: &[(&str, PthEntry<'_>)]) -> Vec<u8> {
    use opcodes::*;
    use std::io::Write;
    let mut p = PickleWriter::default();
    p.op_with(PROTO, 2);
    p.global("collections", "OrderedDict");
    p.op_with(BINPUT, 0); // memo 0: the OrderedDict class, reused for every tensor's hooks
    p.ops(&[EMPTY_TUPLE, REDUCE, MARK]);
    let mut storages: Vec<Vec<u8>> = Vec::new();
    for (key, entry) in entries {
        let (class, shape, bytes): (&str, &[usize], Vec<u8>) = match entry {
            PthEntry::Float(shape, values, dtype) => {
                let bytes: Vec<u8> = match dtype {
                    StoreDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    StoreDtype::F16 => values
                        .iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                    StoreDtype::BF16 => values
                        .iter()
                        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                        .collect(),
                };
                let class = match dtype {
                    StoreDtype::F32 => "FloatStorage",
                    StoreDtype::F16 => "HalfStorage",
                    StoreDtype::BF16 => "BFloat16Storage",
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
        // key: _rebuild_tensor_v2((persistent storage id), offset, size, stride, ...)
        p.unicode(key);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.ops(&[MARK, MARK]);
        p.unicode("storage");
        p.global("torch", class);
        p.unicode(&storages.len().to_string());
        p.unicode("cpu");
        p.int(numel);
        p.ops(&[TUPLE, BINPERSID]);
        p.int(0);
        p.int_tuple(shape);
        p.int_tuple(&stride);
        // requires_grad=False, backward_hooks=OrderedDict() (memo 0 holds the class).
        p.op(NEWFALSE);
        p.op_with(BINGET, 0);
        p.ops(&[EMPTY_TUPLE, REDUCE, TUPLE, REDUCE]);
        storages.push(bytes);
    }
    p.ops(&[SETITEMS, STOP]);
    let pickle = p.0;

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

/// A protocol-2 pickle being written, opcode by opcode.
#[derive(Default)]
struct PickleWriter(Vec<u8>);

impl PickleWriter {
    fn op(&mut self, op: u8) {
        self.0.push(op);
    }

    /// An opcode with a one-byte argument.
    fn op_with(&mut self, op: u8, arg: u8) {
        self.0.extend_from_slice(&[op, arg]);
    }

    fn ops(&mut self, ops: &[u8]) {
        self.0.extend_from_slice(ops);
    }

    /// `GLOBAL module name`, its arguments as two text lines.
    fn global(&mut self, module: &str, name: &str) {
        self.op(opcodes::GLOBAL);
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn unicode(&mut self, s: &str) {
        self.op(opcodes::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: usize) {
        self.op(opcodes::BININT);
        self.0.extend_from_slice(&(v as i32).to_le_bytes());
    }

    fn int_tuple(&mut self, v: &[usize]) {
        self.op(opcodes::MARK);
        for &x in v {
            self.int(x);
        }
        self.op(opcodes::TUPLE);
    }
}
