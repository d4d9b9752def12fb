#![cfg(feature = "grpc")]
//! What operators and load balancers see, end to end: model listings and
//! metadata, health (checks, watches, the `gru-serve health` probe),
//! reflection, repository rescans and export, and shutdown with streams
//! open, on the real `gru_serve::server::run` at 127.0.0.1:0.
//!
//! Where the expectations come from:
//! - **The contract** is `proto/gru/v1/gru.proto` (ListModels / GetModel
//!   fields) and the standard gRPC health and reflection services.
//! - **Shutdown does not wait on clients**: open StepStreams and health
//!   watches are ended, so `run()` returns `Ok` within 5 s although
//!   drain_timeout is 60 s.
//! - **Every test ends with a clean shutdown**: `run()` must return `Ok`
//!   within a timeout once the shutdown future resolves.

use std::time::Duration;

use gru_serve::model::{ModelConfig, ResetMode};
use gru_serve::service::pb;
use tempfile::TempDir;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod common;
use common::server::*;
use common::sessions::*;

/// Shutdown with a StepStream open (one message answered, the client side
/// still open): the stream ends with UNAVAILABLE and `run` returns Ok within
/// 5 s, although drain_timeout is 60 s (open streams are ended, not waited
/// out); health says NOT_SERVING during the drain or the port is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let dir = small_repo();
    let mut cfg = config_for(dir.path());
    cfg.drain_timeout = Duration::from_secs(60);
    let server = TestServer::start(cfg).await;
    server.wait_serving().await;
    let mut c = server.client();
    let sid = open(&mut c, None).await;
    let (tx, mut rx) = open_stream(&mut c).await;
    tx.send(step_req(&sid, rand_vec(I, 95), 1)).await.unwrap();
    let rep = reply(&mut rx).await;
    assert_eq!(rep.request_id, 1);
    ok_result(&rep);

    let t0 = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop_within(Duration::from_secs(5)));
    match next_reply(&mut rx).await {
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "stream end: {s:?}"),
        Ok(other) => panic!("expected the stream to end with UNAVAILABLE, got {other:?}"),
    }
    stopping.await.expect("server stopped cleanly within 5 s");
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(tx);
}

/// Shutdown with a health Watch stream open (what load balancers and
/// orchestrators keep): the watcher hears NOT_SERVING, its stream ends, and
/// `run` returns Ok within 5 s although drain_timeout is 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_health_watches() {
    let dir = small_repo();
    let mut cfg = config_for(dir.path());
    cfg.drain_timeout = Duration::from_secs(60);
    let server = TestServer::start(cfg).await;
    server.wait_serving().await;
    let mut watch = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("first watch status")
        .unwrap()
        .unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let stopping = tokio::spawn(server.stop_within(Duration::from_secs(5)));
    let mut seen = Vec::new();
    let end = loop {
        match tokio::time::timeout(WAIT, watch.message()).await {
            Err(_) => panic!("the health watch did not end within {WAIT:?}; saw {seen:?}"),
            Ok(Ok(Some(m))) => seen.push(m.status),
            Ok(other) => break other,
        }
    };
    assert!(
        seen.contains(&(ServingStatus::NotServing as i32)),
        "the watcher never heard NOT_SERVING: {seen:?} then {end:?}"
    );
    stopping
        .await
        .expect("server stopped cleanly within 5 s with a health watch open");
}

/// ListModels / GetModel: versions 1 and 3 of `m` (different sizes and reset
/// modes) are listed with latest = 3 and versions [1, 3]; GetModel version 1
/// reports version 1's sizes; sizes, head, reset_mode, task, dtype,
/// num_parameters, source_format and serving.json's description are
/// reported. Broken folders (a model with a garbage config.json, a version 2
/// with one, a non-numeric version) are skipped and the good ones served.
/// Health goes to SERVING for "" and gru.v1.GruService (watched from the
/// start: only NOT_SERVING before it); an unknown service is NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_described() {
    let dir = TempDir::new().unwrap();
    let v1_cfg = small_config();
    let v3_cfg = ModelConfig::new(I, 6, 1).with_reset_mode(ResetMode::BeforeMatmul);
    write_model(dir.path(), "m", 1, v1_cfg.clone(), 1);
    let v3 = write_model(dir.path(), "m", 3, v3_cfg.clone(), 3);
    std::fs::write(
        v3.join("serving.json"),
        r#"{"description": "three sensors in, one value out"}"#,
    )
    .unwrap();
    for broken in [dir.path().join("broken/1"), dir.path().join("m/2")] {
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("config.json"), "garbage {").unwrap();
        std::fs::write(broken.join("model.safetensors"), "garbage").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("m/latest")).unwrap();

    let server = TestServer::start(config_for(dir.path())).await;
    // Watch health from the start: NOT_SERVING (maybe) then SERVING.
    let mut watch = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest {
            service: "gru.v1.GruService".into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    loop {
        let m = tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("health never became SERVING")
            .expect("watch")
            .expect("watch ended");
        if m.status == ServingStatus::Serving as i32 {
            break;
        }
        assert_eq!(m.status, ServingStatus::NotServing as i32);
    }
    // (An open Watch stream and shutdown: see shutdown_ends_health_watches.)
    drop(watch);
    server.wait_serving().await;
    assert_eq!(
        server.health("gru.v1.GruService").await.unwrap(),
        ServingStatus::Serving as i32
    );
    let e = expect_err("unknown health service", server.health("nope").await);
    assert_eq!(e.code(), Code::NotFound);

    let mut c = server.client();
    let list = c
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(list.len(), 1, "only m is served: {list:?}");
    let latest = &list[0];
    let want3 = pb::ModelInfo {
        name: "m".into(),
        version: 3,
        versions: vec![1, 3],
        input_size: I as u32,
        hidden_size: 6,
        num_layers: 1,
        output_size: 6,
        has_head: false,
        reset_mode: pb::ResetMode::BeforeMatmul as i32,
        task: pb::Task::Regression as i32,
        dtype: "f32".into(),
        num_parameters: v3_cfg.num_parameters() as u64,
        description: "three sensors in, one value out".into(),
        source_format: "native".into(),
    };
    assert_eq!(latest, &want3);
    let got3 = c
        .get_model(pb::GetModelRequest {
            model: "m".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(got3, want3);
    let got1 = c
        .get_model(pb::GetModelRequest {
            model: "m".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let want1 = pb::ModelInfo {
        name: "m".into(),
        version: 1,
        versions: vec![1, 3],
        input_size: I as u32,
        hidden_size: H as u32,
        num_layers: L as u32,
        output_size: O as u32,
        has_head: true,
        reset_mode: pb::ResetMode::AfterMatmul as i32,
        task: pb::Task::Regression as i32,
        dtype: "f32".into(),
        num_parameters: v1_cfg.num_parameters() as u64,
        description: String::new(),
        source_format: "native".into(),
    };
    assert_eq!(got1, want1);
    let e = expect_err(
        "broken model",
        c.get_model(pb::GetModelRequest {
            model: "broken".into(),
            version: 0,
        })
        .await,
    );
    assert_eq!(e.code(), Code::NotFound);
    let e = expect_err(
        "broken version",
        c.get_model(pb::GetModelRequest {
            model: "m".into(),
            version: 2,
        })
        .await,
    );
    assert_status("broken version 2", &e, Code::NotFound, &["[1, 3]"]);

    // A session opened on version 0 runs the latest (3); version 1 on request.
    let s3 = c
        .open_session(pb::OpenSessionRequest {
            model: "m".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s3.version, 3);
    let r = c
        .step(step_req(&s3.session_id, [0.1; I], 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok_result(&r).outputs.as_ref().unwrap().cols, 6);
    let s1 = c
        .open_session(pb::OpenSessionRequest {
            model: "m".into(),
            version: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s1.version, 1);
    server.stop().await;
}

/// A repository with no loadable model keeps health NOT_SERVING (after the
/// loader has finished: ListModels answers, with no models), and shutdown is
/// still clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_models_is_not_serving() {
    let dir = TempDir::new().unwrap();
    let broken = dir.path().join("broken/1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{}").unwrap();
    let server = TestServer::start(config_for(dir.path())).await;
    let mut c = server.client();
    let deadline = tokio::time::Instant::now() + WAIT;
    let models = loop {
        match c.list_models(pb::ListModelsRequest {}).await {
            Ok(r) => break r.into_inner().models,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "while loading: {s:?}");
                assert!(tokio::time::Instant::now() < deadline, "never loaded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(models.is_empty());
    // ListModels answering means the loader has published the engine; it
    // would set SERVING straight after that, waiting on nothing, so a Check
    // sent once the reply is back sees it: no sleep is needed.
    for svc in ["", "gru.v1.GruService"] {
        assert_eq!(
            server.health(svc).await.unwrap(),
            ServingStatus::NotServing as i32,
            "health of {svc:?}"
        );
    }
    server.stop().await;
}

/// Server reflection (v1alpha, what grpcurl 1.8 speaks, and v1) lists
/// gru.v1.GruService and the health service, and serves the file that
/// defines gru.v1.GruService.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_service() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let dir = small_repo();
    let server = TestServer::serving(dir.path()).await;
    let mut r = ServerReflectionClient::new(server.channel.clone());
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "gru.v1.GruService".into(),
            )),
        },
    ];
    let mut replies = r
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let first = replies.message().await.unwrap().expect("list reply");
    let names: Vec<String> = match first.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    };
    assert!(names.iter().any(|n| n == "gru.v1.GruService"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
    let second = replies.message().await.unwrap().expect("file reply");
    match second.message_response {
        Some(MessageResponse::FileDescriptorResponse(f)) => {
            assert!(!f.file_descriptor_proto.is_empty())
        }
        other => panic!("expected a file descriptor, got {other:?}"),
    }

    // v1 too.
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut r = ServerReflectionClient::new(server.channel.clone());
        let mut replies = r
            .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
            .expect("reflection v1")
            .into_inner();
        match replies.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(l)) => assert!(
                l.service.iter().any(|s| s.name == "gru.v1.GruService"),
                "{:?}",
                l.service
            ),
            other => panic!("v1: expected a service list, got {other:?}"),
        }
    }
    server.stop().await;
}

/// `gru-serve health` answers from the server's health service, and says
/// plainly when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_reports_serving_and_unreachable() {
    let repo = small_repo();
    let server = TestServer::serving(repo.path()).await;
    let url = format!("http://{}", server.addr);
    let t = Duration::from_secs(5);
    assert_eq!(
        gru_serve::server::check_health(&url, "", t, None).await,
        Ok(true)
    );
    assert_eq!(
        gru_serve::server::check_health(&url, "gru.v1.TrainingService", t, None).await,
        Ok(true)
    );
    let unknown = gru_serve::server::check_health(&url, "no.such.Service", t, None).await;
    assert!(unknown.unwrap_err().contains("NotFound"));
    server.stop().await;
    let gone = gru_serve::server::check_health(&url, "", Duration::from_millis(500), None).await;
    assert!(gone.unwrap_err().contains("connect to"));
}

/// With `model_poll` set, version folders dropped into the repository are
/// served without a restart; a broken one is skipped and the rest go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescans_serve_new_version_folders() {
    let repo = small_repo();
    let mut config = config_for(repo.path());
    config.engine.model_poll = Duration::from_millis(100);
    let server = TestServer::start(config).await;
    server.wait_serving().await;
    let mut c = server.client();
    std::fs::create_dir_all(repo.path().join("m/3")).unwrap();
    std::fs::write(repo.path().join("m/3/config.json"), b"{not json").unwrap();
    write_model(
        repo.path(),
        "m",
        2,
        ModelConfig::new(3, 8, 2).with_head(2),
        8,
    );
    write_model(repo.path(), "fresh", 1, ModelConfig::new(2, 4, 1), 9);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let models = c
            .list_models(pb::ListModelsRequest {})
            .await
            .unwrap()
            .into_inner()
            .models;
        let m = models.iter().find(|m| m.name == "m").unwrap();
        if m.versions == vec![1, 2] && models.iter().any(|m| m.name == "fresh") {
            break;
        }
        assert!(m.versions.len() <= 2, "the broken version 3 was served");
        assert!(
            tokio::time::Instant::now() < deadline,
            "new folders not served: {models:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Export (the `gru-serve export` subcommand) reads the same folders.
    let out = repo.path().join("m2.safetensors");
    let cfg = gru_serve::engine::registry::export_pytorch(
        repo.path(),
        "m",
        Some(2),
        &out,
        "gru.",
        "head.",
    )
    .unwrap();
    assert_eq!(
        (cfg.input_size, cfg.hidden_size, cfg.output_size),
        (3, 8, Some(2))
    );
    let names = safetensors::SafeTensors::deserialize(&std::fs::read(&out).unwrap())
        .unwrap()
        .names()
        .len();
    assert_eq!(names, 2 * 4 + 2);
    let latest =
        gru_serve::engine::registry::export_pytorch(repo.path(), "m", None, &out, "gru.", "head.");
    assert!(
        latest.unwrap_err().contains("m/3"),
        "the latest folder is the broken one"
    );
    server.stop().await;
}
