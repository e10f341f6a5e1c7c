//! Inside a BasicBlock: its two branches and their sum as real feature maps.
//!
//! The fast backends fuse a block's `conv-bn-relu-conv-bn + shortcut, ReLU` into a few kernels,
//! so only the block's output is a trace point. [`BlockWeights::branches`] recomputes the block
//! from its input (the previous trace point's output) with the model's BatchNorm-folded weights
//! through the reference backend's textbook convolution, keeping every step:
//!
//! ```text
//! conv1 = ReLU(bn1(conv1(x)))        the main branch after its first half
//! conv2 = bn2(conv2(conv1))          the main branch
//! shortcut = x, or bn(conv1x1/2(x))  identity or downsample
//! sum = conv2 + shortcut
//! output = ReLU(sum)                 equals the backend's trace point (f32 reassociation aside)
//! ```

use super::{RecordedPoint, Trace};
use crate::arch::{ResNet18Arch, TracePoint};
use crate::backend::folded::FoldedBlock;
use crate::backend::reference::{folded_conv, relu};
use crate::error::{Error, Result};
use crate::weights::Weights;
use ndarray::{Array4, ArrayView4, Ix4};
use serde::Serialize;

/// One step inside a BasicBlock whose output [`BlockBranches`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchStage {
    /// conv1 -> bn1 -> ReLU: the main branch's first half.
    Conv1,
    /// conv2 -> bn2: the main branch, before the add.
    Conv2,
    /// The shortcut of a block that keeps the shape: its input as is.
    Identity,
    /// The shortcut of a block that halves the resolution: 1x1 stride-2 conv -> BN.
    Downsample,
    /// Main branch + shortcut, before the ReLU.
    Sum,
    /// ReLU(sum): the block's output, its trace point.
    Output,
}

impl BranchStage {
    /// Its name in JSON and tables: `conv1`, `conv2`, `identity`, `downsample`, `sum`, `output`.
    pub fn name(self) -> &'static str {
        match self {
            BranchStage::Conv1 => "conv1",
            BranchStage::Conv2 => "conv2",
            BranchStage::Identity => "identity",
            BranchStage::Downsample => "downsample",
            BranchStage::Sum => "sum",
            BranchStage::Output => "output",
        }
    }

    /// What the stage computes, in torchvision's module names of block `block` (`layer2.0`).
    pub fn describe(self, block: &str) -> String {
        match self {
            BranchStage::Conv1 => format!("{block}.conv1 -> bn1 -> ReLU"),
            BranchStage::Conv2 => format!("{block}.conv2 -> bn2"),
            BranchStage::Identity => "identity (the block's input)".into(),
            BranchStage::Downsample => format!("{block}.downsample: conv 1x1/2 -> BN"),
            BranchStage::Sum => "main branch + shortcut".into(),
            BranchStage::Output => "ReLU(sum): the block's output".into(),
        }
    }
}

impl std::fmt::Display for BranchStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for BranchStage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One stage's output.
#[derive(Clone, Debug)]
pub struct StageOutput {
    /// Which stage.
    pub stage: BranchStage,
    /// Its output, NCHW.
    pub output: Array4<f32>,
}

/// A BasicBlock recomputed step by step from its input.
#[derive(Clone, Debug)]
pub struct BlockBranches {
    /// The block's trace point.
    pub point: TracePoint,
    /// conv1, conv2, the shortcut (identity or downsample), sum, output: in that order.
    pub stages: Vec<StageOutput>,
    /// Fraction of the sum's values below zero: what the block's final ReLU switched off.
    pub relu_off: f64,
}

impl BlockBranches {
    /// The output of `stage`, if the block has that stage.
    pub fn stage(&self, stage: BranchStage) -> Option<&Array4<f32>> {
        self.stages
            .iter()
            .find(|s| s.stage == stage)
            .map(|s| &s.output)
    }
}

/// Every BasicBlock's convolutions with BatchNorm folded in (about 43 MB of f32 for
/// ResNet-18): what [`BlockWeights::branches`] recomputes a block with.
pub struct BlockWeights {
    blocks: Vec<FoldedBlock>,
}

impl std::fmt::Debug for BlockWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockWeights")
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

impl BlockWeights {
    /// Folds each block's BatchNorms into its convolutions, as the fast backends do.
    pub fn new(weights: &Weights) -> BlockWeights {
        BlockWeights {
            blocks: ResNet18Arch::new()
                .blocks
                .iter()
                .map(|b| FoldedBlock::new(weights, b))
                .collect(),
        }
    }

    /// Block `point` recomputed from `input` (`[N, C, H, W]`, the previous trace point's output).
    pub fn branches(&self, point: TracePoint, input: ArrayView4<'_, f32>) -> Result<BlockBranches> {
        let block = self
            .blocks
            .iter()
            .find(|b| b.point == point)
            .ok_or(Error::NotABlock { point })?;
        let channels = block.conv1.spec.in_channels;
        if input.dim().1 != channels {
            return Err(Error::BlockInputShape {
                point,
                channels,
                found: input.shape().to_vec(),
            });
        }
        let x = input.to_owned();
        let conv1 = relu(folded_conv(&x, &block.conv1));
        let conv2 = folded_conv(&conv1, &block.conv2);
        let (shortcut_stage, shortcut) = match &block.downsample {
            Some(ds) => (BranchStage::Downsample, folded_conv(&x, ds)),
            None => (BranchStage::Identity, x),
        };
        let sum = &conv2 + &shortcut;
        let negative = sum.iter().filter(|&&v| v < 0.0).count();
        let relu_off = negative as f64 / sum.len().max(1) as f64;
        let output = relu(sum.clone());
        Ok(BlockBranches {
            point,
            stages: vec![
                StageOutput {
                    stage: BranchStage::Conv1,
                    output: conv1,
                },
                StageOutput {
                    stage: BranchStage::Conv2,
                    output: conv2,
                },
                StageOutput {
                    stage: shortcut_stage,
                    output: shortcut,
                },
                StageOutput {
                    stage: BranchStage::Sum,
                    output: sum,
                },
                StageOutput {
                    stage: BranchStage::Output,
                    output,
                },
            ],
            relu_off,
        })
    }

    /// The blocks `points` of `trace`, each recomputed from the trace's own output of the point
    /// before it, so the maps are the traced network's (that point's output compared with the
    /// recomputed one: [`crate::trace::compare`]).
    pub fn of_trace(&self, trace: &Trace, points: &[TracePoint]) -> Result<Vec<BlockBranches>> {
        points
            .iter()
            .map(|&point| {
                let input = input_of(&trace.points, point, trace.backend)?;
                let input = input
                    .output
                    .view()
                    .into_dimensionality::<Ix4>()
                    .map_err(|_| Error::BlockInputShape {
                        point,
                        channels: self
                            .blocks
                            .iter()
                            .find(|b| b.point == point)
                            .map_or(0, |b| b.conv1.spec.in_channels),
                        found: input.output.shape().to_vec(),
                    })?;
                self.branches(point, input)
            })
            .collect()
    }
}

/// The recorded point just before `point` (a block's input).
fn input_of<'a>(
    points: &'a [RecordedPoint],
    point: TracePoint,
    backend: &str,
) -> Result<&'a RecordedPoint> {
    let at = points.iter().position(|p| p.point == point);
    at.and_then(|i| i.checked_sub(1))
        .and_then(|i| points.get(i))
        .ok_or_else(|| Error::MissingTraceOutput {
            backend: backend.into(),
            point,
        })
}

/// The BasicBlocks, `layer1.0` ... `layer4.1`.
pub fn block_points() -> Vec<TracePoint> {
    TracePoint::ALL
        .into_iter()
        .filter(|p| matches!(p, TracePoint::Block(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, BackendOptions};
    use crate::trace::record;

    /// Largest absolute difference over the largest magnitude of `want`.
    fn relative_error(got: ArrayView4<'_, f32>, want: ndarray::ArrayViewD<'_, f32>) -> f64 {
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let diff = got
            .iter()
            .zip(want.iter())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
        diff / scale.max(f64::MIN_POSITIVE)
    }

    #[test]
    fn recomputed_blocks_equal_the_backends_own_outputs() {
        let weights = crate::weights::synthetic_weights(0);
        let blocks = BlockWeights::new(&weights);
        let input = ndarray::Array4::from_shape_fn((1, 3, 64, 64), |(_, c, y, x)| {
            ((c * 31 + y * 7 + x * 3) % 97) as f32 / 40.0 - 1.2
        });
        for kind in [BackendKind::Gemm, BackendKind::Native] {
            let backend = kind.create(&weights, &BackendOptions::default()).unwrap();
            let trace = record(&*backend, input.view()).unwrap();
            let all = blocks.of_trace(&trace, &block_points()).unwrap();
            assert_eq!(all.len(), 8);
            for b in &all {
                let want = trace.point(b.point).unwrap().output.view();
                let got = b.stage(BranchStage::Output).unwrap().view();
                assert_eq!(got.shape(), want.shape(), "{}", b.point);
                // The same folded weights, summed in another order (f64 here; f32 tiles and
                // Winograd in native): f32 reassociation only. Measured at most 1.9e-6 of the
                // largest value (native, layer3.0, Intel Xeon, 2026-12-02); 2e-5 leaves 10x for
                // other kernels and CPUs, far below what a wrong branch would give (~1).
                let err = relative_error(got, want);
                assert!(err < 2e-5, "{kind} {}: relative error {err:e}", b.point);
                let stages: Vec<BranchStage> = b.stages.iter().map(|s| s.stage).collect();
                let shortcut = if matches!(b.point, TracePoint::Block(2 | 4 | 6)) {
                    BranchStage::Downsample
                } else {
                    BranchStage::Identity
                };
                use BranchStage::*;
                assert_eq!(stages, vec![Conv1, Conv2, shortcut, Sum, Output]);
                // The output is the sum with its negative values zeroed: relu_off counts them.
                let sum = b.stage(Sum).unwrap();
                let off = sum.iter().filter(|&&v| v < 0.0).count() as f64 / sum.len() as f64;
                assert_eq!(b.relu_off, off);
                assert!(b.relu_off > 0.0 && b.relu_off < 1.0, "{}", b.relu_off);
            }
        }
        let err = blocks.branches(TracePoint::Stem, input.view()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotABlock {
                    point: TracePoint::Stem
                }
            ),
            "{err}"
        );
        // The image itself (3 channels) is not what layer1.0 takes.
        let err = blocks
            .branches(TracePoint::Block(0), input.view())
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::BlockInputShape { point: TracePoint::Block(0), channels: 64, found }
                    if found == &[1, 3, 64, 64]
            ),
            "{err}"
        );
    }
}
