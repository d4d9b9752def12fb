//! Tutorial, steps 2 and 3: train a GRU over gRPC, watch its loss, then
//! stream a held-out sequence through the version it published.
//!
//! ```text
//! cargo run --release --example tutorial_train -- --addr http://127.0.0.1:50051 --out-dir docs/img
//! ```
//!
//! The task: next-step prediction of a noisy sine wave (input x_t, target
//! x_{t+1}), with a random amplitude, frequency and phase per sequence. The
//! server trains the model with BPTT on its own threads and publishes it as a
//! new version of `--model`. This example then opens a session on that
//! version, streams a sequence the training never saw, prints prediction
//! against truth, and draws `loss.{png,svg}` (train and validation loss per
//! epoch) and `prediction.{png,svg}` into `--out-dir`. It exits non-zero if
//! the held-out MSE is above `--max-mse`.

use std::path::Path;

use clap::Parser;
use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use gru_serve::service::pb::training_service_client::TrainingServiceClient;
use plotters::coord::Shift;
use plotters::prelude::*;
use rand::{Rng, SeedableRng};
use tokio_stream::wrappers::ReceiverStream;

type Error = Box<dyn std::error::Error>;

#[derive(Parser)]
struct Args {
    /// The server: host:port, http://host:port or https://host:port.
    #[arg(long, env = "GRU_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// The model to publish into (a new name, or a new version of an old one).
    #[arg(long, default_value = "sine-tutorial")]
    model: String,
    #[arg(long, default_value_t = 40)]
    epochs: u32,
    /// Where the pictures go.
    #[arg(long, default_value = "docs/img")]
    out_dir: String,
    /// Warm-up steps left out of the held-out error.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Fail above this held-out MSE (measured: 0.0018; the noise alone gives 0.0008).
    #[arg(long, default_value_t = 0.006)]
    max_mse: f64,
}

/// One noisy sine: amplitude in [0.5, 1], frequency in [0.1, 0.5] rad/step,
/// uniform noise in ±0.05. Returns len + 1 samples.
fn noisy_sine(rng: &mut impl Rng, len: usize) -> Vec<f32> {
    let amp: f32 = rng.random_range(0.5..1.0);
    let w: f32 = rng.random_range(0.1..0.5);
    let phase: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    (0..=len)
        .map(|t| amp * (w * t as f32 + phase).sin() + rng.random_range(-0.05..0.05))
        .collect()
}

fn column(values: &[f32]) -> pb::Matrix {
    pb::Matrix {
        rows: values.len() as u32,
        cols: 1,
        values: values.to_vec(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let addr = gru_serve::server::endpoint_uri(&args.addr, false)?;
    let mut training = TrainingServiceClient::connect(addr.clone()).await?;
    let mut serving = GruServiceClient::connect(addr.clone()).await?;

    // 1. Data: 1000 sequences of 20..60 steps; the target is the input shifted by one.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let sequences: Vec<pb::TrainingSequence> = (0..1000)
        .map(|_| {
            let len = rng.random_range(20..=60);
            let xs = noisy_sine(&mut rng, len);
            pb::TrainingSequence {
                inputs: Some(column(&xs[..len])),
                targets: Some(column(&xs[1..])),
                ..Default::default()
            }
        })
        .collect();

    // 2. Start the job: a new 1 → 32 → 1 GRU, AdamW with a cosine schedule,
    //    10 % held out for validation, early stopping after 5 flat epochs.
    let job = training
        .start_training(pb::StartTrainingRequest {
            model: args.model.clone(),
            new_model: Some(pb::ModelSpec {
                input_size: 1,
                hidden_size: 32,
                num_layers: 1,
                output_size: 1,
                reset_mode: pb::ResetMode::AfterMatmul as i32,
                task: pb::Task::Regression as i32,
                description: "Tutorial: next-step prediction of a noisy sine (x_t in, x_{t+1} out)"
                    .into(),
            }),
            hyperparameters: Some(pb::Hyperparameters {
                epochs: args.epochs,
                batch_size: 32,
                learning_rate: 0.01,
                schedule: pb::LearningRateSchedule::Cosine as i32,
                min_learning_rate: 0.0005,
                validation_fraction: 0.1,
                patience: 5,
                seed: 7,
                ..Default::default()
            }),
            sequences,
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("job {} ({} sequences)", job.job_id, job.num_sequences);

    // 3. Watch it: a progress event per batch; we print the epoch ends.
    let mut events = training
        .watch_training(pb::WatchTrainingRequest {
            job_id: job.job_id.clone(),
            from_start: true,
        })
        .await?
        .into_inner();
    let mut curve: Vec<(u32, f64, f64)> = Vec::new(); // (epoch, train, validation)
    let mut published = None;
    while let Some(event) = events.message().await? {
        match event.event {
            Some(pb::training_event::Event::Progress(p)) if p.epoch_done => {
                let val = p.validation_loss.unwrap_or(f64::NAN);
                println!(
                    "epoch {:>2}/{}  train loss {:.5}  validation loss {val:.5}  ETA {:.1} s",
                    p.epoch, p.epochs, p.train_loss, p.eta_seconds
                );
                curve.push((p.epoch, p.train_loss, val));
            }
            Some(pb::training_event::Event::Job(j)) => match j.state() {
                pb::JobState::Succeeded => {
                    let r = j.result.ok_or("a succeeded job without a result")?;
                    println!(
                        "published {} v{} after {} epochs (best validation loss {:.5})",
                        r.model,
                        r.version,
                        r.epochs_run,
                        r.best_validation_loss.unwrap_or(f64::NAN)
                    );
                    published = Some(r.version);
                }
                pb::JobState::Failed | pb::JobState::Cancelled | pb::JobState::Interrupted => {
                    return Err(format!("job ended {:?}: {}", j.state(), j.error).into());
                }
                _ => println!("job {:?}", j.state()), // queued or running
            },
            _ => {}
        }
    }
    let version = published.ok_or("the watch ended before the job did")?;

    // 4. Stream a held-out sequence (another seed) through the new version.
    let mut held_out = rand::rngs::StdRng::seed_from_u64(12345);
    let xs = noisy_sine(&mut held_out, 80);
    let session = serving
        .open_session(pb::OpenSessionRequest {
            model: args.model.clone(),
            version,
            ..Default::default()
        })
        .await?
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = serving
        .step_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut predictions = Vec::new();
    println!(
        "{:>4} {:>9} {:>11} {:>11}",
        "t", "x_t", "predicted", "x_{t+1}"
    );
    for (t, x) in xs[..xs.len() - 1].iter().enumerate() {
        tx.send(pb::StepRequest {
            session_id: session.session_id.clone(),
            inputs: Some(column(&[*x])),
            start_step: t as u64,
            has_start_step: true,
            ..Default::default()
        })
        .await?;
        let reply = replies.message().await?.ok_or("the stream ended early")?;
        let pred = match reply.result {
            Some(pb::step_response::Result::Ok(r)) => r.outputs.ok_or("no outputs")?.values[0],
            other => return Err(format!("step {t}: {other:?}").into()),
        };
        println!("{t:>4} {x:>9.4} {pred:>11.4} {:>11.4}", xs[t + 1]);
        predictions.push(pred);
    }
    drop(tx);
    serving
        .close_session(pb::CloseSessionRequest {
            session_id: session.session_id,
        })
        .await?;
    let errors = predictions[args.warmup..]
        .iter()
        .zip(&xs[args.warmup + 1..])
        .map(|(p, x)| f64::from(p - x).powi(2));
    let mse = errors.clone().sum::<f64>() / errors.count() as f64;
    println!(
        "held-out MSE after the warm-up: {mse:.5} (bound {})",
        args.max_mse
    );

    // 5. Pictures, as SVG and PNG.
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "cannot load the embedded font")?;
    let out = Path::new(&args.out_dir);
    std::fs::create_dir_all(out)?;
    let [loss_svg, loss_png, pred_svg, pred_png] =
        ["loss.svg", "loss.png", "prediction.svg", "prediction.png"].map(|f| out.join(f));
    let size = (800, 450);
    let mut pixels = vec![0u8; 800 * 450 * 3]; // RGB, for the PNGs
    let svg = SVGBackend::new(&loss_svg, size).into_drawing_area();
    draw_loss(svg, &curve)?;
    let png = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
    draw_loss(png, &curve)?;
    write_png(&loss_png, &pixels, size)?;
    let (truth, warmup) = (&xs[1..], args.warmup);
    let svg = SVGBackend::new(&pred_svg, size).into_drawing_area();
    draw_prediction(svg, truth, &predictions, warmup)?;
    let png = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
    draw_prediction(png, truth, &predictions, warmup)?;
    write_png(&pred_png, &pixels, size)?;
    println!("pictures written to {}", out.display());

    if mse.is_nan() || mse > args.max_mse {
        return Err(format!("held-out MSE {mse:.5} is above the bound {}", args.max_mse).into());
    }
    Ok(())
}

/// Train and validation loss per epoch, on a log scale.
fn draw_loss<DB>(root: DrawingArea<DB, Shift>, curve: &[(u32, f64, f64)]) -> Result<(), Error>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let losses = curve
        .iter()
        .flat_map(|c| [c.1, c.2])
        .filter(|v| v.is_finite());
    let (lo, hi) = losses.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    let y_range = lo * 0.8..hi * 1.25;
    // Ticks at 1, 2 and 5 × 10^k.
    let ticks: Vec<f64> = (-6..=2)
        .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
        .filter(|v| y_range.contains(v))
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("Training loss (MSE)", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            1u32..curve.len().max(2) as u32,
            y_range.log_scale().with_key_points(ticks),
        )?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss (log scale)")
        .y_label_formatter(&|v| format!("{v:.*}", (-v.log10().floor()).max(0.0) as usize))
        .draw()?;
    let series = [("train", BLUE, 1), ("validation", RED, 2)];
    for (name, color, column) in series {
        let points = curve
            .iter()
            .map(|c| (c.0, if column == 1 { c.1 } else { c.2 }));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The true next value and the model's prediction at every step.
fn draw_prediction<DB>(
    root: DrawingArea<DB, Shift>,
    truth: &[f32],
    predicted: &[f32],
    warmup: usize,
) -> Result<(), Error>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Held-out sequence: next value", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0..truth.len(), -1.2f32..1.2f32)?;
    chart
        .configure_mesh()
        .x_desc("step t")
        .y_desc("x(t+1)")
        .draw()?;
    chart.draw_series([Rectangle::new(
        [(0, -1.2), (warmup, 1.2)],
        BLACK.mix(0.08).filled(),
    )])?;
    let lines = [("truth", BLACK, truth), ("prediction", RED, predicted)];
    for (name, color, values) in lines {
        chart
            .draw_series(LineSeries::new(
                values.iter().copied().enumerate(),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn write_png(path: &Path, rgb: &[u8], (width, height): (u32, u32)) -> Result<(), Error> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    encoder.write_header()?.write_image_data(rgb)?;
    Ok(())
}
