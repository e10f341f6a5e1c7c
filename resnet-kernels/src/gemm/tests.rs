//! Every registered f32 kernel this CPU runs (the registry's table, so a kernel is tested by being
//! registered) x every epilogue x a few blockings, against the naive triple loop,
//! over random shapes with tails (M, N, K not multiples of any tile), with C poisoned by NaN so
//! that a kernel reading C before writing it, or leaving part of its tile unwritten, fails.

use super::*;
use proptest::prelude::*;

/// Every line of the f32 table this machine can run: what the battery exercises.
pub(crate) fn runnable_kernels() -> Vec<&'static F32Kernel> {
    crate::registry::runnable(&KERNELS)
}

/// Blockings a plan may pick, beside the default: small ones make every loop take many trips.
const BLOCKINGS: [Blocking; 3] = [
    blocking::DEFAULT,
    Blocking {
        kc: 37,
        mc: 13,
        nc: 40,
    },
    Blocking {
        kc: 512,
        mc: 400,
        nc: 64,
    },
];

/// Values in [-1, 1] from the seeded generator, so failures reproduce.
fn values(len: usize, seed: u64) -> Vec<f32> {
    crate::test_rng::Rng::new(seed).signed_units(len)
}

/// Worst-case bound of recursive f32 summation: |error| <= (K + 3) · eps · Σ|terms|.
fn check(got: &[f32], want: &[f32], bound: &[f32], what: &str) {
    for (idx, ((g, w), b)) in got.iter().zip(want).zip(bound).enumerate() {
        let tol = b * f32::EPSILON;
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {idx}: got {g}, want {w}, tolerance {tol:e}"
        );
    }
}

#[derive(Debug, Clone, Copy)]
struct Problem {
    m: usize,
    n: usize,
    k: usize,
    bias: bool,
    residual: bool,
    relu: bool,
    seed: u64,
}

impl Problem {
    fn run(&self, kernel: &'static F32Kernel, blocking: Blocking) {
        let name = kernel.info.name;
        let Problem { m, n, k, seed, .. } = *self;
        let (lda, ldc, ldr) = (k + 3, n + 5, n + 1);
        let a = values(m * lda, seed);
        let b = values(k * n, seed + 1);
        let bias = values(n, seed + 2);
        let res = values(m * ldr, seed + 3);
        let epi = Epilogue {
            bias: self.bias.then_some(&bias[..]),
            residual: self.residual.then_some((&res[..], ldr)),
            relu: self.relu,
        };
        let mut want = vec![f32::NAN; m * ldc];
        sgemm_naive(m, n, k, &a, lda, &b, &mut want, ldc, &epi);
        let mut bound = vec![0.0f32; m * ldc];
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|p| (a[i * lda + p] * b[p * n + j]).abs()).sum();
                bound[i * ldc + j] = (k as f32 + 3.0) * (s + 2.0);
            }
        }
        let packed = PackedB::with_kernel(&b, k, n, kernel, blocking);
        let mut got = vec![f32::NAN; m * ldc];
        sgemm_packed(
            &ASource::Matrix {
                data: &a,
                rows: m,
                lda,
            },
            &packed,
            &mut got,
            ldc,
            &epi,
        );
        // Only the m x n part is compared; the stride gaps must stay NaN (never written).
        for i in 0..m {
            let row = i * ldc;
            check(
                &got[row..row + n],
                &want[row..row + n],
                &bound[row..row + n],
                &format!("{name} {blocking:?} {self:?} row {i}"),
            );
            assert!(
                got[row + n..row + ldc].iter().all(|v| v.is_nan()),
                "{name}: wrote past column n in row {i}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn packed_gemm_matches_naive(
        m in 1usize..80, n in 1usize..100, k in 1usize..600,
        bias: bool, residual: bool, relu: bool, seed in 0u64..1000, blocking in 0usize..3,
    ) {
        let p = Problem { m, n, k, bias, residual, relu, seed };
        for kernel in runnable_kernels() {
            p.run(kernel, BLOCKINGS[blocking]);
        }
    }
}

/// Shapes of ResNet-18 itself (pinned, including the 49-pixel layer4 tail and the 1000 classes).
#[test]
fn resnet_shapes_match_naive() {
    for (m, n, k) in [
        (49, 512, 4608 / 8),
        (49, 64, 147),
        (1, 1000, 512),
        (3, 1000, 512),
        (196, 256, 128),
        (13, 32, 256 * 2 + 1),
    ] {
        for (kernel, blocking) in runnable_kernels()
            .into_iter()
            .flat_map(|k| BLOCKINGS.iter().map(move |b| (k, b)))
        {
            Problem {
                m,
                n,
                k,
                bias: true,
                residual: true,
                relu: true,
                seed: 7,
            }
            .run(kernel, *blocking);
        }
    }
}

/// The implicit im2col packing equals the explicit im2col matrix, for strides, paddings and odd sizes.
#[test]
fn implicit_im2col_matches_explicit() {
    let cases = [
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
            in_h: 7,
            in_w: 7,
            in_c: 20,
            kernel: 3,
            stride: 1,
            pad: 1,
        },
        ConvGeometry {
            batch: 3,
            in_h: 8,
            in_w: 5,
            in_c: 16,
            kernel: 3,
            stride: 2,
            pad: 1,
        },
        ConvGeometry {
            batch: 2,
            in_h: 6,
            in_w: 6,
            in_c: 8,
            kernel: 1,
            stride: 2,
            pad: 0,
        },
        ConvGeometry {
            batch: 1,
            in_h: 5,
            in_w: 11,
            in_c: 300,
            kernel: 3,
            stride: 1,
            pad: 1,
        },
    ];
    for g in cases {
        let input = values(g.input_len(), 11);
        let n = 40;
        let b = values(g.k() * n, 12);
        let explicit = im2col_nhwc(&input, &g);
        assert_eq!(
            explicit,
            naive_im2col(&input, &g),
            "{g:?}: im2col vs its definition"
        );
        for kernel in runnable_kernels() {
            let packed = PackedB::with_kernel(&b, g.k(), n, kernel, blocking::DEFAULT);
            let mut via_matrix = vec![f32::NAN; g.m() * n];
            let mut via_conv = vec![f32::NAN; g.m() * n];
            let epi = Epilogue::default();
            sgemm_packed(
                &ASource::Matrix {
                    data: &explicit,
                    rows: g.m(),
                    lda: g.k(),
                },
                &packed,
                &mut via_matrix,
                n,
                &epi,
            );
            sgemm_packed(
                &ASource::Conv {
                    input: &input,
                    geometry: g,
                    pad: 0.0,
                },
                &packed,
                &mut via_conv,
                n,
                &epi,
            );
            assert_eq!(via_matrix, via_conv, "{} {g:?}", kernel.info.name);
        }
    }
}

/// A hand-checked im2col: 1 image 3x3, 1 channel, 3x3 kernel, pad 1: the centre pixel's row is
/// the whole image, the corner's has zeros where the window leaves the image.
#[test]
fn im2col_geometry_by_hand() {
    let g = ConvGeometry {
        batch: 1,
        in_h: 3,
        in_w: 3,
        in_c: 1,
        kernel: 3,
        stride: 1,
        pad: 1,
    };
    let input: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let cols = im2col_nhwc(&input, &g);
    assert_eq!(&cols[4 * 9..5 * 9], &input[..]);
    assert_eq!(&cols[..9], &[0., 0., 0., 0., 1., 2., 0., 4., 5.]);
}

/// im2col straight from its definition, one element at a time: row (n, oh, ow), column
/// (kh, kw, c) holds input[n, oh·s + kh − pad, ow·s + kw − pad, c], or 0 outside the image.
fn naive_im2col(input: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let mut out = Vec::with_capacity(g.m() * g.k());
    for n in 0..g.batch {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                for kh in 0..g.kernel {
                    for kw in 0..g.kernel {
                        for c in 0..g.in_c {
                            let ih = (oh * g.stride + kh) as isize - g.pad as isize;
                            let iw = (ow * g.stride + kw) as isize - g.pad as isize;
                            let inside = ih >= 0
                                && iw >= 0
                                && (ih as usize) < g.in_h
                                && (iw as usize) < g.in_w;
                            out.push(if inside {
                                input[((n * g.in_h + ih as usize) * g.in_w + iw as usize) * g.in_c
                                    + c]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
    }
    out
}
