//! Folding an inference-mode BatchNorm into the convolution before it.

/// The four tensors and epsilon of one `nn.BatchNorm2d` in inference mode.
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm<'a> {
    /// Scale γ (`weight`), one per channel.
    pub gamma: &'a [f32],
    /// Shift β (`bias`), one per channel.
    pub beta: &'a [f32],
    /// Running mean μ, one per channel.
    pub mean: &'a [f32],
    /// Running variance σ², one per channel.
    pub var: &'a [f32],
    /// ε added to the variance (1e-5 in torchvision).
    pub eps: f64,
}

/// A convolution with its BatchNorm folded in: `y = conv(x, weight) + bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedConv {
    /// Weights `[OC, C, KH, KW]`, row-major, each output channel scaled by its BN factor.
    pub weight: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
}

/// Folds BatchNorm into the preceding bias-free convolution.
///
/// BatchNorm at inference is an affine map per channel `c`:
///
/// ```text
/// bn(z)_c = γ_c · (z_c − μ_c) / sqrt(σ²_c + ε) + β_c
/// ```
///
/// and a convolution is linear in its weights, so with `s_c = γ_c / sqrt(σ²_c + ε)`:
///
/// ```text
/// bn(conv(x, W))_c = conv(x, s_c · W_c)_c + (β_c − μ_c · s_c)
/// ```
///
/// `weight` is `[OC, C, KH, KW]` flattened; every one of the `OC` rows is scaled. The factors are
/// computed in f64 and rounded once, so folding adds at most one f32 rounding per weight.
pub fn fold_batch_norm(weight: &[f32], bn: &BatchNorm<'_>) -> FoldedConv {
    let out_channels = bn.gamma.len();
    assert_eq!(
        weight.len() % out_channels,
        0,
        "weight rows must match BN channels"
    );
    let row = weight.len() / out_channels;
    let mut folded = Vec::with_capacity(weight.len());
    let mut bias = Vec::with_capacity(out_channels);
    for c in 0..out_channels {
        let scale = bn.gamma[c] as f64 / (bn.var[c] as f64 + bn.eps).sqrt();
        folded.extend(
            weight[c * row..(c + 1) * row]
                .iter()
                .map(|&w| (w as f64 * scale) as f32),
        );
        bias.push((bn.beta[c] as f64 - bn.mean[c] as f64 * scale) as f32);
    }
    FoldedConv {
        weight: folded,
        bias,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// conv-then-BN and the folded conv agree on a hand-checkable 1x1 convolution.
    #[test]
    fn folded_conv_equals_conv_then_batch_norm() {
        // Two output channels, three input channels, 1x1 kernel.
        let w = [1.0f32, -2.0, 0.5, 0.25, 4.0, -1.0];
        let bn = BatchNorm {
            gamma: &[2.0, 0.5],
            beta: &[0.1, -0.3],
            mean: &[1.0, -2.0],
            var: &[3.0, 0.25],
            eps: 1e-5,
        };
        let folded = fold_batch_norm(&w, &bn);
        let x = [0.3f64, -1.2, 2.0];
        for c in 0..2 {
            let z: f64 = (0..3).map(|i| w[c * 3 + i] as f64 * x[i]).sum();
            let want = bn.gamma[c] as f64 * (z - bn.mean[c] as f64)
                / (bn.var[c] as f64 + 1e-5).sqrt()
                + bn.beta[c] as f64;
            let got: f64 = (0..3)
                .map(|i| folded.weight[c * 3 + i] as f64 * x[i])
                .sum::<f64>()
                + folded.bias[c] as f64;
            // Only f32 rounding of the folded weights separates the two: ~1e-7 relative.
            assert!((got - want).abs() < 1e-5, "channel {c}: {got} vs {want}");
        }
        // Channel 0: s = 2/sqrt(3 + 1e-5), bias = 0.1 - 1 * s.
        let s0 = 2.0 / (3.0f64 + 1e-5).sqrt();
        assert!((folded.bias[0] as f64 - (0.1 - s0)).abs() < 1e-6);
    }
}
