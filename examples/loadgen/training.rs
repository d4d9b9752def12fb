//! `--train`: a training job on the same server, beside the measurement.

use std::time::{Duration, Instant};

use gru_serve::service::pb;
use gru_serve::service::pb::training_service_client::TrainingServiceClient;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tonic::transport::Channel;

use crate::drive::connect;
use crate::{Args, BoxError};

/// A training job's state and progress at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct JobSnapshot {
    pub state: String,
    /// 1-based.
    pub epoch: u32,
    pub batch: u32,
    pub batches_per_epoch: u32,
    /// (epoch - 1) × batches_per_epoch + batch.
    pub batches_done: u64,
    /// The job's own figure: sequences / seconds since the current epoch began.
    pub sequences_per_second: f64,
    pub train_loss: f64,
    pub elapsed_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct TrainingReport {
    pub job_id: String,
    pub model: String,
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_sequences: usize,
    pub mean_seq_len: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub threads_per_job: usize,
    pub nice: i32,
    /// StartTraining call, upload included.
    pub submit_secs: f64,
    /// From StartTraining's reply until the job reported its first batch.
    pub until_running_secs: f64,
    pub at_window_start: Option<JobSnapshot>,
    pub at_window_end: Option<JobSnapshot>,
    /// Batches the job finished during the measured window.
    pub batches_in_window: u64,
    /// batches_in_window × batch_size / window length (approximate: an epoch's last batch may be short).
    pub sequences_per_second_in_window: f64,
    /// True when the job was RUNNING at both edges of the window.
    pub running_throughout: bool,
    /// After CancelTraining (and waiting for the job to stop).
    pub final_state: String,
}

pub type TrainClient = TrainingServiceClient<Channel>;

/// A training job started by --train.
pub struct TrainJob {
    pub client: TrainClient,
    pub job_id: String,
    pub report: TrainingReport,
}

/// Noisy sines: `input` features of different frequencies and phases; the
/// target is feature 0 at the next step (next-step regression).
fn training_data(args: &Args) -> (Vec<pb::TrainingSequence>, f64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x7a41);
    let i = args.train_input.max(1);
    let base = args.train_seq_len.max(3);
    let mut steps_total = 0usize;
    let seqs = (0..args.train_sequences.max(1))
        .map(|_| {
            let len = rng.random_range(base * 2 / 3..=base * 4 / 3).max(2);
            steps_total += len;
            let freq: Vec<f32> = (0..i).map(|_| rng.random_range(0.05f32..0.5)).collect();
            let phase: Vec<f32> = (0..i)
                .map(|_| rng.random_range(0.0f32..std::f32::consts::TAU))
                .collect();
            let x = |t: usize, f: usize| (freq[f] * t as f32 + phase[f]).sin();
            let mut inputs = Vec::with_capacity(len * i);
            let mut targets = Vec::with_capacity(len);
            for t in 0..len {
                for f in 0..i {
                    inputs.push(x(t, f) + rng.random_range(-0.05f32..0.05));
                }
                targets.push(x(t + 1, 0));
            }
            pb::TrainingSequence {
                inputs: Some(pb::Matrix {
                    rows: len as u32,
                    cols: i as u32,
                    values: inputs,
                }),
                targets: Some(pb::Matrix {
                    rows: len as u32,
                    cols: 1,
                    values: targets,
                }),
                ..Default::default()
            }
        })
        .collect::<Vec<_>>();
    let mean = steps_total as f64 / seqs.len() as f64;
    (seqs, mean)
}

fn snapshot_of(j: &pb::TrainingJob) -> JobSnapshot {
    let state = pb::JobState::try_from(j.state)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_string())
        .unwrap_or_else(|_| format!("state {}", j.state));
    let p = j.progress.unwrap_or_default();
    JobSnapshot {
        state,
        epoch: p.epoch,
        batch: p.batch,
        batches_per_epoch: p.batches_per_epoch,
        batches_done: (p.epoch.max(1) as u64 - 1) * p.batches_per_epoch as u64 + p.batch as u64,
        sequences_per_second: p.sequences_per_second,
        train_loss: p.train_loss,
        elapsed_seconds: p.elapsed_seconds,
    }
}

pub async fn job_snapshot(c: &mut TrainClient, job_id: &str) -> JobSnapshot {
    match c
        .get_training_job(pb::GetTrainingJobRequest {
            job_id: job_id.to_string(),
        })
        .await
    {
        Ok(r) => snapshot_of(&r.into_inner()),
        Err(s) => JobSnapshot {
            state: format!("GetTrainingJob failed: {s}"),
            epoch: 0,
            batch: 0,
            batches_per_epoch: 0,
            batches_done: 0,
            sequences_per_second: f64::NAN,
            train_loss: f64::NAN,
            elapsed_seconds: f64::NAN,
        },
    }
}

impl TrainJob {
    /// Submits the job and waits until it has finished its first batch.
    pub async fn start(args: &Args, url: &str) -> Result<TrainJob, BoxError> {
        let mut client = TrainingServiceClient::new(connect(url).await?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let (sequences, mean_seq_len) = training_data(args);
        let model = "lg-train".to_string();
        let req = pb::StartTrainingRequest {
            model: model.clone(),
            new_model: Some(pb::ModelSpec {
                input_size: args.train_input as u32,
                hidden_size: args.train_hidden as u32,
                num_layers: 1,
                output_size: 1,
                task: pb::Task::Regression as i32,
                description: "loadgen --train: noisy-sine next-step regression".into(),
                ..Default::default()
            }),
            hyperparameters: Some(pb::Hyperparameters {
                epochs: args.train_epochs as u32,
                batch_size: args.train_batch as u32,
                seed: args.seed,
                ..Default::default()
            }),
            sequences,
            ..Default::default()
        };
        let t0 = Instant::now();
        let r = client
            .start_training(req)
            .await
            .map_err(|s| format!("StartTraining: {s}"))?
            .into_inner();
        let submit_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let deadline = t1 + Duration::from_secs(120);
        loop {
            let s = job_snapshot(&mut client, &r.job_id).await;
            match s.state.as_str() {
                "RUNNING" if s.batches_done > 0 => break,
                "QUEUED" | "RUNNING" if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                _ => {
                    return Err(format!(
                        "training job {} is {} after {:.1} s (expected RUNNING with progress)",
                        r.job_id,
                        s.state,
                        t1.elapsed().as_secs_f64()
                    )
                    .into())
                }
            }
        }
        let until_running_secs = t1.elapsed().as_secs_f64();
        eprintln!(
            "training job {} running ({} sequences, mean length {:.0}; first batch after {:.2} s; upload {:.2} s)",
            r.job_id, r.num_sequences, mean_seq_len, until_running_secs, submit_secs
        );
        Ok(TrainJob {
            client,
            job_id: r.job_id.clone(),
            report: TrainingReport {
                job_id: r.job_id,
                model,
                input_size: args.train_input,
                hidden_size: args.train_hidden,
                num_sequences: r.num_sequences as usize,
                mean_seq_len,
                batch_size: args.train_batch,
                epochs: args.train_epochs,
                threads_per_job: args.train_threads.max(1),
                nice: args.train_nice,
                submit_secs,
                until_running_secs,
                at_window_start: None,
                at_window_end: None,
                batches_in_window: 0,
                sequences_per_second_in_window: f64::NAN,
                running_throughout: false,
                final_state: String::new(),
            },
        })
    }

    /// Records the window's snapshots, cancels the job and waits for it to stop.
    pub async fn finish(
        mut self,
        snaps: Option<(JobSnapshot, JobSnapshot)>,
        secs: f64,
    ) -> TrainingReport {
        let mut rep = self.report;
        if let Some((a, b)) = snaps {
            rep.batches_in_window = b.batches_done.saturating_sub(a.batches_done);
            rep.sequences_per_second_in_window =
                (rep.batches_in_window * rep.batch_size as u64) as f64 / secs.max(1e-9);
            rep.running_throughout = a.state == "RUNNING" && b.state == "RUNNING";
            rep.at_window_start = Some(a);
            rep.at_window_end = Some(b);
        }
        let c = &mut self.client;
        rep.final_state = match c
            .cancel_training(pb::CancelTrainingRequest {
                job_id: self.job_id.clone(),
            })
            .await
        {
            Err(s) => format!("CancelTraining failed: {s}"),
            Ok(_) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let s = job_snapshot(c, &self.job_id).await;
                    if !matches!(s.state.as_str(), "QUEUED" | "RUNNING")
                        || Instant::now() > deadline
                    {
                        break s.state;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        rep
    }
}
