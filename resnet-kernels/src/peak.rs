//! The machine's measured FMA peak, the yardstick for "percentage of peak" in benchmarks.
//!
//! A loop of independent fused multiply-adds (enough chains to hide the FMA latency) runs on
//! every thread of the current rayon pool at once; the sum of their rates is the peak.

use crate::cpu::Isa;
use std::time::Instant;

/// Measured peak in GFLOP/s (2 FLOPs per FMA lane) of the f32 kernel `isa` selects, on all
/// threads of the current pool. The probe is the kernel line's own ([`crate::registry`]).
pub fn measure_peak_gflops(isa: Isa) -> f64 {
    let kernel = crate::gemm::kernel_for(isa);
    let rates = rayon::broadcast(|_| single_thread_gflops(kernel));
    rates.iter().sum()
}

/// The rate of a throughput probe on every thread of the current pool at once, summed: each
/// thread warms up with `iters / 10` rounds (clock ramp, AVX-512 or AMX licence), then keeps the
/// best of 3 timed runs of `iters`. `probe(iters)` returns the multiply-adds done, or `None` when
/// the CPU cannot run it. Returns G multiply-adds per second x 2, i.e. GFLOP/s (or GOP/s).
pub(crate) fn pool_rate_g2(probe: impl Fn(usize) -> Option<f64> + Sync, iters: usize) -> f64 {
    let rates = rayon::broadcast(|_| {
        probe(iters / 10);
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let macs = probe(iters).unwrap_or(0.0);
                2.0 * macs / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    });
    rates.iter().sum()
}

fn single_thread_gflops(kernel: &crate::gemm::F32Kernel) -> f64 {
    // Each f32 kernel's tile is two vectors wide, so NR/2 is its vector width: about 20 M
    // rounds' worth of 1-lane FMAs at every width (the portable line counts as 8 lanes: its probe
    // only needs to be correct, not long).
    let iters = 20_000_000usize / (kernel.info.nr / 2).max(1);
    // Warm up (clock ramp, AVX-512 licence), then measure the best of three.
    kernel.run_peak_probe(iters / 4);
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let flops = kernel.run_peak_probe(iters).unwrap_or(0.0);
            flops / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// The portable kernel's probe: 64 chains (its 4 x 16 tile) of the multiply and add the
/// portable kernel does (`acc += a * b`, unfused, which the compiler vectorises for the
/// baseline ISA). Returns the FLOPs done. (`f32::mul_add` here had been a call to the C library's software `fmaf` on a
/// baseline build: 2 GFLOP/s on the Xeon 167, so the bench put the portable kernel, at 37, at
/// 2000% of its "peak".)
///
/// # Safety
/// None needed (plain Rust); `unsafe` only to share the probe signature of the SIMD lines.
pub(crate) unsafe fn fma_portable(iters: usize) -> f64 {
    let mut acc = [1.0f32; 64];
    let (m, add) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = *a * m + add;
        }
    }
    std::hint::black_box(acc);
    (iters * 64 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    macro_rules! fma_loop {
        ($name:ident, $feat:literal, $ty:ty, $lanes:literal, $set1:ident, $fma:ident) => {
            /// 12 independent FMA chains for `iters` rounds; returns the FLOPs done.
            ///
            /// # Safety
            /// The CPU supports the features named.
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn $name(iters: usize) -> f64 {
                let m = $set1(0.999_999);
                let add = $set1(1e-7);
                let mut acc: [$ty; 12] = [$set1(1.0); 12];
                for _ in 0..iters {
                    for a in acc.iter_mut() {
                        *a = $fma(*a, m, add);
                    }
                }
                std::hint::black_box(acc);
                (iters * 12 * $lanes * 2) as f64
            }
        };
    }
    fma_loop!(
        fma_avx512,
        "avx512f",
        __m512,
        16,
        _mm512_set1_ps,
        _mm512_fmadd_ps
    );
    fma_loop!(
        fma_avx2,
        "avx2,fma",
        __m256,
        8,
        _mm256_set1_ps,
        _mm256_fmadd_ps
    );
}
