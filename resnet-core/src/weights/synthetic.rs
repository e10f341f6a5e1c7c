//! Seeded, realistic random weights for tests and benchmarks. They are untrained: predictions
//! made with them mean nothing, and they are marked as synthetic in the file's metadata.
//!
//! "Realistic" means the statistics of a real network, so that kernels meet realistic value
//! ranges: convolutions are Kaiming-normal as torchvision initialises them (fan-out, ReLU gain),
//! BatchNorm affine parameters and running statistics are randomised around their identities,
//! and the classifier is scaled so that logits spread over several units like a trained model's.
//!
//! The same seed gives the same bytes on every machine: the generator is SplitMix64 and the normal
//! deviates are built from additions only (Irwin–Hall: the sum of 12 uniforms, minus 6, has mean
//! 0 and variance 1), so no libm function whose last bit may differ between platforms is involved.

use super::{Tensor, Values, Weights, META_SEED, META_SYNTHETIC};
use crate::arch::{ResNet18Arch, TensorRole, FC_IN};
use std::collections::{BTreeMap, HashMap};

/// Names the generator version in the metadata; bump it if the byte stream ever changes.
pub const SYNTHETIC_GENERATOR: &str = "resnet18-rs synthetic v1";

struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Approximately standard normal (Irwin–Hall, 12 terms), exact to the bit on every machine.
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// Generates synthetic ResNet-18 weights from `seed`.
pub fn synthetic_weights(seed: u64) -> Weights {
    let mut rng = SplitMix64(seed);
    let mut tensors = HashMap::new();
    for t in ResNet18Arch::new().expected_tensors() {
        if t.role == TensorRole::Counter {
            continue;
        }
        let n: usize = t.shape.iter().product();
        let mut gen = |f: &mut dyn FnMut(&mut SplitMix64) -> f64| -> Vec<f32> {
            (0..n).map(|_| f(&mut rng) as f32).collect()
        };
        let key = t.key.as_str();
        let data = if key == "fc.weight" {
            // torchvision's nn.Linear default is U(±1/sqrt(512)); a trained classifier's rows are
            // larger and spread logits over ~10 units, so scale by 4.
            let bound = 4.0 / (FC_IN as f64).sqrt();
            gen(&mut |r| r.uniform_in(-bound, bound))
        } else if key == "fc.bias" {
            gen(&mut |r| 0.1 * r.normal())
        } else if t.shape.len() == 4 {
            // kaiming_normal_(mode="fan_out", nonlinearity="relu"): std = sqrt(2 / (OC*KH*KW)).
            let fan_out = (t.shape[0] * t.shape[2] * t.shape[3]) as f64;
            let std = (2.0 / fan_out).sqrt();
            gen(&mut |r| std * r.normal())
        } else if key.ends_with(".running_var") {
            gen(&mut |r| r.uniform_in(0.5, 2.0))
        } else if key.ends_with(".running_mean") {
            gen(&mut |r| 0.2 * r.normal())
        } else if key.ends_with(".weight") {
            gen(&mut |r| r.uniform_in(0.6, 1.2))
        } else {
            gen(&mut |r| 0.1 * r.normal())
        };
        tensors.insert(
            t.key.clone(),
            Tensor {
                shape: t.shape.clone(),
                values: Values::F32(data),
            },
        );
    }
    let metadata = BTreeMap::from([
        (META_SYNTHETIC.to_string(), "true".to_string()),
        (META_SEED.to_string(), seed.to_string()),
        (
            "resnet18_rs.generator".to_string(),
            SYNTHETIC_GENERATOR.to_string(),
        ),
    ]);
    Weights {
        tensors,
        source: format!("synthetic weights (seed {seed})"),
        metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{sha256_hex, StoreDtype};

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = synthetic_weights(7).to_safetensors_bytes(StoreDtype::F32);
        let b = synthetic_weights(7).to_safetensors_bytes(StoreDtype::F32);
        let c = synthetic_weights(8).to_safetensors_bytes(StoreDtype::F32);
        assert_eq!(sha256_hex(&a), sha256_hex(&b));
        assert_ne!(sha256_hex(&a), sha256_hex(&c));
    }

    #[test]
    fn conv_weights_have_kaiming_statistics() {
        let w = synthetic_weights(1);
        let t = w.tensor("layer3.0.conv2.weight");
        let values = t.f32_values();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let want = 2.0 / (256.0 * 9.0);
        // 590k samples: the sample variance is within 1% of the true one with high probability.
        assert!((var / want - 1.0).abs() < 0.01, "var {var} want {want}");
        assert!(mean.abs() < 1e-3);
        // BN statistics are not identities.
        let var = w.tensor("layer1.0.bn1.running_var").f32_values();
        assert!(var.iter().all(|&v| (0.5..2.0).contains(&v)));
        assert!(var.iter().any(|&v| (v - 1.0).abs() > 0.1));
    }
}
