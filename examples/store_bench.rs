//! Session store benchmarks (BENCHMARKS.md, "Sessions that survive"):
//!
//! - `file`: checkpoint N idle sessions (H = 128 by default) to the file
//!   store and read them back at start: seconds each way.
//! - `takeover`: with a Redis (`--redis-url`), replica A stores N sessions
//!   and replica B takes each over on its first call: p50/p99 of that
//!   first call's extra wait, and Redis's memory per stored session.
//!
//! Both run the engine in-process (no gRPC): what is timed is the store.
//!
//! ```text
//! cargo run --release --example store_bench -- file --sessions 100000
//! redis-server --port 6390 --save '' --appendonly no &
//! cargo run --release --example store_bench -- takeover --redis-url redis://127.0.0.1:6390
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use gru_serve::engine::{Engine, EngineConfig, HiddenState, StoreConfig, StoreSpec};
use gru_serve::formats::native;
use gru_serve::model::{GruModel, ModelConfig};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Snapshot and restore idle sessions with the file store.
    File {
        #[arg(long, default_value_t = 100_000)]
        sessions: usize,
        #[arg(long, default_value_t = 128)]
        hidden: usize,
    },
    /// Takeover latency between two in-process replicas sharing a Redis.
    Takeover {
        #[arg(long)]
        redis_url: String,
        #[arg(long, default_value_t = 2000)]
        sessions: usize,
        #[arg(long, default_value_t = 128)]
        hidden: usize,
        /// Replica A stays alive (heartbeat, handoff listener): each
        /// takeover is then a handoff (A writes its latest and lets go).
        #[arg(long)]
        live_owner: bool,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn model_dir(hidden: usize) -> Result<tempfile::TempDir, BoxError> {
    let dir = tempfile::tempdir()?;
    let model = GruModel::init(ModelConfig::new(8, hidden, 1), 1, &candle_core::Device::Cpu)?;
    native::save_native(&model, &dir.path().join("m").join("1"))?;
    Ok(dir)
}

fn config(models: &Path, spec: StoreSpec, sessions: usize) -> EngineConfig {
    EngineConfig {
        model_dir: models.to_path_buf(),
        max_sessions: sessions + 16,
        store: StoreConfig {
            spec,
            checkpoint_interval: Duration::from_secs(3600),
            state_dir: None,
        },
        ..Default::default()
    }
}

async fn open_many(engine: &Engine, n: usize, hidden: usize) -> Result<Vec<String>, BoxError> {
    let mut ids = Vec::with_capacity(n);
    for k in 0..n {
        let values = (0..hidden)
            .map(|j| ((k * 31 + j) % 97) as f32 / 97.0)
            .collect();
        let initial = HiddenState {
            layers: 1,
            hidden,
            values,
        };
        let (s, _) = engine
            .open_session("m", None, None, None, Some(initial), None)
            .await?;
        ids.push(s.id.clone());
    }
    Ok(ids)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn file(n: usize, hidden: usize) -> Result<(), BoxError> {
    let models = model_dir(hidden)?;
    let state = tempfile::tempdir()?;
    let spec = StoreSpec::File(Some(state.path().to_path_buf()));
    let engine = Engine::load(config(models.path(), spec.clone(), n))?;
    open_many(&engine, n, hidden).await?;
    let t = Instant::now();
    let written = engine.flush_sessions().await?;
    let snapshot = t.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(state.path())?
        .map(|e| e.map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)))
        .sum::<Result<u64, _>>()?;
    engine.shutdown();
    // Its file store's folder lock goes with it.
    drop(engine);
    // Restore = loading an engine on the same folder, less loading one
    // without sessions (the model and the workers).
    let empty = tempfile::tempdir()?;
    let t = Instant::now();
    let e0 = Engine::load(config(
        models.path(),
        StoreSpec::File(Some(empty.path().to_path_buf())),
        n,
    ))?;
    let base = t.elapsed().as_secs_f64();
    e0.shutdown();
    let t = Instant::now();
    let engine = Engine::load(config(models.path(), spec, n))?;
    let restore = t.elapsed().as_secs_f64() - base;
    let live = engine.live_sessions();
    engine.shutdown();
    println!(
        "file store, {n} idle sessions, H = {hidden}: snapshot {snapshot:.3} s ({written} written, {:.1} MB), restore {restore:.3} s ({live} live after)",
        bytes as f64 / 1e6
    );
    Ok(())
}

async fn takeover(url: &str, n: usize, hidden: usize, live: bool) -> Result<(), BoxError> {
    let models = model_dir(hidden)?;
    let spec = StoreSpec::Redis(url.to_string());
    let a = Engine::load(config(models.path(), spec.clone(), n))?;
    let ids = open_many(&a, n, hidden).await?;
    let cancel = tokio_util::sync::CancellationToken::new();
    if live {
        a.spawn_store_tasks(cancel.clone());
        // Let the heartbeat and the listener start.
        tokio::time::sleep(Duration::from_millis(300)).await;
    } else {
        a.flush_sessions().await?;
    }
    let b = Engine::load(config(models.path(), spec, n))?;
    let mut waits = Vec::with_capacity(n);
    for id in &ids {
        let t = Instant::now();
        b.ensure_session(id, None).await?;
        waits.push(t.elapsed().as_secs_f64() * 1e3);
        b.session(id, None).await?;
    }
    waits.sort_by(f64::total_cmp);
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let mut mem = Vec::new();
    for id in ids.iter().take(100) {
        let m: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(format!("gru:s:{id}"))
            .query_async(&mut c)
            .await?;
        mem.extend(m);
    }
    let mean_mem = mem.iter().sum::<u64>() as f64 / mem.len().max(1) as f64;
    cancel.cancel();
    let owner = if live {
        "live owner (handoff)"
    } else {
        "owner gone"
    };
    println!(
        "redis takeover, {owner}, {n} sessions, H = {hidden}: first call p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; Redis memory per session {mean_mem:.0} bytes (MEMORY USAGE, mean of {})",
        pct(&waits, 0.5),
        pct(&waits, 0.99),
        waits[waits.len() - 1],
        mem.len()
    );
    a.shutdown();
    b.shutdown();
    Ok(())
}

fn main() -> Result<(), BoxError> {
    gru_serve::init_compute_threads(1);
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args.what {
            What::File { sessions, hidden } => file(sessions, hidden).await,
            What::Takeover {
                redis_url,
                sessions,
                hidden,
                live_owner,
            } => takeover(&redis_url, sessions, hidden, live_owner).await,
        }
    })
}
