//! Round-trip percentiles, and the compute worker's batch sizes over the window.

use std::sync::atomic::Ordering;

use gru_serve::engine::batcher::{WorkerStats, BATCH_BUCKETS};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

#[derive(Debug, Serialize)]
pub struct BatchStats {
    pub batches: u64,
    pub session_steps: u64,
    pub mean_batch: f64,
    /// (lower bound of the power-of-two bucket, batches) for non-empty buckets.
    pub histogram: Vec<(u64, u64)>,
}

pub fn latency(v: &mut [u32]) -> Latency {
    if v.is_empty() {
        return Latency {
            count: 0,
            p50_us: f64::NAN,
            p95_us: f64::NAN,
            p99_us: f64::NAN,
            max_us: f64::NAN,
            mean_us: f64::NAN,
        };
    }
    v.sort_unstable();
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64;
    Latency {
        count: v.len() as u64,
        p50_us: q(0.50),
        p95_us: q(0.95),
        p99_us: q(0.99),
        max_us: *v.last().unwrap() as f64,
        mean_us: v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64,
    }
}

pub type Hist = (u64, u64, [u64; BATCH_BUCKETS]);

pub fn hist_snapshot(s: &WorkerStats) -> Hist {
    let mut h = [0u64; BATCH_BUCKETS];
    for (d, a) in h.iter_mut().zip(s.batch_size_hist.iter()) {
        *d = a.load(Ordering::Relaxed);
    }
    (
        s.batches.load(Ordering::Relaxed),
        s.session_steps.load(Ordering::Relaxed),
        h,
    )
}

pub fn batch_diff(a: &Hist, b: &Hist) -> BatchStats {
    let batches = b.0 - a.0;
    let session_steps = b.1 - a.1;
    let histogram = (0..BATCH_BUCKETS)
        .filter(|&i| b.2[i] > a.2[i])
        .map(|i| (1u64 << i, b.2[i] - a.2[i]))
        .collect();
    BatchStats {
        batches,
        session_steps,
        mean_batch: if batches > 0 {
            session_steps as f64 / batches as f64
        } else {
            0.0
        },
        histogram,
    }
}
