#![cfg(feature = "grpc")]
//! gRPC through real load balancers (nginx, HAProxy: deploy/'s example
//! configs) to three real replicas: unary calls and StepStreams pass, and
//! every call that carries a session's `x-session-key` lands on one replica,
//! the same one each time, while different keys spread over the replicas.
//! Which replica served is read from each replica's `gru_steps_total`.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use common::cluster::{keyed, Balancer, Cluster, ClusterSpec};
use common::server::{rand_vec, step_req, Client};
use common::sessions::{ok_result, reply, I};
use gru_serve::service::pb;

/// Distinct keys opened: enough that all landing on one of three replicas
/// would mean the balancer is not hashing (odds 3^-(KEYS-1)).
const KEYS: usize = 12;
const STEPS: usize = 4;

async fn steps_per_replica(c: &Cluster) -> Vec<f64> {
    let mut v = Vec::new();
    for i in 0..c.replicas.len() {
        v.push(c.metric(i, "gru_steps_total").await);
    }
    v
}

/// The one replica whose step counter moved since `before`, by `want` steps.
async fn the_replica_that_stepped(c: &Cluster, before: &[f64], want: usize, what: &str) -> usize {
    let after = steps_per_replica(c).await;
    let moved: Vec<(usize, f64)> = after
        .iter()
        .zip(before)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, a - b))
        .collect();
    assert!(
        moved.len() == 1 && moved[0].1 == want as f64,
        "{what}: want one replica to have stepped {want} steps, saw (replica, steps) {moved:?}"
    );
    moved[0].0
}

/// Opens a session by key, then steps it twice over a StepStream and once
/// unary, each call keyed; returns the replica that did all the steps.
async fn keyed_session(c: &Cluster, client: &mut Client, key: &str, seed: u64) -> usize {
    let before = steps_per_replica(c).await;
    let open = client
        .open_session(keyed(
            key,
            pb::OpenSessionRequest {
                model: "m".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("open {key}: {e}"))
        .into_inner();
    let id = open.session_id;

    let (tx, rx) = mpsc::channel(8);
    let mut replies = client
        .step_stream(keyed(key, ReceiverStream::new(rx)))
        .await
        .unwrap_or_else(|e| panic!("stream {key}: {e}"))
        .into_inner();
    for s in 0..STEPS as u64 - 1 {
        tx.send(step_req(&id, rand_vec(I, seed * 100 + s), s))
            .await
            .unwrap();
        let r = reply(&mut replies).await;
        let ok = ok_result(&r);
        assert_eq!((ok.start_step, ok.next_step), (s, s + 1), "{key}: {r:?}");
    }
    drop(tx);
    assert!(
        reply_end(&mut replies).await,
        "{key}: the stream did not end"
    );

    let r = client
        .step(keyed(key, step_req(&id, rand_vec(I, seed * 100 + 99), 0)))
        .await
        .unwrap_or_else(|e| panic!("unary step {key}: {e}"))
        .into_inner();
    assert_eq!(ok_result(&r).next_step, STEPS as u64, "{key}");
    the_replica_that_stepped(c, &before, STEPS, key).await
}

/// True when the stream ends cleanly after its last reply.
async fn reply_end(s: &mut tonic::Streaming<pb::StepResponse>) -> bool {
    matches!(common::sessions::next_reply(s).await, Ok(None))
}

async fn affinity_through(balancer: Balancer) {
    let c = Cluster::start(3, balancer, &[]).await;
    let mut client = c.client().await;

    let mut owner = Vec::new();
    for k in 0..KEYS {
        owner.push(keyed_session(&c, &mut client, &format!("user-{k}"), k as u64).await);
    }
    let used: BTreeSet<usize> = owner.iter().copied().collect();
    assert!(
        used.len() >= 2,
        "{balancer:?}: {KEYS} keys all went to replica(s) {used:?}: not hashing"
    );

    // The same keys again, on a new connection: the same replicas.
    let mut again = c.client().await;
    for (k, want) in owner.iter().enumerate() {
        let key = format!("user-{k}");
        let before = steps_per_replica(&c).await;
        // An idempotent open by key: the existing session, where it lives.
        let open = again
            .open_session(keyed(
                &key,
                pb::OpenSessionRequest {
                    model: "m".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            !open.created,
            "{key}: the re-open found no session: {open:?}"
        );
        assert_eq!(open.step_index, STEPS as u64, "{key}");
        let r = again
            .step(keyed(&key, step_req(&open.session_id, rand_vec(I, 7), 0)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok_result(&r).next_step, STEPS as u64 + 1);
        let got = the_replica_that_stepped(&c, &before, 1, &key).await;
        assert_eq!(got, *want, "{balancer:?}: {key} moved replicas");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_each_session_key_on_one_of_three_replicas() {
    affinity_through(Balancer::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_keeps_each_session_key_on_one_of_three_replicas() {
    affinity_through(Balancer::Haproxy).await;
}

/// Calls with `keys` different keys through the balancer; all must pass.
/// A call the balancer refused with REFUSED_STREAM is tried once more, as
/// gRPC's own clients do transparently (RFC 9113 §8.7: the stream was not
/// processed): HAProxy answers so when it sent the call on its idle
/// connection to a replica that has just been killed. tonic does not retry.
async fn calls_pass(c: &Cluster, keys: usize, what: &str) {
    let mut client = c.client().await;
    for k in 0..keys {
        let call = |client: &mut Client| {
            let mut client = client.clone();
            async move {
                client
                    .list_models(keyed(&format!("user-{k}"), pb::ListModelsRequest {}))
                    .await
            }
        };
        let r = match call(&mut client).await {
            Err(e) if format!("{e:?}").contains("REFUSED_STREAM") => call(&mut client).await,
            r => r,
        };
        r.unwrap_or_else(|e| {
            panic!(
                "{what}: a call with key user-{k} failed: {e}\nthe balancer's log:\n{}",
                c.balancer_log()
            )
        });
    }
}

/// The harness's process controls behind each balancer: a replica killed
/// (SIGKILL) or stopped (SIGTERM) is skipped by the balancer, and comes back
/// on its ports; Redis answers at `redis_url`.
async fn replicas_come_and_go_behind(balancer: Balancer) {
    let mut c = Cluster::start_spec(ClusterSpec::new(3, balancer).redis()).await;
    let url = c.redis_url();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n", "{url}");

    calls_pass(&c, KEYS, "all up").await;
    c.kill(0);
    assert!(!c.replicas[0].is_running());
    calls_pass(&c, KEYS, "replica 0 killed").await;
    c.terminate(1).await;
    calls_pass(&c, KEYS, "replica 0 killed, replica 1 stopped").await;
    c.restart(0).await;
    c.restart(1).await;
    assert!(c.replicas[0].is_running() && c.replicas[1].is_running());
    calls_pass(&c, KEYS, "all back").await;
    // Stopping a replica that runs goes through SIGTERM.
    c.restart(2).await;
    calls_pass(&c, KEYS, "replica 2 restarted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_skips_replicas_that_are_down_and_takes_them_back() {
    replicas_come_and_go_behind(Balancer::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_skips_replicas_that_are_down_and_takes_them_back() {
    replicas_come_and_go_behind(Balancer::Haproxy).await;
}

/// With every replica down, a call through the balancer is UNAVAILABLE (a
/// gRPC status clients fail over on), not the balancer's HTML error page.
async fn no_replica_is_unavailable_through(balancer: Balancer) {
    let mut c = Cluster::start(1, balancer, &[]).await;
    c.kill(0);
    let mut client = c.client().await;
    let e = client
        .list_models(keyed("user-0", pb::ListModelsRequest {}))
        .await
        .expect_err("a call with no replica up");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{balancer:?}: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_answers_unavailable_when_no_replica_is_up() {
    no_replica_is_unavailable_through(Balancer::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_answers_unavailable_when_no_replica_is_up() {
    no_replica_is_unavailable_through(Balancer::Haproxy).await;
}
