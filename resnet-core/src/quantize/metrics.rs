//! How close a quantised network's logits are to the f32 network's.
//!
//! With untrained (synthetic) weights every input gets nearly the same logit vector, so raw top-1
//! agreement says nothing. What differs between inputs is the logits minus their mean over the
//! evaluation set, the *centred* logits; those are compared here, as issue #5 specifies.

use ndarray::{Array1, Array2, Axis};

/// Agreement of test logits with reference logits over one evaluation set (`[inputs, classes]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    /// Number of inputs.
    pub inputs: usize,
    /// `||C_test − C_ref||_F / ||C_ref||_F` over the whole set, `C` the centred logits (each
    /// set centred by its own mean vector).
    pub centred_rel_l2: f64,
    /// The same ratio per input, averaged.
    pub centred_rel_l2_mean: f64,
    /// Fraction of inputs whose centred logits have the same argmax.
    pub centred_top1: f64,
    /// Mean cosine similarity of the raw logit vectors.
    pub raw_cosine_mean: f64,
    /// Smallest cosine similarity of the raw logit vectors.
    pub raw_cosine_min: f64,
}

fn centred(x: &Array2<f32>) -> Array2<f64> {
    let x = x.mapv(|v| v as f64);
    let mean: Array1<f64> = x.mean_axis(Axis(0)).expect("at least one input");
    x - &mean
}

fn argmax(v: ndarray::ArrayView1<'_, f64>) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

impl Agreement {
    /// Compares `test` with `reference`, both `[inputs, classes]`.
    ///
    /// # Panics
    /// If the shapes differ or there are no inputs.
    pub fn compute(reference: &Array2<f32>, test: &Array2<f32>) -> Agreement {
        assert_eq!(reference.shape(), test.shape(), "logit shapes differ");
        let n = reference.nrows();
        assert!(n > 0, "no inputs");
        let (cr, ct) = (centred(reference), centred(test));
        let diff = &ct - &cr;
        let norm2 = |a: ndarray::ArrayView1<'_, f64>| a.iter().map(|v| v * v).sum::<f64>();
        let total_diff: f64 = diff.iter().map(|v| v * v).sum();
        let total_ref: f64 = cr.iter().map(|v| v * v).sum();
        let mut per_input = 0.0;
        let mut top1 = 0usize;
        let (mut cos_sum, mut cos_min) = (0.0, f64::INFINITY);
        for i in 0..n {
            per_input += (norm2(diff.row(i)) / norm2(cr.row(i)).max(1e-300)).sqrt();
            top1 += usize::from(argmax(cr.row(i)) == argmax(ct.row(i)));
            let (r, t) = (reference.row(i), test.row(i));
            let dot: f64 = r.iter().zip(t).map(|(&a, &b)| a as f64 * b as f64).sum();
            let nr: f64 = r.iter().map(|&a| (a as f64).powi(2)).sum();
            let nt: f64 = t.iter().map(|&a| (a as f64).powi(2)).sum();
            let cos = dot / (nr.sqrt() * nt.sqrt()).max(1e-300);
            cos_sum += cos;
            cos_min = cos_min.min(cos);
        }
        Agreement {
            inputs: n,
            centred_rel_l2: (total_diff / total_ref.max(1e-300)).sqrt(),
            centred_rel_l2_mean: per_input / n as f64,
            centred_top1: top1 as f64 / n as f64,
            raw_cosine_mean: cos_sum / n as f64,
            raw_cosine_min: cos_min,
        }
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} inputs: centred-logit relative L2 error {:.4} (per-input mean {:.4}), centred top-1 agreement {:.1}%, raw-logit cosine mean {:.6} (min {:.6})",
            self.inputs,
            self.centred_rel_l2,
            self.centred_rel_l2_mean,
            100.0 * self.centred_top1,
            self.raw_cosine_mean,
            self.raw_cosine_min
        )
    }
}

/// Signal-to-quantisation-noise ratio of `test` against `reference`, in dB:
/// `10 log10(Σ ref² / Σ (test − ref)²)` (infinite when they are equal).
pub fn sqnr_db(reference: &[f32], test: &[f32]) -> f64 {
    assert_eq!(reference.len(), test.len(), "lengths differ");
    let signal: f64 = reference.iter().map(|&v| (v as f64).powi(2)).sum();
    let noise: f64 = reference
        .iter()
        .zip(test)
        .map(|(&r, &t)| (r as f64 - t as f64).powi(2))
        .sum();
    10.0 * (signal / noise).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_agree_perfectly_and_a_shift_does_not_count() {
        let a = Array2::from_shape_fn((4, 5), |(i, j)| ((i * 7 + j * 3) % 5) as f32);
        let m = Agreement::compute(&a, &a);
        assert_eq!(m.centred_rel_l2, 0.0);
        assert_eq!(m.centred_top1, 1.0);
        assert!((m.raw_cosine_mean - 1.0).abs() < 1e-12);
        // Adding the same vector to every input changes nothing once centred.
        let shifted = &a + &Array1::from(vec![3.0f32, -1.0, 0.0, 2.0, 5.0]);
        let m = Agreement::compute(&a, &shifted);
        assert!(m.centred_rel_l2 < 1e-6);
        assert_eq!(m.centred_top1, 1.0);
        assert!(m.raw_cosine_mean < 1.0);
        assert_eq!(sqnr_db(&[1.0, 1.0], &[1.0, 0.9]).round(), 23.0);
    }
}
