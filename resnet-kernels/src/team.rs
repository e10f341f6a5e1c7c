//! A persistent team of worker threads for the parallel regions of a forward pass.
//!
//! # Why not rayon alone
//!
//! A batch-1 forward pass opens 20 to 40 parallel regions (one per convolution, a few more for
//! pooling, quantisation and Winograd's transforms), each 50 to 300 µs long. Between two regions
//! rayon's idle workers yield a few times and then go to sleep on a futex, so the next region
//! starts with a wake-up: measured with `benches/examples/parallel_region.rs`, a region that
//! follows 200 µs of serial work costs 14 to 31 µs more than back-to-back ones (Intel Xeon model
//! 167 under KVM, 2026-12-07; 1 to 28 µs on the model 207, docs/performance.md) — a tenth of an `int8` pass on an AMX machine.
//!
//! Here the helpers **spin** for [`SPIN`] after each region, waiting for the next one, and only
//! then park (so an idle server does not burn a core: at most [`SPIN`] of spinning per helper
//! after its last job). The caller of a region takes part in it, so a team for `T` threads is
//! the caller plus `T - 1` helpers; `T` is the current rayon pool's thread count, so
//! `--threads` (which sizes that pool) is honoured.
//!
//! # When rayon still runs a region
//!
//! One region runs on the team at a time. A region that starts while another thread's region
//! holds the team (several inferences at once in a server, or tests running in parallel) runs
//! on rayon as before; a region opened from inside a region (a GEMM inside Winograd's 36)
//! runs on the calling thread alone, since the team is already busy with the outer one.
//!
//! # The protocol
//!
//! One atomic word holds the job's generation (high 32 bits) and its next unclaimed item (low
//! 32 bits). A thread claims items `i..i + k` by a compare-and-swap of `(g, i)` to `(g, i + k)`
//! (`k` a share of what is left, so each thread walks contiguous runs), so a helper that is late
//! can never claim an item of a newer job: its compare-and-swap fails once the generation has
//! moved on. A caller first closes the previous generation (next item `u32::MAX`: nothing to
//! claim), then publishes its item count and job, then opens a new generation; so a helper that
//! read the old state and the new item count cannot claim past the old job's end. The job (a
//! pointer to the caller's closure) stays valid while any claimed item is unfinished, because
//! the caller returns only once every item is done.

use rayon::prelude::*;
use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long a helper spins for the next region before it parks. Long enough to bridge the
/// serial work between two layers (tens of µs), short enough that an idle process gives its
/// cores back at once.
pub const SPIN: Duration = Duration::from_micros(200);

thread_local! {
    /// Whether this thread is running an item of a team job (a region opened there runs
    /// serially).
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

/// The job a caller publishes: its items and where its closure is.
type Job<'f> = &'f (dyn Fn(usize) + Sync);

struct Team {
    /// Held by the caller of the region running on the team.
    caller: Mutex<()>,
    /// Generation (high 32 bits) and next unclaimed item (low 32 bits) of the current job.
    state: AtomicU64,
    /// Items of the current job.
    items: AtomicUsize,
    /// Helpers that take part in the current job (helpers `0..wanted`).
    wanted: AtomicUsize,
    /// Points at the caller's [`Job`] (a thin pointer to the fat one).
    job: AtomicPtr<()>,
    /// Items of the current job that are finished.
    done: AtomicUsize,
    /// Whether an item of the current job panicked on a helper.
    panicked: AtomicBool,
    /// Helpers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    /// Helpers started so far (they live as long as the process).
    helpers: Mutex<usize>,
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team {
        caller: Mutex::new(()),
        state: AtomicU64::new(0),
        items: AtomicUsize::new(0),
        wanted: AtomicUsize::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        sleepers: AtomicUsize::new(0),
        park: Mutex::new(()),
        wake: Condvar::new(),
        helpers: Mutex::new(0),
    })
}

const fn generation(state: u64) -> u32 {
    (state >> 32) as u32
}

impl Team {
    /// Claims and runs items of generation `gen` until none is left; returns the payload of a
    /// panic of one of them (the others still run, and are counted done).
    fn work(&self, gen: u32) -> Option<Box<dyn Any + Send>> {
        let mut payload = None;
        loop {
            let state = self.state.load(Ordering::Acquire);
            let first = (state & u64::from(u32::MAX)) as usize;
            let items = self.items.load(Ordering::Acquire);
            if generation(state) != gen || first >= items {
                return payload;
            }
            // Guided claims: a share of what is left (half of an even split), at least one item,
            // so each thread walks contiguous runs of items (neighbouring rows of C share their
            // A rows and B panels in cache) and the last claims are small enough to balance.
            let participants = self.wanted.load(Ordering::Acquire) + 1;
            let take = ((items - first) / (2 * participants)).max(1);
            if self
                .state
                .compare_exchange_weak(
                    state,
                    state + take as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                continue;
            }
            // SAFETY: items `first..first + take` of generation `gen` are claimed and not done,
            // so the caller that published the job is still waiting in `for_each` for them: the
            // job pointer is that caller's (it publishes a new one only after every item is
            // done) and the `Job` it points at lives on the caller's stack until then.
            let job: Job<'_> = unsafe { *self.job.load(Ordering::Acquire).cast::<Job<'_>>() };
            IN_JOB.with(|j| j.set(true));
            for item in first..first + take {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| job(item))) {
                    // Recorded before the items count as done, so the caller sees it.
                    self.panicked.store(true, Ordering::Release);
                    payload = Some(p);
                }
            }
            IN_JOB.with(|j| j.set(false));
            self.done.fetch_add(take, Ordering::AcqRel);
        }
    }

    /// A helper's life: wait for a job (spinning, then parked), take part if wanted, repeat.
    fn helper(&'static self, index: usize) {
        let mut seen = generation(self.state.load(Ordering::Acquire));
        loop {
            let spin_until = Instant::now() + SPIN;
            let gen = loop {
                let gen = generation(self.state.load(Ordering::Acquire));
                if gen != seen {
                    break Some(gen);
                }
                if Instant::now() >= spin_until {
                    break None;
                }
                std::hint::spin_loop();
            };
            let gen = match gen {
                Some(gen) => gen,
                None => {
                    // Idle: give the tile state back before sleeping (see amx::release_thread_tiles).
                    crate::amx::release_this_thread_tiles();
                    let mut guard = self.park.lock().unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_add(1, Ordering::SeqCst);
                    let gen = loop {
                        let gen = generation(self.state.load(Ordering::SeqCst));
                        if gen != seen {
                            break gen;
                        }
                        guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                    };
                    self.sleepers.fetch_sub(1, Ordering::SeqCst);
                    gen
                }
            };
            seen = gen;
            if index < self.wanted.load(Ordering::Acquire) {
                // A panic is recorded in `panicked` and raised again by the caller.
                let _ = self.work(gen);
            }
        }
    }

    /// Starts helpers until there are `count`.
    fn ensure_helpers(&'static self, count: usize) -> bool {
        let mut started = self.helpers.lock().unwrap_or_else(|e| e.into_inner());
        while *started < count {
            let index = *started;
            let spawned = std::thread::Builder::new()
                .name(format!("resnet-team-{index}"))
                .spawn(move || self.helper(index));
            if spawned.is_err() {
                return false;
            }
            *started += 1;
        }
        true
    }
}

/// Runs `f(i)` for every `i` in `0..n`, in parallel on the team (the caller and the current rayon
/// pool's thread count minus one helpers), or on rayon when another region holds the team, or on
/// the calling thread alone inside a region or with one thread. Returns when every call has
/// returned; a panic of any of them is raised again here once all are done.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    let threads = rayon::current_num_threads();
    if n <= 1 || threads <= 1 || IN_JOB.with(Cell::get) {
        without_team(n, &f, false);
        return;
    }
    // Fewer than u32::MAX: the closed state's next item (u32::MAX) must be past every job.
    assert!(n < u32::MAX as usize, "too many items for one region: {n}");
    let team = team();
    let _caller = match team.caller.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            without_team(n, &f, true);
            return;
        }
    };
    if !team.ensure_helpers(threads - 1) {
        without_team(n, &f, true);
        return;
    }
    let job: Job<'_> = &f;
    // First close the last generation (a generation with nothing left to claim), and only then
    // change `items` and `job`: a helper that read the last job's state, was descheduled, and
    // then read the new `items` could otherwise claim "items" past the last job's end with a
    // compare-and-swap that still succeeds, and run them through a job pointer already cleared
    // (a null dereference seen once on a team helper, 2026-12-07). Once closed, any such
    // compare-and-swap fails: acquiring the new `items` also makes the closing store visible.
    let closed = generation(team.state.load(Ordering::Acquire)).wrapping_add(1);
    team.state.store(
        u64::from(closed) << 32 | u64::from(u32::MAX),
        Ordering::SeqCst,
    );
    team.items.store(n, Ordering::Release);
    team.done.store(0, Ordering::Release);
    team.panicked.store(false, Ordering::Release);
    team.wanted.store(threads - 1, Ordering::Release);
    team.job
        .store((&raw const job).cast_mut().cast(), Ordering::Release);
    // A new generation again, so that helpers which woke for the closing one see this one.
    let gen = closed.wrapping_add(1);
    team.state.store(u64::from(gen) << 32, Ordering::SeqCst);
    if team.sleepers.load(Ordering::SeqCst) > 0 {
        let _guard = team.park.lock().unwrap_or_else(|e| e.into_inner());
        team.wake.notify_all();
    }
    IN_JOB.with(|j| j.set(true));
    let mine = team.work(gen);
    IN_JOB.with(|j| j.set(false));
    // The helpers' claimed items reference `job` (on this stack): wait for every one of them.
    let mut waited = 0u32;
    while team.done.load(Ordering::Acquire) < n {
        waited = waited.saturating_add(1);
        if waited < 4096 {
            std::hint::spin_loop();
        } else {
            // A helper was descheduled mid-item: let it have the core.
            std::thread::yield_now();
        }
    }
    team.job.store(std::ptr::null_mut(), Ordering::Release);
    if let Some(payload) = mine {
        resume_unwind(payload);
    }
    if team.panicked.load(Ordering::Acquire) {
        panic!("a parallel item panicked on a team helper thread");
    }
}

/// A region without the team: on rayon (`parallel`) or on the calling thread, with the team's
/// contract all the same: every item runs, and a panic is raised again once all are done
/// (rayon alone would skip the items left after a panic).
fn without_team(n: usize, f: &(impl Fn(usize) + Sync), parallel: bool) {
    let first_panic: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    let run = |i: usize| {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            first_panic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(p);
        }
    };
    if parallel {
        (0..n).into_par_iter().for_each(run);
    } else {
        (0..n).for_each(run);
    }
    if let Some(p) = first_panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(p);
    }
}

/// Splits `data` into chunks of `chunk` elements (the last may be shorter) and runs
/// `f(index, chunk)` for each, as [`for_each`] runs its items.
///
/// # Panics
/// If `chunk` is 0 while `data` is not empty.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if data.is_empty() {
        return;
    }
    assert!(chunk > 0, "chunk length 0");
    let (len, base) = (data.len(), crate::tiling::SharedMut::new(data.as_mut_ptr()));
    for_each(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: `start..end` lies inside `data` (end <= len), item `i` is run exactly once,
        // and the ranges of different items are disjoint, so each chunk is borrowed mutably by
        // one call only, while `data` stays mutably borrowed by this function.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(i, part)
    });
}

/// Helpers started so far, and how many of them are parked (for tests).
#[doc(hidden)]
pub fn helpers_and_sleepers() -> (usize, usize) {
    let team = team();
    let started = *team.helpers.lock().unwrap_or_else(|e| e.into_inner());
    (started, team.sleepers.load(Ordering::SeqCst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    }

    /// Every item runs exactly once, for sizes around the thread count, with 2 to 4 threads.
    #[test]
    fn every_item_runs_once() {
        for threads in [2, 3, 4] {
            pool(threads).install(|| {
                for n in [0, 1, 2, 3, 5, 64, 1000] {
                    let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                    for_each(n, |i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(
                        hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                        "{threads} threads, {n} items"
                    );
                }
            });
        }
    }

    /// Back-to-back regions whose item counts alternate small and large, with more threads than
    /// this machine's cores (helpers get descheduled between reading a job's state and its item
    /// count): every item of every region runs exactly once. Before a region closed the last
    /// generation before publishing its item count, a late helper could claim past the old
    /// job's end and run a cleared job pointer: this test then died of SIGSEGV in 3 runs of 3
    /// (Xeon 167, 2 cores); it passes in about 1.5 s with the closing step.
    #[test]
    fn back_to_back_regions_of_changing_sizes() {
        pool(4).install(|| {
            for round in 0..200_000 {
                let n = if round % 2 == 0 { 3 } else { 200 + round % 7 };
                let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "round {round}, {n} items"
                );
            }
        });
    }

    /// A region inside a region runs (serially) and both complete; chunks cover the data once.
    #[test]
    fn nested_regions_and_chunks() {
        pool(2).install(|| {
            let mut data = vec![0u32; 1003];
            for_each_chunk_mut(&mut data, 100, |i, part| {
                assert!(part.len() == 100 || (i == 10 && part.len() == 3));
                let inner: Vec<AtomicU32> = (0..7).map(|_| AtomicU32::new(0)).collect();
                for_each(7, |j| {
                    inner[j].fetch_add(1, Ordering::Relaxed);
                });
                for (k, v) in part.iter_mut().enumerate() {
                    *v = (i * 100 + k) as u32
                        + inner.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u32>();
                }
            });
            for (k, &v) in data.iter().enumerate() {
                assert_eq!(v, k as u32 + 7, "element {k}");
            }
        });
    }

    /// Several threads opening regions at once: one gets the team, the others run on rayon, and
    /// every region is complete.
    #[test]
    fn concurrent_callers_all_complete() {
        std::thread::scope(|s| {
            for t in 0..4u32 {
                s.spawn(move || {
                    pool(2).install(|| {
                        for round in 0..200u32 {
                            let n = 3 + (round % 50) as usize;
                            let sum = AtomicU32::new(0);
                            for_each(n, |i| {
                                sum.fetch_add(i as u32 + t, Ordering::Relaxed);
                            });
                            let want = (n * (n - 1) / 2) as u32 + t * n as u32;
                            assert_eq!(
                                sum.load(Ordering::Relaxed),
                                want,
                                "caller {t} round {round}"
                            );
                        }
                    })
                });
            }
        });
    }

    /// A panic in an item reaches the caller after every other item ran, and the team still
    /// works afterwards; three callers at once, so regions also run without the team (on
    /// rayon), which must keep the same contract.
    #[test]
    fn a_panic_reaches_the_caller_and_the_team_survives() {
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(panics_reach_the_caller);
            }
        });
    }

    fn panics_reach_the_caller() {
        pool(2).install(|| {
            for _ in 0..20 {
                let ran = AtomicU32::new(0);
                let result = catch_unwind(AssertUnwindSafe(|| {
                    for_each(50, |i| {
                        ran.fetch_add(1, Ordering::Relaxed);
                        if i == 17 {
                            panic!("item 17");
                        }
                    })
                }));
                assert!(result.is_err(), "the panic was lost");
                assert_eq!(ran.load(Ordering::Relaxed), 50, "items were skipped");
            }
            let sum = AtomicU32::new(0);
            for_each(100, |i| {
                sum.fetch_add(i as u32, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 4950);
        });
    }
}
