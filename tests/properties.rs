#![cfg(feature = "grpc")]
//! Property tests: arbitrary requests (shapes, sizes, NaNs, ids, indexes,
//! hyper-parameters) against every engine entry point. Each must answer
//! with a value or one of the errors its contract names — never panic — and
//! no single allocation may pass a bound derived from the limits configured
//! here (a counting allocator sees every allocation of this test binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use gru_serve::engine::training::{JobRequest, JobTarget};
use gru_serve::engine::{
    Engine, EngineConfig, EngineError, ExportedState, HiddenState, PredictSeq, Resume, StepInput,
};
use gru_serve::model::train::{OptimizerKind, Schedule, SeqTarget, Sequence, TrainConfig};
use gru_serve::model::ModelConfig;
use proptest::prelude::*;
use tempfile::TempDir;

mod common;
use common::server::write_model;

/// Records the largest single allocation made by this process.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as for `alloc`; `ptr` came from the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Predict may hold this much; no single allocation may be larger.
const PREDICT_BYTES: u64 = 128 << 20;

const I: usize = 3;
const H: usize = 8;
const L: usize = 2;

struct World {
    engine: Engine,
    rt: tokio::runtime::Runtime,
    _dir: TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = TempDir::new().unwrap();
        write_model(
            dir.path(),
            "m",
            1,
            ModelConfig::new(I, H, L).with_head(2),
            7,
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let engine = rt.block_on(async {
            Engine::load(EngineConfig {
                model_dir: dir.path().to_path_buf(),
                max_sessions: 64,
                max_predict_bytes: PREDICT_BYTES,
                max_predict_steps: 1 << 20,
                ..Default::default()
            })
            .unwrap()
        });
        World {
            engine,
            rt,
            _dir: dir,
        }
    })
}

/// The shape, always: one sequence of 20,000 steps and thousands of
/// one-step ones, answered within the bound (it used to ask for 10.5 GB).
#[test]
fn the_ragged_predict_is_answered_within_the_bound() {
    let w = world();
    let mut seqs = vec![PredictSeq {
        inputs: vec![0.1; 20_000 * I],
        len: 20_000,
        initial: None,
    }];
    seqs.extend((0..4095).map(|n| PredictSeq {
        inputs: vec![n as f32 / 4095.0; I],
        len: 1,
        initial: None,
    }));
    let out =
        w.rt.block_on(w.engine.predict("m", None, seqs))
            .expect("ragged predict");
    assert_eq!(out.outputs.len(), 4096);
    assert_bounded();
}

fn assert_bounded() {
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest as u64 <= 2 * PREDICT_BYTES,
        "an allocation of {largest} bytes passed the bound {}",
        2 * PREDICT_BYTES
    );
}

/// A float that is sometimes NaN or infinite.
fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -2.0f32..2.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
    ]
}

fn model_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("m".to_string()),
        1 => Just(String::new()),
        1 => "[a-z]{1,8}",
        1 => "[a-z]{200,300}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn predict_answers_or_refuses_and_stays_bounded(
        model in model_name(),
        version in prop::option::of(0u64..3),
        lens in prop::collection::vec(prop_oneof![20 => 1usize..3000, 1 => Just(0usize)], 0..40),
        cols_off in prop_oneof![9 => Just(None), 1 => (1usize..3).prop_map(Some)],
        nan in prop_oneof![9 => Just(None), 1 => (0usize..1000).prop_map(Some)],
        state in prop_oneof![6 => Just(None), 2 => Just(Some((L, H))), 1 => (0usize..4, 0usize..10).prop_map(Some)],
        huge in prop_oneof![3 => Just(false), 1 => Just(true)],
    ) {
        let w = world();
        let mut lens = lens;
        if huge {
            // The shape that used to abort: one long sequence, many short.
            lens = vec![20_000];
            lens.extend(std::iter::repeat_n(1, 2000));
        }

        let seqs: Vec<PredictSeq> = lens
            .iter()
            .enumerate()
            .map(|(n, &len)| {
                let cols = I + cols_off.unwrap_or(0) * (n % 2);
                let mut inputs: Vec<f32> = (0..len * cols).map(|k| ((k * 7 + n) % 13) as f32 / 13.0).collect();
                if let Some(p) = nan {
                    if p < inputs.len() { inputs[p] = f32::NAN; }
                }
                PredictSeq {
                    inputs,
                    len,
                    initial: state.map(|(l, h)| HiddenState { layers: l, hidden: h, values: vec![0.5; l * h] }),
                }
            })
            .collect();
        let n = seqs.len();
        let r = w.rt.block_on(w.engine.predict(&model, version, seqs));
        match r {
            Ok(out) => {
                prop_assert_eq!(out.outputs.len(), n);
                for (o, &len) in out.outputs.iter().zip(&lens) {
                    prop_assert_eq!(o.len(), len * 2);
                    prop_assert!(o.iter().all(|v| v.is_finite()));
                }
            }
            Err(EngineError::ModelInput(_))
            | Err(EngineError::ModelRequired)
            | Err(EngineError::NotFinite { .. })
            | Err(EngineError::StateShape { .. })
            | Err(EngineError::PredictSequenceCount { .. })
            | Err(EngineError::PredictStepCount { .. })
            | Err(EngineError::PredictInputShape { .. })
            | Err(EngineError::ModelNotFound(_))
            | Err(EngineError::VersionNotFound { .. })
            | Err(EngineError::PredictTooLarge { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error: {e}"),
        }
        assert_bounded();
    }

    #[test]
    fn sessions_answer_or_refuse(
        model in model_name(),
        key in prop::option::of(prop_oneof!["[a-z]{1,10}", "[ -~]{250,300}", Just("a\u{0}b".to_string())]),
        initial in prop::option::of((0usize..4, 0usize..10, float())),
        resume in prop::option::of((any::<u64>(), 0u64..3)),
        steps in prop::collection::vec((0usize..6, 1usize..5, prop::option::of(any::<u64>()), float()), 0..6),
        bad_id in prop::option::of(prop_oneof!["[ -~]{0,40}", "[a-f0-9]{129,200}"]),
    ) {
        let w = world();
        let resume = resume.map(|(step_index, version)| Resume::State(ExportedState {
            model: model.clone(),
            version,
            step_index,
            hidden: HiddenState { layers: L, hidden: H, values: vec![0.0; L * H] },
        }));
        let initial = initial.map(|(l, h, v)| HiddenState { layers: l, hidden: h, values: vec![v; l * h] });
        let opened = w.rt.block_on(w.engine.open_session(&model, None, key, None, initial, resume));
        let id = match opened {
            Ok((s, _)) => s.id.clone(),
            Err(EngineError::ModelRequired)
            | Err(EngineError::NotFinite { .. })
            | Err(EngineError::StateShape { .. })
            | Err(EngineError::ResumeWithInitial)
            | Err(EngineError::ResumeModelMismatch { .. })
            | Err(EngineError::ResumeStepIndexTooLarge { .. })
            | Err(EngineError::BadId { .. })
            | Err(EngineError::ModelNotFound(_))
            | Err(EngineError::VersionNotFound { .. })
            | Err(EngineError::SessionKeyConflict { .. })
            | Err(EngineError::SessionLimit { .. }) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("open: unexpected {e}"))),
        };
        for (k, cols, start, v) in steps {
            let target = bad_id.clone().unwrap_or_else(|| id.clone());
            let inputs = vec![v; k * cols];
            let input = StepInput { inputs, rows: k, cols, start_step: start };
            let r = w.rt.block_on(w.engine.step(&target, None, input));
            match r {
                Ok(reply) => {
                    prop_assert_eq!(reply.outcome.outputs.len(), k * 2);
                    prop_assert!(reply.outcome.next_step >= reply.outcome.start_step);
                }
                Err(EngineError::StepRowCount { .. })
                | Err(EngineError::StepInputShape { .. })
                | Err(EngineError::NotFinite { .. })
                | Err(EngineError::BadId { .. })
                | Err(EngineError::SessionNotFound(_))
                | Err(EngineError::StepIndexMismatch { .. })
                | Err(EngineError::AlreadyAppliedReplyNotKept { .. })
                | Err(EngineError::StepIndexOverflow { .. }) => {}
                Err(e) => prop_assert!(false, "step: unexpected {e}"),
            }
        }
        let _ = w.rt.block_on(w.engine.close_session(&id, None));
        assert_bounded();
    }

    #[test]
    fn training_submissions_answer_or_refuse(
        epochs in prop_oneof![Just(0usize), 1usize..3, Just(usize::MAX)],
        batch_size in prop_oneof![Just(0usize), 1usize..8, Just(1usize << 40)],
        lr in prop_oneof![Just(f64::NAN), Just(1e300), Just(-1.0), 1e-4f64..1.0, Just(0.0)],
        wd in prop_oneof![Just(0.0f64), Just(f64::INFINITY), Just(1e300), 0.0f64..1.0],
        schedule in prop_oneof![
            Just(Schedule::Constant),
            (prop_oneof![Just(f64::NAN), 0.0f64..2.0]).prop_map(|min_lr| Schedule::Cosine { min_lr }),
            (0usize..3, prop_oneof![Just(f64::NAN), Just(0.0), 0.1f64..2.0]).prop_map(|(every_epochs, gamma)| Schedule::Step { every_epochs, gamma }),
        ],
        momentum in prop_oneof![Just(f64::NAN), Just(2.0), 0.0f64..0.99],
        sgd in any::<bool>(),
        hidden in prop_oneof![Just(0usize), 1usize..16, Just(1usize << 20)],
        lens in prop::collection::vec(1usize..50, 0..6),
        weight in float(),
    ) {
        let w = world();
        let config = ModelConfig::new(1, hidden, 1).with_head(1);
        let data: Vec<Sequence> = lens
            .iter()
            .map(|&len| Sequence {
                inputs: vec![0.5; len],
                target: SeqTarget::Values(vec![0.25; len]),
                weights: Some(vec![weight; len]),
            })
            .collect();
        let hyper = TrainConfig {
            epochs,
            batch_size,
            learning_rate: lr,
            weight_decay: wd,
            schedule,
            optimizer: if sgd { OptimizerKind::Sgd { momentum } } else { OptimizerKind::default() },
            ..TrainConfig::default()
        };
        let r = w.engine.training().submit(JobRequest {
            model: "prop".into(),
            target: JobTarget::New { config, description: String::new() },
            hyperparameters: hyper,
            data,
        });
        match r {
            Ok((id, _)) => {
                let _ = w.engine.training().cancel(&id);
            }
            // Refusals are the client's to fix: checked by the code they
            // map to, whatever the engine names them.
            Err(e) => {
                let msg = e.to_string();
                let code = tonic::Status::from(e).code();
                prop_assert!(
                    matches!(code, tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted),
                    "submit: unexpected {msg}"
                );
            }
        }
        assert_bounded();
    }
}
