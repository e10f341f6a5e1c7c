//! ResNet-18 with every BatchNorm folded into its convolution: what the fast backends start from.

use crate::arch::{BasicBlock, ConvBn, ResNet18Arch, TracePoint};
use crate::weights::{fold_batch_norm, FoldedConv, Weights};

/// One convolution with its BatchNorm folded in (weights `[OC, C, KH, KW]`, one bias per OC).
pub(crate) struct FoldedLayer {
    pub spec: ConvBn,
    pub conv: FoldedConv,
}

impl FoldedLayer {
    pub fn new(weights: &Weights, spec: &ConvBn) -> FoldedLayer {
        let w = weights.tensor(&format!("{}.weight", spec.conv));
        FoldedLayer {
            spec: spec.clone(),
            conv: fold_batch_norm(&w.values(), &weights.batch_norm(&spec.bn)),
        }
    }

    /// The weights as the `K x N` GEMM operand of an NHWC convolution:
    /// `b[((kh·KW + kw)·C + c)·OC + oc] = w[oc, c, kh, kw]`.
    pub fn weights_khwc_by_oc(&self) -> Vec<f32> {
        let [oc_n, c_n, k, _] = self.spec.weight_shape();
        let rows = c_n * k * k;
        let w = &self.conv.weight;
        let mut b = vec![0.0; oc_n * rows];
        // A transpose: write the output in order, a band of output channels at a time, so the
        // writes are sequential and the reads come from a few rows that stay in cache (writing
        // one output channel at a time touched a new cache line per element and dominated
        // start-up).
        const BAND: usize = 16;
        for oc0 in (0..oc_n).step_by(BAND) {
            let oc1 = (oc0 + BAND).min(oc_n);
            for kh in 0..k {
                for kw in 0..k {
                    for c in 0..c_n {
                        let row = (kh * k + kw) * c_n + c;
                        let src = (c * k + kh) * k + kw;
                        for oc in oc0..oc1 {
                            b[row * oc_n + oc] = w[oc * rows + src];
                        }
                    }
                }
            }
        }
        b
    }
}

/// A BasicBlock with folded convolutions.
pub(crate) struct FoldedBlock {
    pub point: TracePoint,
    pub conv1: FoldedLayer,
    pub conv2: FoldedLayer,
    pub downsample: Option<FoldedLayer>,
}

impl FoldedBlock {
    pub fn new(weights: &Weights, block: &BasicBlock) -> FoldedBlock {
        FoldedBlock {
            point: block.point(),
            conv1: FoldedLayer::new(weights, &block.conv1),
            conv2: FoldedLayer::new(weights, &block.conv2),
            downsample: block
                .downsample
                .as_ref()
                .map(|d| FoldedLayer::new(weights, d)),
        }
    }
}

/// The whole network, folded.
pub(crate) struct FoldedResNet18 {
    pub stem: FoldedLayer,
    pub blocks: Vec<FoldedBlock>,
    /// The classifier weights transposed, `[512, 1000]`: the `K x N` GEMM operand.
    pub fc_weight_t: Vec<f32>,
    /// `[1000]`.
    pub fc_bias: Vec<f32>,
}

impl FoldedResNet18 {
    pub fn new(weights: &Weights) -> FoldedResNet18 {
        let arch = ResNet18Arch::new();
        FoldedResNet18 {
            stem: FoldedLayer::new(weights, &arch.stem),
            blocks: arch
                .blocks
                .iter()
                .map(|b| FoldedBlock::new(weights, b))
                .collect(),
            fc_weight_t: fc_weight_transposed(weights),
            fc_bias: weights.tensor("fc.bias").f32_values().to_vec(),
        }
    }
}

/// torchvision's `fc.weight` `[classes, features]` transposed to `[features, classes]`.
pub(crate) fn fc_weight_transposed(weights: &Weights) -> Vec<f32> {
    let w = weights.tensor("fc.weight");
    let (classes, features) = (w.shape[0], w.shape[1]);
    let values = w.f32_values();
    let mut t = vec![0.0; values.len()];
    for k in 0..classes {
        for f in 0..features {
            t[f * classes + k] = values[k * features + f];
        }
    }
    t
}

/// `[N, H, W, C]` -> `[N, C, H, W]`, for trace events.
pub(crate) fn nhwc_to_nchw(
    data: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
) -> ndarray::ArrayD<f32> {
    let mut out = ndarray::Array4::<f32>::zeros((n, c, h, w));
    for ((b, ch, y, x), v) in out.indexed_iter_mut() {
        *v = data[((b * h + y) * w + x) * c + ch];
    }
    out.into_dyn()
}

/// NCHW `[N, C, HW]` -> NHWC `[N, HW, C]` (in parallel, [`resnet_kernels::layout`]).
pub(crate) fn nchw_to_nhwc(input: &[f32], n: usize, c: usize, hw: usize, out: &mut [f32]) {
    resnet_kernels::layout::nchw_to_nhwc_with(input, n, c, hw, out, |src, dst| {
        dst.copy_from_slice(src)
    });
}
