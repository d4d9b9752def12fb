//! The client side of a run: connect, open the sessions (and the idle ones),
//! start the streams, the --open-rate load and the --train job, snapshot the
//! window's edges, and gather the results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::procstat::{cpu_diff, thread_cpu_snapshot};
use crate::report::Results;
use crate::stats::{batch_diff, hist_snapshot, latency};
use crate::stream::{run_stream, StreamOutcome, Window};
use crate::targets::StatsSource;
use crate::training::{job_snapshot, TrainJob};
use crate::{triton, Args, BoxError, Protocol, RateRpc};

pub type Client = GruServiceClient<Channel>;

/// What the --open-rate load got back.
#[derive(Debug, Default, Serialize)]
pub struct OpenLoad {
    pub attempted: u64,
    pub opened: u64,
    pub refused: u64,
    pub other_errors: u64,
}

pub async fn connect(url: &str) -> Result<Channel, BoxError> {
    // host:port, http:// or https:// like every client of ours.
    let ep = Endpoint::from_shared(gru_serve::server::endpoint_uri(url, false)?)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    // The in-process server starts listening before its models are loaded: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ep.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(format!("connect {url}: {e}").into()),
        }
    }
}

pub fn client(ch: Channel) -> Client {
    GruServiceClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// The input width: from GetModel when the server answers it, else `--input-size`.
async fn input_size(c: &mut Client, args: &Args) -> Result<usize, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c
            .get_model(pb::GetModelRequest {
                model: args.model.clone(),
                version: 0,
            })
            .await
        {
            Ok(r) => {
                let m = r.into_inner().model.ok_or("GetModel: no model in reply")?;
                if m.input_size as usize != args.input_size {
                    eprintln!(
                        "note: the server's model '{}' takes {} inputs; using that, not --input-size {}",
                        m.name, m.input_size, args.input_size
                    );
                }
                return Ok(m.input_size as usize);
            }
            // Models still loading.
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(args.input_size),
            Err(s) => return Err(format!("GetModel '{}': {s}", args.model).into()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn drive(
    args: &Args,
    url: &str,
    http_addr: Option<&str>,
    streams: usize,
    connections: usize,
    stats: StatsSource,
    mode: &str,
) -> Result<Results, BoxError> {
    let mut chans = Vec::with_capacity(connections);
    for _ in 0..connections {
        chans.push(connect(url).await?);
    }
    let mut c0 = client(chans[0].clone());
    let input_size = input_size(&mut c0, args).await?;

    let ids = match args.protocol {
        Protocol::GruV1 => open_sessions(args, &chans).await?,
        // Triton sequences 1..=N, started below with their first request.
        _ => (1..=args.sessions).map(|n| n.to_string()).collect(),
    };
    open_idle_sessions(args, &chans).await?;

    // --train: a job on the same server, running before the warm-up starts.
    let mut job = match args.train {
        true => Some(TrainJob::start(args, url).await?),
        false => None,
    };

    // Deal the sessions over the streams.
    let mut per_stream: Vec<Vec<String>> = vec![Vec::new(); streams];
    for (s, id) in ids.iter().enumerate() {
        per_stream[s % streams].push(id.clone());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let inputs: Arc<Vec<f32>> = Arc::new(
        (0..args.k * input_size)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect(),
    );
    let start = Instant::now() + Duration::from_millis(50);
    let window = Window {
        start: start + Duration::from_secs_f64(args.warmup_secs),
        end: start + Duration::from_secs_f64(args.warmup_secs + args.duration_secs),
    };
    let out_cols = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    if args.protocol == Protocol::TritonGrpc {
        triton::start_grpc(&chans, &args.model, args.sessions, args.k, inputs.clone()).await?;
    }
    for (j, sess) in per_stream.into_iter().enumerate() {
        let ch = chans[j % connections].clone();
        let (inputs, out_cols) = (inputs.clone(), out_cols.clone());
        let (k, cols, model) = (args.k, input_size, args.model.clone());
        match args.protocol {
            Protocol::GruV1 => tasks.spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                run_stream(client(ch), sess, k, cols, inputs, window, out_cols).await
            }),
            Protocol::TritonGrpc => tasks.spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                let seqs = sess.iter().map(|s| s.parse().unwrap_or(0)).collect();
                triton::run_grpc_stream(ch, model, seqs, k, inputs, window, out_cols).await
            }),
            Protocol::TritonHttp => {
                // One connection per sequence: HTTP/1.1 does not multiplex.
                let addr = http_addr.ok_or("--protocol triton-http: no HTTP address")?;
                for id in sess {
                    let (addr, model, inputs, out_cols) = (
                        addr.to_string(),
                        model.clone(),
                        inputs.clone(),
                        out_cols.clone(),
                    );
                    tasks.spawn(triton::run_http_sequence(
                        addr,
                        model,
                        id.parse().unwrap_or(0),
                        k,
                        inputs,
                        start,
                        window,
                        out_cols,
                    ));
                }
                continue;
            }
        };
    }

    // --open-rate: paced OpenSession calls over the warm-up and the measurement.
    let opener = (args.open_rate > 0.0).then(|| {
        let mut c = client(chans[0].clone());
        let (model, every) = (
            args.model.clone(),
            Duration::from_secs_f64(1.0 / args.open_rate),
        );
        let rpc = args.rate_rpc;
        tokio::spawn(async move {
            let mut load = OpenLoad::default();
            let mut tick = tokio::time::interval_at(start.into(), every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < window.end {
                tick.tick().await;
                load.attempted += 1;
                let r = match rpc {
                    RateRpc::OpenSession => c
                        .open_session(pb::OpenSessionRequest {
                            model: model.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    RateRpc::GetModel => c
                        .get_model(pb::GetModelRequest {
                            model: model.clone(),
                            version: 0,
                        })
                        .await
                        .map(drop),
                };
                match r {
                    Ok(()) => load.opened += 1,
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => load.refused += 1,
                    Err(_) => load.other_errors += 1,
                }
            }
            load
        })
    });

    // Snapshot the server's batch stats and the threads' CPU time at the window's edges.
    // The training job's state too (its RPCs go over a connection of its own).
    let snap = {
        let stats = stats.clone();
        let mut tc = job.as_ref().map(|j| j.client.clone());
        let job_id = job.as_ref().map(|j| j.job_id.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(window.start.into()).await;
            let w0 = stats.as_ref().and_then(|f| f()).map(|s| hist_snapshot(&s));
            let c0 = thread_cpu_snapshot();
            let t0 = Instant::now();
            let j0 = match (&mut tc, &job_id) {
                (Some(c), Some(id)) => Some(job_snapshot(c, id).await),
                _ => None,
            };
            tokio::time::sleep_until(window.end.into()).await;
            let w1 = stats.as_ref().and_then(|f| f()).map(|s| hist_snapshot(&s));
            let c1 = thread_cpu_snapshot();
            let secs = t0.elapsed().as_secs_f64();
            let j1 = match (&mut tc, &job_id) {
                (Some(c), Some(id)) => Some(job_snapshot(c, id).await),
                _ => None,
            };
            (w0.zip(w1), c0, c1, secs, j0.zip(j1))
        })
    };

    let mut all = StreamOutcome::default();
    while let Some(r) = tasks.join_next().await {
        let o = r?;
        all.latencies_us.extend(o.latencies_us);
        all.ok += o.ok;
        all.errors += o.errors;
        if all.first_error.is_none() {
            all.first_error = o.first_error;
        }
    }
    let (hists, cpu0, cpu1, cpu_secs, job_snaps) = snap.await?;
    let opens = match opener {
        Some(t) => Some(t.await?),
        None => None,
    };
    let training = match job.take() {
        Some(j) => Some(j.finish(job_snaps, args.duration_secs).await),
        None => None,
    };
    if args.target.is_some() && args.protocol == Protocol::GruV1 {
        close_sessions(ids, &chans).await;
    }
    drop(chans);

    let measured = args.duration_secs;
    let server_batches = hists.map(|(a, b)| batch_diff(&a, &b));
    let note = if server_batches.is_some() {
        "from the compute worker's WorkerStats, measured window only".to_string()
    } else if args.target.is_some() {
        "n/a: external server (its worker statistics are not visible to the client)".to_string()
    } else if args.echo {
        "n/a: echo server (no model, no batching)".to_string()
    } else {
        "n/a: the model was not loaded".to_string()
    };
    let lat = latency(&mut all.latencies_us);
    Ok(Results {
        mode: mode.to_string(),
        args: args.clone(),
        streams,
        connections,
        input_size,
        output_cols: out_cols.load(Ordering::Relaxed) as usize,
        measured_secs: measured,
        messages: all.ok,
        errors: all.errors,
        messages_per_sec: all.ok as f64 / measured,
        steps_per_sec: (all.ok * args.k as u64) as f64 / measured,
        latency: lat,
        server_batches,
        server_batches_note: note,
        thread_cpu: cpu_diff(&cpu0, &cpu1, cpu_secs),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        first_error: all.first_error,
        training,
        opens,
    })
}

/// Opens `--sessions` sessions, concurrently over the connections; their ids in order.
async fn open_sessions(args: &Args, chans: &[Channel]) -> Result<Vec<String>, BoxError> {
    let connections = chans.len();
    let mut opens = tokio::task::JoinSet::new();
    for s in 0..args.sessions {
        let mut c = client(chans[s % connections].clone());
        let model = args.model.clone();
        opens.spawn(async move {
            let r = c
                .open_session(pb::OpenSessionRequest {
                    model,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("OpenSession: {e}"))?;
            Ok::<_, String>((s, r.into_inner().session_id))
        });
    }
    let mut ids = vec![String::new(); args.sessions];
    while let Some(r) = opens.join_next().await {
        let (s, id) = r??;
        ids[s] = id;
    }
    Ok(ids)
}

/// `--idle-sessions`: opened by 64 tasks at once, then left alone.
async fn open_idle_sessions(args: &Args, chans: &[Channel]) -> Result<(), BoxError> {
    let connections = chans.len();
    let mut idle = tokio::task::JoinSet::new();
    for t in 0..64.min(args.idle_sessions) {
        let mut c = client(chans[t % connections].clone());
        let (model, n) = (args.model.clone(), (args.idle_sessions + 63 - t) / 64);
        idle.spawn(async move {
            for _ in 0..n {
                c.open_session(pb::OpenSessionRequest {
                    model: model.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("OpenSession (idle): {e}"))?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(r) = idle.join_next().await {
        r??;
    }
    Ok(())
}

/// Closes the sessions (on an external server, to be tidy; errors ignored).
async fn close_sessions(ids: Vec<String>, chans: &[Channel]) {
    let connections = chans.len();
    let mut closes = tokio::task::JoinSet::new();
    for (s, id) in ids.into_iter().enumerate() {
        let mut c = client(chans[s % connections].clone());
        closes.spawn(async move {
            let _ = c
                .close_session(pb::CloseSessionRequest { session_id: id })
                .await;
        });
    }
    while closes.join_next().await.is_some() {}
}
