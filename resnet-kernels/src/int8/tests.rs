//! Every registered INT8 kernel this CPU runs (the registry's table: a kernel is tested by being
//! registered) x both outputs (raw `i32`, requantised `u8` with every epilogue option) x a few
//! blockings, against the naive triple loop and the scalar epilogue, over
//! random shapes with tails (M, N, K not multiples of any tile; K over several KC blocks).
//! Integer results must be **equal**, not close: the accumulation is exact and the epilogue
//! performs the same f32 operations in the same order in every kernel. Outputs are poisoned
//! with two different fill bytes so that an unwritten element or a write outside the tile fails.

use super::*;
use crate::gemm::ConvGeometry;
use proptest::prelude::*;

/// Every line of the INT8 table this machine can run, plus the AMX-INT8 kernel on the model of
/// the tile instructions (on every machine): what the battery exercises.
pub(crate) fn runnable_kernels() -> Vec<&'static Int8Kernel> {
    let mut lines = crate::registry::runnable(&KERNELS);
    lines.push(&AMX_MODEL_KERNEL);
    lines
}

/// Blockings a plan may pick, beside the default: small ones make every loop take many trips
/// (kc 36 is rounded down to a multiple of 4 already).
const BLOCKINGS: [Blocking; 3] = [
    blocking::DEFAULT,
    Blocking {
        kc: 36,
        mc: 13,
        nc: 40,
    },
    Blocking {
        kc: 1536,
        mc: 400,
        nc: 64,
    },
];

use crate::test_rng::Rng;

#[derive(Debug, Clone, Copy)]
struct Problem {
    m: usize,
    n: usize,
    k: usize,
    residual: bool,
    relu: bool,
    zero_point: u8,
    seed: u64,
}

impl Problem {
    fn run(&self, kernel: &'static Int8Kernel, blocking: Blocking) {
        let isa = kernel.info.name;
        let Problem { m, n, k, seed, .. } = *self;
        let (lda, ldc, ldr) = (k + 3, n + 5, n + 1);
        let mut rng = Rng::new(seed);
        let a = rng.bytes(m * lda);
        let b = rng.weights(k * n);
        let mut want = vec![0i32; m * n];
        gemm_u8s8_naive(m, n, k, &a, lda, &b, &mut want, n);
        let packed = PackedB8::with_kernel(&b, k, n, kernel, blocking);
        let source = ASource8::Matrix {
            data: &a,
            rows: m,
            lda,
        };

        // Raw i32 accumulators.
        for poison in [i32::MIN, 0x5A5A_5A5A] {
            let mut got = vec![poison; m * ldc];
            gemm_u8s8(&source, &packed, Output8::I32 { c: &mut got, ldc });
            for i in 0..m {
                assert_eq!(
                    &got[i * ldc..i * ldc + n],
                    &want[i * n..(i + 1) * n],
                    "{isa} {self:?}: i32 row {i}"
                );
                assert!(
                    got[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == poison),
                    "{isa}: wrote past column n in row {i}"
                );
            }
        }

        // Requantised u8. Scales put typical accumulators over the whole u8 range.
        let bias: Vec<i32> = (0..n).map(|_| (rng.next() >> 48) as i32 - 32768).collect();
        let typical = (k as f32).sqrt() * 128.0 * 40.0 + 1.0;
        let scale: Vec<f32> = (0..n)
            .map(|_| (0.5 + rng.unit()) * 255.0 / typical)
            .collect();
        let res = rng.bytes(m * ldr);
        let requant = Requant {
            bias: &bias,
            scale: &scale,
            residual: self.residual.then_some(Residual8 {
                data: &res,
                ld: ldr,
                zero_point: 77,
                scale: 0.73,
                frame: None,
            }),
            zero_point: self.zero_point,
            relu: self.relu,
        };
        for poison in [0x5Au8, 0xA5] {
            let mut got = vec![poison; m * ldc];
            gemm_u8s8(
                &source,
                &packed,
                Output8::U8 {
                    c: &mut got,
                    ldc,
                    requant,
                },
            );
            for i in 0..m {
                for j in 0..n {
                    let r = self.residual.then(|| res[i * ldr + j]);
                    let expect = requantize_scalar(want[i * n + j], j, r, &requant);
                    assert_eq!(
                        got[i * ldc + j],
                        expect,
                        "{isa} {self:?}: u8 ({i}, {j}), acc {}",
                        want[i * n + j]
                    );
                }
                assert!(
                    got[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == poison),
                    "{isa}: u8 wrote past column n in row {i}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn int8_gemm_matches_naive(
        m in 1usize..60, n in 1usize..90, k in 1usize..1700,
        residual: bool, relu: bool, zero_point in prop_oneof![Just(0u8), any::<u8>()],
        seed in 0u64..1000, blocking in 0usize..3,
    ) {
        let p = Problem { m, n, k, residual, relu, zero_point, seed };
        for kernel in runnable_kernels() {
            p.run(kernel, BLOCKINGS[blocking]);
        }
    }
}

/// ResNet-18's own GEMM shapes (the 49-pixel layer4 tail, K over several blocks, the stem's
/// K = 147 that is not a multiple of 4), pinned.
#[test]
fn int8_resnet_shapes_match_naive() {
    for (m, n, k) in [
        (49, 512, 4608),
        (49, 64, 147),
        (25, 128, 1152),
        (13, 64, 576),
    ] {
        for (kernel, blocking) in runnable_kernels()
            .into_iter()
            .flat_map(|k| BLOCKINGS.iter().map(move |b| (k, b)))
        {
            Problem {
                m,
                n,
                k,
                residual: true,
                relu: true,
                zero_point: 0,
                seed: 3,
            }
            .run(kernel, *blocking);
        }
    }
}

/// The saturation boundary of `vpmaddubsw`: all activations 255 against the extreme weights
/// `-128` and `127` (a plain `vpmaddubsw` would saturate: `2 · 255 · 127 > 32767`) stay exact on
/// every kernel, the split-weight ones included, and so does a mix of both in one pair.
#[test]
fn int8_extreme_values_are_exact() {
    let (m, n, k) = (13, 40, 300);
    let a = vec![255u8; m * k];
    for kernel in runnable_kernels() {
        let isa = kernel.info.name;
        for w in [-128i8, 127, -127, 1, -1] {
            let b = vec![w; k * n];
            let packed = PackedB8::with_kernel(&b, k, n, kernel, blocking::DEFAULT);
            let mut got = vec![0i32; m * n];
            gemm_u8s8(
                &ASource8::Matrix {
                    data: &a,
                    rows: m,
                    lda: k,
                },
                &packed,
                Output8::I32 {
                    c: &mut got,
                    ldc: n,
                },
            );
            assert!(
                got.iter().all(|&v| v == 255 * w as i32 * k as i32),
                "{isa}: w = {w}"
            );
        }
        // Alternating 127 / -128 along K.
        let b: Vec<i8> = (0..k * n)
            .map(|i| if (i / n) % 2 == 0 { 127 } else { -128 })
            .collect();
        let packed = PackedB8::with_kernel(&b, k, n, kernel, blocking::DEFAULT);
        let mut got = vec![0i32; m * n];
        gemm_u8s8(
            &ASource8::Matrix {
                data: &a,
                rows: m,
                lda: k,
            },
            &packed,
            Output8::I32 {
                c: &mut got,
                ldc: n,
            },
        );
        assert!(
            got.iter().all(|&v| v == 255 * (150 * 127 - 150 * 128)),
            "{isa}: mixed"
        );
    }
}

/// The column-sum correction: with activations `q` of zero point `z`, `A·B − z·colsum` equals
/// `Σ (q − z)·w` computed directly.
#[test]
fn int8_column_sum_correction() {
    let (m, n, k, z) = (7, 33, 147, 119i32);
    let mut rng = Rng::new(5);
    let a = rng.bytes(m * k);
    for kernel in runnable_kernels() {
        let isa = kernel.info.name;
        let b = rng.weights(k * n);
        let packed = PackedB8::with_kernel(&b, k, n, kernel, blocking::DEFAULT);
        let mut got = vec![0i32; m * n];
        gemm_u8s8(
            &ASource8::Matrix {
                data: &a,
                rows: m,
                lda: k,
            },
            &packed,
            Output8::I32 {
                c: &mut got,
                ldc: n,
            },
        );
        for i in 0..m {
            for j in 0..n {
                let direct: i32 = (0..k)
                    .map(|p| (a[i * k + p] as i32 - z) * b[p * n + j] as i32)
                    .sum();
                assert_eq!(
                    got[i * n + j] - z * packed.column_sums()[j],
                    direct,
                    "{isa}"
                );
            }
        }
    }
}

/// Rounding and clamping of the epilogue, by hand: half to even, saturation at 0 and 255, ReLU
/// at the zero point, the residual in output units.
#[test]
fn int8_requantize_by_hand() {
    let bias = [0i32, 10];
    let scale = [0.5f32, 1.0];
    let mut r = Requant {
        bias: &bias,
        scale: &scale,
        residual: None,
        zero_point: 0,
        relu: false,
    };
    assert_eq!(requantize_scalar(5, 0, None, &r), 2); // 2.5 -> 2
    assert_eq!(requantize_scalar(7, 0, None, &r), 4); // 3.5 -> 4
    assert_eq!(requantize_scalar(-7, 0, None, &r), 0); // saturates at 0
    assert_eq!(requantize_scalar(1000, 0, None, &r), 255); // and at 255
    assert_eq!(requantize_scalar(-3, 1, None, &r), 7); // bias: -3 + 10
    r.zero_point = 100;
    assert_eq!(requantize_scalar(-7, 0, None, &r), 96); // -3.5 -> -4, + 100
    r.relu = true;
    assert_eq!(requantize_scalar(-7, 0, None, &r), 100); // ReLU: the code of 0
    let res = [0u8; 1];
    r.residual = Some(Residual8 {
        data: &res,
        ld: 1,
        zero_point: 20,
        scale: 0.25,
        frame: None,
    });
    assert_eq!(requantize_scalar(20, 0, Some(30), &r), 112); // 10 + (30-20)*0.25 = 12.5 -> 12, + 100
}

/// The implicit `u8` im2col (padding with the zero point) equals the explicit matrix, and the
/// explicit matrix equals its definition; strides, paddings, odd sizes, the stem's 7x7x3.
#[test]
fn int8_implicit_im2col_matches_explicit() {
    let cases = [
        (2, 9, 7, 3, 7, 2, 3),
        (1, 7, 7, 20, 3, 1, 1),
        (3, 8, 5, 16, 3, 2, 1),
        (2, 6, 6, 8, 1, 2, 0),
    ];
    for (batch, in_h, in_w, in_c, kernel, stride, pad) in cases {
        let g = ConvGeometry {
            batch,
            in_h,
            in_w,
            in_c,
            kernel,
            stride,
            pad,
        };
        let mut rng = Rng::new(11);
        let input = rng.bytes(g.input_len());
        let zp = 37u8;
        let explicit = im2col_nhwc_u8(&input, &g, zp);
        for (row, cols) in explicit.chunks_exact(g.k()).enumerate() {
            let (n, oh, ow) = (
                row / (g.out_h() * g.out_w()),
                row / g.out_w() % g.out_h(),
                row % g.out_w(),
            );
            for (col, &v) in cols.iter().enumerate() {
                let (kh, kw, c) = (col / in_c / kernel, col / in_c % kernel, col % in_c);
                let ih = (oh * stride + kh) as isize - pad as isize;
                let iw = (ow * stride + kw) as isize - pad as isize;
                let inside = ih >= 0 && iw >= 0 && (ih as usize) < in_h && (iw as usize) < in_w;
                let want = if inside {
                    input[((n * in_h + ih as usize) * in_w + iw as usize) * in_c + c]
                } else {
                    zp
                };
                assert_eq!(v, want, "{g:?} row {row} col {col}");
            }
        }
        let n = 40;
        for kernel in runnable_kernels() {
            let isa = kernel.info.name;
            let b = rng.weights(g.k() * n);
            let packed = PackedB8::with_kernel(&b, g.k(), n, kernel, blocking::DEFAULT);
            let mut via_matrix = vec![0i32; g.m() * n];
            let mut via_conv = vec![1i32; g.m() * n];
            gemm_u8s8(
                &ASource8::Matrix {
                    data: &explicit,
                    rows: g.m(),
                    lda: g.k(),
                },
                &packed,
                Output8::I32 {
                    c: &mut via_matrix,
                    ldc: n,
                },
            );
            gemm_u8s8(
                &ASource8::Conv {
                    input: &input,
                    geometry: g,
                    pad: zp,
                },
                &packed,
                Output8::I32 {
                    c: &mut via_conv,
                    ldc: n,
                },
            );
            assert_eq!(via_matrix, via_conv, "{isa} {g:?}");
        }
    }
}

/// Max-pool on codes equals the codes of the f32 max-pool; the average pool dequantises.
#[test]
fn int8_pools_match_f32() {
    let (n, h, w, c) = (2, 7, 6, 5);
    let mut rng = Rng::new(2);
    let q = rng.bytes(n * h * w * c);
    let (scale, zp) = (0.05f32, 3i32);
    let real: Vec<f32> = q.iter().map(|&v| scale * (v as i32 - zp) as f32).collect();
    let (oh, ow) = (4, 3);
    let mut pooled_q = vec![0u8; n * oh * ow * c];
    let mut pooled_f = vec![0f32; n * oh * ow * c];
    crate::pool::max_pool_3x3_s2_p1_nhwc(&q, n, h, w, c, &mut pooled_q);
    crate::pool::max_pool_3x3_s2_p1_nhwc(&real, n, h, w, c, &mut pooled_f);
    for (&a, &b) in pooled_q.iter().zip(&pooled_f) {
        assert_eq!(scale * (a as i32 - zp) as f32, b);
    }
    let mut avg_q = vec![0f32; n * c];
    let mut avg_f = vec![0f32; n * c];
    avg_pool_u8_nhwc(&q, n, h * w, c, scale, zp, &mut avg_q);
    crate::pool::global_avg_pool_nhwc(&real, n, h * w, c, &mut avg_f);
    for (a, b) in avg_q.iter().zip(&avg_f) {
        // Both are f32 averages of the same 42 values in different orders: within 1e-5 of ~6.
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let mut nhwc = vec![0u8; 2 * 3 * 4];
    let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.1 - 1.0).collect();
    quantize_nchw_to_nhwc_u8(&x, 2, 3, 4, 10.0, 10, &mut nhwc);
    // Element (n=1, c=2, p=3) of NCHW is x[1*12 + 2*4 + 3] = x[23] = 1.3 -> 13 + 10.
    assert_eq!(nhwc[(4 + 3) * 3 + 2], 23);
}

/// The fast rounding of `quantize_u8` equals `round_ties_even` then clamp, on halves, on values
/// far outside the range, and on a dense sweep.
#[test]
fn int8_quantize_rounds_half_to_even() {
    let reference =
        |x: f32, inv: f32, zp: i32| ((x * inv).round_ties_even() as i32 + zp).clamp(0, 255) as u8;
    for zp in [0, 1, 77, 128, 255] {
        for inv in [1.0f32, 0.5, 3.7, 1000.0] {
            for i in -40_000..40_000 {
                let x = i as f32 * 0.0125;
                assert_eq!(
                    quantize_u8(x, inv, zp),
                    reference(x, inv, zp),
                    "{x} {inv} {zp}"
                );
            }
        }
    }
    assert_eq!(quantize_u8(2.5, 1.0, 0), 2);
    assert_eq!(quantize_u8(3.5, 1.0, 0), 4);
    assert_eq!(quantize_u8(-2.5, 1.0, 10), 8);
    assert_eq!(quantize_u8(1e30, 1.0, 10), 255);
    assert_eq!(quantize_u8(-1e30, 1.0, 10), 0);
}

/// `RESNET_ISA` names the VNNI levels.
#[test]
fn int8_isa_names_parse() {
    assert_eq!("vnni".parse::<Isa>().unwrap(), Isa::Vnni);
    assert_eq!("avxvnni".parse::<Isa>().unwrap(), Isa::AvxVnni);
    assert_eq!(Isa::Vnni.f32_level(), Isa::Avx512);
    assert_eq!(Isa::AvxVnni.f32_level(), Isa::Avx2);
}

/// Where the CPU reports AMX-INT8 (`RESNET_EXPECT_ISA` names `amxint8`, which tools/test.sh
/// reads from /proc/cpuinfo, outside the code under test), the real `tdpbusd` kernel must be
/// among those the battery ran; the model-backed one runs everywhere.
#[test]
fn int8_no_expected_amx_kernel_is_skipped() {
    let names: Vec<_> = runnable_kernels().iter().map(|k| k.info.name).collect();
    assert!(names.contains(&"amxmodel_int8_i32_32x32"));
    let expected = std::env::var("RESNET_EXPECT_ISA")
        .map(|v| v.split(',').any(|n| n.trim() == "amxint8"))
        .unwrap_or(false);
    if expected {
        assert!(
            names.contains(&"amx_int8_i32_32x32"),
            "RESNET_EXPECT_ISA names amxint8 but the battery ran only {names:?} (AMX: {})",
            crate::cpu::CpuFeatures::get().amx
        );
    }
}

/// A convolution's operands for the in-place tests, from a seed: `u8` input and residual, signed
/// weights (`K x n`), biases and requantisation scales.
struct ConvCase {
    g: ConvGeometry,
    n: usize,
    input: Vec<u8>,
    b: Vec<i8>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    res: Vec<u8>,
}

impl ConvCase {
    fn new(g: ConvGeometry, n: usize, seed: u64) -> ConvCase {
        let mut rng = Rng::new(seed);
        ConvCase {
            g,
            n,
            input: rng.bytes(g.input_len()),
            b: rng.weights(g.k() * n),
            bias: (0..n).map(|_| (rng.next() >> 52) as i32 - 2048).collect(),
            scale: (0..n).map(|_| (0.5 + rng.unit()) / 4000.0).collect(),
            res: rng.bytes(g.m() * n),
        }
    }

    /// `conv_u8s8_in_place` with `in_place` (packed for `layout`) against `gemm_u8s8` on the
    /// im2col with `packed`, bit for bit, for each epilogue option.
    fn check(&self, packed: &PackedB8, in_place: &PackedB8, layout: InPlaceLayout, what: &str) {
        let (g, n, m) = (self.g, self.n, self.g.m());
        assert!(in_place_applies(&g, in_place, layout), "{what}: {g:?}");
        for (residual, relu) in [(false, true), (true, true), (true, false)] {
            let requant = Requant {
                bias: &self.bias,
                scale: &self.scale,
                residual: residual.then_some(Residual8 {
                    data: &self.res,
                    ld: n,
                    zero_point: 91,
                    scale: 0.61,
                    frame: None,
                }),
                zero_point: 23,
                relu,
            };
            let source = ASource8::Conv {
                input: &self.input,
                geometry: g,
                pad: 29,
            };
            let mut im2col = vec![0x5Au8; m * n];
            let out = Output8::U8 {
                c: &mut im2col,
                ldc: n,
                requant,
            };
            gemm_u8s8(&source, packed, out);
            let mut direct = vec![0xA5u8; m * n];
            conv_u8s8_in_place(
                &self.input,
                &g,
                29,
                in_place,
                (&mut direct, n, None),
                &requant,
                layout,
            );
            assert!(
                direct == im2col,
                "{what} {g:?} n {n} residual {residual} relu {relu}: first difference at {:?}",
                direct.iter().zip(&im2col).position(|(a, b)| a != b)
            );
            if layout == InPlaceLayout::Padded && g.stride == 1 {
                self.check_framed(in_place, &requant, &im2col, what);
            }
        }
    }

    /// The same through [`Frame`]s: the input read from a framed copy (the frame holding the
    /// pad code), the residual read from a framed copy (0xEE in its frame: a row read from the
    /// wrong place fails), the output written into a frame for a 3x3 padding-1 layer after,
    /// whose frame must come out as the output's zero point and whose pixels as `want`'s.
    fn check_framed(&self, in_place: &PackedB8, requant: &Requant<'_>, want: &[u8], what: &str) {
        let (g, n) = (self.g, self.n);
        let in_frame = Frame::for_input(&g).expect("stride 1");
        let mut framed_input = vec![0x5Bu8; in_frame.len()];
        in_frame.clear(&mut framed_input, 29);
        for (r, pixel) in self.input.chunks_exact(g.in_c).enumerate() {
            framed_input[in_frame.row(r) * g.in_c..][..g.in_c].copy_from_slice(pixel);
        }
        let out_frame = Frame {
            batch: g.batch,
            h: g.out_h(),
            w: g.out_w(),
            ch: n,
            pad: 1,
            kernel: 3,
        };
        let mut framed_res = vec![0xEEu8; out_frame.len()];
        for (r, pixel) in self.res.chunks_exact(n).enumerate() {
            framed_res[out_frame.row(r) * n..][..n].copy_from_slice(pixel);
        }
        let requant = Requant {
            residual: requant.residual.map(|r| Residual8 {
                data: &framed_res,
                frame: Some(out_frame),
                ..r
            }),
            ..*requant
        };
        let mut expected = vec![requant.zero_point; out_frame.len()];
        for (r, pixel) in want.chunks_exact(n).enumerate() {
            expected[out_frame.row(r) * n..][..n].copy_from_slice(pixel);
        }
        let mut framed = vec![0xA7u8; out_frame.len()];
        conv_u8s8_in_place(
            &framed_input,
            &g,
            29,
            in_place,
            (&mut framed, n, Some(out_frame)),
            &requant,
            InPlaceLayout::Framed,
        );
        assert!(
            framed == expected,
            "{what} {g:?} n {n} framed: first difference at {:?}",
            framed.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
}

/// The AMX lines' in-place convolution ([`conv_u8s8_in_place`]) against their im2col path
/// ([`gemm_u8s8`]), bit for bit, with every epilogue option: 3x3 and 1x1 convolutions of stride 1, 2 and 3 with and without padding,
/// 64 and 128 channels, batches of 1-3, output widths that are and are not multiples of the
/// tiles, N with and without an edge panel, and K in one block or several (kc 128: 2 steps).
/// The model line runs everywhere; the hardware line where AMX is granted.
#[test]
fn amx_direct_convolution_equals_the_im2col_path() {
    // The AMX lines: the model everywhere, the hardware where AMX is granted.
    let lines: Vec<_> = runnable_kernels()
        .into_iter()
        .filter(|k| k.reads_in_place())
        .collect();
    let cases = [
        // (batch, in_h, in_w, in_c, kernel, stride, pad, n)
        (1, 7, 7, 64, 3, 1, 1, 64),
        (2, 5, 9, 128, 3, 1, 1, 40),
        (3, 4, 4, 64, 1, 1, 0, 32),
        (1, 14, 14, 64, 3, 1, 1, 96),
        (2, 3, 6, 64, 3, 1, 0, 32),
        // Stride 2 (the rows split by parity): 3x3 with padding (layer2.0.conv1), 1x1
        // without (the downsamples: only the even rows are copied), odd sizes, and stride 3.
        (1, 8, 8, 64, 3, 2, 1, 64),
        (2, 7, 9, 64, 1, 2, 0, 40),
        (1, 9, 7, 128, 3, 2, 1, 32),
        (2, 7, 6, 64, 3, 3, 1, 32),
    ];
    for (batch, in_h, in_w, in_c, kernel, stride, pad, n) in cases {
        let g = ConvGeometry {
            batch,
            in_h,
            in_w,
            in_c,
            kernel,
            stride,
            pad,
        };
        let case = ConvCase::new(g, n, (in_h * 31 + in_c) as u64);
        for line in &lines {
            for kc in [g.k(), 128] {
                let blocking = Blocking {
                    kc,
                    ..line.default_blocking()
                };
                let packed = PackedB8::with_kernel(&case.b, g.k(), n, line, blocking);
                let what = format!("{} kc {kc}", line.info.name);
                case.check(&packed, &packed, InPlaceLayout::Padded, &what);
            }
        }
    }
}

/// Where the in-place path does not apply: channels that are not whole tile rows, and
/// lines that pack A (every non-AMX line).
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
    let pack = |g: &ConvGeometry, line: &'static Int8Kernel| {
        PackedB8::with_kernel(
            &vec![1i8; g.k() * 32],
            g.k(),
            32,
            line,
            line.default_blocking(),
        )
    };
    let model = &AMX_MODEL_KERNEL;
    let padded = InPlaceLayout::Padded;
    assert!(in_place_applies(&g(64, 1), &pack(&g(64, 1), model), padded));
    assert!(in_place_applies(&g(64, 2), &pack(&g(64, 2), model), padded));
    assert!(!in_place_applies(
        &g(48, 1),
        &pack(&g(48, 1), model),
        padded
    ));
    let scalar = &KERNELS[0];
    assert!(!in_place_applies(
        &g(64, 1),
        &pack(&g(64, 1), scalar),
        padded
    ));
    // Window rows: 3 x 21 bytes fit a 64-byte tile row, 3 x 22 do not; B must be packed for
    // the layout, by a line that reads in place.
    let rows = InPlaceLayout::WindowRows;
    let windows = |g: &ConvGeometry, line: &'static Int8Kernel| {
        let codes = vec![1i8; g.k() * 32];
        pack_window_rows(&codes, 3, g.in_c, 32, line, line.default_blocking())
    };
    assert_eq!(in_place_layout(&g(21, 2)), Some(rows));
    assert_eq!(in_place_layout(&g(64, 1)), Some(padded));
    assert_eq!(in_place_layout(&g(22, 2)), None);
    assert!(in_place_applies(
        &g(21, 2),
        &windows(&g(21, 2), model),
        rows
    ));
    assert!(!in_place_applies(&g(21, 2), &pack(&g(21, 2), model), rows));
    assert!(!in_place_applies(
        &g(21, 2),
        &windows(&g(21, 2), scalar),
        rows
    ));
}

/// The window-rows layout (the stem's, [`InPlaceLayout::WindowRows`]) against the im2col path
/// with B packed as usual, bit for bit (integer sums: the zero weights between kernel rows
/// add nothing, and the padding holds the zero point as im2col's does): stem-like 7x7 stride-2
/// and 3x3 stride-1 geometries, batches of 1-2, N with an edge panel, K in one block or
/// several (kc 128), every epilogue option. Model line everywhere, hardware where granted.
#[test]
fn amx_window_rows_convolution_equals_the_im2col_path() {
    // The AMX lines: the model everywhere, the hardware where AMX is granted.
    let lines: Vec<_> = runnable_kernels()
        .into_iter()
        .filter(|k| k.reads_in_place())
        .collect();
    let cases = [
        // (batch, in_h, in_w, in_c, kernel, stride, pad, n)
        (2, 11, 13, 3, 7, 2, 3, 64),
        (1, 9, 9, 3, 7, 2, 3, 40),
        (1, 6, 7, 16, 3, 1, 1, 32),
    ];
    for (batch, in_h, in_w, in_c, kernel, stride, pad, n) in cases {
        let g = ConvGeometry {
            batch,
            in_h,
            in_w,
            in_c,
            kernel,
            stride,
            pad,
        };
        let case = ConvCase::new(g, n, (in_h * 17 + in_c) as u64);
        for line in &lines {
            let packed = PackedB8::with_kernel(&case.b, g.k(), n, line, line.default_blocking());
            for kc in [2304, 128] {
                let blocking = Blocking {
                    kc,
                    ..line.default_blocking()
                };
                let windows = pack_window_rows(&case.b, kernel, in_c, n, line, blocking);
                let what = format!("{} kc {kc}", line.info.name);
                case.check(&packed, &windows, InPlaceLayout::WindowRows, &what);
            }
        }
    }
}
