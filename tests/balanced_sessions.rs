//! Durable sessions behind real balancers: three replicas sharing a real
//! Redis, behind nginx or HAProxy hashing `x-session-key` (tests/common/
//! cluster.rs). Clients fail over as the README says: on UNAVAILABLE retry,
//! on NOT_FOUND re-open by key, on FAILED_PRECONDITION replay from the step
//! index the server names. Every session must end with exactly the outputs
//! of an uninterrupted run (Predict), with no step applied twice.

#![cfg(feature = "grpc")]

mod common;

use std::time::{Duration, Instant};

use common::cluster::{keyed, Balancer, Cluster, ClusterSpec};
use common::server::{assert_close, matrix, rand_vec, step_req, Client};
use gru_serve::service::pb;
use tonic::Code;

const I: usize = 3;
const O: usize = 2;

/// One client session driven step by step through the balancer.
struct Driver {
    key: String,
    id: String,
    x: Vec<f32>,
    /// Outputs of steps 0..out.len()/O, as the client received them.
    out: Vec<f32>,
    /// Steps the server had lost and the client sent again.
    replayed: usize,
    not_found: usize,
    unavailable: usize,
}

/// Whether a call failed because no replica answered: UNAVAILABLE, or the
/// balancer's own 502/503/504 page (tonic reads its HTML body as a broken
/// gRPC message and says INTERNAL; grpcio says UNAVAILABLE).
fn unavailable(s: &tonic::Status) -> bool {
    use std::error::Error;
    s.code() == Code::Unavailable
        || s.code() == Code::Unknown
        || (s.code() == Code::Cancelled && s.source().is_some())
        || (s.code() == Code::Internal
            && ["status: 502", "status: 503", "status: 504"]
                .iter()
                .any(|c| s.message().contains(c)))
}

fn parse_at(msg: &str) -> Option<usize> {
    msg.split("is at step ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl Driver {
    async fn open(c: &mut Client, key: &str, steps: usize, seed: u64) -> Driver {
        let mut d = Driver {
            key: key.into(),
            id: String::new(),
            x: rand_vec(steps * I, seed),
            out: Vec::new(),
            replayed: 0,
            not_found: 0,
            unavailable: 0,
        };
        d.reopen(c).await;
        d
    }

    async fn reopen(&mut self, c: &mut Client) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = pb::OpenSessionRequest {
                model: "m".into(),
                session_key: self.key.clone(),
                ..Default::default()
            };
            match c.open_session(keyed(&self.key, req)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    self.id = r.session_id;
                    return r.step_index;
                }
                Err(s) if unavailable(&s) => {
                    self.unavailable += 1;
                }
                Err(s) => panic!("{}: open: {s:?}", self.key),
            }
            assert!(
                Instant::now() < deadline,
                "{}: no replica took the open",
                self.key
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn send(&self, c: &mut Client, t: usize) -> Result<Vec<f32>, tonic::Status> {
        let mut req = step_req(&self.id, &self.x[t * I..(t + 1) * I], t as u64);
        req.start_step = t as u64;
        req.has_start_step = true;
        let r = c.step(keyed(&self.key, req)).await?.into_inner();
        match r.result {
            Some(pb::step_response::Result::Ok(ok)) => Ok(ok.outputs.expect("outputs").values),
            other => panic!("{}: step {t}: {other:?}", self.key),
        }
    }

    /// The next step, failing over as needed.
    async fn step(&mut self, c: &mut Client) {
        let t = self.out.len() / O;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: step {t} never went through",
                self.key
            );
            match self.send(c, t).await {
                Ok(o) => {
                    self.out.extend(o);
                    return;
                }
                Err(s) if unavailable(&s) => {
                    self.unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) if s.code() == Code::NotFound => {
                    self.not_found += 1;
                    self.reopen(c).await;
                }
                Err(s) if s.code() == Code::FailedPrecondition => {
                    let at = parse_at(s.message())
                        .unwrap_or_else(|| panic!("{}: {}", self.key, s.message()));
                    assert!(at < t, "{}: the server is ahead ({at} > {t})", self.key);
                    for r in at..t {
                        let again = self.send(c, r).await.expect("replay");
                        assert_close("replayed output", &again, &self.out[r * O..(r + 1) * O]);
                        self.replayed += 1;
                    }
                }
                Err(s) => panic!("{}: step {t}: {s:?}", self.key),
            }
        }
    }

    /// Ends with exactly Predict's outputs, and the server at the last step.
    async fn check(&mut self, c: &mut Client) {
        let r = c
            .predict(pb::PredictRequest {
                model: "m".into(),
                sequences: vec![pb::PredictSequence {
                    inputs: Some(matrix(self.x.len() / I, I, self.x.clone())),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .expect("predict")
            .into_inner();
        let want = r.outputs[0].outputs.clone().expect("outputs").values;
        assert_close(&self.key, &self.out, &want);
        let at = self.reopen(c).await;
        assert_eq!(
            at as usize,
            self.x.len() / I,
            "{}: no step applied twice or lost",
            self.key
        );
    }
}

async fn opened_sessions(cluster: &Cluster, i: usize) -> f64 {
    cluster.metric(i, "gru_sessions_opened_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sigkill_of_the_busiest_replica_then_its_return_loses_no_session() {
    let mut cluster = Cluster::start_spec(ClusterSpec::new(3, Balancer::Nginx).args(&[
        "--session-store",
        "{redis}",
        "--checkpoint-interval",
        "100ms",
    ]))
    .await;
    let mut c = cluster.client().await;
    let (n, steps) = (12, 16);
    let mut ds = Vec::new();
    for k in 0..n {
        ds.push(Driver::open(&mut c, &format!("user-{k}"), steps, 500 + k as u64).await);
    }
    for _ in 0..6 {
        for d in ds.iter_mut() {
            d.step(&mut c).await;
        }
    }
    let mut busiest = 0;
    let mut most = -1.0;
    for i in 0..3 {
        let live = opened_sessions(&cluster, i).await;
        if live > most {
            (busiest, most) = (i, live);
        }
    }
    assert!(most >= 1.0, "some replica holds sessions");
    // Mid-traffic: two more steps, then the crash, with no checkpoint pause.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for d in ds.iter_mut() {
        d.step(&mut c).await;
    }
    cluster.kill(busiest);
    for _ in 0..4 {
        for d in ds.iter_mut() {
            d.step(&mut c).await;
        }
    }
    // Flap-back: the killed replica returns and the hash moves its keys
    // back to it; they come back through the store, never NOT_FOUND.
    let before: usize = ds.iter().map(|d| d.not_found).sum();
    cluster.restart(busiest).await;
    for d in ds.iter_mut() {
        while d.out.len() / O < steps {
            d.step(&mut c).await;
        }
    }
    let after: usize = ds.iter().map(|d| d.not_found).sum();
    assert_eq!(after, before, "no NOT_FOUND after the replica came back");
    // One stream (one key, so one replica) carrying every session.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut replies = c
        .step_stream(keyed(
            "any",
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .expect("stream")
        .into_inner();
    for (k, d) in ds.iter().enumerate() {
        // A retry of each session's last step: answered from its kept reply
        // on whichever replica the stream landed on.
        let t = steps - 1;
        let mut req = step_req(&d.id, &d.x[t * I..], k as u64);
        req.start_step = t as u64;
        tx.send(req).await.unwrap();
    }
    for d in &ds {
        let r = replies.message().await.expect("reply").expect("message");
        match r.result {
            Some(pb::step_response::Result::Ok(ok)) => {
                assert!(ok.replayed, "{}: answered from the kept reply", d.key);
                assert_close(
                    &d.key,
                    &ok.outputs.unwrap().values,
                    &d.out[(steps - 1) * O..],
                );
            }
            other => panic!("{}: {other:?}", d.key),
        }
    }
    drop(tx);
    for d in ds.iter_mut() {
        d.check(&mut c).await;
    }
    let taken: f64 = {
        let mut t = 0.0;
        for i in 0..3 {
            t += cluster.metric(i, "gru_session_takeovers_total").await;
        }
        t
    };
    assert!(taken >= 1.0, "sessions moved between replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_rolling_sigterm_restart_under_load_loses_no_step() {
    let mut cluster = Cluster::start_spec(ClusterSpec::new(3, Balancer::Nginx).args(&[
        "--session-store",
        "{redis}",
        "--checkpoint-interval",
        "1s",
    ]))
    .await;
    let addr = cluster.balancer_addr();
    let (n, steps) = (9, 20_000);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The load: each session steps until the rolling restart is over.
    let mut tasks = Vec::new();
    for k in 0..n {
        let (addr, done) = (addr.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = common::cluster::connect(&addr).await;
            let mut d = Driver::open(&mut c, &format!("roll-{k}"), steps, 700 + k as u64).await;
            while d.out.len() / O < steps && !done.load(std::sync::atomic::Ordering::Acquire) {
                d.step(&mut c).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let t = d.out.len() / O;
            d.x.truncate(t * I);
            d.check(&mut c).await;
            d
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        cluster.terminate(i).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.restart(i).await;
        // Past nginx's fail_timeout (2 s, deploy/nginx): the hash moves the
        // replica's keys back to it while the load goes on (flap-back), and
        // those sessions come back from live replicas by handoff.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut replayed = 0;
    let mut not_found = 0;
    for t in tasks {
        let d = match t.await {
            Ok(d) => d,
            Err(e) => {
                for i in 0..3 {
                    eprintln!("== replica {i}\n{}", cluster.replica_log(i));
                }
                if let Some(b) = &cluster.balancer {
                    eprintln!("== balancer\n{}", b.log_text());
                }
                panic!("driver: {e}");
            }
        };
        replayed += d.replayed;
        not_found += d.not_found;
    }
    let mut moved = 0.0;
    for i in 0..3 {
        moved += cluster.metric(i, "gru_session_takeovers_total").await;
    }
    assert!(
        moved >= 1.0,
        "sessions moved between replicas during the restarts"
    );
    assert_eq!(
        (replayed, not_found),
        (0, 0),
        "a rolling restart loses no step and no session (sessions are handed over)"
    );
}
