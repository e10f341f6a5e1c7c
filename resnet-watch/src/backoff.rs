//! Reconnecting: capped exponential backoff, and one log line per outage and one on recovery.

use std::time::{Duration, Instant};

/// Delays of 0.5 s, 1 s, 2 s, ... up to `max`, reset by [`Backoff::reset`].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

const FIRST: Duration = Duration::from_millis(500);

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: FIRST.min(max),
            max,
        }
    }

    /// The delay before the next attempt (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = FIRST.min(self.max);
    }
}

/// Tracks one source's outages so that each is logged once when it starts and once when it
/// ends, however many attempts it takes.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<(Instant, u32)>,
}

impl Outage {
    /// A failed connection or a lost stream. Returns whether this started a new outage.
    pub fn failed(&mut self, what: &str, why: &dyn std::fmt::Display) -> bool {
        match &mut self.since {
            Some((_, attempts)) => {
                *attempts += 1;
                log::debug!("{what}: still down: {why}");
                false
            }
            None => {
                log::warn!("{what}: lost: {why}; retrying with backoff");
                self.since = Some((Instant::now(), 1));
                true
            }
        }
    }

    /// A working connection again. Returns whether an outage ended.
    pub fn recovered(&mut self, what: &str) -> bool {
        match self.since.take() {
            Some((t, attempts)) => {
                log::info!(
                    "{what}: back after {:.1} s ({attempts} failed attempt{})",
                    t.elapsed().as_secs_f64(),
                    if attempts == 1 { "" } else { "s" }
                );
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(3));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn an_outage_starts_and_ends_once() {
        let mut o = Outage::default();
        assert!(o.failed("cam", &"refused"));
        assert!(!o.failed("cam", &"refused"));
        assert!(o.recovered("cam"));
        assert!(!o.recovered("cam"));
    }
}
