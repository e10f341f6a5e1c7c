//! The `.pth` reader: checkpoints written by real PyTorch (tests/data/pth, made by
//! tools/make_pth_fixtures.py), full-size checkpoints laid out as torch.save lays them out, and
//! hostile or broken files.

mod common;

use resnet_core::arch::{ResNet18Arch, TensorRole};
use resnet_core::weights::pth::{self, PthEntry};
use resnet_core::weights::{
    read_raw, synthetic_weights, SourceDtype, StoreDtype, Weights, WeightsFormat,
};
use resnet_core::Error;
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(common::data(&format!("pth/{name}"))).unwrap()
}

fn expected(file: &str) -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(common::data("pth/expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v[file].as_object().unwrap().clone()
}

/// Every tensor PyTorch wrote reads back with its dtype, shape and values. Exact equality:
/// f16 and bf16 widen to f32 exactly, and the expected values are PyTorch's own reading.
fn check_against_pytorch(file: &str) {
    let read = read_raw(&fixture(file), file).unwrap();
    assert_eq!(read.format, WeightsFormat::Pth);
    let raw = read.tensors;
    let want = expected(file);
    assert_eq!(
        raw.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{file}: keys"
    );
    for (key, w) in &want {
        let t = &raw[key];
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{file}: {key} shape");
        let dtype = match w["dtype"].as_str().unwrap() {
            "float32" => SourceDtype::F32,
            "float16" => SourceDtype::F16,
            "bfloat16" => SourceDtype::BF16,
            "int64" => SourceDtype::I64,
            other => panic!("fixture dtype {other}"),
        };
        assert_eq!(t.dtype, dtype, "{file}: {key} dtype");
        if dtype == SourceDtype::I64 {
            continue; // integers are checked for bounds but not converted
        }
        let values: Vec<f32> = w["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(
            t.values.to_f32().as_ref(),
            &values[..],
            "{file}: {key} values"
        );
    }
}

#[test]
fn reads_every_dtype_pytorch_wrote() {
    check_against_pytorch("dtypes.pth");
}

#[test]
fn reads_views_offsets_shared_storage_and_transposes() {
    check_against_pytorch("views.pth");
}

#[test]
fn refuses_a_malicious_pickle_by_name() {
    let err = read_raw(&fixture("malicious.pth"), "malicious.pth").unwrap_err();
    assert!(matches!(err, Error::ForbiddenPickle { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("malicious.pth: refused") && msg.contains("GLOBAL posix.system"),
        "{msg}"
    );
}

#[test]
fn refuses_the_legacy_format_with_advice() {
    let err = Weights::from_bytes(&fixture("legacy.pth"), "legacy.pth").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("legacy (pre-PyTorch-1.6") && msg.contains("re-save"),
        "{msg}"
    );
}

/// Every prefix of a real checkpoint is an error, never a panic or a wrong success. (From
/// 2 bytes: "PK" is what tells a checkpoint from safetensors.)
#[test]
fn every_truncation_is_a_clean_error() {
    let bytes = fixture("dtypes.pth");
    for len in 2..bytes.len() {
        match read_raw(&bytes[..len], "cut.pth") {
            Err(Error::CorruptCheckpoint { path, .. }) => assert_eq!(path, "cut.pth"),
            Err(other) => panic!("cut at {len}: unexpected error kind: {other}"),
            Ok(_) => panic!("cut at {len} of {} read as complete", bytes.len()),
        }
    }
}

/// Any single flipped byte gives a clean error or (in padding, unused fields) the same data:
/// never a panic.
#[test]
fn flipped_bytes_never_panic() {
    let bytes = fixture("views.pth");
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let _ = read_raw(&b, "flipped.pth");
    }
}

#[test]
fn full_size_checkpoint_loads_identical_to_its_source() {
    let source = synthetic_weights(0);
    let bytes = source.to_pth_bytes(StoreDtype::F32);
    let loaded = Weights::from_bytes(&bytes, "synthetic.pth").unwrap();
    for t in ResNet18Arch::new().expected_tensors() {
        if t.role != TensorRole::Counter {
            assert_eq!(loaded.tensor(&t.key), source.tensor(&t.key), "{}", t.key);
        }
    }
    assert_eq!(loaded.parameter_count(), 11_689_512);
}

#[test]
fn full_size_checkpoint_missing_a_tensor_names_it() {
    let source = synthetic_weights(0);
    let expected = ResNet18Arch::new().expected_tensors();
    let entries: Vec<_> = expected
        .iter()
        .filter(|t| t.role != TensorRole::Counter && t.key != "layer3.1.bn2.running_var")
        .map(|t| {
            let w = source.tensor(&t.key);
            (
                t.key.as_str(),
                PthEntry::Float(&w.shape, w.f32_values(), StoreDtype::F32),
            )
        })
        .collect();
    let bytes = pth::write(&entries);
    let err = Weights::from_bytes(&bytes, "partial.pth").unwrap_err();
    assert!(
        err.to_string()
            .contains("partial.pth: missing tensor 'layer3.1.bn2.running_var'"),
        "{err}"
    );
}

#[test]
fn storage_shorter_than_its_tensor_is_an_error() {
    // Declare a 2x3 tensor but store 5 values.
    let bytes = short_storage_checkpoint();
    let err = read_raw(&bytes, "short.pth").unwrap_err().to_string();
    assert!(
        err.contains("short.pth")
            && err.contains("storage '0' holds 5 elements, the checkpoint declares 6"),
        "{err}"
    );
}

/// A checkpoint whose only tensor claims 6 elements while its storage holds 5: written as a
/// 5-element tensor, then the declared numel and shape patched (same byte length, so the zip
/// entry's CRC is recomputed by rewriting the archive).
fn short_storage_checkpoint() -> Vec<u8> {
    use std::io::{Read, Write};
    let good = pth::write(&[(
        "w",
        PthEntry::Float(&[5], &[1.0, 2.0, 3.0, 4.0, 5.0], StoreDtype::F32),
    )]);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(good)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if name.ends_with("data.pkl") {
            // numel (J 5) and size tuple ((J 5 t) become 6.
            let five = [b'J', 5, 0, 0, 0];
            let mut patched = 0;
            for at in 0..data.len() - 4 {
                if data[at..at + 5] == five {
                    data[at + 1] = 6;
                    patched += 1;
                }
            }
            assert_eq!(patched, 2, "numel and size");
        }
        out.start_file(name, stored).unwrap();
        out.write_all(&data).unwrap();
    }
    out.finish().unwrap().into_inner()
}
