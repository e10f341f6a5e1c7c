//! What one parallel region costs on this machine: a rayon `for_each` over one work item per
//! thread that does nothing, timed back to back and after a gap of serial work (the gap lets the
//! workers go back to sleep, as they may between two layers), beside the layer it would wrap.
//!
//! `cargo run --release -p resnet-benches --example parallel_region [THREADS]`
//!
//! The same regions on `resnet_kernels::team` (what the kernels use since 2026-12-07) are timed
//! after rayon's.
//!
//! A batch-1 forward pass of `native` (Winograd auto) opens about 40 regions: 20 convolutions,
//! of which the 10 Winograd ones open 3 each (input transform, the 36 GEMMs, output transform).
use rayon::prelude::*;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Median and 90th percentile in microseconds of `rounds` timings of `f`, each after `gap` of
/// busy serial work on the calling thread.
fn time_us(rounds: usize, gap: Duration, mut f: impl FnMut()) -> (f64, f64) {
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            let until = Instant::now() + gap;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    println!("{threads} threads: one empty parallel region (one item per thread), microseconds");
    println!(
        "{:<34} {:>8} {:>8}",
        "gap before the region", "median", "p90"
    );
    pool.install(|| {
        for gap_us in [0u64, 20, 200, 2000] {
            let (med, p90) = time_us(
                2000.min(200_000 / (gap_us + 1) as usize + 200),
                Duration::from_micros(gap_us),
                || {
                    (0..threads).into_par_iter().for_each(|i| {
                        black_box(i);
                    })
                },
            );
            println!(
                "{:<34} {med:>8.1} {p90:>8.1}",
                format!("{gap_us} us of serial work")
            );
        }
        // The same with rayon::join (what the Winograd and block code nest into).
        let (med, p90) = time_us(2000, Duration::ZERO, || {
            rayon::join(|| black_box(1), || black_box(2));
        });
        println!("{:<34} {med:>8.1} {p90:>8.1}", "rayon::join, back to back");
        // Wake-up: how long after the region opens does the item run by another thread start,
        // and how often does no other thread take an item at all (the caller runs them all).
        for gap_us in [20u64, 200, 2000] {
            let mut delays = Vec::new();
            let mut alone = 0;
            let rounds = 300;
            for _ in 0..rounds {
                let until = Instant::now() + Duration::from_micros(gap_us);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                let caller = rayon::current_thread_index();
                let t0 = Instant::now();
                let starts: Vec<(Option<usize>, f64)> = (0..threads)
                    .into_par_iter()
                    .map(|_| {
                        let start = t0.elapsed().as_secs_f64() * 1e6;
                        let until = Instant::now() + Duration::from_micros(50);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        (rayon::current_thread_index(), start)
                    })
                    .collect();
                match starts.iter().find(|(t, _)| *t != caller) {
                    Some((_, d)) => delays.push(*d),
                    None => alone += 1,
                }
            }
            delays.sort_by(f64::total_cmp);
            let med = delays.get(delays.len() / 2).copied().unwrap_or(f64::NAN);
            println!(
                "{:<34} {med:>8.1}   (items of 50 us; caller ran all items alone in {alone}/{rounds})",
                format!("wake after {gap_us} us gap")
            );
        }
        // The same empty region on the worker team the kernels use (resnet_kernels::team): its
        // helpers spin for team::SPIN after a region before they park.
        for gap_us in [0u64, 20, 200, 2000] {
            let (med, p90) = time_us(
                2000.min(200_000 / (gap_us + 1) as usize + 200),
                Duration::from_micros(gap_us),
                || {
                    resnet_kernels::team::for_each(threads, |i| {
                        black_box(i);
                    })
                },
            );
            println!(
                "{:<34} {med:>8.1} {p90:>8.1}",
                format!("team, {gap_us} us of serial work")
            );
        }
        // A region whose items take 100 us each: what is lost to wake-up and join beyond them.
        let work = Duration::from_micros(100);
        let (med, _) = time_us(1000, Duration::from_micros(20), || {
            (0..threads).into_par_iter().for_each(|_| {
                let until = Instant::now() + work;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            })
        });
        println!(
            "{:<34} {:>8.1} (overhead {:.1} us over the 100 us item)",
            "items of 100 us, 20 us gap",
            med,
            med - 100.0
        );
        for gap_us in [20u64, 200] {
            let (med, _) = time_us(1000, Duration::from_micros(gap_us), || {
                resnet_kernels::team::for_each(threads, |_| {
                    let until = Instant::now() + work;
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                })
            });
            println!(
                "{:<34} {:>8.1} (overhead {:.1} us over the 100 us item)",
                format!("team, items of 100 us, {gap_us} us gap"),
                med,
                med - 100.0
            );
        }
    });
}
