//! From logits to answers: softmax and top-k.

use crate::labels::Labels;
use serde::Serialize;

/// Softmax of one row of logits, computed stably: `exp(x - max) / sum(exp(x - max))` in f64.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// One ranked class.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Prediction {
    /// 1 for the most probable class.
    pub rank: usize,
    /// Class index (logit position).
    pub index: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability in [0, 1].
    pub probability: f32,
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// The `k` most probable classes of one row of logits.
pub fn top_k(logits: &[f32], k: usize, labels: &Labels) -> Vec<Prediction> {
    let probs = softmax(logits);
    top_k_indices(logits, k)
        .into_iter()
        .enumerate()
        .map(|(r, index)| Prediction {
            rank: r + 1,
            index,
            label: labels.name(index).to_string(),
            probability: probs[index],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = softmax(&[1000.0, 1000.0, 999.0]);
        assert!(p.iter().all(|v| v.is_finite()));
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - p[1]).abs() < 1e-7);
        // e^-1 / (2 + e^-1)
        assert!((p[2] as f64 - (-1f64).exp() / (2.0 + (-1f64).exp())).abs() < 1e-6);
    }

    #[test]
    fn top_k_breaks_ties_by_lower_index() {
        assert_eq!(top_k_indices(&[0.5, 2.0, 2.0, -1.0, 2.0], 3), vec![1, 2, 4]);
        assert_eq!(top_k_indices(&[3.0, 1.0], 5), vec![0, 1]);
    }

    #[test]
    fn top_k_carries_index_label_and_rank() {
        let mut logits = vec![0.0f32; 1000];
        logits[281] = 5.0;
        logits[282] = 4.0;
        let p = top_k(&logits, 2, &Labels::imagenet());
        assert_eq!(
            (p[0].rank, p[0].index, p[0].label.as_str()),
            (1, 281, "tabby")
        );
        assert_eq!((p[1].rank, p[1].index), (2, 282));
        assert!(p[0].probability > p[1].probability);
    }
}
