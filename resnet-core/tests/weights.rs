//! Loading weights: every broken file gives an error naming the file, the key and the values.

mod common;

use resnet_core::weights::{synthetic_weights, StoreDtype, Values, Weights};
use resnet_core::Error;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;

/// Builds a safetensors file from the synthetic weights, edited by `edit`.
fn edited(edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) -> Vec<u8> {
    let bytes = synthetic_weights(3).to_safetensors_bytes(StoreDtype::F32);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut map);
    let views: Vec<(String, TensorView<'_>)> = map
        .iter()
        .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize(views, &None).unwrap()
}

fn load(bytes: &[u8]) -> Result<Weights, Error> {
    Weights::from_bytes(bytes, "model.safetensors")
}

#[test]
fn round_trip_in_every_dtype() {
    let w = synthetic_weights(3);
    for dtype in [StoreDtype::F32, StoreDtype::F16, StoreDtype::BF16] {
        let back = load(&w.to_safetensors_bytes(dtype)).unwrap();
        assert!(back.is_synthetic());
        let (a, b) = (
            w.tensor("layer1.0.conv1.weight").values(),
            back.tensor("layer1.0.conv1.weight").values(),
        );
        // f16 keeps 11 significant bits, bf16 8: relative error <= 2^-11 and 2^-8.
        let tol = match dtype {
            StoreDtype::F32 => 0.0,
            StoreDtype::F16 => 1.0 / 2048.0,
            StoreDtype::BF16 => 1.0 / 256.0,
        };
        for (x, y) in a.iter().zip(b.iter()) {
            assert!(
                (x - y).abs() <= tol * x.abs() + 1e-7,
                "{dtype:?}: {x} vs {y}"
            );
        }
        assert_eq!(back.parameter_count(), 11_689_512);
    }
}

/// A bf16 file's convolution weights stay bf16 in memory (not widened on load: half the
/// bytes), bit for bit as the file holds them; BatchNorm and the classifier are widened to
/// f32; saving as bf16 again writes the same tensors.
#[test]
fn bf16_files_keep_convolution_weights_unwidened() {
    let bytes = synthetic_weights(5).to_safetensors_bytes(StoreDtype::BF16);
    let w = load(&bytes).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    for key in [
        "conv1.weight",
        "layer3.0.downsample.0.weight",
        "layer4.1.conv2.weight",
    ] {
        let Values::Bf16(bits) = &w.tensor(key).values else {
            panic!("{key} was widened on load")
        };
        let stored: Vec<u16> = file
            .tensor(key)
            .unwrap()
            .data()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(bits, &stored, "{key}");
    }
    for key in [
        "bn1.weight",
        "layer2.1.bn2.running_var",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(
            matches!(w.tensor(key).values, Values::F32(_)),
            "{key} is not f32"
        );
    }
    let again = w.to_safetensors_bytes(StoreDtype::BF16);
    let again = SafeTensors::deserialize(&again).unwrap();
    for (key, view) in file.tensors() {
        assert_eq!(again.tensor(&key).unwrap().data(), view.data(), "{key}");
    }
}

#[test]
fn missing_tensor_is_named() {
    let bytes = edited(|m| {
        m.remove("layer2.0.downsample.1.running_var");
    });
    let e = load(&bytes).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors")
            && e.contains("layer2.0.downsample.1.running_var")
            && e.contains("[128]"),
        "{e}"
    );
}

#[test]
fn num_batches_tracked_is_optional() {
    let bytes = edited(|m| m.retain(|k, _| !k.ends_with("num_batches_tracked")));
    assert!(load(&bytes).is_ok());
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let bytes = edited(|m| {
        let t = m.get_mut("fc.bias").unwrap();
        t.1 = vec![10, 100];
    });
    let e = load(&bytes).unwrap_err().to_string();
    assert!(
        e.contains("fc.bias") && e.contains("[10, 100]") && e.contains("[1000]"),
        "{e}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let bytes = edited(|m| {
        let t = m.get_mut("fc.bias").unwrap();
        t.0 = Dtype::I32;
    });
    let e = load(&bytes).unwrap_err().to_string();
    assert!(
        e.contains("fc.bias") && e.contains("I32") && e.contains("F32, F16 or BF16"),
        "{e}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let bytes = edited(|m| {
        m.insert(
            "layer5.0.conv1.weight".into(),
            (Dtype::F32, vec![1], vec![0; 4]),
        );
    });
    let e = load(&bytes).unwrap_err().to_string();
    assert!(
        e.contains("unexpected tensor 'layer5.0.conv1.weight'"),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupt_files_are_errors() {
    let bytes = synthetic_weights(3).to_safetensors_bytes(StoreDtype::F32);
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let e = load(&bytes[..cut]).unwrap_err().to_string();
        assert!(
            e.starts_with("model.safetensors: not a valid safetensors"),
            "cut {cut}: {e}"
        );
    }
    let mut bad = bytes.clone();
    bad[10] = b'{';
    assert!(load(&bad).is_err());
    let e = load(b"PK\x03\x04 this is a zip").unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn non_finite_and_negative_variance_are_refused() {
    let bytes = edited(|m| {
        let t = m.get_mut("layer1.0.bn1.running_var").unwrap();
        t.2[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
    });
    assert!(load(&bytes)
        .unwrap_err()
        .to_string()
        .contains("negative variance"));
    let bytes = edited(|m| {
        let t = m.get_mut("conv1.weight").unwrap();
        t.2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(load(&bytes).unwrap_err().to_string().contains("non-finite"));
}

#[test]
fn missing_file_names_the_path() {
    let e = Weights::load("/nonexistent/w.safetensors".as_ref())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/w.safetensors: cannot read weights"),
        "{e}"
    );
}
