#![cfg(feature = "grpc")]
//! Training over gRPC end to end: the real server on 127.0.0.1:0, driven
//! through the generated `TrainingService` and `GruService` clients.
//!
//! Where the expectations come from:
//! - **It learned**: next-step prediction of a noisy sine (uniform noise,
//!   σ ≈ 0.05, so the best possible MSE is ≈ 0.0025). Predicting the current
//!   value ("copy-last") is the naive baseline; a trained GRU must get below
//!   0.01 and below a quarter of copy-last, on sequences it never saw (after
//!   a 5-step warm-up),
//!   streamed step by step through a session.
//! - **The contract** in `proto/gru/v1/gru.proto`: watch events start with
//!   the job's state and end with its final state; a published version is
//!   served at once, old versions keep serving; a cancelled or failed job
//!   publishes nothing; final states survive a restart; refusals carry the
//!   documented code and name the sequence and field.
//! - **Crash safety** (`src/engine/registry/publish.rs`): a publication cut off
//!   between writing and renaming leaves only a dot-folder, which the next
//!   start deletes; the repository never shows a partial version.

use std::path::Path;
use std::time::Duration;

use gru_serve::engine::training::PublishFault;
use gru_serve::engine::TrainingConfig;
use gru_serve::server::ServerConfig;
use gru_serve::service::pb;
use gru_serve::service::pb::training_event::Event;
use gru_serve::service::pb::training_service_client::TrainingServiceClient;
use tempfile::TempDir;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

mod common;
use common::server::*;

type Trainer = TrainingServiceClient<Channel>;

/// Training runs in debug builds here; every wait on a job is bounded by this.
const JOB_WAIT: Duration = Duration::from_secs(300);

fn trainer(s: &TestServer) -> Trainer {
    TrainingServiceClient::new(s.channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn config_with(dir: &Path, f: impl FnOnce(&mut ServerConfig)) -> ServerConfig {
    let mut c = config_for(dir);
    f(&mut c);
    c
}

async fn serving_with(config: ServerConfig) -> TestServer {
    let s = TestServer::start(config).await;
    s.wait_serving().await;
    s
}

fn regression_seq(
    inputs: Vec<f32>,
    cols: usize,
    targets: Vec<f32>,
    out: usize,
) -> pb::TrainingSequence {
    let rows = inputs.len() / cols;
    pb::TrainingSequence {
        inputs: Some(matrix(rows, cols, inputs)),
        targets: Some(matrix(rows, out, targets)),
        ..Default::default()
    }
}

/// `common::noisy_sine` as regression sequences of one input and one target.
fn sine_seqs(n: usize, t: usize, seed: u64) -> Vec<pb::TrainingSequence> {
    common::noisy_sine(n, t, seed)
        .into_iter()
        .map(|(x, y)| regression_seq(x, 1, y, 1))
        .collect()
}

fn sine_spec() -> pb::ModelSpec {
    pb::ModelSpec {
        input_size: 1,
        hidden_size: 16,
        num_layers: 1,
        output_size: 1,
        description: "noisy sine, next step".into(),
        ..Default::default()
    }
}

fn hyper(epochs: u32, batch: u32) -> pb::Hyperparameters {
    pb::Hyperparameters {
        epochs,
        batch_size: batch,
        seed: 7,
        ..Default::default()
    }
}

fn new_job(
    model: &str,
    spec: pb::ModelSpec,
    h: pb::Hyperparameters,
    seqs: Vec<pb::TrainingSequence>,
) -> pb::StartTrainingRequest {
    pb::StartTrainingRequest {
        model: model.into(),
        new_model: Some(spec),
        hyperparameters: Some(h),
        sequences: seqs,
        ..Default::default()
    }
}

async fn start(t: &mut Trainer, req: pb::StartTrainingRequest) -> pb::StartTrainingResponse {
    t.start_training(req)
        .await
        .expect("start training")
        .into_inner()
}

fn state_of(j: &pb::TrainingJob) -> pb::JobState {
    pb::JobState::try_from(j.state).expect("a known job state")
}

/// Watches a job to its end; returns every event (bounded by JOB_WAIT).
async fn watch_all(t: &mut Trainer, id: &str, from_start: bool) -> Vec<pb::TrainingEvent> {
    let mut stream = t
        .watch_training(pb::WatchTrainingRequest {
            job_id: id.into(),
            from_start,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    let collect = async {
        while let Some(e) = stream.next().await {
            events.push(e.expect("watch event"));
        }
    };
    tokio::time::timeout(JOB_WAIT, collect)
        .await
        .expect("the job did not end in time");
    events
}

fn final_job(events: &[pb::TrainingEvent]) -> pb::TrainingJob {
    match events.last().and_then(|e| e.event.clone()) {
        Some(Event::Job(j)) => j,
        other => panic!("the last watch event is not a job state: {other:?}"),
    }
}

/// Waits until the job reports progress (it is running and past a batch).
async fn wait_running(t: &mut Trainer, id: &str) {
    let deadline = tokio::time::Instant::now() + JOB_WAIT;
    loop {
        let j = t
            .get_training_job(pb::GetTrainingJobRequest { job_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if state_of(&j) == pb::JobState::Running && j.progress.is_some() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never ran: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Outputs of one sequence through Predict on (model, version).
async fn predict(
    c: &mut Client,
    model: &str,
    version: u64,
    inputs: &[f32],
    cols: usize,
) -> Vec<f32> {
    let r = c
        .predict(pb::PredictRequest {
            model: model.into(),
            version,
            sequences: vec![pb::PredictSequence {
                inputs: Some(matrix(inputs.len() / cols, cols, inputs.to_vec())),
                initial_state: None,
            }],
            return_states: false,
        })
        .await
        .expect("predict")
        .into_inner();
    r.outputs[0].outputs.clone().unwrap().values
}

fn version_dirs(root: &Path, model: &str) -> Vec<String> {
    common::sorted_entries(&root.join(model))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_a_new_model_watches_it_and_serves_it_across_a_restart() {
    let repo = small_repo();
    let server = TestServer::serving(repo.path()).await;
    let mut t = trainer(&server);
    let mut h = hyper(30, 16);
    h.learning_rate = 2e-2;
    h.schedule = pb::LearningRateSchedule::Cosine as i32;
    h.min_learning_rate = 1e-3;
    h.validation_fraction = 0.2;
    let started = start(
        &mut t,
        new_job("sine", sine_spec(), h, sine_seqs(400, 40, 5)),
    )
    .await;
    assert_eq!(started.num_sequences, 400);
    assert!(started.job_id.starts_with("job-") && started.job_id.len() >= 36);

    let events = watch_all(&mut t, &started.job_id, true).await;
    // The first event is the job's state, the last its final state; in
    // between, progress in order with the documented fields.
    match &events[0].event {
        Some(Event::Job(j)) => assert_eq!(j.job_id, started.job_id),
        other => panic!("first event is not the job state: {other:?}"),
    }
    let progress: Vec<pb::TrainingProgress> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Progress(p)) => Some(*p),
            _ => None,
        })
        .collect();
    let epoch_ends: Vec<_> = progress.iter().filter(|p| p.epoch_done).collect();
    assert_eq!(epoch_ends.len(), 30, "one recorded event per epoch end");
    for (n, p) in epoch_ends.iter().enumerate() {
        assert_eq!((p.epoch, p.epochs), (n as u32 + 1, 30));
        assert!(p.validation_loss.is_some() && p.train_loss.is_finite() && p.eta_seconds >= 0.0);
    }
    assert!(progress
        .windows(2)
        .all(|w| (w[0].epoch, w[0].batch) <= (w[1].epoch, w[1].batch)));
    assert!(progress.iter().any(|p| !p.epoch_done
        && p.grad_norm.is_some_and(f64::is_finite)
        && p.sequences_per_second > 0.0));
    assert_eq!(epoch_ends.last().unwrap().eta_seconds, 0.0);
    // No event carries a non-finite number: a value that does not exist (an
    // epoch end's gradient norm) is left unset, never NaN.
    for p in &progress {
        let numbers = [
            Some(p.train_loss),
            p.validation_loss,
            p.grad_norm,
            Some(p.sequences_per_second),
            Some(p.learning_rate),
            Some(p.elapsed_seconds),
            Some(p.eta_seconds),
        ];
        assert!(numbers.iter().flatten().all(|v| v.is_finite()), "{p:?}");
        assert_eq!(p.grad_norm.is_none(), p.epoch_done, "{p:?}");
    }

    let job = final_job(&events);
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{}", job.error);
    let result = job.result.clone().expect("a result");
    assert_eq!((result.model.as_str(), result.version), ("sine", 1));
    let best = result.best_validation_loss.unwrap();
    assert!(best < 0.01, "best validation MSE {best} not below 0.01");
    assert_eq!(
        version_dirs(repo.path(), "sine"),
        vec!["1".to_string()],
        "no temporary folder left"
    );
    for f in [
        "config.json",
        "model.safetensors",
        "serving.json",
        "training.json",
    ] {
        assert!(repo.path().join("sine/1").join(f).is_file(), "{f} missing");
    }

    // Served at once: stream held-out sequences through a session step by step.
    let mut c = server.client();
    let info = model_info(&mut c, "sine").await;
    assert_eq!(
        (info.version, info.hidden_size, info.description.as_str()),
        (1, 16, "noisy sine, next step")
    );
    let (mut se, mut copy, mut n) = (0.0f64, 0.0f64, 0.0f64);
    const WARMUP: usize = 5;
    let held_out = common::noisy_sine(8, 40, 99);
    for (x, y) in &held_out {
        let id = open_latest(&mut c, "sine").await.session_id;
        for (s, (&xt, &yt)) in x.iter().zip(y).enumerate() {
            let r = c
                .step(pb::StepRequest {
                    session_id: id.clone(),
                    inputs: Some(matrix(1, 1, vec![xt])),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let Some(pb::step_response::Result::Ok(ok)) = r.result else {
                panic!("step {s} failed")
            };
            let pred = ok.outputs.unwrap().values[0];
            // Scored after a warm-up: the first steps carry too little
            // context to tell the wave's frequency.
            if s >= WARMUP {
                se += ((pred - yt) as f64).powi(2);
                copy += ((xt - yt) as f64).powi(2);
                n += 1.0;
            }
        }
    }
    let (mse, copy_mse) = (se / n, copy / n);
    eprintln!("streamed held-out MSE {mse:.5} (copy-last {copy_mse:.5})");
    assert!(
        mse < 0.01 && mse < copy_mse / 4.0,
        "streamed MSE {mse} vs copy-last {copy_mse}"
    );

    // Restart on the same folder: the same version, bit for bit, and the
    // job's final state remembered.
    let probe = &held_out[0].0;
    let before = predict(&mut c, "sine", 1, probe, 1).await;
    server.stop().await;
    let server = TestServer::serving(repo.path()).await;
    let mut c = server.client();
    let after = predict(&mut c, "sine", 1, probe, 1).await;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&before),
        bits(&after),
        "outputs changed across a restart"
    );
    let mut t = trainer(&server);
    let j = t
        .get_training_job(pb::GetTrainingJobRequest {
            job_id: started.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_of(&j), pb::JobState::Succeeded);
    assert_eq!(j.result.unwrap().version, 1);
    let listed = t
        .list_training_jobs(pb::ListTrainingJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 1);
    // Watching a finished job gives its final state and ends.
    let again = watch_all(&mut t, &started.job_id, false).await;
    assert_eq!(again.len(), 2, "state, then final state");
    assert_eq!(state_of(&final_job(&again)), pb::JobState::Succeeded);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fine_tuning_publishes_a_new_version_while_old_sessions_keep_theirs() {
    let repo = small_repo(); // model "m": I = 3, H = 8, 2 layers, head O = 2
    let server = TestServer::serving(repo.path()).await;
    let mut c = server.client();
    let mut t = trainer(&server);
    let a = rand_vec(5 * 3, 1);
    let b = rand_vec(4 * 3, 2);
    let old = open_latest(&mut c, "m").await;
    assert_eq!(old.version, 1);
    let step = |id: String, x: Vec<f32>| pb::StepRequest {
        session_id: id,
        inputs: Some(matrix(x.len() / 3, 3, x)),
        ..Default::default()
    };
    c.step(step(old.session_id.clone(), a.clone()))
        .await
        .unwrap();

    let seqs: Vec<_> = (0..40)
        .map(|k| regression_seq(rand_vec(10 * 3, 100 + k), 3, rand_vec(10 * 2, 200 + k), 2))
        .collect();
    let req = pb::StartTrainingRequest {
        model: "m".into(),
        base_version: 1,
        hyperparameters: Some(hyper(3, 8)),
        sequences: seqs,
        ..Default::default()
    };
    let id = start(&mut t, req).await.job_id;
    let job = final_job(&watch_all(&mut t, &id, false).await);
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{}", job.error);
    assert_eq!((job.base_version, job.result.unwrap().version), (1, 2));

    // The old session still runs on version 1: its next outputs are what
    // version 1 gives for the whole sequence a ++ b.
    let r = c
        .step(step(old.session_id.clone(), b.clone()))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::step_response::Result::Ok(ok)) = r.result else {
        panic!("step failed")
    };
    let got = ok.outputs.unwrap().values;
    let whole: Vec<f32> = a.iter().chain(&b).copied().collect();
    let v1 = predict(&mut c, "m", 1, &whole, 3).await;
    assert_close("old session after fine-tuning", &got, &v1[5 * 2..]);
    // New sessions get version 2, whose weights differ.
    let new = open_latest(&mut c, "m").await;
    assert_eq!(new.version, 2);
    let v2 = predict(&mut c, "m", 2, &whole, 3).await;
    assert!(
        v1.iter().zip(&v2).any(|(x, y)| (x - y).abs() > 1e-4),
        "fine-tuning changed nothing"
    );
    let info = model_info(&mut c, "m").await;
    assert_eq!(info.versions, vec![1, 2]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queue_positions_and_the_queue_limit() {
    let repo = small_repo();
    let config = config_with(repo.path(), |c| {
        c.engine.training = TrainingConfig {
            max_queued_jobs: 2,
            ..TrainingConfig::default()
        };
    });
    let server = serving_with(config).await;
    let mut t = trainer(&server);
    let long = || new_job("long", sine_spec(), hyper(10_000, 8), sine_seqs(64, 40, 1));
    let a = start(&mut t, long()).await;
    wait_running(&mut t, &a.job_id).await;
    let b = start(&mut t, long()).await;
    let c = start(&mut t, long()).await;
    assert_eq!((b.queue_position, c.queue_position), (0, 1));
    let full = expect_err("third queued job", t.start_training(long()).await);
    assert_status(
        "queue limit",
        &full,
        Code::ResourceExhausted,
        &["2 training jobs are already queued", "limit 2"],
    );

    // A queued job cancels at once and the one behind it moves up.
    let cj = t
        .cancel_training(pb::CancelTrainingRequest {
            job_id: b.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_of(&cj), pb::JobState::Cancelled);
    let cq = t
        .get_training_job(pb::GetTrainingJobRequest {
            job_id: c.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (state_of(&cq), cq.queue_position),
        (pb::JobState::Queued, 0)
    );

    // A running job stops at its next batch and publishes nothing.
    t.cancel_training(pb::CancelTrainingRequest {
        job_id: a.job_id.clone(),
    })
    .await
    .unwrap();
    let ja = final_job(&watch_all(&mut t, &a.job_id, false).await);
    assert_eq!(state_of(&ja), pb::JobState::Cancelled);
    assert!(ja.error.contains("nothing was published"), "{}", ja.error);
    assert!(ja.result.is_none());
    t.cancel_training(pb::CancelTrainingRequest {
        job_id: c.job_id.clone(),
    })
    .await
    .unwrap();
    let jc = final_job(&watch_all(&mut t, &c.job_id, false).await);
    assert_eq!(state_of(&jc), pb::JobState::Cancelled);
    let mut g = server.client();
    let models = g
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(
        models.iter().all(|m| m.name != "long"),
        "a cancelled job published a model"
    );
    assert!(version_dirs(repo.path(), "long").is_empty());

    let again = expect_err(
        "cancel twice",
        t.cancel_training(pb::CancelTrainingRequest {
            job_id: a.job_id.clone(),
        })
        .await,
    );
    assert_status(
        "cancel twice",
        &again,
        Code::FailedPrecondition,
        &["already ended"],
    );
    let unknown = expect_err(
        "unknown job",
        t.get_training_job(pb::GetTrainingJobRequest {
            job_id: "job-nope".into(),
        })
        .await,
    );
    assert_status("unknown job", &unknown, Code::NotFound, &["job-nope"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_chunks_past_the_message_limit() {
    let repo = small_repo();
    const LIMIT: usize = 1 << 20;
    let server = serving_with(config_with(repo.path(), |c| c.max_message_bytes = LIMIT)).await;
    let mut t = trainer(&server);
    // 700 sequences × 200 steps × (8 inputs + 1 target) × 4 bytes ≈ 5 MB:
    // five times the server's message limit, past tonic's 4 MiB default.
    let (n, len) = (700usize, 200usize);
    let seqs: Vec<_> = (0..n)
        .map(|k| {
            regression_seq(
                rand_vec(len * 8, k as u64),
                8,
                rand_vec(len, 10_000 + k as u64),
                1,
            )
        })
        .collect();
    let spec = pb::ModelSpec {
        input_size: 8,
        hidden_size: 4,
        num_layers: 1,
        output_size: 1,
        ..Default::default()
    };
    let too_big = expect_err(
        "one big message",
        t.start_training(new_job("big", spec.clone(), hyper(1, 64), seqs.clone()))
            .await,
    );
    assert_eq!(too_big.code(), Code::OutOfRange, "{}", too_big.message());

    let mut chunks = vec![pb::TrainingUpload {
        request: Some(new_job("big", spec, hyper(1, 64), vec![])),
        sequences: vec![],
    }];
    chunks.extend(seqs.chunks(50).map(|c| pb::TrainingUpload {
        request: None,
        sequences: c.to_vec(),
    }));
    assert!(chunks.len() > 10);
    let r = t
        .upload_training(tokio_stream::iter(chunks))
        .await
        .expect("chunked upload")
        .into_inner();
    assert_eq!(r.num_sequences, n as u64);
    let j = t
        .get_training_job(pb::GetTrainingJobRequest {
            job_id: r.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.dataset_bytes, (n * len * 9 * 4) as u64);
    assert!(j.dataset_bytes > 4 * LIMIT as u64);
    let job = final_job(&watch_all(&mut t, &r.job_id, false).await);
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{}", job.error);
    assert_eq!(job.result.unwrap().version, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_what_is_wrong() {
    let repo = small_repo();
    let config = config_with(repo.path(), |c| {
        c.engine.training = TrainingConfig {
            max_dataset_bytes: 100_000,
            max_sequence_len: 500,
            max_model_parameters: 100_000,
            ..TrainingConfig::default()
        };
    });
    let server = serving_with(config).await;
    let mut t = trainer(&server);
    let good = || sine_seqs(4, 20, 1);
    let job = |seqs| new_job("s", sine_spec(), hyper(1, 4), seqs);
    let cls = |labels: Vec<u32>| pb::TrainingSequence {
        inputs: Some(matrix(labels.len(), 1, vec![0.5; labels.len()])),
        labels,
        ..Default::default()
    };
    let cls_job = |seqs| {
        new_job(
            "c",
            pb::ModelSpec {
                task: pb::Task::ClassifyPerStep as i32,
                output_size: 3,
                ..sine_spec()
            },
            hyper(1, 4),
            seqs,
        )
    };

    let mut cases: Vec<(&str, pb::StartTrainingRequest, Code, Vec<&str>)> = Vec::new();
    cases.push((
        "empty dataset",
        job(vec![]),
        Code::InvalidArgument,
        vec!["empty"],
    ));
    let mut ragged = good();
    ragged[2].inputs.as_mut().unwrap().values.pop();
    cases.push((
        "ragged rows",
        job(ragged),
        Code::InvalidArgument,
        vec!["sequences[2].inputs", "≠"],
    ));
    let mut nan = good();
    nan[1].inputs.as_mut().unwrap().values[3] = f32::NAN;
    cases.push((
        "NaN input",
        job(nan),
        Code::InvalidArgument,
        vec!["sequence 1", "inputs[3]", "not finite"],
    ));
    let mut inf = good();
    inf[3].targets.as_mut().unwrap().values[0] = f32::INFINITY;
    cases.push((
        "Inf target",
        job(inf),
        Code::InvalidArgument,
        vec!["sequence 3", "targets[0]"],
    ));
    let mut wide = good();
    wide[0] = regression_seq(vec![0.0; 10], 2, vec![0.0; 5], 1);
    cases.push((
        "wrong input width",
        job(wide),
        Code::InvalidArgument,
        vec!["sequences[0].inputs", "2 cols", "1 features"],
    ));
    let mut short = good();
    short[1].targets = Some(matrix(1, 1, vec![0.0]));
    cases.push((
        "targets rows",
        job(short),
        Code::InvalidArgument,
        vec!["sequences[1].targets", "1 rows"],
    ));
    cases.push((
        "label out of range",
        cls_job(vec![cls(vec![0, 1]), cls(vec![2, 5, 1])]),
        Code::InvalidArgument,
        vec!["sequence 1", "labels[1] = 5", "0..3"],
    ));
    cases.push((
        "labels count",
        cls_job(vec![
            cls(vec![0, 1]),
            pb::TrainingSequence {
                labels: vec![1],
                ..cls(vec![0, 0])
            },
        ]),
        Code::InvalidArgument,
        vec!["sequences[1].labels has 1 entries"],
    ));
    cases.push((
        "too long",
        job(vec![regression_seq(vec![0.0; 501], 1, vec![0.0; 501], 1)]),
        Code::InvalidArgument,
        vec!["sequence 0", "length 501", "500"],
    ));
    cases.push((
        "too many bytes",
        job(sine_seqs(800, 40, 2)),
        Code::ResourceExhausted,
        vec!["100000"],
    ));
    cases.push((
        "model too big",
        new_job(
            "s",
            pb::ModelSpec {
                hidden_size: 512,
                ..sine_spec()
            },
            hyper(1, 4),
            good(),
        ),
        Code::ResourceExhausted,
        vec!["parameters", "100000"],
    ));
    cases.push((
        "bad name",
        new_job("../etc", sine_spec(), hyper(1, 4), good()),
        Code::InvalidArgument,
        vec!["../etc"],
    ));
    cases.push((
        "no layers",
        new_job(
            "s",
            pb::ModelSpec {
                num_layers: 0,
                ..sine_spec()
            },
            hyper(1, 4),
            good(),
        ),
        Code::InvalidArgument,
        vec!["new_model"],
    ));
    let mut neg = hyper(1, 4);
    neg.learning_rate = -1.0;
    cases.push((
        "negative learning rate",
        new_job("s", sine_spec(), neg, good()),
        Code::InvalidArgument,
        vec!["learning_rate"],
    ));
    let mut frac = hyper(1, 4);
    frac.validation_fraction = 1.5;
    cases.push((
        "validation fraction",
        new_job("s", sine_spec(), frac, good()),
        Code::InvalidArgument,
        vec!["validation_fraction"],
    ));
    let fine_missing = pb::StartTrainingRequest {
        model: "absent".into(),
        hyperparameters: Some(hyper(1, 4)),
        sequences: good(),
        ..Default::default()
    };
    cases.push((
        "fine-tune a missing model",
        fine_missing,
        Code::NotFound,
        vec!["absent"],
    ));
    let fine_bad_version = pb::StartTrainingRequest {
        model: "m".into(),
        base_version: 9,
        hyperparameters: Some(hyper(1, 4)),
        sequences: good(),
        ..Default::default()
    };
    cases.push((
        "fine-tune a missing version",
        fine_bad_version,
        Code::NotFound,
        vec!["version 9"],
    ));

    for (what, req, code, needles) in cases {
        let e = expect_err(what, t.start_training(req).await);
        assert_status(what, &e, code, &needles);
    }
    // Uploads: the request must come first and only once.
    let e = expect_err(
        "upload without request",
        t.upload_training(tokio_stream::iter(vec![pb::TrainingUpload {
            request: None,
            sequences: good(),
        }]))
        .await,
    );
    assert_status(
        "upload without request",
        &e,
        Code::InvalidArgument,
        &["first upload message"],
    );
    let twice = vec![
        pb::TrainingUpload {
            request: Some(job(good())),
            sequences: vec![],
        },
        pb::TrainingUpload {
            request: Some(job(vec![])),
            sequences: vec![],
        },
    ];
    let e = expect_err(
        "request twice",
        t.upload_training(tokio_stream::iter(twice)).await,
    );
    assert_status(
        "request twice",
        &e,
        Code::InvalidArgument,
        &["message 1", "only the first"],
    );
    let mut nan = good();
    nan[0].inputs.as_mut().unwrap().values[0] = f32::NAN;
    let split = vec![
        pb::TrainingUpload {
            request: Some(job(good())),
            sequences: vec![],
        },
        pb::TrainingUpload {
            request: None,
            sequences: nan,
        },
    ];
    let e = expect_err(
        "NaN in a later chunk",
        t.upload_training(tokio_stream::iter(split)).await,
    );
    assert_status(
        "NaN in a later chunk",
        &e,
        Code::InvalidArgument,
        &["sequence 4", "not finite"],
    );

    // Nothing was queued, and the server serves on.
    let jobs = t
        .list_training_jobs(pb::ListTrainingJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "{jobs:?}");
    let mut c = server.client();
    assert!(!c
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models
        .is_empty());
    let ok = start(&mut t, job(good())).await;
    assert_eq!(
        state_of(&final_job(&watch_all(&mut t, &ok.job_id, false).await)),
        pb::JobState::Succeeded
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_write_and_rename_leaves_the_repository_consistent() {
    let repo = small_repo();
    let faulty = config_with(repo.path(), |c| {
        c.engine.training = TrainingConfig {
            fault: Some(PublishFault::BeforeRename),
            ..TrainingConfig::default()
        };
    });
    let server = serving_with(faulty).await;
    let mut t = trainer(&server);
    let id = start(
        &mut t,
        new_job("x", sine_spec(), hyper(1, 8), sine_seqs(16, 20, 3)),
    )
    .await
    .job_id;
    let job = final_job(&watch_all(&mut t, &id, false).await);
    assert_eq!(state_of(&job), pb::JobState::Failed);
    assert!(
        job.error.contains("publishing") && job.error.contains("injected fault"),
        "{}",
        job.error
    );
    // What a crash at that instant leaves: the written dot-folder, no version.
    let left = version_dirs(repo.path(), "x");
    assert!(left.len() == 1 && left[0].starts_with(".tmp-"), "{left:?}");
    let written = repo.path().join("x").join(&left[0]);
    assert!(written.join("model.safetensors").is_file());
    let mut c = server.client();
    let e = expect_err(
        "unpublished model",
        c.get_model(pb::GetModelRequest {
            model: "x".into(),
            version: 0,
        })
        .await,
    );
    assert_eq!(e.code(), Code::NotFound);
    server.stop().await;

    // The next start deletes the leftover, remembers the failure, and a
    // healthy job publishes version 1 whole.
    let server = TestServer::serving(repo.path()).await;
    assert!(
        version_dirs(repo.path(), "x").is_empty(),
        "{:?}",
        version_dirs(repo.path(), "x")
    );
    let mut t = trainer(&server);
    let j = t
        .get_training_job(pb::GetTrainingJobRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_of(&j), pb::JobState::Failed);
    let id2 = start(
        &mut t,
        new_job("x", sine_spec(), hyper(1, 8), sine_seqs(16, 20, 3)),
    )
    .await
    .job_id;
    assert_eq!(
        state_of(&final_job(&watch_all(&mut t, &id2, false).await)),
        pb::JobState::Succeeded
    );
    assert_eq!(version_dirs(repo.path(), "x"), vec!["1".to_string()]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_at_shutdown_is_interrupted_and_remembered() {
    let repo: TempDir = small_repo();
    let server = TestServer::serving(repo.path()).await;
    let mut t = trainer(&server);
    let id = start(
        &mut t,
        new_job("long", sine_spec(), hyper(10_000, 8), sine_seqs(64, 40, 1)),
    )
    .await
    .job_id;
    wait_running(&mut t, &id).await;
    server.stop().await;
    let server = TestServer::serving(repo.path()).await;
    let mut t = trainer(&server);
    let j = t
        .get_training_job(pb::GetTrainingJobRequest { job_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_of(&j), pb::JobState::Interrupted);
    assert!(j.error.contains("stopped"), "{}", j.error);
    assert!(j.finished_unix_ms >= j.started_unix_ms && j.started_unix_ms > 0);
    assert!(version_dirs(repo.path(), "long").is_empty());
    server.stop().await;
}
