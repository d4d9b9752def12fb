//! Shared by the server test binaries: a real server on 127.0.0.1:0, model
//! folders, and assertions on gRPC errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use candle_core::Device;
use gru_serve::engine::{Engine, EngineConfig};
use gru_serve::formats::native::save_native;
use gru_serve::model::{GruModel, ModelConfig};
use gru_serve::server::{run_with_engine, ServerConfig, ServerError};
use gru_serve::service::pb;
use gru_serve::service::pb::gru_service_client::GruServiceClient;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub type Client = GruServiceClient<Channel>;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);
/// Writes a native model folder `<root>/<name>/<version>/`.
pub fn write_model(
    root: &Path,
    name: &str,
    version: u64,
    config: ModelConfig,
    seed: u64,
) -> PathBuf {
    let dir = root.join(name).join(version.to_string());
    let model = GruModel::init(config, seed, &Device::Cpu).expect("init model");
    save_native(&model, &dir).expect("save model");
    dir
}

// ---------------------------------------------------------------- server harness

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
    pub channel: Channel,
    /// The server's engine once its models are loaded (workers' statistics).
    engine: Arc<OnceLock<Engine>>,
}

pub fn config_for(dir: &Path) -> ServerConfig {
    ServerConfig {
        engine: EngineConfig {
            model_dir: dir.to_path_buf(),
            ..Default::default()
        },
        ..Default::default()
    }
}

impl TestServer {
    /// Starts `run` on 127.0.0.1:0 and connects a plaintext channel.
    pub async fn start(config: ServerConfig) -> TestServer {
        TestServer::start_with(config, |addr| {
            Endpoint::from_shared(format!("http://{addr}")).unwrap()
        })
        .await
    }

    /// Starts `run` on 127.0.0.1:0 and connects the channel `endpoint` makes
    /// for its address (TLS tests).
    pub async fn start_with(
        config: ServerConfig,
        endpoint: impl FnOnce(SocketAddr) -> Endpoint,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let engine = Arc::new(OnceLock::new());
        let handle = tokio::spawn(run_with_engine(
            config,
            listener,
            async {
                rx.await.ok();
            },
            engine.clone(),
        ));
        let channel = endpoint(addr)
            .connect_timeout(WAIT)
            .connect()
            .await
            .expect("connect to the test server");
        TestServer {
            addr,
            shutdown: Some(tx),
            handle,
            channel,
            engine,
        }
    }

    /// The server's engine; call after [`Self::wait_serving`] (SERVING
    /// means the models are loaded and the engine is published).
    pub fn engine(&self) -> &Engine {
        self.engine
            .get()
            .expect("the engine is published before the server says SERVING")
    }

    /// Starts a server on `dir` and waits until health says SERVING.
    pub async fn serving(dir: &Path) -> TestServer {
        let s = TestServer::start(config_for(dir)).await;
        s.wait_serving().await;
        s
    }

    pub fn client(&self) -> Client {
        GruServiceClient::new(self.channel.clone())
    }

    pub async fn health(&self, service: &str) -> Result<i32, Status> {
        HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status)
    }

    /// Polls the health Check RPC until the server says SERVING.
    pub async fn wait_serving(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.health("").await.ok() == Some(ServingStatus::Serving as i32) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server at {} never became SERVING",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Triggers shutdown and asserts `run` returns Ok within `within`.
    pub async fn stop_within(mut self, within: Duration) {
        let _ = self.shutdown.take().unwrap().send(());
        let joined = tokio::time::timeout(within, &mut self.handle).await;
        match joined {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("server run() returned an error: {e}"),
            Ok(Err(e)) => panic!("server task panicked: {e}"),
            Err(_) => {
                self.handle.abort();
                panic!("server run() did not return within {within:?} of shutdown")
            }
        }
    }

    pub async fn stop(self) {
        self.stop_within(WAIT).await
    }
}

pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn matrix(rows: usize, cols: usize, values: Vec<f32>) -> pb::Matrix {
    pb::Matrix {
        rows: rows as u32,
        cols: cols as u32,
        values,
    }
}

/// Asserts an error's code, and that its message contains every `needle`.
pub fn assert_status(what: &str, s: &Status, code: Code, needles: &[&str]) {
    assert_eq!(s.code(), code, "{what}: wrong code ({})", s.message());
    for n in needles {
        assert!(
            s.message().contains(n),
            "{what}: message {:?} does not name {n:?}",
            s.message()
        );
    }
}

pub fn expect_err<T: std::fmt::Debug>(what: &str, r: Result<T, Status>) -> Status {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(s) => s,
    }
}

/// Tolerance between batched/streamed outputs and Predict.
pub const TOL: f32 = 1e-6;

// ---------------------------------------------------------------- model repositories

/// A step message for a session on the small model (`small_repo`: 3 inputs),
/// its rows taken from `inputs` (a `Vec` or a slice of one).
pub fn step_req(session: &str, inputs: impl AsRef<[f32]>, request_id: u64) -> pb::StepRequest {
    let inputs = inputs.as_ref().to_vec();
    pb::StepRequest {
        session_id: session.into(),
        inputs: Some(matrix(inputs.len() / 3, 3, inputs)),
        request_id,
        ..Default::default()
    }
}

/// A repository holding the small model (I = 3, H = 8, 2 layers, head O = 2) as `m` version 1.
pub fn small_repo() -> TempDir {
    let dir = TempDir::new().unwrap();
    write_model(
        dir.path(),
        "m",
        1,
        ModelConfig::new(3, 8, 2).with_head(2),
        7,
    );
    dir
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    // Element by element: a max over the diffs would skip a NaN.
    for (k, (a, b)) in got.iter().zip(want).enumerate() {
        let d = (a - b).abs();
        if !(a.is_finite() && b.is_finite() && d <= TOL) {
            panic!(
                "{what}: element {k}: got {a:e}, want {b:e} (|diff| {d:e} > {TOL:e} or not finite)"
            );
        }
    }
}

/// GetModel for the latest version of `name`.
pub async fn model_info(c: &mut Client, name: &str) -> pb::ModelInfo {
    c.get_model(pb::GetModelRequest {
        model: name.into(),
        version: 0,
    })
    .await
    .expect("get model")
    .into_inner()
    .model
    .expect("model info")
}

/// Opens a session on the latest version of `model`.
pub async fn open_latest(c: &mut Client, model: &str) -> pb::OpenSessionResponse {
    c.open_session(pb::OpenSessionRequest {
        model: model.into(),
        ..Default::default()
    })
    .await
    .expect("open session")
    .into_inner()
}
