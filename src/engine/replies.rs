//! The server-wide budget for the last replies sessions keep to answer a
//! retried step message exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of last replies that all sessions together may keep for retries
/// (`--max-retained-reply-bytes`). Without it, sessions × the largest reply
/// (4096 rows × outputs) would be unbounded by anything but the session cap.
pub struct ReplyBudget {
    used: AtomicU64,
    limit: u64,
}

/// One kept reply's share of the budget, given back when the reply is
/// replaced or its session dropped.
pub struct ReplyCharge {
    bytes: u64,
    budget: Arc<ReplyBudget>,
}

impl ReplyBudget {
    pub fn new(limit: u64) -> Arc<ReplyBudget> {
        Arc::new(ReplyBudget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    /// Takes `bytes` from the budget, or None when it would pass the limit.
    pub fn charge(self: &Arc<Self>, bytes: u64) -> Option<ReplyCharge> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .ok()
            .map(|_| ReplyCharge {
                bytes,
                budget: self.clone(),
            })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for ReplyCharge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_stop_at_the_limit_and_come_back_when_dropped() {
        let budget = ReplyBudget::new(100);
        let a = budget.charge(60).expect("60 of 100");
        assert!(budget.charge(41).is_none(), "101 would pass the limit");
        let b = budget.charge(40).expect("exactly 100");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.charge(u64::MAX).is_none(), "no overflow");
    }
}
