//! Bounds on the work in flight, so that no client can take the machine:
//!
//! - [`BodyBudget`]: bytes of request bodies held at once. A body that does not fit gets 503
//!   with `Retry-After` before it is read; a body's share is given back when the last piece of
//!   it (e.g. a multipart part) is dropped, since the reservation is the owner of its bytes.
//! - [`DecodeBudget`]: concurrent decodes and the bytes of decoded pixels in flight. A decode
//!   waits for its share, in a fair order: requests take turns, one image each, so a batch of
//!   32 huge images does not make a single request wait for all 32.
//! - [`RequestScope`]: each request's identity (its turn in that order) and its cancellation
//!   flag, set when the request ends for any reason (answered, deadline passed, client gone).
//!   Waits of a request that is gone leave the queue; a running decode stops at its next check.

use crate::metrics::Metrics;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

tokio::task_local! {
    static REQUEST: RequestScope;
}

/// One request: its turn in the decode order and its cancellation flag.
#[derive(Clone, Debug)]
pub struct RequestScope {
    /// Distinct per request.
    pub id: u64,
    /// Set once the request is over (answered, timed out, or dropped with its connection).
    pub cancelled: Arc<AtomicBool>,
}

/// Sets the scope's flag when dropped: whatever way the request's future ends.
pub struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl RequestScope {
    /// A fresh scope, and the guard that cancels it.
    pub fn new() -> (RequestScope, CancelOnDrop) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        let scope = RequestScope {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            cancelled: Arc::clone(&cancelled),
        };
        (scope, CancelOnDrop(cancelled))
    }

    /// Runs `fut` with this scope as the current request's.
    pub async fn run<F: std::future::Future>(self, fut: F) -> F::Output {
        REQUEST.scope(self, fut).await
    }

    /// The scope of the request being handled (a fresh, never-cancelled one outside a request).
    pub fn current() -> RequestScope {
        REQUEST
            .try_with(RequestScope::clone)
            .unwrap_or_else(|_| RequestScope::new().0)
    }

    /// True once the request is over.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bytes of request bodies held at once.
pub struct BodyBudget {
    limit: u64,
    used: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A share of the [`BodyBudget`], given back on drop.
pub struct BodyShare {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64, metrics: Arc<Metrics>) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            limit,
            used: AtomicU64::new(0),
            metrics,
        })
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `bytes` more into `share`, or says no (nothing taken) when they do not fit.
    pub fn grow(self: &Arc<Self>, share: &mut BodyShare, bytes: u64) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(bytes).filter(|n| *n <= self.limit) else {
                self.metrics.memory_refused();
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        share.bytes += bytes;
        self.metrics.body_bytes_add(bytes as i64);
        true
    }

    /// An empty share.
    pub fn share(self: &Arc<Self>) -> BodyShare {
        BodyShare {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }
}

impl Drop for BodyShare {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.metrics.body_bytes_add(-(self.bytes as i64));
    }
}

/// A body's bytes with their share of the budget: the share is given back when the last
/// `Bytes` pointing into them is dropped.
struct OwnedBody {
    data: Vec<u8>,
    _share: BodyShare,
}

impl AsRef<[u8]> for OwnedBody {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// `data` as `Bytes` that keep `share` until the last of them is dropped.
pub fn body_bytes(data: Vec<u8>, share: BodyShare) -> Bytes {
    Bytes::from_owner(OwnedBody {
        data,
        _share: share,
    })
}

/// Concurrent decodes and decoded bytes in flight, granted in a fair order.
#[derive(Clone)]
pub struct DecodeBudget {
    inner: Arc<DecodeInner>,
}

struct DecodeInner {
    slots: usize,
    bytes: u64,
    /// Decodes of at most this many bytes may also run in one extra slot, on bytes large
    /// decodes leave free: an ordinary photo is not made to wait for a 64-megapixel decode.
    lane: u64,
    state: Mutex<DecodeState>,
    metrics: Arc<Metrics>,
}

struct DecodeState {
    /// Decodes running, and how many of them are large (over the small lane's size).
    running: usize,
    running_large: usize,
    free_bytes: u64,
    /// Bytes held by large decodes (at most `bytes - lane`).
    large_bytes: u64,
    /// Requests with waiting decodes, in arrival order.
    turns: VecDeque<Turn>,
}

struct Turn {
    request: u64,
    /// Decodes this request was granted so far: the least served request goes first.
    granted: u64,
    /// Its decodes running now (the turn is kept while any runs, so its count is kept).
    running: usize,
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    cost: u64,
    grant: oneshot::Sender<DecodePermit>,
}

/// The right to run one decode; its share is given back on drop.
pub struct DecodePermit {
    inner: Arc<DecodeInner>,
    request: u64,
    cost: u64,
    large: bool,
    armed: bool,
}

/// The small lane: a quarter of the decode bytes, at most 64 MiB (a 21-megapixel RGB image).
fn lane_bytes(bytes: u64) -> u64 {
    (bytes / 4).min(64 << 20)
}

impl DecodeBudget {
    /// At most `slots` decodes at once, holding at most `bytes` of decoded pixels.
    pub fn new(slots: usize, bytes: u64, metrics: Arc<Metrics>) -> DecodeBudget {
        let slots = slots.max(1);
        DecodeBudget {
            inner: Arc::new(DecodeInner {
                slots,
                bytes,
                lane: lane_bytes(bytes),
                state: Mutex::new(DecodeState {
                    running: 0,
                    running_large: 0,
                    free_bytes: bytes,
                    large_bytes: 0,
                    turns: VecDeque::new(),
                }),
                metrics,
            }),
        }
    }

    /// The decode slots and the bytes of decoded pixels.
    pub fn limits(&self) -> (usize, u64) {
        (self.inner.slots, self.inner.bytes)
    }

    /// Waits for a slot and `cost` bytes (an image larger than what large decodes may hold
    /// runs alone), in `request`'s turn. Dropping the future leaves the queue. `None` only if
    /// the budget is being torn down.
    pub async fn acquire(&self, request: u64, cost: u64) -> Option<DecodePermit> {
        let cost = if cost <= self.inner.lane {
            cost
        } else {
            cost.min(self.inner.bytes - self.inner.lane)
        };
        let (grant, granted) = oneshot::channel();
        {
            let mut st = lock(&self.inner.state);
            let waiter = Waiter { cost, grant };
            match st.turns.iter_mut().find(|t| t.request == request) {
                Some(turn) => turn.waiting.push_back(waiter),
                None => st.turns.push_back(Turn {
                    request,
                    granted: 0,
                    running: 0,
                    waiting: VecDeque::from([waiter]),
                }),
            }
            self.inner.metrics.decodes_waiting_add(1);
            self.inner.grant(&mut st);
        }
        let mut waiting = WaitingGuard {
            metrics: &self.inner.metrics,
            done: false,
        };
        let permit = granted.await.ok();
        waiting.done = permit.is_some();
        permit
    }
}

/// Counts a wait that ended without a permit (its request is gone) as a cancelled decode.
struct WaitingGuard<'a> {
    metrics: &'a Metrics,
    done: bool,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.decode_cancelled();
        }
    }
}

impl DecodeInner {
    /// Grants what fits, in a fair order: the request granted the fewest decodes so far goes
    /// first (a newcomer before a batch that already had its turns; arrival order between
    /// equals). Large images are granted strictly in that order (when the next does not fit,
    /// the later ones wait, so they are not starved); a small image may pass a blocked large one
    /// into the small lane (one extra slot, on bytes large decodes leave free).
    fn grant(self: &Arc<Self>, st: &mut DecodeState) {
        loop {
            for turn in &mut st.turns {
                while turn.waiting.front().is_some_and(|w| w.grant.is_closed()) {
                    turn.waiting.pop_front();
                    self.metrics.decodes_waiting_add(-1);
                }
            }
            st.turns.retain(|t| !t.waiting.is_empty() || t.running > 0);
            let mut order: Vec<usize> = (0..st.turns.len())
                .filter(|&i| !st.turns[i].waiting.is_empty())
                .collect();
            order.sort_by_key(|&i| st.turns[i].granted); // stable: arrival order between equals
            let mut large_blocked = false;
            let mut chosen = None;
            for i in order {
                let Some(cost) = st.turns[i].waiting.front().map(|w| w.cost) else {
                    continue;
                };
                let large = cost > self.lane;
                if large && large_blocked {
                    continue; // strict order among large images
                }
                let mut fits = st.running <= self.slots
                    && cost <= st.free_bytes
                    && (!large
                        || (st.running_large < self.slots
                            && st.large_bytes + cost <= self.bytes - self.lane));
                if large_blocked {
                    // A small image passing a blocked large one uses the small lane only.
                    fits &= st.running == st.running_large;
                }
                if fits {
                    chosen = Some((i, large));
                    break;
                }
                if !large {
                    break;
                }
                large_blocked = true;
            }
            let Some((index, large)) = chosen else {
                return;
            };
            let turn = &mut st.turns[index];
            let Some(waiter) = turn.waiting.pop_front() else {
                return;
            };
            let request = turn.request;
            let permit = DecodePermit {
                inner: Arc::clone(self),
                request,
                cost: waiter.cost,
                large,
                armed: true,
            };
            self.metrics.decodes_waiting_add(-1);
            match waiter.grant.send(permit) {
                Ok(()) => {
                    turn.granted += 1;
                    turn.running += 1;
                    st.running += 1;
                    if large {
                        st.running_large += 1;
                        st.large_bytes += waiter.cost;
                    }
                    st.free_bytes -= waiter.cost;
                    self.metrics.decode_bytes_add(waiter.cost as i64);
                }
                // Its request left in the meantime: nothing was taken (the refused permit is
                // disarmed, since dropping it would lock the state again).
                Err(mut refused) => refused.armed = false,
            }
        }
    }
}

impl Drop for DecodePermit {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.inner.metrics.decode_bytes_add(-(self.cost as i64));
        let mut st = lock(&self.inner.state);
        st.running -= 1;
        st.free_bytes += self.cost;
        if self.large {
            st.running_large -= 1;
            st.large_bytes -= self.cost;
        }
        if let Some(turn) = st.turns.iter_mut().find(|t| t.request == self.request) {
            turn.running -= 1;
        }
        self.inner.grant(&mut st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Request 1 queues four large images, request 2 one: with one slot, request 2's image (the
    /// least served request) is the second granted, not the fifth.
    #[tokio::test]
    async fn the_least_served_request_goes_first() {
        let budget = DecodeBudget::new(1, 400, Arc::new(Metrics::default()));
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = budget.acquire(1, 200).await.unwrap();
        let mut tasks = Vec::new();
        for (request, tag) in [(1, "a2"), (1, "a3"), (1, "a4"), (2, "b1"), (1, "a5")] {
            let (budget, order) = (budget.clone(), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let permit = budget.acquire(request, 200).await.unwrap();
                lock(&order).push(tag);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(permit);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*lock(&order), ["b1", "a2", "a3", "a4", "a5"]);
    }

    /// The byte bound holds, a too-large image runs alone (beside the small lane), an abandoned
    /// wait frees its place, and a small image runs while the large slots are taken.
    #[tokio::test]
    async fn bytes_are_bounded_and_small_images_have_a_lane() {
        let metrics = Arc::new(Metrics::default());
        // 400 bytes: the lane is 100, large decodes share 300 and one slot.
        let budget = DecodeBudget::new(1, 400, Arc::clone(&metrics));
        let a = budget.acquire(1, 200).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.acquire(2, 200)).await;
        assert!(waiting.is_err(), "one large slot");
        assert!(metrics
            .render()
            .contains("resnet_decodes_cancelled_total 1\n"));
        let small = tokio::time::timeout(Duration::from_millis(50), budget.acquire(3, 100))
            .await
            .expect("the small lane is free");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), budget.acquire(4, 50))
                .await
                .is_err(),
            "one large and one small decode: both slots taken"
        );
        drop((a, small));
        let huge = budget.acquire(5, 10_000).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), budget.acquire(6, 101))
                .await
                .is_err(),
            "the oversized image holds the large slot"
        );
        let _lane = budget.acquire(7, 100).await.unwrap();
        drop(huge);
        let _b = budget.acquire(8, 300).await.unwrap();
    }

    #[test]
    fn body_shares_add_up_and_are_given_back_with_the_last_bytes() {
        let budget = BodyBudget::new(100, Arc::new(Metrics::default()));
        let mut share = budget.share();
        assert!(budget.grow(&mut share, 70));
        let mut other = budget.share();
        assert!(!budget.grow(&mut other, 31), "over the budget");
        assert!(budget.grow(&mut other, 30));
        drop(other);
        let bytes = body_bytes(vec![1; 70], share);
        let part = bytes.slice(10..20);
        drop(bytes);
        let mut third = budget.share();
        assert!(
            !budget.grow(&mut third, 31),
            "the slice still holds the share"
        );
        drop(part);
        assert!(budget.grow(&mut third, 100));
    }
}
