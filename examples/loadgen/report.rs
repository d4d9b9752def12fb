//! The results of a run: printed, and written as JSON with --json.

use serde::Serialize;

use crate::drive::OpenLoad;
use crate::procstat::ThreadCpu;
use crate::stats::{BatchStats, Latency};
use crate::training::TrainingReport;
use crate::Args;

/// What a run measured (with the arguments it ran with).
#[derive(Debug, Serialize)]
pub struct Results {
    pub mode: String,
    pub args: Args,
    pub streams: usize,
    pub connections: usize,
    pub input_size: usize,
    pub output_cols: usize,
    pub measured_secs: f64,
    pub messages: u64,
    pub errors: u64,
    pub messages_per_sec: f64,
    pub steps_per_sec: f64,
    pub latency: Latency,
    /// None when the worker is not visible (external server, echo, or `server::run` without a handle).
    pub server_batches: Option<BatchStats>,
    pub server_batches_note: String,
    pub thread_cpu: Vec<ThreadCpu>,
    pub load_average: String,
    pub first_error: Option<String>,
    /// Set with --train: the training job that ran beside the measurement.
    pub training: Option<TrainingReport>,
    /// Set with --open-rate.
    pub opens: Option<OpenLoad>,
}

pub fn print_results(r: &Results) {
    let a = &r.args;
    println!(
        "mode: {} | sessions {} over {} streams on {} connections | k = {} | I = {} | output cols {} | {:.1} s measured after {:.1} s warm-up",
        r.mode, a.sessions, r.streams, r.connections, a.k, r.input_size, r.output_cols, r.measured_secs, a.warmup_secs
    );
    println!(
        "throughput: {:.0} steps/s, {:.0} messages/s ({} messages, {} errors)",
        r.steps_per_sec, r.messages_per_sec, r.messages, r.errors
    );
    let l = &r.latency;
    println!(
        "round trip per message: p50 {:.0} µs, p95 {:.0} µs, p99 {:.0} µs, max {:.0} µs, mean {:.0} µs",
        l.p50_us, l.p95_us, l.p99_us, l.max_us, l.mean_us
    );
    match &r.server_batches {
        Some(b) => {
            println!(
                "server batches: {} batches, {} session-steps, mean batch {:.1} ({})",
                b.batches, b.session_steps, b.mean_batch, r.server_batches_note
            );
            let hist: Vec<String> = b
                .histogram
                .iter()
                .map(|(lo, n)| {
                    if *lo == 1 {
                        format!("1: {n}")
                    } else {
                        format!("{lo}-{}: {n}", lo * 2 - 1)
                    }
                })
                .collect();
            println!("  batch size histogram: {}", hist.join(", "));
        }
        None => println!("server batches: {}", r.server_batches_note),
    }
    let cpu: Vec<String> = r
        .thread_cpu
        .iter()
        .map(|t| format!("{} ×{}: {:.2}", t.group, t.threads, t.cores))
        .collect();
    println!("CPU (cores busy, this process): {}", cpu.join(", "));
    if let Some(o) = &r.opens {
        println!(
            "{:?} load ({} idle sessions held): {} attempted, {} answered, {} refused (RESOURCE_EXHAUSTED), {} other errors",
            a.rate_rpc, a.idle_sessions, o.attempted, o.opened, o.refused, o.other_errors
        );
    }
    if let Some(t) = &r.training {
        println!(
            "training job {} ({} × H {} → 1, {} sequences of ~{:.0} steps, batch {}; threads {}, nice {}): {}",
            t.job_id,
            t.input_size,
            t.hidden_size,
            t.num_sequences,
            t.mean_seq_len,
            t.batch_size,
            t.threads_per_job,
            t.nice,
            if t.running_throughout {
                "RUNNING at both edges of the window"
            } else {
                "NOT running throughout the window"
            }
        );
        for (edge, s) in [("start", &t.at_window_start), ("end", &t.at_window_end)] {
            if let Some(s) = s {
                println!(
                    "  window {edge}: {} epoch {} batch {}/{} ({} batches done), {:.0} seqs/s in this epoch, loss {:.4}",
                    s.state, s.epoch, s.batch, s.batches_per_epoch, s.batches_done, s.sequences_per_second, s.train_loss
                );
            }
        }
        println!(
            "  in the window: {} batches, ~{:.0} seqs/s; after CancelTraining: {}",
            t.batches_in_window, t.sequences_per_second_in_window, t.final_state
        );
    }
    println!("load average at end: {}", r.load_average);
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
}
