//! The machine's measured FMA peak, the yardstick for "percentage of peak" in benchmarks.
//!
//! A loop of independent fused multiply-adds (enough chains to hide the FMA latency) runs on
//! every thread of the current rayon pool at once; the sum of their rates is the peak.

use crate::cpu::Isa;
use std::time::Instant;

/// Measured peak in GFLOP/s (2 FLOPs per FMA lane) for `isa` on all threads of the current pool.
pub fn measure_peak_gflops(isa: Isa) -> f64 {
    let rates = rayon::broadcast(|_| single_thread_gflops(isa));
    rates.iter().sum()
}

fn single_thread_gflops(isa: Isa) -> f64 {
    let iters = 20_000_000usize / lanes(isa);
    // Warm up (clock ramp, AVX-512 licence), then measure the best of three.
    run(isa, iters / 4);
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let flops = run(isa, iters);
            flops / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn lanes(isa: Isa) -> usize {
    match isa.f32_level() {
        Isa::Portable => 1,
        Isa::Avx2 => 8,
        Isa::Avx512 => 16,
        Isa::AvxVnni | Isa::Vnni | Isa::Avx512Bf16 | Isa::Amx => {
            unreachable!("f32_level maps the VNNI levels away")
        }
    }
}

/// Runs `iters` rounds of 12 independent FMA chains; returns the FLOPs done.
fn run(isa: Isa, iters: usize) -> f64 {
    match isa.f32_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the ISA was checked as supported by the caller's `Isa::supported()` choice,
        // and the functions touch no memory.
        Isa::Avx512 if isa.is_supported() => unsafe { x86::fma_avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 if isa.is_supported() => unsafe { x86::fma_avx2(iters) },
        _ => {
            let mut acc = [1.0f32; 12];
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = a.mul_add(0.999_999, 1e-7);
                }
            }
            std::hint::black_box(acc);
        }
    }
    (iters * 12 * lanes(isa) * 2) as f64
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    macro_rules! fma_loop {
        ($name:ident, $feat:literal, $ty:ty, $set1:ident, $fma:ident) => {
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(iters: usize) {
                let m = $set1(0.999_999);
                let add = $set1(1e-7);
                let mut acc: [$ty; 12] = [$set1(1.0); 12];
                for _ in 0..iters {
                    for a in acc.iter_mut() {
                        *a = $fma(*a, m, add);
                    }
                }
                std::hint::black_box(acc);
            }
        };
    }
    fma_loop!(
        fma_avx512,
        "avx512f",
        __m512,
        _mm512_set1_ps,
        _mm512_fmadd_ps
    );
    fma_loop!(
        fma_avx2,
        "avx2,fma",
        __m256,
        _mm256_set1_ps,
        _mm256_fmadd_ps
    );
}
