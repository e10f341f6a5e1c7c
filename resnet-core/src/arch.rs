//! The ResNet-18 architecture as data: every convolution, BatchNorm and block, keyed by
//! torchvision's `state_dict` names, so that weights, backends, traces and `resnet inspect`
//! all walk the same table.
//!
//! ```text
//! input [N, 3, 224, 224]
//! stem:    conv1 7x7/2 (3->64) -> bn1 -> relu        [N, 64, 112, 112]
//!          maxpool 3x3/2 pad 1                        [N, 64, 56, 56]
//! layer1:  BasicBlock(64->64)   x2                    [N, 64, 56, 56]
//! layer2:  BasicBlock(64->128, stride 2, downsample), BasicBlock(128->128)   [N, 128, 28, 28]
//! layer3:  BasicBlock(128->256, stride 2, downsample), BasicBlock(256->256)  [N, 256, 14, 14]
//! layer4:  BasicBlock(256->512, stride 2, downsample), BasicBlock(512->512)  [N, 512, 7, 7]
//! avgpool: global average                             [N, 512]
//! fc:      512 -> 1000                                [N, 1000]
//! ```
//!
//! A BasicBlock (torchvision `BasicBlock`, expansion 1) computes
//! `relu(bn2(conv2(relu(bn1(conv1(x))))) + identity)`, where `identity` is `x`, or
//! `downsample(x)` = `bn(conv1x1/2(x))` when the block changes the resolution or channel count.

/// Output channels of the four stages.
pub const STAGE_CHANNELS: [usize; 4] = [64, 128, 256, 512];
/// BasicBlocks per stage (ResNet-18).
pub const BLOCKS_PER_STAGE: [usize; 4] = [2, 2, 2, 2];
/// Number of ImageNet classes.
pub const NUM_CLASSES: usize = 1000;
/// Features entering the classifier.
pub const FC_IN: usize = 512;
/// The input resolution the model is trained for.
pub const INPUT_SIZE: usize = 224;
/// BatchNorm epsilon used by torchvision's `nn.BatchNorm2d`.
pub const BN_EPS: f64 = 1e-5;

/// One convolution followed by its BatchNorm (torchvision never uses conv bias in ResNets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvBn {
    /// State-dict prefix of the convolution (`layer2.0.downsample.0`); its weight is `{conv}.weight`.
    pub conv: String,
    /// State-dict prefix of the BatchNorm (`layer2.0.downsample.1`).
    pub bn: String,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvBn {
    fn new(conv: String, bn: String, in_c: usize, out_c: usize, k: usize, s: usize) -> ConvBn {
        ConvBn {
            conv,
            bn,
            in_channels: in_c,
            out_channels: out_c,
            kernel: k,
            stride: s,
            padding: k / 2,
        }
    }

    /// Shape of the convolution weight: `[OC, C, KH, KW]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        ]
    }

    /// Output spatial size for an input of `h x w`.
    pub fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.padding - self.kernel) / self.stride + 1,
            (w + 2 * self.padding - self.kernel) / self.stride + 1,
        )
    }

    /// The convolution as the kernels see it, on a batch of `n` NHWC images of `h x w`.
    pub fn geometry(&self, n: usize, h: usize, w: usize) -> resnet_kernels::gemm::ConvGeometry {
        resnet_kernels::gemm::ConvGeometry {
            batch: n,
            in_h: h,
            in_w: w,
            in_c: self.in_channels,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.padding,
        }
    }

    /// Learned parameters: conv weight + BN weight and bias (running statistics are buffers).
    pub fn parameters(&self) -> usize {
        self.weight_shape().iter().product::<usize>() + 2 * self.out_channels
    }

    /// Multiply-accumulates for one image of input size `h x w`.
    pub fn macs(&self, h: usize, w: usize) -> usize {
        let (oh, ow) = self.output_hw(h, w);
        oh * ow * self.out_channels * self.in_channels * self.kernel * self.kernel
    }
}

/// Torchvision's names of the eight BasicBlocks, in execution order.
pub const BLOCK_NAMES: [&str; 8] = [
    "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1",
];

/// A point of the forward pass that every backend reports to a
/// [`LayerObserver`](crate::backend::LayerObserver), in the order of [`TracePoint::ALL`]. Each
/// is the output of the torchvision module of that name, so a PyTorch forward hook on it sees
/// the same tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TracePoint {
    /// The stem's conv1 + bn1 + ReLU, before max-pooling (torchvision's `relu` output).
    Stem,
    /// The 3x3 stride-2 max-pool.
    MaxPool,
    /// BasicBlock `i` (0 is `layer1.0`, 7 is `layer4.1`), after its residual add and ReLU.
    Block(usize),
    /// The global average pool, flattened to `[N, 512]`.
    AvgPool,
    /// The logits, `[N, 1000]`.
    Fc,
}

impl TracePoint {
    /// Every trace point, in the order a forward pass reports them.
    pub const ALL: [TracePoint; 12] = [
        TracePoint::Stem,
        TracePoint::MaxPool,
        TracePoint::Block(0),
        TracePoint::Block(1),
        TracePoint::Block(2),
        TracePoint::Block(3),
        TracePoint::Block(4),
        TracePoint::Block(5),
        TracePoint::Block(6),
        TracePoint::Block(7),
        TracePoint::AvgPool,
        TracePoint::Fc,
    ];

    /// The torchvision module name (`stem` for the stem's ReLU output).
    pub fn name(self) -> &'static str {
        match self {
            TracePoint::Stem => "stem",
            TracePoint::MaxPool => "maxpool",
            TracePoint::Block(i) => BLOCK_NAMES.get(i).copied().unwrap_or("layer?"),
            TracePoint::AvgPool => "avgpool",
            TracePoint::Fc => "fc",
        }
    }

    /// The point called `name`, if any.
    pub fn from_name(name: &str) -> Option<TracePoint> {
        TracePoint::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for TracePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A torchvision `BasicBlock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicBlock {
    /// Module name (`layer2.0`).
    pub name: String,
    /// Its position in the network, 0 (`layer1.0`) to 7.
    pub index: usize,
    /// 3x3 conv (stride 1 or 2) + bn1.
    pub conv1: ConvBn,
    /// 3x3 conv, stride 1, + bn2.
    pub conv2: ConvBn,
    /// 1x1 stride-2 conv + BN on the skip path, in the first block of stages 2-4.
    pub downsample: Option<ConvBn>,
}

impl BasicBlock {
    /// Its trace point.
    pub fn point(&self) -> TracePoint {
        TracePoint::Block(self.index)
    }

    /// The block's convolutions in execution order.
    pub fn convs(&self) -> impl Iterator<Item = &ConvBn> {
        [
            Some(&self.conv1),
            Some(&self.conv2),
            self.downsample.as_ref(),
        ]
        .into_iter()
        .flatten()
    }
}

/// The whole network, as torchvision's `resnet18()` builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNet18Arch {
    /// conv1 7x7/2 + bn1 (followed by ReLU and max-pool).
    pub stem: ConvBn,
    /// The eight BasicBlocks, `layer1.0` to `layer4.1`.
    pub blocks: Vec<BasicBlock>,
}

impl Default for ResNet18Arch {
    fn default() -> Self {
        Self::new()
    }
}

impl ResNet18Arch {
    /// Builds the table, mirroring `torchvision.models.resnet.ResNet._make_layer`.
    pub fn new() -> ResNet18Arch {
        let stem = ConvBn::new("conv1".into(), "bn1".into(), 3, 64, 7, 2);
        let mut blocks = Vec::new();
        let mut in_c = 64;
        for (stage, (&out_c, &n)) in STAGE_CHANNELS.iter().zip(&BLOCKS_PER_STAGE).enumerate() {
            for b in 0..n {
                let name = format!("layer{}.{b}", stage + 1);
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let conv1 = ConvBn::new(
                    format!("{name}.conv1"),
                    format!("{name}.bn1"),
                    in_c,
                    out_c,
                    3,
                    stride,
                );
                let conv2 = ConvBn::new(
                    format!("{name}.conv2"),
                    format!("{name}.bn2"),
                    out_c,
                    out_c,
                    3,
                    1,
                );
                let downsample = (stride != 1 || in_c != out_c).then(|| {
                    ConvBn::new(
                        format!("{name}.downsample.0"),
                        format!("{name}.downsample.1"),
                        in_c,
                        out_c,
                        1,
                        stride,
                    )
                });
                blocks.push(BasicBlock {
                    index: blocks.len(),
                    name,
                    conv1,
                    conv2,
                    downsample,
                });
                in_c = out_c;
            }
        }
        ResNet18Arch { stem, blocks }
    }

    /// Every conv+BN pair, in execution order.
    pub fn convs(&self) -> impl Iterator<Item = &ConvBn> {
        std::iter::once(&self.stem).chain(self.blocks.iter().flat_map(|b| b.convs()))
    }

    /// Every conv+BN pair in execution order with its input `[C, H, W]` for an `h x w` image
    /// (what the layer table says).
    pub fn convs_with_inputs(&self, h: usize, w: usize) -> Vec<(&ConvBn, [usize; 3])> {
        let table = self.layer_table(h, w);
        self.convs()
            .map(|c| {
                let row = table.iter().find(|r| r.name == c.conv);
                (
                    c,
                    row.expect("every convolution is in the layer table").input,
                )
            })
            .collect()
    }

    /// Every tensor of torchvision's `state_dict`, with its shape and role, in state-dict order.
    pub fn expected_tensors(&self) -> Vec<ExpectedTensor> {
        let mut out = Vec::new();
        for cb in self.convs() {
            let c = cb.out_channels;
            out.push(ExpectedTensor::new(
                format!("{}.weight", cb.conv),
                cb.weight_shape().to_vec(),
                TensorRole::Parameter,
            ));
            for (suffix, role) in [
                ("weight", TensorRole::Parameter),
                ("bias", TensorRole::Parameter),
                ("running_mean", TensorRole::Statistic),
                ("running_var", TensorRole::Statistic),
            ] {
                out.push(ExpectedTensor::new(
                    format!("{}.{suffix}", cb.bn),
                    vec![c],
                    role,
                ));
            }
            out.push(ExpectedTensor::new(
                format!("{}.num_batches_tracked", cb.bn),
                vec![],
                TensorRole::Counter,
            ));
        }
        out.push(ExpectedTensor::new(
            "fc.weight".into(),
            vec![NUM_CLASSES, FC_IN],
            TensorRole::Parameter,
        ));
        out.push(ExpectedTensor::new(
            "fc.bias".into(),
            vec![NUM_CLASSES],
            TensorRole::Parameter,
        ));
        out
    }

    /// The layer table for an input of `h x w`: one row per operation, as `resnet inspect` shows it.
    pub fn layer_table(&self, h: usize, w: usize) -> Vec<LayerRow> {
        let mut rows = Vec::new();
        let push_conv = |rows: &mut Vec<LayerRow>, cb: &ConvBn, h: usize, w: usize| {
            let (oh, ow) = cb.output_hw(h, w);
            rows.push(LayerRow {
                name: cb.conv.clone(),
                op: format!(
                    "conv {k}x{k}/{s} + {bn}",
                    k = cb.kernel,
                    s = cb.stride,
                    bn = cb.bn
                ),
                input: [cb.in_channels, h, w],
                output: [cb.out_channels, oh, ow],
                parameters: cb.parameters(),
                macs: cb.macs(h, w),
            });
            (oh, ow)
        };
        let (mut h, mut w) = push_conv(&mut rows, &self.stem, h, w);
        let (ph, pw) = max_pool_output_hw(h, w);
        rows.push(LayerRow {
            name: "maxpool".into(),
            op: "max-pool 3x3/2 pad 1".into(),
            input: [64, h, w],
            output: [64, ph, pw],
            parameters: 0,
            macs: 0,
        });
        (h, w) = (ph, pw);
        for block in &self.blocks {
            let (h1, w1) = push_conv(&mut rows, &block.conv1, h, w);
            push_conv(&mut rows, &block.conv2, h1, w1);
            if let Some(ds) = &block.downsample {
                push_conv(&mut rows, ds, h, w);
            }
            (h, w) = (h1, w1);
        }
        rows.push(LayerRow {
            name: "avgpool".into(),
            op: "global average pool".into(),
            input: [FC_IN, h, w],
            output: [FC_IN, 1, 1],
            parameters: 0,
            macs: 0,
        });
        rows.push(LayerRow {
            name: "fc".into(),
            op: format!("linear {FC_IN} -> {NUM_CLASSES}"),
            input: [FC_IN, 1, 1],
            output: [NUM_CLASSES, 1, 1],
            parameters: FC_IN * NUM_CLASSES + NUM_CLASSES,
            macs: FC_IN * NUM_CLASSES,
        });
        rows
    }

    /// The points a forward pass reports to a [`crate::backend::LayerObserver`], in order, with
    /// the shape of one image's output at each for an `h` x `w` input (`[C, H, W]`, or `[F]`
    /// after the pool), derived from the layer table: what every backend must report.
    pub fn trace_points(&self, h: usize, w: usize) -> Vec<(TracePoint, Vec<usize>)> {
        let (mut h, mut w) = self.stem.output_hw(h, w);
        let mut points = vec![(TracePoint::Stem, vec![self.stem.out_channels, h, w])];
        (h, w) = max_pool_output_hw(h, w);
        points.push((TracePoint::MaxPool, vec![self.stem.out_channels, h, w]));
        let mut c = self.stem.out_channels;
        for b in &self.blocks {
            (h, w) = b.conv1.output_hw(h, w);
            c = b.conv2.out_channels;
            points.push((b.point(), vec![c, h, w]));
        }
        points.push((TracePoint::AvgPool, vec![c]));
        points.push((TracePoint::Fc, vec![NUM_CLASSES]));
        points
    }
}

/// Output size of the 3x3 stride-2 pad-1 max-pool.
pub fn max_pool_output_hw(h: usize, w: usize) -> (usize, usize) {
    ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1)
}

/// What a state-dict tensor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    /// A learned parameter (counted in the 11,689,512).
    Parameter,
    /// A BatchNorm running statistic (a buffer, needed for inference).
    Statistic,
    /// `num_batches_tracked`: an i64 training counter, optional and unused at inference.
    Counter,
}

/// A tensor the model expects in a state dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedTensor {
    /// The torchvision key.
    pub key: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// What it is for.
    pub role: TensorRole,
}

impl ExpectedTensor {
    fn new(key: String, shape: Vec<usize>, role: TensorRole) -> ExpectedTensor {
        ExpectedTensor { key, shape, role }
    }
}

/// One row of the layer table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRow {
    /// torchvision module name.
    pub name: String,
    /// What it computes.
    pub op: String,
    /// Input `[C, H, W]`.
    pub input: [usize; 3],
    /// Output `[C, H, W]`.
    pub output: [usize; 3],
    /// Learned parameters.
    pub parameters: usize,
    /// Multiply-accumulates per image.
    pub macs: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_match_torchvision() {
        let arch = ResNet18Arch::new();
        let rows = arch.layer_table(224, 224);
        let params: usize = rows.iter().map(|r| r.parameters).sum();
        let macs: usize = rows.iter().map(|r| r.macs).sum();
        // torchvision's model card: 11,689,512 parameters, 1.814 GFLOPS (multiply-adds).
        assert_eq!(params, 11_689_512);
        assert_eq!(
            (macs as f64 / 1e9 * 1000.0).round() / 1000.0,
            1.814,
            "{macs}"
        );
        let expected_params: usize = arch
            .expected_tensors()
            .iter()
            .filter(|t| t.role == TensorRole::Parameter)
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        assert_eq!(expected_params, 11_689_512);
    }

    #[test]
    fn shapes_follow_torchvision() {
        let arch = ResNet18Arch::new();
        let rows = arch.layer_table(224, 224);
        assert_eq!(rows[0].output, [64, 112, 112]);
        assert_eq!(rows[1].output, [64, 56, 56]);
        let last_conv = rows.iter().rfind(|r| r.name.starts_with("layer4")).unwrap();
        assert_eq!(last_conv.output, [512, 7, 7]);
        let keys: Vec<_> = arch.expected_tensors().into_iter().map(|t| t.key).collect();
        assert!(keys.contains(&"layer2.0.downsample.1.running_var".to_string()));
        assert!(!keys.iter().any(|k| k.starts_with("layer1.0.downsample")));
        // 20 convs x (1 conv weight + 5 BN tensors) + fc weight and bias = 122 tensors.
        assert_eq!(keys.len(), 122);
        let points = arch.trace_points(224, 224);
        let order: Vec<TracePoint> = points.iter().map(|(p, _)| *p).collect();
        assert_eq!(order, TracePoint::ALL);
        assert_eq!(points[0].1, [64, 112, 112]);
        assert_eq!(points[1].1, [64, 56, 56]);
        assert_eq!(points[9].1, [512, 7, 7]);
        assert_eq!(points[10].1, [512]);
        for (b, name) in arch.blocks.iter().zip(BLOCK_NAMES) {
            assert_eq!(b.name, name);
            assert_eq!(b.point().name(), name);
            assert_eq!(TracePoint::from_name(name), Some(b.point()));
        }
    }
}
