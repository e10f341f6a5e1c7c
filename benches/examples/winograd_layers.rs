//! Winograd F(4x4, 3x3) against the direct implicit-im2col GEMM on each distinct 3x3 stride-1
//! shape of ResNet-18, side by side in one run (median of 50 each).
//!
//! `cargo run --release -p resnet-benches --example winograd_layers [BATCH]`
use resnet_kernels::cpu::Isa;
use resnet_kernels::gemm::{sgemm_packed, ASource, ConvGeometry, Epilogue, PackedB};
use resnet_kernels::winograd::{conv3x3_winograd, Conv3x3Shape, WinogradScratch, WinogradWeights};
use std::time::Instant;

fn median_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut v: Vec<f64> = (0..50)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let isa = Isa::from_env_or_best().unwrap();
    println!("batch {batch}, isa {isa}: median ms per convolution");
    println!(
        "{:<14} {:>9} {:>9} {:>7}",
        "HxWxC->K", "direct", "winograd", "ratio"
    );
    for (hw, c) in [(56, 64), (28, 128), (14, 256), (7, 512)] {
        let input: Vec<f32> = (0..batch * hw * hw * c)
            .map(|i| (i % 13) as f32 * 0.1 - 0.6)
            .collect();
        let w: Vec<f32> = (0..c * c * 9)
            .map(|i| (i % 7) as f32 * 0.01 - 0.03)
            .collect();
        let bias = vec![0.1f32; c];
        let epi = Epilogue {
            bias: Some(&bias),
            residual: None,
            relu: true,
        };
        let geometry = ConvGeometry {
            batch,
            in_h: hw,
            in_w: hw,
            in_c: c,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let packed = PackedB::new(&w, 9 * c, c, isa); // values do not matter for timing
        let mut out = vec![0.0f32; batch * hw * hw * c];
        let direct = median_ms(|| {
            sgemm_packed(
                &ASource::Conv {
                    input: &input,
                    geometry,
                    pad: 0.0,
                },
                &packed,
                &mut out,
                c,
                &epi,
            )
        });
        let ww = WinogradWeights::new(&w, c, c, isa);
        let mut scratch = WinogradScratch::default();
        let shape = Conv3x3Shape {
            batch,
            h: hw,
            w: hw,
        };
        let wino = median_ms(|| conv3x3_winograd(&input, shape, &ww, &epi, &mut out, &mut scratch));
        println!(
            "{:<14} {direct:>9.3} {wino:>9.3} {:>6.2}x",
            format!("{hw}x{hw}x{c}->{c}"),
            direct / wino
        );
    }
}
