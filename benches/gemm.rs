//! The packed GEMM at each distinct convolution shape of ResNet-18 (batch 1, NHWC implicit
//! im2col), for every ISA this CPU supports; criterion reports GFLOP/s via its throughput
//! (elements = 2·M·N·K FLOPs). IDs: `<kernel>/m<M>k<K>n<N>`.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use resnet_core::arch::{ResNet18Arch, INPUT_SIZE};
use resnet_core::cpu::Isa;
use resnet_kernels::gemm::{kernel_name, sgemm_packed, ASource, ConvGeometry, Epilogue, PackedB};

fn gemm_shapes(c: &mut Criterion) {
    let arch = ResNet18Arch::new();
    // Distinct (input size, conv) geometries, in network order.
    let mut geometries: Vec<(ConvGeometry, usize)> = Vec::new();
    let (mut h, mut w) = (INPUT_SIZE, INPUT_SIZE);
    let mut push = |g: ConvGeometry, oc: usize| {
        if !geometries.contains(&(g, oc)) {
            geometries.push((g, oc));
        }
    };
    let conv = |cb: &resnet_core::arch::ConvBn, h, w| ConvGeometry {
        batch: 1,
        in_h: h,
        in_w: w,
        in_c: cb.in_channels,
        kernel: cb.kernel,
        stride: cb.stride,
        pad: cb.padding,
    };
    push(conv(&arch.stem, h, w), 64);
    (h, w) = arch.stem.output_hw(h, w);
    (h, w) = resnet_core::arch::max_pool_output_hw(h, w);
    for b in &arch.blocks {
        push(conv(&b.conv1, h, w), b.conv1.out_channels);
        let (oh, ow) = b.conv1.output_hw(h, w);
        push(conv(&b.conv2, oh, ow), b.conv2.out_channels);
        if let Some(ds) = &b.downsample {
            push(conv(ds, h, w), ds.out_channels);
        }
        (h, w) = (oh, ow);
    }
    let mut group = c.benchmark_group("gemm");
    group.sample_size(20);
    for isa in Isa::supported() {
        for &(g, oc) in &geometries {
            let input: Vec<f32> = (0..g.input_len())
                .map(|i| (i % 13) as f32 * 0.1 - 0.6)
                .collect();
            let weights: Vec<f32> = (0..g.k() * oc)
                .map(|i| (i % 7) as f32 * 0.01 - 0.03)
                .collect();
            let bias = vec![0.1f32; oc];
            let packed = PackedB::new(&weights, g.k(), oc, isa);
            let mut out = vec![0.0f32; g.m() * oc];
            let epi = Epilogue {
                bias: Some(&bias),
                residual: None,
                relu: true,
            };
            group.throughput(Throughput::Elements((2 * g.m() * g.k() * oc) as u64));
            let id = format!("{}/m{}k{}n{}", kernel_name(isa), g.m(), g.k(), oc);
            group.bench_function(id, |b| {
                b.iter(|| {
                    sgemm_packed(
                        &ASource::Conv {
                            input: &input,
                            geometry: g,
                            pad: 0.0,
                        },
                        &packed,
                        &mut out,
                        oc,
                        &epi,
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, gemm_shapes);
criterion_main!(benches);
