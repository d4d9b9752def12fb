#![cfg(feature = "grpc")]
//! Training jobs across replicas: two real `gru-serve` processes on one
//! model directory. Replica 0 trains; replica 1 answers Get/List/Watch for
//! the job from its record, and restarts meanwhile without marking the live
//! job INTERRUPTED (the owner's heartbeat holds the lease; see
//! src/engine/training/records.rs). The job succeeds, and replica 1 serves
//! the version replica 0 published within the default `--model-poll` (10 s),
//! and cancels a job of replica 0's.

mod common;

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use common::cluster::{Balancer, Cluster, ClusterSpec};
use common::server::{matrix, small_repo};
use gru_serve::service::pb;
use gru_serve::service::pb::training_event::Event;
use gru_serve::service::pb::training_service_client::TrainingServiceClient;

type Trainer = TrainingServiceClient<Channel>;

/// Every wait on the job is bounded by this (debug builds, a loaded machine).
const JOB_WAIT: Duration = Duration::from_secs(300);
/// The server's default `--model-poll`, plus a margin for the scan itself.
const POLL_WITHIN: Duration = Duration::from_secs(10 + 5);

fn sine_job(epochs: u32) -> pb::StartTrainingRequest {
    let sequences = common::noisy_sine(32, 40, 3)
        .into_iter()
        .map(|(x, y)| pb::TrainingSequence {
            inputs: Some(matrix(x.len(), 1, x)),
            targets: Some(matrix(y.len(), 1, y)),
            ..Default::default()
        })
        .collect();
    pb::StartTrainingRequest {
        model: "shared".into(),
        new_model: Some(pb::ModelSpec {
            input_size: 1,
            hidden_size: 16,
            num_layers: 1,
            output_size: 1,
            ..Default::default()
        }),
        hyperparameters: Some(pb::Hyperparameters {
            epochs,
            batch_size: 8,
            seed: 7,
            ..Default::default()
        }),
        sequences,
        ..Default::default()
    }
}

fn state(j: &pb::TrainingJob) -> pb::JobState {
    pb::JobState::try_from(j.state).unwrap()
}

async fn get(t: &mut Trainer, id: &str) -> pb::TrainingJob {
    t.get_training_job(pb::GetTrainingJobRequest { job_id: id.into() })
        .await
        .unwrap_or_else(|e| panic!("GetTrainingJob {id}: {e}"))
        .into_inner()
}

type Watched = (Vec<pb::TrainingEvent>, Option<tonic::Status>);

/// Collects a watch's events to its end (or its error), in the background;
/// the receiver fires at the first event (the watch is then open).
fn watch_in_background(
    mut t: Trainer,
    id: String,
) -> (tokio::task::JoinHandle<Watched>, oneshot::Receiver<()>) {
    let (first_tx, first) = oneshot::channel();
    let handle = tokio::spawn(async move {
        let mut first_tx = Some(first_tx);
        let mut stream = t
            .watch_training(pb::WatchTrainingRequest {
                job_id: id,
                from_start: false,
            })
            .await
            .expect("watch")
            .into_inner();
        let mut events = Vec::new();
        let run = async {
            while let Some(e) = stream.next().await {
                if let Some(tx) = first_tx.take() {
                    let _ = tx.send(());
                }
                match e {
                    Ok(e) => events.push(e),
                    Err(s) => return Some(s),
                }
            }
            None
        };
        let err = tokio::time::timeout(JOB_WAIT, run)
            .await
            .expect("the watch did not end in time");
        (events, err)
    });
    (handle, first)
}

fn progress_count(events: &[pb::TrainingEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.event, Some(Event::Progress(_))))
        .count()
}

fn last_job(events: &[pb::TrainingEvent]) -> pb::TrainingJob {
    match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Job(j)) => j,
        other => panic!("the last watch event is not a job state: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarting_beside_a_training_one_leaves_its_job_running_and_sees_it_succeed() {
    let models = small_repo();
    let mut c =
        Cluster::start_spec(ClusterSpec::new(2, Balancer::None).model_dir(models.path())).await;
    let mut trainer = Trainer::new(c.replica_channel(0).await);
    let mut other = Trainer::new(c.replica_channel(1).await);

    // Long enough to outlast replica 1's restart on a slow machine; it ends
    // by itself (no early stop without a validation split).
    let id = trainer
        .start_training(sine_job(400))
        .await
        .expect("start training")
        .into_inner()
        .job_id;
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let j = get(&mut trainer, &id).await;
        if state(&j) == pb::JobState::Running && j.progress.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the job never ran: {j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The other replica knows the job from its record.
    let seen = get(&mut other, &id).await;
    assert_eq!(state(&seen), pb::JobState::Running, "{seen:?}");
    let listed = other
        .list_training_jobs(pb::ListTrainingJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(
        listed
            .iter()
            .any(|j| j.job_id == id && state(j) == pb::JobState::Running),
        "ListTrainingJobs on the other replica: {listed:?}"
    );
    let (early_watch, opened) = watch_in_background(other.clone(), id.clone());
    tokio::time::timeout(Duration::from_secs(10), opened)
        .await
        .expect("no first watch event")
        .unwrap();

    // Replica 1 restarts (SIGTERM, then a new process on the same folder).
    let restart = Instant::now();
    c.restart(1).await;
    eprintln!("replica 1 restarted in {:?}", restart.elapsed());
    let (events, err) = early_watch.await.unwrap();
    let err = err.expect("a watch ends with UNAVAILABLE when its server stops");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("another replica"), "{err:?}");
    assert_eq!(
        state(&match &events[0].event {
            Some(Event::Job(j)) => j.clone(),
            e => panic!("the first watch event is not the job: {e:?}"),
        }),
        pb::JobState::Running
    );

    // The job is still RUNNING, seen from both, and still advancing.
    let mut other = Trainer::new(c.replica_channel(1).await);
    let after = get(&mut other, &id).await;
    let on_owner = get(&mut trainer, &id).await;
    assert_eq!(
        state(&on_owner),
        pb::JobState::Running,
        "the job ended before the restart was over: make it longer ({on_owner:?})"
    );
    assert_eq!(
        state(&after),
        pb::JobState::Running,
        "the restarted replica changed a live replica's job: {after:?}\n{}",
        c.replica_log(1)
    );

    // Watched from the restarted replica to its end: progress from the
    // record, then SUCCEEDED.
    let (events, err) = watch_in_background(other.clone(), id.clone())
        .0
        .await
        .unwrap();
    assert!(err.is_none(), "{err:?}");
    let done = last_job(&events);
    assert_eq!(state(&done), pb::JobState::Succeeded, "{done:?}");
    assert!(
        progress_count(&events) >= 1,
        "no progress streamed from the record: {events:?}"
    );
    eprintln!(
        "the job trained for {} ms",
        done.finished_unix_ms - done.started_unix_ms
    );
    let result = done.result.expect("a result");
    assert_eq!((result.model.as_str(), result.version), ("shared", 1));
    assert_eq!(
        state(&get(&mut trainer, &id).await),
        pb::JobState::Succeeded
    );

    // Polling is on by default: replica 1 serves what replica 0 published.
    let mut client = c.replica_client(1).await;
    let published = Instant::now();
    loop {
        let r = client
            .get_model(pb::GetModelRequest {
                model: "shared".into(),
                version: 1,
            })
            .await;
        if r.is_ok() {
            break;
        }
        assert!(
            published.elapsed() < POLL_WITHIN,
            "replica 1 did not load the published version within {POLL_WITHIN:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = client
        .predict(pb::PredictRequest {
            model: "shared".into(),
            version: 1,
            sequences: vec![pb::PredictSequence {
                inputs: Some(matrix(3, 1, vec![0.1, 0.2, 0.3])),
                initial_state: None,
            }],
            return_states: false,
        })
        .await
        .expect("predict on the published version")
        .into_inner();
    assert_eq!(out.outputs[0].outputs.as_ref().unwrap().rows, 3);

    // A job is cancelled through any replica: the owner picks the request
    // up at its next heartbeat.
    let long = trainer
        .start_training(sine_job(100_000))
        .await
        .expect("start training")
        .into_inner()
        .job_id;
    let asked = other
        .cancel_training(pb::CancelTrainingRequest {
            job_id: long.clone(),
        })
        .await
        .expect("cancel through the other replica")
        .into_inner();
    assert!(
        !matches!(state(&asked), pb::JobState::Cancelled),
        "{asked:?}"
    );
    let (events, err) = watch_in_background(other.clone(), long.clone())
        .0
        .await
        .unwrap();
    assert!(err.is_none(), "{err:?}");
    let done = last_job(&events);
    assert_eq!(state(&done), pb::JobState::Cancelled, "{done:?}");
    assert_eq!(
        state(&get(&mut trainer, &long).await),
        pb::JobState::Cancelled
    );
}
