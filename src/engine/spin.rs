//! How the compute worker waits for its next job: awake for a short while
//! when that pays, asleep otherwise.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

/// Waiting awake for the next job, when that pays. After a batch of at
/// most [`Spin::SMALL`] jobs the worker is lightly loaded, and a lone
/// session's next step comes within a round trip; waking a sleeping thread
/// costs tens of µs on a VM, as much as the step itself (BENCHMARKS.md,
/// issue 18). So the worker polls its queue for up to `limit`, yielding its
/// core to anything runnable, before it sleeps — but only while waits have
/// been that short: a wait that outlasts the limit (clients across a real
/// network, a trickle of requests) turns spinning off until a wait short
/// enough to have been caught is seen again. A loaded worker (larger
/// batches) never spins: its queue is rarely empty.
pub(super) struct Spin {
    limit: Duration,
    pub(super) last_batch: usize,
    pays: bool,
}

impl Spin {
    const SMALL: usize = 2;

    pub(super) fn new(limit: Duration) -> Self {
        Spin {
            limit,
            last_batch: 0,
            pays: true,
        }
    }

    /// Polls for a job until `idle_from + limit` when spinning pays; true
    /// when one came (or the queue closed: the next `recv` says so).
    pub(super) fn wait<T>(
        &mut self,
        rx: &Receiver<T>,
        pending: &mut VecDeque<T>,
        idle_from: Instant,
    ) -> bool {
        if self.limit.is_zero() || !self.pays || self.last_batch > Self::SMALL {
            return false;
        }
        let until = idle_from + self.limit;
        loop {
            match rx.try_recv() {
                Ok(j) => {
                    pending.push_back(j);
                    return true;
                }
                Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => {}
            }
            if Instant::now() >= until {
                self.pays = false;
                return false;
            }
            std::thread::yield_now();
        }
    }

    /// After a sleep: spinning pays again if this wait was short enough.
    pub(super) fn slept(&mut self, idle_from: Instant) {
        self.pays = idle_from.elapsed() <= self.limit;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;

    #[test]
    fn the_worker_spins_only_while_lightly_loaded_and_while_waits_are_short() {
        let (tx, rx) = sync_channel::<u32>(4);
        let mut pending = VecDeque::new();
        // Off: never polls.
        let mut off = Spin::new(Duration::ZERO);
        assert!(!off.wait(&rx, &mut pending, Instant::now()));
        // A wait that outlasts the limit turns spinning off...
        let mut spin = Spin::new(Duration::from_millis(5));
        assert!(!spin.wait(&rx, &mut pending, Instant::now()));
        assert!(!spin.pays);
        // ...until a sleep short enough to have been caught.
        spin.slept(Instant::now() - Duration::from_millis(50));
        assert!(!spin.pays);
        spin.slept(Instant::now());
        assert!(spin.pays);
        // A loaded worker (a larger batch) sleeps at once.
        spin.last_batch = Spin::SMALL + 1;
        assert!(!spin.wait(&rx, &mut pending, Instant::now()));
        assert!(spin.pays, "not a failed spin: it did not spin");
        // A closed queue ends the spin (the next recv reports it).
        drop(tx);
        let mut long = Spin::new(Duration::from_secs(60));
        assert!(!long.wait(&rx, &mut pending, Instant::now()));
        // Not a timed-out spin (that would have turned spinning off).
        assert!(long.pays);
        assert!(pending.is_empty());
    }
}
