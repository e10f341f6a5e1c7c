//! The worker team in a process of its own (no other test's regions wake its helpers): regions
//! really run on the helpers, and idle helpers park instead of spinning on.

use resnet_kernels::team::{for_each, helpers_and_sleepers, SPIN};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// 20 regions of 64 items of 50 µs each (long enough that the helper, spinning or woken, takes
/// some of them) in `pool`; the names of the threads that ran items.
fn busy_regions(pool: &rayon::ThreadPool) -> HashSet<String> {
    let names = Mutex::new(HashSet::new());
    pool.install(|| {
        for _ in 0..20 {
            for_each(64, |_| {
                let until = Instant::now() + Duration::from_micros(50);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                let name = std::thread::current().name().unwrap_or("").to_string();
                names.lock().unwrap().insert(name);
            });
        }
    });
    names.into_inner().unwrap()
}

fn on_a_helper(names: &HashSet<String>) -> bool {
    names.iter().any(|n| n.starts_with("resnet-team-"))
}

#[test]
fn regions_run_on_the_helpers_and_idle_helpers_park() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    let names = busy_regions(&pool);
    assert!(
        on_a_helper(&names),
        "no item ran on a team helper: {names:?}"
    );
    let (started, _) = helpers_and_sleepers();
    assert_eq!(started, 1, "a 2-thread pool needs one helper");
    // After SPIN without regions the helper parks (it does not spin while idle).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (started, sleepers) = helpers_and_sleepers();
        if sleepers == started {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sleepers} of {started} helpers parked after 5 s"
        );
        std::thread::sleep(SPIN * 2);
    }
    // And a parked helper is woken by the next region.
    let before = Instant::now();
    let names = busy_regions(&pool);
    assert!(
        on_a_helper(&names),
        "the parked helper was not woken: {names:?}"
    );
    assert!(before.elapsed() < Duration::from_secs(5));
}
