//! Every bf16 kernel x every epilogue x both outputs, against the f64 triple loop, over random
//! shapes with tails (M, N, K not multiples of any tile), C poisoned by NaN so that a kernel
//! leaving part of its tile unwritten, or writing past it, fails. The conversion is checked bit
//! for bit against its scalar twin and by hand.

use super::*;
use proptest::prelude::*;

/// Values in [-1, 1] from the seeded generator, rounded to bf16, so failures reproduce.
pub(crate) fn values(len: usize, seed: u64) -> Vec<Bf16> {
    crate::test_rng::Rng::new(seed)
        .signed_units(len)
        .into_iter()
        .map(Bf16::from_f32)
        .collect()
}

/// A GEMM problem and its check; `run` computes it with one kernel (packing B itself).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Problem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub bias: bool,
    pub residual: bool,
    pub relu: bool,
    pub bf16_out: bool,
    pub seed: u64,
}

/// Computes `C = epi(A·B)` for a row-major `A` (`m x k`, stride `lda`) and `B` (`k x n`).
pub(crate) type Runner<'r> =
    dyn Fn(&ASourceBf16<'_>, &[Bf16], (usize, usize), OutputBf16<'_>, &EpilogueBf16<'_>) + 'r;

impl Problem {
    /// Checks `run` against the f64 triple loop. Tolerance: the f32 recursive-summation bound
    /// `(K + 3) · eps · (Σ|a·b| + |bias| + |residual|)` (the kernels add in f32 in another order
    /// than f64), plus, for a bf16 output, half a bf16 ulp of the value (2^-8 relative).
    pub(crate) fn check(&self, what: &str, run: &Runner<'_>) {
        let Problem { m, n, k, seed, .. } = *self;
        let (lda, ldc, ldr) = (k + 3, n + 5, n + 1);
        let a = values(m * lda, seed);
        let b = values(k * n, seed + 1);
        let bias: Vec<f32> = values(n, seed + 2).iter().map(|v| v.to_f32()).collect();
        let res = values(m * ldr, seed + 3);
        let epi = EpilogueBf16 {
            bias: self.bias.then_some(&bias[..]),
            residual: self.residual.then_some((&res[..], ldr)),
            relu: self.relu,
            residual_frame: None,
        };
        let mut want = vec![f32::NAN; m * ldc];
        gemm_bf16_naive(m, n, k, &a, lda, &b, &mut want, ldc, &epi);
        let source = ASourceBf16::Matrix {
            data: &a,
            rows: m,
            lda,
        };
        let got: Vec<f32> = if self.bf16_out {
            let mut c = vec![Bf16(0x7FC0); m * ldc];
            run(
                &source,
                &b,
                (k, n),
                OutputBf16::Bf16 { c: &mut c, ldc },
                &epi,
            );
            c.iter().map(|v| v.to_f32()).collect()
        } else {
            let mut c = vec![f32::NAN; m * ldc];
            run(
                &source,
                &b,
                (k, n),
                OutputBf16::F32 { c: &mut c, ldc },
                &epi,
            );
            c
        };
        for i in 0..m {
            for j in 0..n {
                let terms: f32 = (0..k)
                    .map(|p| (a[i * lda + p].to_f32() * b[p * n + j].to_f32()).abs())
                    .sum::<f32>()
                    + if self.bias { bias[j].abs() } else { 0.0 }
                    + if self.residual {
                        res[i * ldr + j].to_f32().abs()
                    } else {
                        0.0
                    };
                let sum_tol = (k as f32 + 3.0) * f32::EPSILON * terms;
                let w = want[i * ldc + j];
                let tol = if self.bf16_out {
                    sum_tol + (w.abs() + sum_tol) / 256.0
                } else {
                    sum_tol
                };
                let g = got[i * ldc + j];
                assert!(
                    (g - w).abs() <= tol,
                    "{what} {self:?}: ({i}, {j}): got {g}, want {w}, tolerance {tol:e}"
                );
            }
            assert!(
                got[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()),
                "{what}: wrote past column n in row {i}"
            );
        }
    }
}

/// The runner for one kernel line through [`gemm_bf16`], with its default blocking.
fn line_runner(
    line: &'static Bf16Kernel,
) -> impl Fn(&ASourceBf16<'_>, &[Bf16], (usize, usize), OutputBf16<'_>, &EpilogueBf16<'_>) {
    line_runner_with(line, line.default_blocking())
}

/// The runner for one kernel line through [`gemm_bf16`], packed with `blocking` (a plan's).
fn line_runner_with(
    line: &'static Bf16Kernel,
    blocking: Blocking,
) -> impl Fn(&ASourceBf16<'_>, &[Bf16], (usize, usize), OutputBf16<'_>, &EpilogueBf16<'_>) {
    move |a, b, (k, n), out, epi| {
        gemm_bf16(
            a,
            &PackedBBf16::with_kernel(b, k, n, line, blocking),
            out,
            epi,
        )
    }
}

/// Every line of the bf16 table this machine can run, plus the AMX-BF16 kernel on the model of
/// the tile instructions (on every machine): what the battery exercises.
pub(crate) fn battery_kernels() -> Vec<&'static Bf16Kernel> {
    let mut lines = crate::registry::runnable(&KERNELS);
    lines.push(&AMX_MODEL_KERNEL);
    lines
}

/// Whether `RESNET_EXPECT_ISA` (set by tools/test.sh from /proc/cpuinfo, outside the code
/// under test) names `name`.
pub(crate) fn expected(name: &str) -> bool {
    std::env::var("RESNET_EXPECT_ISA")
        .map(|v| v.split(',').any(|n| n.trim() == name))
        .unwrap_or(false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn bf16_gemm_matches_naive(
        m in 1usize..70, n in 1usize..100, k in 1usize..900,
        bias: bool, residual: bool, relu: bool, bf16_out: bool, seed in 0u64..1000,
    ) {
        let p = Problem { m, n, k, bias, residual, relu, bf16_out, seed };
        for line in battery_kernels() {
            p.check(line.info.name, &line_runner(line));
        }
    }
}

/// Shapes of ResNet-18 itself: the 147-deep stem, 4608 (12 K blocks), the 49-pixel layer4;
/// with each line's default blocking and with blockings a plan may choose (K blocks of 64
/// and of all of K; work items of a few rows, of all rows, of one micro-panel of columns).
#[test]
fn bf16_resnet_shapes_match_naive() {
    for (m, n, k) in [
        (49, 512, 4608),
        (37, 64, 147),
        (196, 256, 128),
        (13, 32, 385),
    ] {
        for bf16_out in [false, true] {
            for line in battery_kernels() {
                let d = line.default_blocking();
                for blocking in [
                    d,
                    Blocking {
                        kc: 64,
                        mc: 40,
                        nc: 64,
                    },
                    Blocking {
                        kc: 4608,
                        mc: 512,
                        nc: 32,
                    },
                ] {
                    Problem {
                        m,
                        n,
                        k,
                        bias: true,
                        residual: true,
                        relu: true,
                        bf16_out,
                        seed: 7,
                    }
                    .check(
                        &format!("{} {blocking:?}", line.info.name),
                        &line_runner_with(line, blocking),
                    );
                }
            }
        }
    }
}

/// The implicit im2col packing equals the explicit im2col matrix, for strides and paddings.
#[test]
fn bf16_implicit_im2col_matches_explicit() {
    for g in [
        ConvGeometry {
            batch: 2,
            in_h: 9,
            in_w: 7,
            in_c: 3,
            kernel: 7,
            stride: 2,
            pad: 3,
        },
        ConvGeometry {
            batch: 1,
            in_h: 5,
            in_w: 11,
            in_c: 40,
            kernel: 3,
            stride: 1,
            pad: 1,
        },
    ] {
        let input = values(g.input_len(), 11);
        let n = 64;
        let b = values(g.k() * n, 12);
        let explicit = im2col_nhwc_bf16(&input, &g);
        for line in battery_kernels() {
            let packed = PackedBBf16::with_kernel(&b, g.k(), n, line, line.default_blocking());
            let mut via_matrix = vec![Bf16::ZERO; g.m() * n];
            let mut via_conv = vec![Bf16::ZERO; g.m() * n];
            let epi = EpilogueBf16::default();
            let a = ASourceBf16::Matrix {
                data: &explicit,
                rows: g.m(),
                lda: g.k(),
            };
            gemm_bf16(
                &a,
                &packed,
                OutputBf16::Bf16 {
                    c: &mut via_matrix,
                    ldc: n,
                },
                &epi,
            );
            let a = ASourceBf16::Conv {
                input: &input,
                geometry: g,
            };
            gemm_bf16(
                &a,
                &packed,
                OutputBf16::Bf16 {
                    c: &mut via_conv,
                    ldc: n,
                },
                &epi,
            );
            assert_eq!(via_matrix, via_conv, "{} {g:?}", line.info.name);
        }
    }
}

use crate::gemm::ConvGeometry;

/// Round to nearest even by hand: ties go to the even mantissa, carries reach the exponent and
/// infinity, NaN stays NaN, denormals become signed zeros (as `vcvtneps2bf16`).
#[test]
fn bf16_rounding_by_hand() {
    let r = |x: f32| Bf16::from_f32(x).to_f32();
    assert_eq!(r(1.0), 1.0);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.
    assert_eq!(r(1.0 + 1.0 / 256.0), 1.0);
    // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
    assert_eq!(r(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
    assert_eq!(r(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 1.0 + 1.0 / 128.0);
    assert_eq!(r(-1.0 - 3.0 / 256.0), -1.0 - 1.0 / 64.0);
    assert_eq!(r(f32::MAX), f32::INFINITY);
    assert_eq!(r(f32::INFINITY), f32::INFINITY);
    assert!(r(f32::NAN).is_nan());
    assert_eq!(Bf16::from_f32(1e-40).0, 0x0000);
    assert_eq!(Bf16::from_f32(-1e-40).0, 0x8000);
    assert_eq!(Bf16::from_f32(3.0).0, 0x4040);
}

/// The vectorised conversion equals the scalar twin bit for bit on 2^20 bit patterns spread over
/// every exponent (denormals, NaNs, infinities, ties).
#[test]
fn bf16_conversion_matches_scalar_twin() {
    let mut s = 0x1234_5678_9ABC_DEF1u64;
    let mut src: Vec<f32> = (0..1 << 20)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Every 4th a tie: low 16 bits exactly 0x8000.
            let bits = s as u32;
            f32::from_bits(if i % 4 == 0 {
                bits & 0xFFFF_0000 | 0x8000
            } else {
                bits
            })
        })
        .collect();
    src.extend([
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
    ]);
    src.push(3.0); // an odd tail length: the scalar tail runs too
    let mut got = vec![Bf16::ZERO; src.len()];
    f32_to_bf16(&src, &mut got);
    for (x, g) in src.iter().zip(&got) {
        assert_eq!(g.0, Bf16::from_f32(*x).0, "{x:e} ({:#010x})", x.to_bits());
    }
    if expected("avx512bf16") {
        assert!(
            Isa::Avx512Bf16.is_supported(),
            "RESNET_EXPECT_ISA names avx512bf16 but the conversion did not run vcvtneps2bf16"
        );
    }
}

/// The network input to NHWC bf16 equals the scalar scatter of the scalar twin's rounding, bit
/// for bit: three channels (the interleaving path where AVX512-BF16 runs, with its scalar tail
/// at 224 x 224 + 5 pixels, whose runs straddle images) and other channel counts (the generic
/// path); the values every bit pattern (NaNs, infinities, denormals, ties).
#[test]
fn bf16_input_layout_matches_the_scalar_scatter() {
    for (batch, c, hw) in [
        (3, 3, 224 * 224 + 5),
        (1, 3, 31),
        (2, 3, 64),
        (2, 1, 100),
        (2, 4, 77),
    ] {
        let mut r = crate::test_rng::Rng::new(c as u64 * 1000 + hw as u64);
        let input: Vec<f32> = (0..batch * c * hw)
            .map(|i| {
                let bits = r.next() as u32;
                f32::from_bits(if i % 5 == 0 {
                    bits & 0xFFFF_0000 | 0x8000
                } else {
                    bits
                })
            })
            .collect();
        let mut want = vec![Bf16::ZERO; input.len()];
        for n in 0..batch {
            for ch in 0..c {
                for p in 0..hw {
                    want[(n * hw + p) * c + ch] = Bf16::from_f32(input[(n * c + ch) * hw + p]);
                }
            }
        }
        let mut got = vec![Bf16(0x5A5A); input.len()];
        nchw_to_nhwc_bf16(&input, batch, c, hw, &mut got);
        let first_bad = want.iter().zip(&got).position(|(w, g)| w.0 != g.0);
        assert_eq!(first_bad, None, "batch {batch}, {c} channels, {hw} pixels");
    }
}

/// Max-pooling bf16 follows the numeric order, negatives included.
#[test]
fn bf16_max_pool_order() {
    use crate::pool::PoolValue;
    let v = [-3.0f32, -0.5, -0.0, 0.0, 0.25, 7.0];
    for &x in &v {
        for &y in &v {
            let got = Bf16::from_f32(x).max_of(Bf16::from_f32(y)).to_f32();
            assert_eq!(got, x.max(y), "max({x}, {y})");
        }
    }
    let low = Bf16::from_f32(-1e30);
    let lowest = Bf16::LOWEST_KEY.value_of_key();
    assert_eq!(lowest, Bf16::NEG_INFINITY);
    assert_eq!(lowest.max_of(low), low);
    assert_eq!(low.max_of(lowest), low);
    assert_eq!(Bf16::LOWEST_KEY.max_key(low.to_key()), low.to_key());
}

/// Where the CPU has AVX512-BF16 (`RESNET_EXPECT_ISA`, from /proc/cpuinfo), its kernel must be
/// among those the battery ran: no silently skipped path.
#[test]
fn bf16_no_expected_kernel_is_skipped() {
    let names: Vec<_> = battery_kernels().iter().map(|k| k.info.name).collect();
    assert!(names.contains(&"portable_bf16_4x16"));
    assert!(names.contains(&"amxmodel_bf16_f32_32x32"));
    for (flag, kernel) in [
        ("avx512bf16", "avx512bf16_f32_12x32"),
        ("amxbf16", "amx_bf16_f32_32x32"),
    ] {
        if expected(flag) {
            assert!(
                names.contains(&kernel),
                "RESNET_EXPECT_ISA names {flag} but the battery ran only {names:?}"
            );
        }
    }
}

/// Every line the battery runs has a throughput probe that runs on this CPU (a probe needing
/// an instruction its line does not would kill the process with SIGILL here) and does work.
#[test]
fn bf16_peak_probes_run_on_every_runnable_line() {
    for kernel in battery_kernels() {
        let macs = kernel.run_peak_probe(1_000);
        assert!(
            macs.is_some_and(|m| m > 0.0),
            "{}: {macs:?}",
            kernel.info.name
        );
    }
}

/// The AMX lines' in-place convolution ([`conv_bf16_in_place`]) against their im2col path
/// ([`gemm_bf16`] on [`ASourceBf16::Conv`]), bit for bit (same tiles, same instructions, same
/// order), for both outputs and every epilogue option: 3x3 and 1x1 convolutions of stride 1, 2 and 3 with
/// and without padding, 64-256 channels, batches of 1-3, widths that are and are not multiples
/// of the tiles, N with and without an edge panel, K in one block or two (256 channels x 9 =
/// 2304 > the AMX K block of 1152). The model line runs everywhere; the hardware line where
/// AMX is granted.
#[test]
fn amx_direct_convolution_equals_the_im2col_path() {
    // The AMX lines: the model everywhere, the hardware where AMX is granted.
    let lines: Vec<_> = battery_kernels()
        .into_iter()
        .filter(|k| k.reads_in_place())
        .collect();
    let cases = [
        // (batch, in_h, in_w, in_c, kernel, stride, pad, n)
        (1, 7, 7, 64, 3, 1, 1, 64),
        (2, 5, 9, 128, 3, 1, 1, 40),
        (3, 4, 4, 64, 1, 1, 0, 32),
        (1, 3, 5, 256, 3, 1, 1, 32),
        (2, 3, 6, 64, 3, 1, 0, 32),
        // Stride 2 (the rows split by parity): 3x3 with padding (layer2.0.conv1), 1x1
        // without (the downsamples: only the even rows are copied), odd sizes, and stride 3.
        (1, 8, 8, 64, 3, 2, 1, 64),
        (2, 7, 9, 64, 1, 2, 0, 40),
        (1, 9, 7, 128, 3, 2, 1, 32),
        (2, 7, 6, 64, 3, 3, 1, 32),
    ];
    for (seed, (batch, in_h, in_w, in_c, kernel, stride, pad, n)) in cases.into_iter().enumerate() {
        let g = ConvGeometry {
            batch,
            in_h,
            in_w,
            in_c,
            kernel,
            stride,
            pad,
        };
        let seed = 900 + 10 * seed as u64;
        let input = values(g.input_len(), seed);
        let b = values(g.k() * n, seed + 1);
        let m = g.m();
        let bias: Vec<f32> = values(n, seed + 2).iter().map(|v| v.to_f32()).collect();
        let res = values(m * n, seed + 3);
        for line in &lines {
            let packed = PackedBBf16::with_kernel(&b, g.k(), n, line, line.default_blocking());
            assert!(
                in_place_applies(&g, &packed, InPlaceLayout::Padded),
                "{g:?}"
            );
            for (residual, relu) in [(false, true), (true, true), (true, false)] {
                let epi = EpilogueBf16 {
                    bias: Some(&bias),
                    residual: residual.then_some((&res[..], n)),
                    relu,
                    residual_frame: None,
                };
                let source = ASourceBf16::Conv {
                    input: &input,
                    geometry: g,
                };
                let what = format!(
                    "{} {g:?} n {n} residual {residual} relu {relu}",
                    line.info.name
                );
                let mut im2col = vec![Bf16(0x7FC0); m * n];
                gemm_bf16(
                    &source,
                    &packed,
                    OutputBf16::Bf16 {
                        c: &mut im2col,
                        ldc: n,
                    },
                    &epi,
                );
                let mut direct = vec![Bf16(0x7FC1); m * n];
                conv_bf16_in_place(
                    &input,
                    &g,
                    &packed,
                    OutputBf16::Bf16 {
                        c: &mut direct,
                        ldc: n,
                    },
                    &epi,
                    InPlaceLayout::Padded,
                );
                assert!(
                    direct == im2col,
                    "{what}: first difference at {:?}",
                    direct.iter().zip(&im2col).position(|(a, b)| a != b)
                );
                let mut im2col = vec![f32::NAN; m * n];
                gemm_bf16(
                    &source,
                    &packed,
                    OutputBf16::F32 {
                        c: &mut im2col,
                        ldc: n,
                    },
                    &epi,
                );
                let mut direct = vec![-f32::NAN; m * n];
                conv_bf16_in_place(
                    &input,
                    &g,
                    &packed,
                    OutputBf16::F32 {
                        c: &mut direct,
                        ldc: n,
                    },
                    &epi,
                    InPlaceLayout::Padded,
                );
                assert!(
                    direct
                        .iter()
                        .zip(&im2col)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what} (f32 out): first difference at {:?}",
                    direct
                        .iter()
                        .zip(&im2col)
                        .position(|(a, b)| a.to_bits() != b.to_bits())
                );
            }
        }
    }
}

/// A [`Frame`] in and out: the in-place path reading its input from a framed buffer
/// ([`InPlaceLayout::Framed`]), its residual from another (`residual_frame`) and writing its
/// output into a third ([`OutputBf16::Framed`]) gives
/// the im2col path's values bit for bit, each pixel where [`Frame::row`] puts it, and leaves
/// zeros in the frame and the slack (both buffers start as NaN, so a pixel left unwritten or a
/// frame left unzeroed fails). Stride-1 shapes with padding 1 and 0, batches 1-2, N with an
/// edge panel, K in one block or two. The model line everywhere, the hardware where granted.
#[test]
fn framed_input_and_output_equal_the_dense_path() {
    let lines: Vec<_> = battery_kernels()
        .into_iter()
        .filter(|k| k.reads_in_place())
        .collect();
    let cases = [
        // (batch, in_h, in_w, in_c, pad, n)
        (1, 7, 7, 64, 1, 64),
        (2, 5, 9, 128, 1, 40),
        (2, 3, 6, 64, 0, 32),
        (1, 3, 5, 256, 1, 32),
    ];
    for (seed, (batch, in_h, in_w, in_c, pad, n)) in cases.into_iter().enumerate() {
        let g = ConvGeometry {
            batch,
            in_h,
            in_w,
            in_c,
            kernel: 3,
            stride: 1,
            pad,
        };
        let seed = 1300 + 10 * seed as u64;
        let input = values(g.input_len(), seed);
        let b = values(g.k() * n, seed + 1);
        let bias: Vec<f32> = values(n, seed + 2).iter().map(|v| v.to_f32()).collect();
        let res = values(g.m() * n, seed + 3);
        let epi = EpilogueBf16 {
            bias: Some(&bias),
            residual: Some((&res[..], n)),
            relu: true,
            residual_frame: None,
        };
        // The input framed by hand: zeros around each image, then the slack.
        let in_frame = Frame::for_input(&g).expect("stride 1");
        let mut framed_input = vec![Bf16(0x7FC0); in_frame.len()];
        in_frame.clear(&mut framed_input, Bf16::ZERO);
        for (r, pixel) in input.chunks_exact(in_c).enumerate() {
            framed_input[in_frame.row(r) * in_c..][..in_c].copy_from_slice(pixel);
        }
        // The output framed for a 3x3 padding-1 layer after this one.
        let out_frame = Frame {
            batch,
            h: g.out_h(),
            w: g.out_w(),
            ch: n,
            pad: 1,
            kernel: 3,
        };
        for line in &lines {
            let packed = PackedBBf16::with_kernel(&b, g.k(), n, line, line.default_blocking());
            let what = format!("{} {g:?} n {n}", line.info.name);
            let mut dense = vec![Bf16(0x7FC1); g.m() * n];
            let source = ASourceBf16::Conv {
                input: &input,
                geometry: g,
            };
            gemm_bf16(
                &source,
                &packed,
                OutputBf16::Bf16 {
                    c: &mut dense,
                    ldc: n,
                },
                &epi,
            );
            let mut framed = vec![Bf16(0x7FC2); out_frame.len()];
            assert!(
                in_place_applies(&g, &packed, InPlaceLayout::Framed),
                "{what}"
            );
            conv_bf16_in_place(
                &framed_input,
                &g,
                &packed,
                OutputBf16::Framed {
                    c: &mut framed,
                    frame: out_frame,
                },
                &epi,
                InPlaceLayout::Framed,
            );
            let mut expected = vec![Bf16::ZERO; out_frame.len()];
            for (r, pixel) in dense.chunks_exact(n).enumerate() {
                expected[out_frame.row(r) * n..][..n].copy_from_slice(pixel);
            }
            assert!(
                framed.iter().map(|v| v.0).eq(expected.iter().map(|v| v.0)),
                "{what}: first difference at {:?}",
                framed.iter().zip(&expected).position(|(a, b)| a.0 != b.0)
            );
            // The residual read from a frame too (NaN in its frame: a row read from the
            // wrong place fails).
            let mut framed_res = vec![Bf16(0x7FC3); out_frame.len()];
            for (r, pixel) in res.chunks_exact(n).enumerate() {
                framed_res[out_frame.row(r) * n..][..n].copy_from_slice(pixel);
            }
            let epi_framed = EpilogueBf16 {
                residual: Some((&framed_res[..], n)),
                residual_frame: Some(out_frame),
                ..epi
            };
            let mut framed = vec![Bf16(0x7FC2); out_frame.len()];
            conv_bf16_in_place(
                &framed_input,
                &g,
                &packed,
                OutputBf16::Framed {
                    c: &mut framed,
                    frame: out_frame,
                },
                &epi_framed,
                InPlaceLayout::Framed,
            );
            assert!(
                framed.iter().map(|v| v.0).eq(expected.iter().map(|v| v.0)),
                "{what} (framed residual): first difference at {:?}",
                framed.iter().zip(&expected).position(|(a, b)| a.0 != b.0)
            );
        }
    }
}

/// The packed path refuses a framed output (its tiles run across output rows).
#[test]
#[should_panic(
    expected = "a framed output or residual is read and written by the in-place path only"
)]
fn the_packed_path_refuses_a_framed_output() {
    let g = ConvGeometry {
        batch: 1,
        in_h: 4,
        in_w: 4,
        in_c: 32,
        kernel: 3,
        stride: 1,
        pad: 1,
    };
    let line = &KERNELS[0];
    let packed = PackedBBf16::with_kernel(
        &vec![Bf16::ZERO; g.k() * 32],
        g.k(),
        32,
        line,
        line.default_blocking(),
    );
    let frame = Frame::for_input(&ConvGeometry { in_c: 32, ..g }).expect("stride 1");
    let mut c = vec![Bf16::ZERO; frame.len()];
    let input = vec![Bf16::ZERO; g.input_len()];
    gemm_bf16(
        &ASourceBf16::Conv {
            input: &input,
            geometry: g,
        },
        &packed,
        OutputBf16::Framed { c: &mut c, frame },
        &EpilogueBf16::default(),
    );
}

/// Where the in-place path does not apply: channels that are not whole tile rows
/// (32 bf16), and lines that pack A (every non-AMX line).
#[test]
fn in_place_applies_only_to_whole_tile_rows_on_amx_lines() {
    let g = |in_c, stride| ConvGeometry {
        batch: 1,
        in_h: 8,
        in_w: 8,
        in_c,
        kernel: 3,
        stride,
        pad: 1,
    };
    let gemm = |g: &ConvGeometry, line: &'static Bf16Kernel| {
        PackedBBf16::with_kernel(
            &vec![Bf16::ZERO; g.k() * 32],
            g.k(),
            32,
            line,
            line.default_blocking(),
        )
    };
    let windows = |g: &ConvGeometry, line: &'static Bf16Kernel| {
        let zeros = vec![Bf16::ZERO; g.k() * 32];
        pack_window_rows(&zeros, 3, g.in_c, 32, line, line.default_blocking())
    };
    type Packer = dyn Fn(&ConvGeometry, &'static Bf16Kernel) -> PackedBBf16;
    let (model, scalar) = (&AMX_MODEL_KERNEL, &KERNELS[0]);
    let (padded, rows) = (InPlaceLayout::Padded, InPlaceLayout::WindowRows);
    // (in_c, stride, packing, line, layout, applies). Window rows: 3 x 10 bf16 fit a 32-value
    // tile row, 3 x 11 do not; B must be packed for the layout.
    let cases: [(
        usize,
        usize,
        &Packer,
        &'static Bf16Kernel,
        InPlaceLayout,
        bool,
    ); 8] = [
        (32, 1, &gemm, model, padded, true),
        (64, 2, &gemm, model, padded, true),
        (48, 1, &gemm, model, padded, false),
        (64, 1, &gemm, scalar, padded, false),
        (10, 2, &windows, model, rows, true),
        (11, 2, &gemm, model, rows, false),
        (10, 2, &gemm, model, rows, false),
        (10, 2, &windows, scalar, rows, false),
    ];
    for (in_c, stride, pack, line, layout, applies) in cases {
        let g = g(in_c, stride);
        assert_eq!(
            in_place_applies(&g, &pack(&g, line), layout),
            applies,
            "{} {layout:?} in_c {in_c} stride {stride}",
            line.info.name
        );
    }
}

/// The window-rows layout (the stem's: [`InPlaceLayout::WindowRows`]) against the im2col path
/// with the weights packed as usual. Not bit-identical: the tile steps group the products by
/// kernel row (21 values and 11 zero weights) instead of by 32 consecutive values of K, so the
/// f32 sums are added in another order. Tolerance: twice the f32 summation bound
/// `(K' + 3) · eps · (Σ|a·b| + |bias| + |residual|)` (each path within one bound of the exact
/// sum), plus, for the bf16 output, one bf16 ulp (2^-8 relative: the two sums may round to
/// neighbouring values).
#[test]
fn amx_window_rows_convolution_agrees_with_the_im2col_path() {
    // The AMX lines: the model everywhere, the hardware where AMX is granted.
    let lines: Vec<_> = battery_kernels()
        .into_iter()
        .filter(|k| k.reads_in_place())
        .collect();
    let cases = [
        // (batch, in_h, in_w, in_c, kernel, stride, pad, n)
        (2, 11, 13, 3, 7, 2, 3, 64),
        (1, 9, 9, 3, 7, 2, 3, 40),
        (1, 6, 7, 8, 3, 1, 1, 32),
    ];
    for (seed, (batch, in_h, in_w, in_c, kernel, stride, pad, n)) in cases.into_iter().enumerate() {
        let g = ConvGeometry {
            batch,
            in_h,
            in_w,
            in_c,
            kernel,
            stride,
            pad,
        };
        let seed = 700 + 10 * seed as u64;
        let input = values(g.input_len(), seed);
        let b = values(g.k() * n, seed + 1);
        let m = g.m();
        let bias: Vec<f32> = values(n, seed + 2).iter().map(|v| v.to_f32()).collect();
        let res = values(m * n, seed + 3);
        // Σ|a·b| per output: the naive loop on magnitudes.
        let abs = |v: &[Bf16]| v.iter().map(|x| Bf16(x.0 & 0x7FFF)).collect::<Vec<_>>();
        let a_abs = im2col_nhwc_bf16(&abs(&input), &g);
        let mut magnitude = vec![0.0f32; m * n];
        let none = EpilogueBf16 {
            bias: None,
            residual: None,
            relu: false,
            residual_frame: None,
        };
        gemm_bf16_naive(
            m,
            n,
            g.k(),
            &a_abs,
            g.k(),
            &abs(&b),
            &mut magnitude,
            n,
            &none,
        );
        let k_tiles = kernel * 32;
        for line in &lines {
            let packed = PackedBBf16::with_kernel(&b, g.k(), n, line, line.default_blocking());
            let windows = pack_window_rows(&b, kernel, in_c, n, line, line.default_blocking());
            assert!(in_place_applies(&g, &windows, InPlaceLayout::WindowRows));
            for (residual, relu) in [(false, true), (true, false)] {
                let epi = EpilogueBf16 {
                    bias: Some(&bias),
                    residual: residual.then_some((&res[..], n)),
                    relu,
                    residual_frame: None,
                };
                let source = ASourceBf16::Conv {
                    input: &input,
                    geometry: g,
                };
                let tolerance = |i: usize| {
                    let r = if residual { res[i].to_f32().abs() } else { 0.0 };
                    2.0 * (k_tiles + 3) as f32
                        * f32::EPSILON
                        * (magnitude[i] + bias[i % n].abs() + r)
                };
                let mut want = vec![f32::NAN; m * n];
                gemm_bf16(
                    &source,
                    &packed,
                    OutputBf16::F32 {
                        c: &mut want,
                        ldc: n,
                    },
                    &epi,
                );
                let mut got = vec![f32::NAN; m * n];
                let out = OutputBf16::F32 {
                    c: &mut got,
                    ldc: n,
                };
                conv_bf16_in_place(&input, &g, &windows, out, &epi, InPlaceLayout::WindowRows);
                let mut got16 = vec![Bf16(0x7FC0); m * n];
                let out = OutputBf16::Bf16 {
                    c: &mut got16,
                    ldc: n,
                };
                conv_bf16_in_place(&input, &g, &windows, out, &epi, InPlaceLayout::WindowRows);
                for i in 0..m * n {
                    let what = format!(
                        "{} {g:?} n {n} residual {residual} element {i}",
                        line.info.name
                    );
                    assert!(
                        (got[i] - want[i]).abs() <= tolerance(i),
                        "{what}: {} vs {} (tolerance {})",
                        got[i],
                        want[i],
                        tolerance(i)
                    );
                    let g16 = got16[i].to_f32();
                    assert!(
                        (g16 - want[i]).abs() <= tolerance(i) + want[i].abs() / 256.0,
                        "{what} (bf16 out): {g16} vs {}",
                        want[i]
                    );
                }
            }
        }
    }
}

/// The stem's window rows read in place from a finite input (tile rows that run past each
/// window into the next pixels, which meet zero weights) against the written windows, which
/// an input holding an infinity takes: bit for bit on every output whose window misses the
/// infinity (zero products of finite values add exact zeros), and not finite on those whose
/// window holds it. Read in place, the infinity would also reach the outputs beside it
/// (infinity x 0 = NaN).
#[test]
fn amx_stem_rows_read_in_place_match_the_written_windows() {
    let lines: Vec<_> = battery_kernels()
        .into_iter()
        .filter(|k| k.reads_in_place())
        .collect();
    let g = ConvGeometry {
        batch: 2,
        in_h: 11,
        in_w: 13,
        in_c: 3,
        kernel: 7,
        stride: 2,
        pad: 3,
    };
    let n = 64;
    let input = values(g.input_len(), 901);
    let b = values(g.k() * n, 902);
    let bias: Vec<f32> = values(n, 903).iter().map(|v| v.to_f32()).collect();
    let epi = EpilogueBf16 {
        bias: Some(&bias),
        residual: None,
        relu: false,
        residual_frame: None,
    };
    // One infinity in image 1 at (y, x) = (5, 6).
    let (image, y, x) = (1, 5, 6);
    let mut with_inf = input.clone();
    with_inf[((image * g.in_h + y) * g.in_w + x) * g.in_c + 1] = Bf16(0x7F80);
    let (ho, wo) = (g.out_h(), g.out_w());
    let covers =
        |o: usize, p: usize| (o * g.stride..o * g.stride + g.kernel).contains(&(p + g.pad));
    for line in &lines {
        let windows = pack_window_rows(&b, g.kernel, g.in_c, n, line, line.default_blocking());
        let run = |input: &[Bf16]| {
            let mut c = vec![f32::NAN; g.m() * n];
            let out = OutputBf16::F32 { c: &mut c, ldc: n };
            conv_bf16_in_place(input, &g, &windows, out, &epi, InPlaceLayout::WindowRows);
            c
        };
        let (in_place, written) = (run(&input), run(&with_inf));
        for (row, (a, w)) in in_place.chunks(n).zip(written.chunks(n)).enumerate() {
            let (img, oy, ox) = (row / (ho * wo), row / wo % ho, row % wo);
            let hit = img == image && covers(oy, y) && covers(ox, x);
            for j in 0..n {
                let what = format!(
                    "{} row {row} (image {img}, {oy}, {ox}) column {j}",
                    line.info.name
                );
                assert!(a[j].is_finite(), "{what}: {} from a finite input", a[j]);
                if hit {
                    assert!(
                        !w[j].is_finite(),
                        "{what}: {} with the infinity in its window",
                        w[j]
                    );
                } else {
                    assert_eq!(
                        a[j].to_bits(),
                        w[j].to_bits(),
                        "{what}: {} vs {}",
                        a[j],
                        w[j]
                    );
                }
            }
        }
    }
}

/// The stem's input made straight from NCHW f32 images ([`window_rows_input_bf16`], read as
/// [`InPlaceLayout::StridedRows`]) against the NHWC conversion read as
/// [`InPlaceLayout::WindowRows`]: the same outputs bit for bit, with a buffer left dirty by
/// earlier use (every value the tiles read is written); and an input value that rounds to an
/// infinity or is a NaN is refused. Widths past 32 pixels take the interleave's vector path
/// and its tail.
#[test]
fn amx_stem_input_from_nchw_matches_the_converted_input() {
    let lines: Vec<_> = battery_kernels()
        .into_iter()
        .filter(|k| k.reads_in_place())
        .collect();
    let n = 64;
    for (seed, (batch, in_h, in_w)) in [(2, 11, 13), (1, 9, 45), (3, 8, 70)]
        .into_iter()
        .enumerate()
    {
        let g = ConvGeometry {
            batch,
            in_h,
            in_w,
            in_c: 3,
            kernel: 7,
            stride: 2,
            pad: 3,
        };
        let seed = 950 + 10 * seed as u64;
        // f32 values that are not all bf16 values: the conversion rounds them.
        let nchw: Vec<f32> = values(g.input_len(), seed)
            .iter()
            .enumerate()
            .map(|(i, v)| v.to_f32() * (1.0 + (i % 7) as f32 / 1024.0))
            .collect();
        let mut nhwc = vec![Bf16::ZERO; nchw.len()];
        nchw_to_nhwc_bf16(&nchw, batch, 3, in_h * in_w, &mut nhwc);
        let b = values(g.k() * n, seed + 1);
        let bias: Vec<f32> = values(n, seed + 2).iter().map(|v| v.to_f32()).collect();
        let epi = EpilogueBf16 {
            bias: Some(&bias),
            residual: None,
            relu: true,
            residual_frame: None,
        };
        for line in &lines {
            let windows = pack_window_rows(&b, g.kernel, g.in_c, n, line, line.default_blocking());
            assert!(in_place_applies(&g, &windows, InPlaceLayout::StridedRows));
            let run = |input: &[Bf16], layout: InPlaceLayout| {
                let mut c = vec![f32::NAN; g.m() * n];
                let out = OutputBf16::F32 { c: &mut c, ldc: n };
                conv_bf16_in_place(input, &g, &windows, out, &epi, layout);
                c
            };
            let want = run(&nhwc, InPlaceLayout::WindowRows);
            let mut prepared = AlignedVec::new();
            prepared.resize(4 * g.input_len() + 4096, Bf16(0x7FC0));
            assert!(window_rows_input_bf16(&nchw, &g, &mut prepared));
            let got = run(&prepared, InPlaceLayout::StridedRows);
            for (i, (w, o)) in want.iter().zip(&got).enumerate() {
                assert_eq!(
                    w.to_bits(),
                    o.to_bits(),
                    "{} {g:?} element {i}: {w} vs {o}",
                    line.info.name
                );
            }
        }
        // f32::MAX rounds to bf16's infinity; a NaN stays one.
        for bad in [f32::MAX, f32::NAN, f32::NEG_INFINITY] {
            let mut input = nchw.clone();
            input[nchw.len() / 2] = bad;
            let mut prepared = AlignedVec::new();
            assert!(
                !window_rows_input_bf16(&input, &g, &mut prepared),
                "{bad} accepted"
            );
        }
    }
}
