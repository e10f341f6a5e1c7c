//! The packed GEMM at each distinct convolution shape of ResNet-18 (batch 1, NHWC implicit
//! im2col), for every ISA this CPU supports; criterion reports GFLOP/s via its throughput
//! (elements = 2·M·N·K FLOPs). IDs: `<kernel>/m<M>k<K>n<N>`.
//!
//! After criterion's runs, a table gives each shape's rate as a percentage of the FMA peak
//! measured on this machine at the same moment (`resnet_kernels::peak`, all pool threads), the
//! figure the speed issue's target is stated in (3x3 convolutions at >= 75% of peak on the
//! direct path): the median of 15 timed calls per shape, printed to stdout and written to
//! `target/criterion/gemm-percent-of-peak.json`.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use resnet_core::arch::{ResNet18Arch, INPUT_SIZE};
use resnet_core::cpu::Isa;
use resnet_kernels::gemm::{kernel_name, sgemm_packed, ASource, ConvGeometry, Epilogue, PackedB};
use std::time::Instant;

/// One shape's rate against the measured peak, for the summary table.
struct ShapeRate {
    id: String,
    kernel: usize,
    gflops: f64,
    percent_of_peak: f64,
}

/// Median seconds of `runs` calls of `f` (after one warm-up call).
fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

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
    let mut rates = Vec::new();
    let mut peaks = Vec::new();
    // One pass per f32 kernel: several ISAs select the same one (avx2 and avxvnni; avx512,
    // vnni, avx512bf16 and amx on a Sapphire Rapids), and criterion refuses a repeated ID.
    let mut seen = Vec::new();
    for isa in Isa::supported() {
        if seen.contains(&kernel_name(isa)) {
            continue;
        }
        seen.push(kernel_name(isa));
        let peak = resnet_kernels::peak::measure_peak_gflops(isa);
        peaks.push((kernel_name(isa), peak));
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
            let mut run = || {
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
            };
            group.bench_function(&id, |b| b.iter(&mut run));
            let flops = (2 * g.m() * g.k() * oc) as f64;
            let gflops = flops / median_seconds(15, &mut run) / 1e9;
            rates.push(ShapeRate {
                id,
                kernel: g.kernel,
                gflops,
                percent_of_peak: 100.0 * gflops / peak,
            });
        }
    }
    group.finish();
    print_percent_of_peak(&peaks, &rates);
}

fn print_percent_of_peak(peaks: &[(&str, f64)], rates: &[ShapeRate]) {
    println!("\nper-shape rate against the measured FMA peak (median of 15 calls)");
    for (kernel, peak) in peaks {
        println!("  {kernel}: peak {peak:.0} GFLOP/s");
    }
    println!(
        "{:<40} {:>6} {:>9} {:>7}",
        "shape", "kernel", "GFLOP/s", "% peak"
    );
    for r in rates {
        println!(
            "{:<40} {:>4}x{} {:>9.1} {:>6.1}%",
            r.id, r.kernel, r.kernel, r.gflops, r.percent_of_peak
        );
    }
    let json = serde_json::json!({
        "cpu": resnet_core::plan::cpu_model_name(),
        "threads": rayon::current_num_threads(),
        "peaks_gflops": peaks.iter().map(|(k, p)| serde_json::json!({"kernel": k, "gflops": p})).collect::<Vec<_>>(),
        "shapes": rates.iter().map(|r| serde_json::json!({
            "id": r.id, "kernel": r.kernel, "gflops": r.gflops, "percent_of_peak": r.percent_of_peak,
        })).collect::<Vec<_>>(),
    });
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../criterion");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join("gemm-percent-of-peak.json"),
            serde_json::to_vec_pretty(&json).unwrap_or_default(),
        );
    }
}

criterion_group!(benches, gemm_shapes);
criterion_main!(benches);
