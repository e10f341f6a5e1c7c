//! The real AMX kernels against the model, bit for bit: single instructions under odd
//! configurations, the 2 x 2 micro-kernel, and whole GEMMs of both
//! families. They need a CPU with AMX granted to this process; elsewhere they check only that
//! nothing expected them to run (`RESNET_EXPECT_ISA`, derived by tools/test.sh from
//! /proc/cpuinfo's `amx_int8` / `amx_bf16` flags, outside the code under test).
//!
//! (The model-backed kernels run the families' full batteries on every machine:
//! `int8::tests` and `bf16::tests` include [`crate::int8::AMX_MODEL_KERNEL`] and
//! [`crate::bf16::AMX_MODEL_KERNEL`].)

use super::*;
use crate::bf16::{self, Bf16};
use crate::cpu::{CpuFeatures, Isa};
use crate::int8;

/// Whether `RESNET_EXPECT_ISA` names `name`.
fn expected(name: &str) -> bool {
    std::env::var("RESNET_EXPECT_ISA")
        .map(|v| v.split(',').any(|n| n.trim() == name))
        .unwrap_or(false)
}

/// The hardware tile unit, or `None` after checking that no AMX run was expected here.
#[cfg(target_arch = "x86_64")]
fn hardware_or_nothing_expected(test: &str) -> Option<AmxHardware> {
    let hw = AmxHardware::new();
    if hw.is_none() {
        for name in ["amxint8", "amxbf16", "amx"] {
            assert!(
                !expected(name),
                "RESNET_EXPECT_ISA names {name} but AMX is not usable here ({}), so {test} \
                 could not run the real AMX kernels",
                CpuFeatures::get().amx
            );
        }
        eprintln!(
            "{test}: no AMX here ({}): the real kernels did not run",
            CpuFeatures::get().amx
        );
    }
    hw
}

#[cfg(not(target_arch = "x86_64"))]
fn hardware_or_nothing_expected(_test: &str) -> Option<std::convert::Infallible> {
    None
}

/// Seeded bytes. For bf16 use, pairs are made finite and not NaN by the caller.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    crate::test_rng::Rng::new(seed).bytes(len)
}

/// Seeded bf16 values in [-1, 1] (no NaN: the model's NaN payloads are Rust's), as bytes.
fn bf16_bytes(count: usize, seed: u64) -> Vec<u8> {
    bf16::tests::values(count, seed)
        .iter()
        .flat_map(|v| v.0.to_le_bytes())
        .collect()
}

/// Each single instruction, under a configuration that is not the kernels' (odd rows and bytes
/// per row, unused tiles), on the hardware and on the model: the stored tiles must be equal.
#[test]
#[cfg(target_arch = "x86_64")]
fn amx_instructions_match_model() {
    let Some(mut hw) = hardware_or_nothing_expected("amx_instructions_match_model") else {
        return;
    };
    let cfg = TileConfig::palette1([
        (7, 20),
        (7, 36),
        (9, 20),
        (5, 64),
        (0, 0),
        (0, 0),
        (16, 4),
        (3, 12),
    ]);
    let mut model = AmxModel::new();
    for (dot, seed) in [(Dot::Busd, 1), (Dot::Bf16ps, 2)] {
        let c = bytes(16 * 64, seed);
        let a = if dot == Dot::Busd {
            bytes(16 * 64, seed + 1)
        } else {
            bf16_bytes(16 * 32, seed + 1)
        };
        let b = if dot == Dot::Busd {
            bytes(16 * 64, seed + 2)
        } else {
            bf16_bytes(16 * 32, seed + 2)
        };
        // For bf16, C holds f32: the values widened (exactly).
        let c = match dot {
            Dot::Busd => c,
            Dot::Bf16ps => bf16::tests::values(16 * 16, seed)
                .iter()
                .flat_map(|v| v.to_f32().to_le_bytes())
                .collect(),
        };
        let mut outs = Vec::new();
        for ops in [&mut hw as &mut dyn DynOps, &mut model] {
            let mut out = vec![0xA5u8; 2000];
            // SAFETY: AMX is granted (hw is Some) or this is the model; every load reads at most
            // 16 rows x 64 bytes at stride 64 of the 1024-byte inputs; the stores write 9 rows
            // x 36 bytes at stride 100 of `out`.
            unsafe {
                ops.ldtilecfg(&cfg);
                ops.tileloadd(Tmm::new(0), c.as_ptr(), 64);
                ops.tileloadd(Tmm::new(1), a.as_ptr(), 64);
                // tsrc1 (tmm1) has 36 bytes per row = 9 groups: tmm2 has 9 rows of 20 bytes.
                ops.tileloadd(Tmm::new(2), b.as_ptr(), 64);
                ops.dot(dot, Tmm::new(0), Tmm::new(1), Tmm::new(2));
                ops.tilestored(Tmm::new(0), out.as_mut_ptr(), 100);
                ops.tilezero(Tmm::new(2));
                ops.tilestored(Tmm::new(2), out.as_mut_ptr().add(800), 100);
                ops.tilerelease();
            }
            outs.push(out);
        }
        assert!(outs[0] == outs[1], "{dot:?}: hardware and model differ");
    }
}

/// The object-safe view of [`TileOps`] the test above iterates over.
#[cfg(target_arch = "x86_64")]
trait DynOps {
    unsafe fn ldtilecfg(&mut self, cfg: &TileConfig);
    unsafe fn tilerelease(&mut self);
    unsafe fn tilezero(&mut self, t: Tmm);
    unsafe fn tileloadd(&mut self, t: Tmm, p: *const u8, s: usize);
    unsafe fn tilestored(&mut self, t: Tmm, p: *mut u8, s: usize);
    unsafe fn dot(&mut self, d: Dot, c: Tmm, a: Tmm, b: Tmm);
}

#[cfg(target_arch = "x86_64")]
impl<T: TileOps> DynOps for T {
    unsafe fn ldtilecfg(&mut self, cfg: &TileConfig) {
        // SAFETY: forwarded.
        unsafe { TileOps::ldtilecfg(self, cfg) }
    }
    unsafe fn tilerelease(&mut self) {
        // SAFETY: forwarded.
        unsafe { TileOps::tilerelease(self) }
    }
    unsafe fn tilezero(&mut self, t: Tmm) {
        // SAFETY: forwarded.
        unsafe { TileOps::tilezero(self, t) }
    }
    unsafe fn tileloadd(&mut self, t: Tmm, p: *const u8, s: usize) {
        // SAFETY: forwarded.
        unsafe { TileOps::tileloadd(self, t, p, s) }
    }
    unsafe fn tilestored(&mut self, t: Tmm, p: *mut u8, s: usize) {
        // SAFETY: forwarded.
        unsafe { TileOps::tilestored(self, t, p, s) }
    }
    unsafe fn dot(&mut self, d: Dot, c: Tmm, a: Tmm, b: Tmm) {
        // SAFETY: forwarded.
        unsafe {
            match d {
                Dot::Busd => TileOps::tdpbusd(self, c, a, b),
                Dot::Bf16ps => TileOps::tdpbf16ps(self, c, a, b),
            }
        }
    }
}

/// The micro-kernel's one `asm!` block against the model's composition of single
/// instructions, for 0..=5 K steps, both dot products.
#[test]
#[cfg(target_arch = "x86_64")]
fn amx_block_matches_model() {
    if hardware_or_nothing_expected("amx_block_matches_model").is_none() {
        return;
    }
    for dot in [Dot::Busd, Dot::Bf16ps] {
        for steps in 0..=5 {
            // A row stride wider than the steps read, so that a kernel reading past them differs.
            let lda = steps * 64 + 64;
            let seed = steps as u64;
            let (a, b) = match dot {
                Dot::Busd => (
                    bytes(32 * lda, seed),
                    bytes((steps * 16 + 1) * 128, seed + 1),
                ),
                Dot::Bf16ps => (
                    bf16_bytes(16 * lda, seed),
                    bf16_bytes((steps * 16 + 1) * 64, seed + 1),
                ),
            };
            // Sums to start from: i32 or f32 values of a few hundred, so that the bf16 products
            // (of values in [-2, 2]) round differently after them than after zero.
            let start: Vec<u8> = (0..32 * 32)
                .flat_map(|i: i32| match dot {
                    Dot::Busd => (i * 7919 - 4_000_000).to_le_bytes(),
                    Dot::Bf16ps => ((i % 97) as f32 * 3.25 - 150.0).to_le_bytes(),
                })
                .collect();
            let mut outs = Vec::new();
            for hardware in [true, false] {
                for c_in in [std::ptr::null(), start.as_ptr()] {
                    let mut c = CBlock([0x5A; 32 * PANEL_ROW_BYTES]);
                    let job = Block2x2 {
                        a: a.as_ptr(),
                        lda,
                        b: b.as_ptr(),
                        steps,
                        c_in,
                        ldc_in: PANEL_ROW_BYTES,
                        c: c.0.as_mut_ptr(),
                        ldc: PANEL_ROW_BYTES,
                    };
                    // SAFETY: AMX is granted (checked above); the buffers hold what `job` says.
                    unsafe {
                        if hardware {
                            AmxHardware::with_thread_tiles(|t| t.block_2x2(dot, &job));
                        } else {
                            AmxModel::with_thread_tiles(|t| t.block_2x2(dot, &job));
                        }
                    }
                    outs.push(c.0.to_vec());
                }
            }
            assert!(
                outs[0] == outs[2] && outs[1] == outs[3],
                "{dot:?}, {steps} steps: hardware and model differ"
            );
            // Integer sums are exact: starting from `start` adds it, wrapping.
            if dot == Dot::Busd {
                let words = |v: &[u8]| -> Vec<i32> {
                    v.chunks_exact(4)
                        .map(|w| i32::from_le_bytes(w.try_into().expect("4 bytes")))
                        .collect()
                };
                let (zero, from, start) = (words(&outs[0]), words(&outs[1]), words(&start));
                for i in 0..zero.len() {
                    assert_eq!(
                        from[i],
                        zero[i].wrapping_add(start[i]),
                        "{steps} steps, sum {i}"
                    );
                }
            }
        }
    }
}

/// The gathered micro-kernel (A at a per-step offset, read in place) on the hardware against
/// the model, bit for bit, with offsets out of order, repeated and far apart; and the model's
/// gather with offsets `64 * s` against its contiguous block (the same rows, so the same bits).
#[test]
#[cfg(target_arch = "x86_64")]
fn amx_gather_matches_model_and_the_contiguous_block() {
    let dot = Dot::Busd;
    for steps in 0..=6usize {
        let lda = 7 * 64;
        let a = bytes(40 * lda + 64 * 9, steps as u64 + 7);
        let b = bytes((steps * 16 + 1) * 128, steps as u64 + 8);
        // Offsets of a 3x3 window over rows of 7 pixels x 64 bytes: (kh * 7 + kw) * 64, in a
        // scrambled order.
        let offsets: Vec<usize> = (0..steps)
            .map(|s| ((s * 5) % 9 / 3 * 7 + s % 3) * 64)
            .collect();
        let gather = |hardware: bool, offsets: &[usize]| {
            let mut c = CBlock([0x5A; 32 * PANEL_ROW_BYTES]);
            let job = Gather2x2 {
                a: a.as_ptr(),
                lda,
                a_offsets: offsets.as_ptr(),
                b: b.as_ptr(),
                steps,
                c_in: std::ptr::null(),
                ldc_in: 0,
                c: c.0.as_mut_ptr(),
                ldc: PANEL_ROW_BYTES,
                // A hint only: B itself, one line per step.
                prefetch: b.as_ptr(),
                prefetch_lines: 1,
            };
            // SAFETY: AMX is granted when `hardware` (checked by the caller); the buffers hold
            // 32 rows of lda bytes past every offset, and what `job` says of B and C.
            unsafe {
                if hardware {
                    AmxHardware::with_thread_tiles(|t| t.gather_2x2(dot, &job));
                } else {
                    AmxModel::with_thread_tiles(|t| t.gather_2x2(dot, &job));
                }
            }
            c.0.to_vec()
        };
        let model = gather(false, &offsets);
        // Contiguous offsets through gather == the plain block on the same A.
        let contiguous: Vec<usize> = (0..steps).map(|s| s * 64).collect();
        let mut c = CBlock([0x5A; 32 * PANEL_ROW_BYTES]);
        let job = Block2x2 {
            a: a.as_ptr(),
            lda,
            b: b.as_ptr(),
            steps,
            c_in: std::ptr::null(),
            ldc_in: 0,
            c: c.0.as_mut_ptr(),
            ldc: PANEL_ROW_BYTES,
        };
        // SAFETY: the model needs no CPU support; the buffers hold what `job` says.
        unsafe { AmxModel::with_thread_tiles(|t| t.block_2x2(dot, &job)) };
        assert!(gather(false, &contiguous) == c.0.to_vec(), "{steps} steps");
        if hardware_or_nothing_expected("amx_gather_matches_model_and_the_contiguous_block")
            .is_some()
        {
            assert!(
                gather(true, &offsets) == model,
                "{steps} steps: hardware and model differ"
            );
        }
    }
}

/// Whole GEMMs of both families through the registered lines: the real AMX line and the model
/// line give the same bits (int8: `i32` and requantised `u8`; bf16: f32 and bf16 outputs), on
/// shapes with row, column and K tails, several K blocks, and ResNet-18's stem depth.
#[test]
fn amx_kernels_match_model_kernels() {
    if hardware_or_nothing_expected("amx_kernels_match_model_kernels").is_none() {
        return;
    }
    let int8_hw = int8::kernel_for(Isa::Amx);
    let bf16_hw = bf16::kernel_for(Isa::Amx);
    assert_eq!(int8_hw.info.name, "amx_int8_i32_32x32");
    assert_eq!(bf16_hw.info.name, "amx_bf16_f32_32x32");
    for (m, n, k) in [
        (1, 1, 1),
        (33, 40, 147),
        (49, 512, 1152),
        (64, 64, 576),
        (70, 96, 1701),
    ] {
        let a = bytes(m * k, (m + k) as u64);
        let w: Vec<i8> = bytes(k * n, n as u64)
            .into_iter()
            .map(|v| v as i8)
            .collect();
        let source = int8::ASource8::Matrix {
            data: &a,
            rows: m,
            lda: k,
        };
        let mut outs = Vec::new();
        for line in [int8_hw, &int8::AMX_MODEL_KERNEL] {
            let packed = int8::PackedB8::with_kernel(&w, k, n, line, int8::blocking::DEFAULT);
            let mut c = vec![0i32; m * n];
            int8::gemm_u8s8(&source, &packed, int8::Output8::I32 { c: &mut c, ldc: n });
            outs.push(c);
        }
        assert!(
            outs[0] == outs[1],
            "int8 {m}x{n}x{k}: hardware and model differ"
        );

        let a = bf16::tests::values(m * k, k as u64);
        let w = bf16::tests::values(k * n, n as u64);
        let source = bf16::ASourceBf16::Matrix {
            data: &a,
            rows: m,
            lda: k,
        };
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
        let epi = bf16::EpilogueBf16 {
            bias: Some(&bias),
            residual: None,
            relu: true,
            residual_frame: None,
        };
        let mut outs = Vec::new();
        for line in [bf16_hw, &bf16::AMX_MODEL_KERNEL] {
            let packed = bf16::PackedBBf16::with_kernel(&w, k, n, line, line.default_blocking());
            let mut c = vec![0f32; m * n];
            bf16::gemm_bf16(
                &source,
                &packed,
                bf16::OutputBf16::F32 { c: &mut c, ldc: n },
                &epi,
            );
            let mut c16 = vec![Bf16::ZERO; m * n];
            bf16::gemm_bf16(
                &source,
                &packed,
                bf16::OutputBf16::Bf16 {
                    c: &mut c16,
                    ldc: n,
                },
                &epi,
            );
            outs.push((c.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), c16));
        }
        assert!(
            outs[0] == outs[1],
            "bf16 {m}x{n}x{k}: hardware and model differ"
        );
    }
}

/// The configuration the kernels load: palette 1, 8 tiles of 16 x 64 bytes, in the SDM's byte
/// layout.
#[test]
fn kernel_config_layout() {
    let b = KERNEL_CONFIG.bytes();
    assert_eq!(b[0], 1);
    assert!(b[1..16].iter().all(|&x| x == 0));
    for t in 0..8 {
        assert_eq!(u16::from_le_bytes([b[16 + 2 * t], b[17 + 2 * t]]), 64);
        assert_eq!(b[48 + t], 16);
    }
    assert!(b[32..48].iter().chain(&b[56..]).all(|&x| x == 0));
}

/// After `release_thread_tiles` no thread holds the tile configuration, and the next GEMM
/// configures the tiles again and gives the same bits as before the release.
#[test]
#[cfg(target_arch = "x86_64")]
fn released_tiles_are_configured_again_by_the_next_kernel() {
    if hardware_or_nothing_expected("released_tiles_are_configured_again_by_the_next_kernel")
        .is_none()
    {
        return;
    }
    let (m, n, k) = (64, 96, 576);
    let a = bytes(m * k, 7);
    let w: Vec<i8> = bytes(k * n, 8).into_iter().map(|v| v as i8).collect();
    let source = int8::ASource8::Matrix {
        data: &a,
        rows: m,
        lda: k,
    };
    let packed = int8::PackedB8::with_kernel(
        &w,
        k,
        n,
        int8::kernel_for(Isa::Amx),
        int8::blocking::DEFAULT,
    );
    let run = || {
        let mut c = vec![0i32; m * n];
        int8::gemm_u8s8(&source, &packed, int8::Output8::I32 { c: &mut c, ldc: n });
        c
    };
    let configured = || {
        let mut on: Vec<bool> = rayon::broadcast(|_| thread_tiles_configured());
        on.push(thread_tiles_configured());
        on
    };
    // A pool of its own: the other tests' GEMMs on the global pool configure its threads' tiles
    // at any moment.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        let first = run();
        assert!(
            configured().contains(&true),
            "a kernel ran: some thread holds the tiles"
        );
        release_thread_tiles();
        assert!(!configured().contains(&true), "{:?}", configured());
        assert!(run() == first, "the GEMM after the release differs");
        release_thread_tiles();
    });
}
