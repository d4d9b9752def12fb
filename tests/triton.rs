//! The KServe v2 / Triton adapter against the real server on port 0: gRPC
//! with a tonic client generated from the same vendored protos, and the
//! HTTP/JSON form over a plain socket. Outputs are checked against gru.v1's
//! for the same inputs; the refusals are the ones tritonclient cannot
//! provoke (typed contents, uint64 ids, expiry, replay, malformed bodies)
//! plus the codes and texts of the common ones. Sequences outliving the
//! process: here (file store) and in durable_redis.rs (replicas).

#![cfg(feature = "grpc")]

mod common;

use std::time::Duration;

use common::server::{
    assert_close, assert_status, config_for, expect_err, rand_vec, small_repo, Client, TestServer,
    WAIT,
};
use common::sessions::{hidden, outputs, H, I, L, O};
use common::triton::{input, output, param_bool, param_int, raw, seq_request};
use gru_serve::engine::{StoreConfig, StoreSpec};
use gru_serve::server::ServerConfig;
use gru_serve::service::pb;
use gru_serve::service::triton::pb as v2;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;
use v2::grpc_inference_service_client::GrpcInferenceServiceClient;

type V2 = GrpcInferenceServiceClient<Channel>;

fn v2_client(s: &TestServer) -> V2 {
    GrpcInferenceServiceClient::new(s.channel.clone())
}

/// gru.v1's outputs for `rows` stepped one row at a time from `initial`.
async fn reference(c: &mut Client, rows: &[f32], initial: Option<Vec<f32>>) -> Vec<f32> {
    let id = c
        .open_session(pb::OpenSessionRequest {
            model: "m".into(),
            initial_state: initial.map(hidden),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let mut out = Vec::new();
    for row in rows.chunks(I) {
        let r = c
            .step(common::server::step_req(&id, row, 0))
            .await
            .unwrap()
            .into_inner();
        out.extend(outputs(&r));
    }
    out
}

#[tokio::test]
async fn health_metadata_config_and_index_speak_tritons_shapes() {
    let dir = small_repo();
    let mut config = config_for(dir.path());
    config.engine.session_ttl = Duration::from_secs(90);
    let s = TestServer::start(config).await;
    s.wait_serving().await;
    let mut c = v2_client(&s);
    assert!(
        c.server_live(v2::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(v2::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str, version: &str| v2::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("m", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("m", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("nope", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let bad = expect_err("bad version", c.model_ready(ready("m", "one")).await);
    assert_status(
        "bad version",
        &bad,
        Code::InvalidArgument,
        &["version should be an integral value > 0"],
    );

    let meta = c
        .server_metadata(v2::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        meta.extensions.contains(&"sequence".to_string()),
        "{meta:?}"
    );
    assert!(
        meta.extensions.contains(&"statistics".to_string()),
        "{meta:?}"
    );
    assert!(
        !meta.extensions.contains(&"model_repository".to_string()),
        "unload is refused: {meta:?}"
    );

    let md = c
        .model_metadata(v2::ModelMetadataRequest {
            name: "m".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(md.versions, vec!["1"]);
    let shapes: Vec<(&str, &[i64])> = md
        .inputs
        .iter()
        .chain(&md.outputs)
        .map(|t| (t.name.as_str(), &t.shape[..]))
        .collect();
    assert!(
        shapes.contains(&("INPUT", &[-1, -1, I as i64][..])),
        "{shapes:?}"
    );
    assert!(
        shapes.contains(&("OUTPUT", &[-1, -1, O as i64][..])),
        "{shapes:?}"
    );
    assert!(
        shapes.contains(&("STATE_OUT", &[-1, L as i64, H as i64][..])),
        "{shapes:?}"
    );

    let cfg = c
        .model_config(v2::ModelConfigRequest {
            name: "m".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert!(cfg.max_batch_size >= 1);
    match cfg.scheduling_choice {
        Some(v2::model_config::SchedulingChoice::SequenceBatching(sb)) => {
            assert_eq!(
                sb.max_sequence_idle_microseconds, 90_000_000,
                "the session TTL"
            )
        }
        other => panic!("expected sequence_batching, got {other:?}"),
    }

    let index = c
        .repository_index(v2::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models.len(), 1);
    assert_eq!(
        (
            index.models[0].name.as_str(),
            index.models[0].state.as_str()
        ),
        ("m", "READY")
    );

    let load = c
        .repository_model_load(v2::RepositoryModelLoadRequest {
            model_name: "m".into(),
            ..Default::default()
        })
        .await;
    assert!(load.is_ok(), "{load:?}");
    let missing = expect_err(
        "load unknown",
        c.repository_model_load(v2::RepositoryModelLoadRequest {
            model_name: "nope".into(),
            ..Default::default()
        })
        .await,
    );
    assert_status("load unknown", &missing, Code::NotFound, &["nope"]);
    let unload = expect_err(
        "unload",
        c.repository_model_unload(v2::RepositoryModelUnloadRequest {
            model_name: "m".into(),
            ..Default::default()
        })
        .await,
    );
    assert_status("unload", &unload, Code::Unimplemented, &["does not unload"]);
    let trace = expect_err(
        "trace",
        c.trace_setting(v2::TraceSettingRequest::default()).await,
    );
    assert_status("trace", &trace, Code::Unimplemented, &["TraceSetting"]);
    s.stop().await;
}

#[tokio::test]
async fn a_fifty_step_sequence_and_a_stateless_batch_equal_gru_v1() {
    let dir = small_repo();
    let s = TestServer::serving(dir.path()).await;
    let mut c = v2_client(&s);
    let mut g = Client::new(s.channel.clone());
    let rows = rand_vec(50 * I, 11);
    let want = reference(&mut g, &rows, None).await;
    let mut got = Vec::new();
    for (n, row) in rows.chunks(I).enumerate() {
        let r = c
            .model_infer(seq_request(Some((42, n == 0, n == 49)), row))
            .await
            .unwrap_or_else(|e| panic!("step {n}: {e}"))
            .into_inner();
        assert_eq!(
            (
                r.model_name.as_str(),
                r.model_version.as_str(),
                r.id.as_str()
            ),
            ("m", "1", "r")
        );
        got.extend(output(&r, "OUTPUT"));
    }
    assert_close("sequence 42 vs gru.v1", &got, &want);
    // END closed it: the next request without START is refused, Triton's way.
    let after = expect_err(
        "after END",
        c.model_infer(seq_request(Some((42, false, false)), &rows[..I]))
            .await,
    );
    assert_status(
        "after END",
        &after,
        Code::InvalidArgument,
        &["sequence 42", "must specify the START flag"],
    );

    // Stateless: two sequences of 50 steps in one [2, 50, I] request.
    let other = rand_vec(50 * I, 12);
    let mut both = rows.clone();
    both.extend(&other);
    let mut req = seq_request(None, &both);
    req.inputs[0].shape = vec![2, 50, I as i64];
    let r = c.model_infer(req).await.unwrap().into_inner();
    let y = output(&r, "OUTPUT");
    assert_eq!(r.outputs[0].shape, vec![2, 50, O as i64]);
    assert_close("stateless [0]", &y[..50 * O], &want);
    assert_close(
        "stateless [1]",
        &y[50 * O..],
        &reference(&mut g, &other, None).await,
    );
    s.stop().await;
}

#[tokio::test]
async fn state_in_seeds_a_sequence_state_out_reads_it_and_sequence_step_replays() {
    let dir = small_repo();
    let s = TestServer::serving(dir.path()).await;
    let mut c = v2_client(&s);
    let mut g = Client::new(s.channel.clone());
    let h0 = rand_vec(L * H, 5);
    let rows = rand_vec(3 * I, 6);
    let want = reference(&mut g, &rows, Some(h0.clone())).await;

    let mut start = seq_request(Some((7, true, false)), &rows[..I]);
    start
        .inputs
        .push(input("STATE_IN", "FP32", vec![1, L as i64, H as i64]));
    start.raw_input_contents.push(raw(&h0).into());
    let r1 = c.model_infer(start).await.unwrap().into_inner();
    assert_close("seeded step 0", &output(&r1, "OUTPUT"), &want[..O]);
    assert_eq!(output(&r1, "STATE_OUT").len(), L * H);

    // Exactly-once: step 1 sent twice is applied once (answered from the last reply).
    let mut step1 = seq_request(Some((7, false, false)), &rows[I..2 * I]);
    step1
        .parameters
        .insert("sequence_step".into(), param_int(1));
    let a = c.model_infer(step1.clone()).await.unwrap().into_inner();
    let b = c.model_infer(step1).await.unwrap().into_inner();
    assert_eq!(output(&a, "OUTPUT"), output(&b, "OUTPUT"));
    let mut step2 = seq_request(Some((7, false, true)), &rows[2 * I..]);
    step2
        .parameters
        .insert("sequence_step".into(), param_int(2));
    step2.outputs = vec![v2::model_infer_request::InferRequestedOutputTensor {
        name: "OUTPUT".into(),
        ..Default::default()
    }];
    let r3 = c.model_infer(step2).await.unwrap().into_inner();
    assert_eq!(r3.outputs.len(), 1, "only the output asked for");
    let mut got = output(&r1, "OUTPUT");
    got.extend(output(&a, "OUTPUT"));
    got.extend(output(&r3, "OUTPUT"));
    assert_close("seeded sequence vs gru.v1", &got, &want);

    // A gap in sequence_step is refused with the index the session is at.
    let mut gap = seq_request(Some((8, true, false)), &rows[..I]);
    c.model_infer(gap.clone()).await.unwrap();
    gap.parameters
        .insert("sequence_start".into(), param_bool(false));
    gap.parameters.insert("sequence_step".into(), param_int(5));
    let e = expect_err("gap", c.model_infer(gap).await);
    assert_status("gap", &e, Code::InvalidArgument, &["is at step 1"]);
    s.stop().await;
}

#[tokio::test]
async fn interleaved_sequences_on_one_stream_answer_in_order_with_errors_in_band() {
    let dir = small_repo();
    let s = TestServer::serving(dir.path()).await;
    let mut c = v2_client(&s);
    let mut g = Client::new(s.channel.clone());
    let (tx, rx) = mpsc::channel(64);
    let mut replies = c
        .model_stream_infer(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let steps = 6;
    let data: Vec<Vec<f32>> = (0..3).map(|n| rand_vec(steps * I, 20 + n)).collect();
    let mut sent = Vec::new();
    for t in 0..steps {
        for (n, rows) in data.iter().enumerate() {
            let mut r = seq_request(
                Some((100 + n as i64, t == 0, t == steps - 1)),
                &rows[t * I..(t + 1) * I],
            );
            if n == 2 {
                // A string id, as Triton's example sends a UUID.
                r.parameters.insert(
                    "sequence_id".into(),
                    v2::InferParameter {
                        parameter_choice: Some(v2::infer_parameter::ParameterChoice::StringParam(
                            "uuid-1".into(),
                        )),
                    },
                );
            }
            r.id = format!("{n}/{t}");
            sent.push(r.id.clone());
            tx.send(r).await.unwrap();
        }
        if t == 2 {
            // A request of a sequence never started: an in-band error, the stream goes on.
            let mut bad = seq_request(Some((999, false, false)), &data[0][..I]);
            bad.id = "bad".into();
            sent.push(bad.id.clone());
            tx.send(bad).await.unwrap();
        }
    }
    drop(tx);
    let mut got: Vec<Vec<f32>> = vec![Vec::new(); 3];
    for id in &sent {
        let r = tokio::time::timeout(WAIT, replies.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let resp = r.infer_response.clone().unwrap();
        assert_eq!(&resp.id, id, "replies come in request order");
        if id == "bad" {
            assert!(
                r.error_message.contains("must specify the START flag"),
                "{r:?}"
            );
            continue;
        }
        assert_eq!(r.error_message, "", "{id}");
        let n: usize = id.split('/').next().unwrap().parse().unwrap();
        got[n].extend(output(&resp, "OUTPUT"));
    }
    assert!(tokio::time::timeout(WAIT, replies.message())
        .await
        .unwrap()
        .unwrap()
        .is_none());
    for (n, rows) in data.iter().enumerate() {
        assert_close(
            &format!("sequence {n}"),
            &got[n],
            &reference(&mut g, rows, None).await,
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn refusals_carry_tritons_codes_and_leave_other_sequences_alone() {
    let dir = small_repo();
    let mut config = config_for(dir.path());
    config.max_message_bytes = 64 << 10;
    config.engine.session_ttl = Duration::from_millis(400);
    let s = TestServer::start(config).await;
    s.wait_serving().await;
    let mut c = v2_client(&s);
    let row = rand_vec(I, 1);
    // A live sequence that every refusal below must leave as it is.
    c.model_infer(seq_request(Some((1, true, false)), &row))
        .await
        .unwrap();

    let cases: Vec<(&str, v2::ModelInferRequest, Code, &str)> = vec![
        (
            "no START",
            seq_request(Some((2, false, false)), &row),
            Code::InvalidArgument,
            "must specify the START flag",
        ),
        (
            "unknown model",
            {
                let mut r = seq_request(None, &row);
                r.model_name = "nope".into();
                r
            },
            Code::NotFound,
            "unknown model: 'nope'",
        ),
        (
            "unknown version",
            {
                let mut r = seq_request(None, &row);
                r.model_version = "9".into();
                r
            },
            Code::NotFound,
            "version 9",
        ),
        (
            "bad version",
            {
                let mut r = seq_request(None, &row);
                r.model_version = "v1".into();
                r
            },
            Code::InvalidArgument,
            "integral value > 0",
        ),
        (
            "datatype",
            {
                let mut r = seq_request(Some((1, false, false)), &row);
                r.inputs[0].datatype = "FP64".into();
                r.raw_input_contents = vec![vec![0u8; 8 * I].into()];
                r
            },
            Code::InvalidArgument,
            "data-type is 'FP64'",
        ),
        (
            "shape",
            {
                let mut r = seq_request(Some((1, false, false)), &row);
                r.inputs[0].shape = vec![1, 1, I as i64 + 1];
                r.raw_input_contents = vec![raw(&rand_vec(I + 1, 2)).into()];
                r
            },
            Code::InvalidArgument,
            "unexpected shape for input 'INPUT'",
        ),
        (
            "batch of a sequence",
            {
                let mut r = seq_request(Some((1, false, false)), &rand_vec(2 * I, 3));
                r.inputs[0].shape = vec![2, 1, I as i64];
                r
            },
            Code::InvalidArgument,
            "batch-size 1",
        ),
        (
            "NaN",
            seq_request(Some((1, false, false)), &[f32::NAN, 0.0, 0.0]),
            Code::InvalidArgument,
            "not finite",
        ),
        (
            "raw and contents",
            {
                let mut r = seq_request(None, &row);
                r.inputs[0].contents = Some(Box::new(v2::InferTensorContents {
                    fp32_contents: row.clone(),
                    ..Default::default()
                }));
                r
            },
            Code::InvalidArgument,
            "contents field must not be specified",
        ),
        (
            "unknown input",
            {
                let mut r = seq_request(None, &row);
                r.inputs[0].name = "X".into();
                r
            },
            Code::InvalidArgument,
            "unexpected inference input 'X'",
        ),
        (
            "oversize",
            seq_request(None, &rand_vec(I * 10_000, 4)),
            Code::OutOfRange,
            "",
        ),
    ];
    for (what, req, code, needle) in cases {
        let e = expect_err(what, c.model_infer(req).await);
        assert_eq!(e.code(), code, "{what}: {}", e.message());
        assert!(
            e.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            e.message()
        );
    }
    // END twice: the second is a sequence that is no more.
    let mut end = seq_request(Some((3, true, true)), &row);
    c.model_infer(end.clone()).await.unwrap();
    end.parameters
        .insert("sequence_start".into(), param_bool(false));
    let e = expect_err("END twice", c.model_infer(end).await);
    assert_status(
        "END twice",
        &e,
        Code::InvalidArgument,
        &["sequence 3", "START"],
    );

    // Typed contents work like raw, and a uint64 id past i64 is accepted.
    let mut typed = seq_request(None, &row);
    typed.raw_input_contents.clear();
    typed.inputs[0].contents = Some(Box::new(v2::InferTensorContents {
        fp32_contents: row.clone(),
        ..Default::default()
    }));
    let t = c.model_infer(typed).await.unwrap().into_inner();
    let mut big = seq_request(None, &row);
    big.parameters.insert(
        "sequence_id".into(),
        v2::InferParameter {
            parameter_choice: Some(v2::infer_parameter::ParameterChoice::Uint64Param(u64::MAX)),
        },
    );
    big.parameters
        .insert("sequence_start".into(), param_bool(true));
    let b = c.model_infer(big).await.unwrap().into_inner();
    assert_eq!(
        output(&t, "OUTPUT"),
        output(&b, "OUTPUT"),
        "START from zeros = stateless"
    );

    // Sequence 1 survived every refusal: it steps on.
    c.model_infer(seq_request(Some((1, false, false)), &row))
        .await
        .unwrap();

    // Idle past the TTL: the next request says it expired (Triton resets silently).
    tokio::time::sleep(Duration::from_millis(900)).await;
    let e = expect_err(
        "expired",
        c.model_infer(seq_request(Some((1, false, false)), &row))
            .await,
    );
    assert_status(
        "expired",
        &e,
        Code::InvalidArgument,
        &["must specify the START flag", "expired"],
    );

    let stats = c
        .model_statistics(v2::ModelStatisticsRequest {
            name: "m".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let st = stats.model_stats[0].inference_stats.unwrap();
    assert_eq!(st.success.unwrap().count, 5, "{st:?}");
    assert!(st.fail.unwrap().count >= 8, "{st:?}");
    s.stop().await;
}

/// A config whose sessions are checkpointed to files in `state`.
fn file_store_config(repo: &std::path::Path, state: &std::path::Path) -> ServerConfig {
    let mut config = config_for(repo);
    config.engine.store = StoreConfig {
        spec: StoreSpec::File(Some(state.to_path_buf())),
        ..Default::default()
    };
    config
}

/// `--max-streams` holds for ModelStreamInfer as for StepStream: with a cap
/// of 1 a second stream is RESOURCE_EXHAUSTED while the first is open, and
/// one opens again once the first has ended (the permit lives with the
/// stream's replies, not with a task of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_cap_holds_for_model_stream_infer_until_a_stream_ends() {
    let dir = small_repo();
    let mut config = config_for(dir.path());
    config.max_streams = 1;
    let s = TestServer::start(config).await;
    s.wait_serving().await;
    let mut c = v2_client(&s);
    let (tx, rx) = mpsc::channel(4);
    let mut first = c
        .model_stream_infer(ReceiverStream::new(rx))
        .await
        .expect("the first stream opens")
        .into_inner();
    tx.send(seq_request(Some((7, true, false)), &rand_vec(I, 1)))
        .await
        .unwrap();
    let r = tokio::time::timeout(WAIT, first.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a reply");
    assert_eq!(r.error_message, "", "{r:?}");
    let (_tx2, rx2) = mpsc::channel::<v2::ModelInferRequest>(4);
    let refused = expect_err(
        "a second stream over the cap",
        c.model_stream_infer(ReceiverStream::new(rx2)).await,
    );
    assert_status(
        "a second stream",
        &refused,
        Code::ResourceExhausted,
        &["too many open streams"],
    );
    drop(tx);
    let end = tokio::time::timeout(WAIT, first.message()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (tx3, rx3) = mpsc::channel(4);
        match c.model_stream_infer(ReceiverStream::new(rx3)).await {
            Ok(st) => {
                let mut st = st.into_inner();
                tx3.send(seq_request(Some((7, false, true)), &rand_vec(I, 2)))
                    .await
                    .unwrap();
                let r = tokio::time::timeout(WAIT, st.message())
                    .await
                    .unwrap()
                    .unwrap()
                    .expect("a reply");
                assert_eq!(r.error_message, "", "the sequence goes on: {r:?}");
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the ended stream's permit was never released"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    s.stop().await;
}

/// Steps sequence `id` one row at a time over gRPC v2; its outputs.
async fn v2_steps(c: &mut V2, id: i64, rows: &[f32], start: bool) -> Vec<f32> {
    let mut out = Vec::new();
    for (n, row) in rows.chunks(I).enumerate() {
        let r = c
            .model_infer(seq_request(Some((id, start && n == 0, false)), row))
            .await
            .unwrap_or_else(|e| panic!("sequence {id}, row {n}: {e}"))
            .into_inner();
        out.extend(output(&r, "OUTPUT"));
    }
    out
}

#[tokio::test]
async fn sequences_survive_a_restart_with_the_file_store() {
    let dir = small_repo();
    let state = tempfile::tempdir().unwrap();
    let rows = rand_vec(20 * I, 51);
    let fresh = rand_vec(4 * I, 52);

    let s = TestServer::start(file_store_config(dir.path(), state.path())).await;
    s.wait_serving().await;
    let mut c = v2_client(&s);
    let mut got = v2_steps(&mut c, 7, &rows[..10 * I], true).await;
    // Sequence 8 starts and ends before the restart: it must stay ended.
    v2_steps(&mut c, 8, &rows[..2 * I], true).await;
    c.model_infer(seq_request(Some((8, false, true)), &rows[..I]))
        .await
        .unwrap();
    // Sequence 9 lives on to be restarted by a START after the restart.
    v2_steps(&mut c, 9, &rows[..3 * I], true).await;
    s.stop().await;

    // A new process on the same folders: sequence 7 goes on without START.
    let s = TestServer::start(file_store_config(dir.path(), state.path())).await;
    s.wait_serving().await;
    let mut c = v2_client(&s);
    let mut g = Client::new(s.channel.clone());
    got.extend(v2_steps(&mut c, 7, &rows[10 * I..], false).await);
    assert_close(
        "sequence 7 across the restart vs gru.v1",
        &got,
        &reference(&mut g, &rows, None).await,
    );
    let e = expect_err(
        "the ended sequence",
        c.model_infer(seq_request(Some((8, false, false)), &rows[..I]))
            .await,
    );
    assert_status(
        "the ended sequence",
        &e,
        Code::InvalidArgument,
        &["sequence 8", "must specify the START flag"],
    );
    // START on the restored sequence 9 begins it afresh, from h = 0.
    assert_close(
        "sequence 9 restarted",
        &v2_steps(&mut c, 9, &fresh, true).await,
        &reference(&mut g, &fresh, None).await,
    );
    s.stop().await;
}

/// One HTTP/1.1 exchange on the v2 HTTP port: (status, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP port");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("an HTTP reply in time")
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP reply");
    let status_line = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line}"));
    (status, buf[split + 4..].to_vec())
}

fn json_of(what: &str, body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// An HTTP infer body: `rows` as INPUT [1, k, I] JSON data.
fn http_infer(id: Option<(serde_json::Value, bool, bool)>, rows: &[f32]) -> Vec<u8> {
    let mut params = serde_json::Map::new();
    if let Some((id, start, end)) = id {
        params.insert("sequence_id".into(), id);
        params.insert("sequence_start".into(), start.into());
        params.insert("sequence_end".into(), end.into());
    }
    serde_json::to_vec(&serde_json::json!({
        "id": "h",
        "parameters": params,
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, rows.len() / I, I], "data": rows}],
        "outputs": [{"name": "OUTPUT"}],
    }))
    .unwrap()
}

fn http_output(what: &str, body: &[u8]) -> Vec<f32> {
    let v = json_of(what, body);
    let out = &v["outputs"][0];
    assert_eq!(out["name"], "OUTPUT", "{what}: {v}");
    out["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no data in {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test]
async fn the_http_form_serves_health_metadata_and_sequences_that_cross_to_grpc() {
    let dir = small_repo();
    let mut config = config_for(dir.path());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", common::process::free_port())
        .parse()
        .unwrap();
    config.http_listen = Some(addr);
    config.max_message_bytes = 64 * 1024;
    let s = TestServer::start(config).await;
    s.wait_serving().await;
    let mut g = Client::new(s.channel.clone());
    let mut c = v2_client(&s);

    assert_eq!(http(addr, "GET", "/v2/health/live", b"").await.0, 200);
    assert_eq!(http(addr, "GET", "/v2/health/ready", b"").await.0, 200);
    let (code, body) = http(addr, "GET", "/v2", b"").await;
    let server = json_of("/v2", &body);
    assert_eq!(code, 200, "{server}");
    let ext: Vec<&str> = server["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(ext.contains(&"sequence"), "{server}");
    let (code, body) = http(addr, "GET", "/v2/models/m", b"").await;
    let meta = json_of("metadata", &body);
    assert_eq!(
        (code, &meta["name"]),
        (200, &serde_json::json!("m")),
        "{meta}"
    );
    assert_eq!(meta["inputs"][0]["name"], "INPUT", "{meta}");
    let (code, body) = http(addr, "GET", "/v2/models/m/config", b"").await;
    let config = json_of("config", &body);
    assert_eq!(code, 200, "{config}");
    assert!(config["sequence_batching"].is_object(), "{config}");

    // A sequence of 12 steps: 6 over HTTP (a string id), 6 more over gRPC
    // v2 (the same tenant, model and id), ended over HTTP.
    let rows = rand_vec(12 * I, 61);
    let id = serde_json::json!("http-1");
    let mut got = Vec::new();
    for (n, row) in rows[..6 * I].chunks(I).enumerate() {
        let (code, body) = http(
            addr,
            "POST",
            "/v2/models/m/infer",
            &http_infer(Some((id.clone(), n == 0, false)), row),
        )
        .await;
        assert_eq!(code, 200, "row {n}: {}", String::from_utf8_lossy(&body));
        got.extend(http_output("sequence over HTTP", &body));
    }
    for (n, row) in rows[6 * I..].chunks(I).enumerate() {
        let mut r = seq_request(Some((0, false, false)), row);
        r.parameters.insert(
            "sequence_id".into(),
            v2::InferParameter {
                parameter_choice: Some(v2::infer_parameter::ParameterChoice::StringParam(
                    "http-1".into(),
                )),
            },
        );
        let r = c
            .model_infer(r)
            .await
            .unwrap_or_else(|e| panic!("gRPC row {n}: {e}"))
            .into_inner();
        got.extend(output(&r, "OUTPUT"));
    }
    assert_close(
        "HTTP then gRPC vs gru.v1",
        &got,
        &reference(&mut g, &rows, None).await,
    );
    let (code, _) = http(
        addr,
        "POST",
        "/v2/models/m/infer",
        &http_infer(Some((id.clone(), false, true)), &rows[..I]),
    )
    .await;
    assert_eq!(code, 200);

    // Refusals: JSON {"error": ...} with Triton's HTTP codes, naming what.
    let refusals: [(&str, &str, Vec<u8>, u16, &str); 6] = [
        (
            "after END",
            "/v2/models/m/infer",
            http_infer(Some((id.clone(), false, false)), &rows[..I]),
            400,
            "must specify the START flag",
        ),
        (
            "unknown model",
            "/v2/models/nope/infer",
            http_infer(None, &rows[..I]),
            404,
            "nope",
        ),
        (
            "malformed JSON",
            "/v2/models/m/infer",
            b"{\"inputs\": [".to_vec(),
            400,
            "JSON",
        ),
        (
            "wrong datatype",
            "/v2/models/m/infer",
            serde_json::to_vec(&serde_json::json!({
                "inputs": [{"name": "INPUT", "datatype": "INT8", "shape": [1, 1, I], "data": [1, 2, 3]}],
            }))
            .unwrap(),
            400,
            "INT8",
        ),
        (
            "body over --max-message-bytes",
            "/v2/models/m/infer",
            vec![b' '; 64 * 1024 + 1],
            400,
            "larger than 65536 bytes",
        ),
        ("no such route", "/v2/nothing", Vec::new(), 404, "no route"),
    ];
    for (what, path, body, want, needle) in refusals {
        let (code, reply) = http(addr, "POST", path, &body).await;
        let v = json_of(what, &reply);
        let msg = v["error"].as_str().unwrap_or_default();
        assert_eq!(code, want, "{what}: {v}");
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    }
    // The server kept serving: a stateless request still answers.
    let (code, body) = http(
        addr,
        "POST",
        "/v2/models/m/infer",
        &http_infer(None, &rows[..2 * I]),
    )
    .await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_close(
        "stateless over HTTP",
        &http_output("stateless", &body),
        &reference(&mut g, &rows[..2 * I], None).await,
    );
    s.stop().await;
}
