//! ModelStatistics: what this adapter answered, per model version. Counts
//! and durations are measured here, around the engine: `compute_input` is
//! decoding and validating the request, `compute_infer` the engine's time
//! (its queue included: a batched step has no separate queue time), and
//! `compute_output` building the response. `queue` stays zero for that
//! reason. gru.v1 traffic is not counted: it has its own metrics.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::pb;

#[derive(Default, Clone, Copy)]
struct Dur {
    count: u64,
    ns: u64,
}

impl Dur {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns = self.ns.saturating_add(d.as_nanos() as u64);
    }

    fn pb(self) -> Option<pb::StatisticDuration> {
        Some(pb::StatisticDuration {
            count: self.count,
            ns: self.ns,
        })
    }
}

#[derive(Default, Clone)]
struct ModelStats {
    last_inference_ms: u64,
    inference_count: u64,
    execution_count: u64,
    success: Dur,
    fail: Dur,
    compute_input: Dur,
    compute_infer: Dur,
    compute_output: Dur,
}

/// The phases of one successful request.
pub struct Timings {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
    /// Inferences (batch elements) it carried.
    pub batch: u64,
}

#[derive(Default)]
pub struct Stats {
    /// model → version → counts (looked up by &str: no allocation per request).
    by_model: Mutex<HashMap<String, HashMap<u64, ModelStats>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Stats {
    fn with(&self, model: &str, version: u64, f: impl FnOnce(&mut ModelStats)) {
        let mut m = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        let versions = match m.get_mut(model) {
            Some(v) => v,
            None => m.entry(model.to_string()).or_default(),
        };
        f(versions.entry(version).or_default());
    }

    pub fn success(&self, model: &str, version: u64, t: Timings) {
        self.with(model, version, |s| {
            s.last_inference_ms = now_ms();
            s.inference_count += t.batch;
            s.execution_count += 1;
            s.success.add(t.input + t.infer + t.output);
            s.compute_input.add(t.input);
            s.compute_infer.add(t.infer);
            s.compute_output.add(t.output);
        });
    }

    pub fn fail(&self, model: &str, version: u64, took: Duration) {
        self.with(model, version, |s| s.fail.add(took));
    }

    /// The statistics of `versions` of `model` (every served one is listed,
    /// zeros where nothing was asked yet).
    pub fn report(&self, model: &str, versions: &[u64]) -> Vec<pb::ModelStatistics> {
        let m = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        versions
            .iter()
            .map(|&v| {
                let s = m
                    .get(model)
                    .and_then(|vs| vs.get(&v))
                    .cloned()
                    .unwrap_or_default();
                pb::ModelStatistics {
                    name: model.to_string(),
                    version: v.to_string(),
                    last_inference: s.last_inference_ms,
                    inference_count: s.inference_count,
                    execution_count: s.execution_count,
                    inference_stats: Some(pb::InferStatistics {
                        success: s.success.pb(),
                        fail: s.fail.pb(),
                        queue: Dur::default().pb(),
                        compute_input: s.compute_input.pb(),
                        compute_infer: s.compute_infer.pb(),
                        compute_output: s.compute_output.pb(),
                        cache_hit: Dur::default().pb(),
                        cache_miss: Dur::default().pb(),
                    }),
                    ..Default::default()
                }
            })
            .collect()
    }
}
