#![cfg(feature = "grpc")]
//! Refusals and errors end to end: bad input to every RPC, and StepStreams
//! ended by a limit (message size, idle time), on the real
//! `gru_serve::server::run` at 127.0.0.1:0 driven through the generated
//! client.
//!
//! Where the expectations come from:
//! - **The contract** is `proto/gru/v1/gru.proto`: errors carry the
//!   documented gRPC codes; on a StepStream a bad message gets an error
//!   reply and the stream goes on, while a limit ends the stream with a
//!   status.
//! - **Refusals name what is wrong**: `EngineError`'s docs say messages name
//!   what was wrong and the values involved; each refusal test asserts the
//!   code and the named field/value.
//! - **A refusal steps nothing**: a good session stepped between the bad
//!   requests still matches Predict (within 1e-6, as in sessions.rs).
//! - **Every test ends with a clean shutdown**: `run()` must return `Ok`
//!   within a timeout once the shutdown future resolves.

use std::time::Duration;

use gru_serve::service::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

mod common;
use common::server::*;
use common::sessions::*;

/// Each bad input gets its code with a message naming the field/value:
/// unknown model/version/session (NOT_FOUND; the version refusal lists the
/// served versions), wrong column count, rows×cols ≠ values, NaN, k = 0,
/// missing inputs, initial_state of the wrong size (OpenSession and
/// Predict, including declared sizes that disagree with the model), Predict
/// with no sequences or a 0-row sequence (INVALID_ARGUMENT). On a stream, a
/// bad message gets an error reply (code + message) and the stream goes on
/// serving the next good message. A good session stepped between all of
/// these (and sent bad messages itself) still matches Predict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_the_right_codes() {
    let dir = small_repo();
    let server = TestServer::serving(dir.path()).await;
    let mut c = server.client();
    let good = open(&mut c, None).await;
    let x = rand_vec(5 * I, 80);
    let mut got = outputs(
        &c.step(step_req(&good, &x[..I], 0))
            .await
            .unwrap()
            .into_inner(),
    );

    unknown_names_are_not_found(&mut c).await;
    let cases = malformed_steps(&good);
    malformed_steps_are_invalid(&mut c, &cases).await;
    // Rows 1..=3 of the good session go in between the bad stream messages.
    let mut row = 1;
    stream_answers_bad_messages_and_goes_on(&mut c, &good, &cases, &x, &mut row, &mut got).await;
    wrong_initial_states_are_invalid(&mut c).await;
    bad_predicts_are_invalid(&mut c).await;

    // The good session, after all this, still matches Predict.
    got.extend(outputs(
        &c.step(step_req(&good, &x[row * I..(row + 1) * I], 0))
            .await
            .unwrap()
            .into_inner(),
    ));
    row += 1;
    assert_eq!(row, 5, "5 good rows were sent");
    let (want, _) = predict_one(&mut c, &x, None).await;
    assert_close("good session after errors", &got, &want);
    assert_eq!(session_state(&mut c, &good).await.step_index, 5);
    server.stop().await;
}

// ---------------------------------------------------------------- steps of bad_inputs_get_the_right_codes

/// A malformed step message: what it is, the message, the needles its refusal must name.
type BadStep = (&'static str, pb::StepRequest, Vec<&'static str>);

/// Unknown model, version and session: NOT_FOUND naming the value (and the
/// served versions for a version).
async fn unknown_names_are_not_found(c: &mut Client) {
    let e = expect_err(
        "unknown model",
        c.get_model(pb::GetModelRequest {
            model: "nope".into(),
            version: 0,
        })
        .await,
    );
    assert_status("unknown model", &e, Code::NotFound, &["nope"]);
    let e = expect_err(
        "unknown model (open)",
        c.open_session(pb::OpenSessionRequest {
            model: "nope".into(),
            ..Default::default()
        })
        .await,
    );
    assert_status("unknown model (open)", &e, Code::NotFound, &["nope"]);
    let e = expect_err(
        "unknown version",
        c.get_model(pb::GetModelRequest {
            model: "m".into(),
            version: 9,
        })
        .await,
    );
    assert_status("unknown version", &e, Code::NotFound, &["9", "[1]"]);
    let e = expect_err(
        "unknown version (predict)",
        c.predict(pb::PredictRequest {
            model: "m".into(),
            version: 9,
            sequences: vec![pb::PredictSequence {
                inputs: Some(matrix(1, I, vec![0.0; I])),
                initial_state: None,
            }],
            return_states: false,
        })
        .await,
    );
    assert_status(
        "unknown version (predict)",
        &e,
        Code::NotFound,
        &["9", "[1]"],
    );
    let e = expect_err(
        "unknown session",
        c.step(step_req("feedface", [0.0; I], 0)).await,
    );
    assert_status("unknown session", &e, Code::NotFound, &["feedface"]);
    let e = expect_err(
        "unknown session (state)",
        c.get_session_state(pb::GetSessionStateRequest {
            session_id: "feedface".into(),
        })
        .await,
    );
    assert_status("unknown session (state)", &e, Code::NotFound, &["feedface"]);
}

/// Malformed step inputs, addressed to the good session itself.
fn malformed_steps(good: &str) -> Vec<BadStep> {
    let bad_step = |inputs: Option<pb::Matrix>| pb::StepRequest {
        session_id: good.to_string(),
        inputs,
        ..Default::default()
    };
    vec![
        (
            "wrong columns",
            bad_step(Some(matrix(2, 4, vec![0.1; 8]))),
            vec!["inputs", "3 features", "4 cols"],
        ),
        (
            "rows×cols ≠ values",
            bad_step(Some(matrix(2, 3, vec![0.1; 5]))),
            vec!["inputs", "5 values"],
        ),
        (
            "NaN",
            bad_step(Some(matrix(1, 3, vec![0.1, f32::NAN, 0.2]))),
            vec!["inputs[1]", "NaN"],
        ),
        (
            "infinity",
            bad_step(Some(matrix(1, 3, vec![0.1, 0.2, f32::INFINITY]))),
            vec!["inputs[2]", "inf"],
        ),
        (
            "k = 0",
            bad_step(Some(matrix(0, 3, vec![]))),
            vec!["inputs", "0 rows"],
        ),
        ("no inputs", bad_step(None), vec!["inputs"]),
    ]
}

/// Each malformed step over unary Step: INVALID_ARGUMENT naming the field.
async fn malformed_steps_are_invalid(c: &mut Client, cases: &[BadStep]) {
    for (what, req, needles) in cases {
        let e = expect_err(what, c.step(req.clone()).await);
        assert_status(what, &e, Code::InvalidArgument, needles);
    }
}

/// The same over one stream, each bad message followed by a good one (the
/// first three only: rows `row..` of `x` for `good`, outputs onto `got`); an
/// unknown session on the stream gets a NOT_FOUND error reply.
async fn stream_answers_bad_messages_and_goes_on(
    c: &mut Client,
    good: &str,
    cases: &[BadStep],
    x: &[f32],
    row: &mut usize,
    got: &mut Vec<f32>,
) {
    let (tx, mut rx) = open_stream(c).await;
    for (n, (what, req, needles)) in cases.iter().enumerate() {
        let mut bad = req.clone();
        bad.request_id = 100 + n as u64;
        tx.send(bad).await.unwrap();
        let rep = reply(&mut rx).await;
        assert_eq!(rep.request_id, 100 + n as u64);
        assert_eq!(rep.session_id, good);
        match &rep.result {
            Some(pb::step_response::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{what} on a stream");
                for needle in needles {
                    assert!(
                        e.message.contains(needle),
                        "{what} on a stream: {:?}",
                        e.message
                    );
                }
            }
            other => panic!("{what} on a stream: expected an error reply, got {other:?}"),
        }
        if n < 3 {
            tx.send(step_req(good, &x[*row * I..(*row + 1) * I], 200 + n as u64))
                .await
                .unwrap();
            let rep = reply(&mut rx).await;
            assert_eq!(rep.request_id, 200 + n as u64);
            got.extend(outputs(&rep));
            *row += 1;
        }
    }
    // An unknown session on the stream: NOT_FOUND as an error reply.
    tx.send(step_req("feedface", [0.0; I], 300)).await.unwrap();
    let rep = reply(&mut rx).await;
    match &rep.result {
        Some(pb::step_response::Result::Error(e)) => {
            assert_eq!(e.code, Code::NotFound as i32);
            assert!(e.message.contains("feedface"), "{:?}", e.message);
        }
        other => panic!("unknown session on a stream: {other:?}"),
    }
    drop(tx);
    assert!(next_reply(&mut rx).await.unwrap().is_none());
}

/// Initial states of the wrong size (or declared sizes that disagree with
/// the model, or NaN), to OpenSession and to Predict: INVALID_ARGUMENT
/// naming initial_state.
async fn wrong_initial_states_are_invalid(c: &mut Client) {
    let open_with = |h: pb::HiddenState| pb::OpenSessionRequest {
        model: "m".into(),
        initial_state: Some(h),
        ..Default::default()
    };
    let wrong_states = [
        pb::HiddenState {
            num_layers: L as u32,
            hidden_size: H as u32,
            values: vec![0.0; L * H - 1],
        },
        pb::HiddenState {
            num_layers: 1,
            hidden_size: (L * H) as u32,
            values: vec![0.0; L * H],
        },
        pb::HiddenState {
            num_layers: L as u32,
            hidden_size: H as u32,
            values: vec![f32::NAN; L * H],
        },
    ];
    for (n, h) in wrong_states.iter().enumerate() {
        let e = expect_err(
            "open wrong state",
            c.open_session(open_with(h.clone())).await,
        );
        assert_status(
            &format!("open with wrong initial_state {n}"),
            &e,
            Code::InvalidArgument,
            &["initial_state"],
        );
        let e = expect_err(
            "predict wrong state",
            c.predict(pb::PredictRequest {
                model: "m".into(),
                sequences: vec![pb::PredictSequence {
                    inputs: Some(matrix(1, I, vec![0.0; I])),
                    initial_state: Some(h.clone()),
                }],
                ..Default::default()
            })
            .await,
        );
        assert_status(
            &format!("predict with wrong initial_state {n}"),
            &e,
            Code::InvalidArgument,
            &["sequences[0].initial_state"],
        );
    }
}

/// Predict with no sequences, a 0-row sequence, wrong columns, NaN:
/// INVALID_ARGUMENT naming the sequence.
async fn bad_predicts_are_invalid(c: &mut Client) {
    let e = expect_err(
        "predict no sequences",
        c.predict(pb::PredictRequest {
            model: "m".into(),
            ..Default::default()
        })
        .await,
    );
    assert_status(
        "predict no sequences",
        &e,
        Code::InvalidArgument,
        &["sequences", "0"],
    );
    let predict_inputs = |m: pb::Matrix| pb::PredictRequest {
        model: "m".into(),
        sequences: vec![
            pb::PredictSequence {
                inputs: Some(matrix(1, I, vec![0.0; I])),
                initial_state: None,
            },
            pb::PredictSequence {
                inputs: Some(m),
                initial_state: None,
            },
        ],
        ..Default::default()
    };
    for (what, m, needles) in [
        ("0 rows", matrix(0, I, vec![]), vec!["sequences[1]"]),
        (
            "wrong columns",
            matrix(2, 4, vec![0.0; 8]),
            vec!["sequences[1]"],
        ),
        (
            "rows×cols ≠ values",
            matrix(2, 3, vec![0.0; 5]),
            vec!["sequences[1]", "5 values"],
        ),
        (
            "NaN",
            matrix(1, 3, vec![0.0, 0.0, f32::NAN]),
            vec!["sequences[1]", "NaN"],
        ),
    ] {
        let e = expect_err(what, c.predict(predict_inputs(m)).await);
        assert_status(
            &format!("predict {what}"),
            &e,
            Code::InvalidArgument,
            &needles,
        );
    }
}

/// A message over max_message_bytes on a StepStream ends the stream with an
/// error status (OUT_OF_RANGE or RESOURCE_EXHAUSTED), not a clean end, after
/// the replies to the messages before it; the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_stream_message_is_an_error() {
    let dir = small_repo();
    let mut cfg = config_for(dir.path());
    cfg.max_message_bytes = 16 << 10;
    let server = TestServer::start(cfg).await;
    server.wait_serving().await;
    let mut c = server.client();
    let sid = open(&mut c, None).await;
    let (tx, mut rx) = open_stream(&mut c).await;
    tx.send(step_req(&sid, rand_vec(I, 90), 1)).await.unwrap();
    assert_eq!(reply(&mut rx).await.request_id, 1);
    // 4000 rows × 3 floats ≈ 48 KiB > 16 KiB.
    tx.send(step_req(&sid, rand_vec(4000 * I, 91), 2))
        .await
        .unwrap();
    match next_reply(&mut rx).await {
        Err(s) => assert!(
            matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted),
            "oversize message: unexpected code {:?}: {}",
            s.code(),
            s.message()
        ),
        Ok(Some(r)) => panic!("oversize message: got a reply {r:?}"),
        Ok(None) => panic!("oversize message: the stream ended cleanly with no reply"),
    }
    drop(tx);
    // The session and server are fine.
    let r = c.step(step_req(&sid, rand_vec(I, 92), 3)).await.unwrap();
    assert_eq!(ok_result(&r.into_inner()).start_step, 1);
    server.stop().await;
}

/// A StepStream that goes quiet for longer than the idle timeout is ended
/// with DEADLINE_EXCEEDED; its sessions live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_are_ended_and_sessions_survive() {
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.stream_idle_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    server.wait_serving().await;
    let mut c = server.client();
    let id = open(&mut c, None).await;
    let (tx, rx) = mpsc::channel(4);
    let mut replies = c
        .step_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(step_req(&id, rand_vec(I, 1), 1)).await.unwrap();
    assert_eq!(ok_result(&reply(&mut replies).await).next_step, 1);
    let end = next_reply(&mut replies)
        .await
        .expect_err("the stream should end");
    assert_status(
        "idle stream",
        &end,
        Code::DeadlineExceeded,
        &["idle timeout"],
    );
    let r = c
        .step(step_req(&id, rand_vec(I, 2), 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ok_result(&r).next_step,
        2,
        "the session outlived its stream"
    );
    drop(tx);
    server.stop().await;
}
