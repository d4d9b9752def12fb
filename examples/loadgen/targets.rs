//! The servers under test that run in this process: gru-serve itself
//! (`server::run_with_engine` on a random model in a temporary repository)
//! or the echo server, each on its own runtime and threads.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use gru_serve::engine::batcher::WorkerStats;
use gru_serve::service::pb::gru_service_server::GruServiceServer;
use tokio::sync::oneshot;

use crate::echo::Echo;
use crate::{Args, BoxError};

/// A server thread: its address, its stop signal and its join handle.
type Spawned = (
    SocketAddr,
    oneshot::Sender<()>,
    std::thread::JoinHandle<Result<(), String>>,
);

/// Where the compute worker's batch statistics come from, when they can be seen.
pub type StatsSource = Option<Arc<dyn Fn() -> Option<Arc<WorkerStats>> + Send + Sync>>;

pub struct InProcess {
    pub addr: SocketAddr,
    /// The KServe v2 HTTP port, served with --protocol triton-http.
    pub http_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    pub stats: StatsSource,
    _dir: Option<tempfile::TempDir>,
}

impl InProcess {
    fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("lg-server")
            .enable_all()
            .build()
    }

    /// Runs `serve(listener, shutdown)` on a fresh runtime in a new thread.
    fn spawn<F, Fut>(threads: usize, serve: F) -> Result<Spawned, BoxError>
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lg-server-main".into())
            .spawn(move || -> Result<(), String> {
                let rt = Self::runtime(threads).map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = addr_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                    serve(listener, stop_rx).await
                })
            })?;
        let addr = addr_rx
            .recv()
            .map_err(|_| "the server thread ended before binding")??;
        Ok((addr, stop_tx, thread))
    }

    pub fn start_gru(args: &Args) -> Result<InProcess, BoxError> {
        use gru_serve::formats::native;
        use gru_serve::model::{GruModel, ModelConfig};
        let dir = tempfile::tempdir()?;
        let mut cfg = ModelConfig::new(args.input_size, args.hidden_size, args.layers);
        if let Some(o) = args.head {
            cfg = cfg.with_head(o);
        }
        let model = GruModel::init(cfg, args.seed, &candle_core::Device::Cpu)?;
        native::save_native(&model, &dir.path().join(&args.model).join("1"))?;

        let mut config = gru_serve::server::ServerConfig::default();
        config.engine.model_dir = dir.path().to_path_buf();
        config.engine.max_batch = args.max_batch;
        config.engine.worker_spin = args.worker_spin;
        config.engine.max_sessions = match args.idle_sessions {
            0 => args.sessions.max(1) * 2 + 16,
            idle => args.sessions + idle,
        };
        config.engine.training = gru_serve::engine::TrainingConfig {
            threads_per_job: args.train_threads.max(1),
            nice: args.train_nice,
            ..gru_serve::engine::TrainingConfig::default()
        };
        config.engine.store = gru_serve::engine::StoreConfig {
            spec: args.session_store.parse()?,
            checkpoint_interval: args.checkpoint_interval,
            state_dir: None,
        };
        config.drain_timeout = Duration::from_secs(2);
        let http_addr = match args.protocol {
            crate::Protocol::TritonHttp => {
                // A port free now (the server binds it when it starts).
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                Some(l.local_addr()?)
            }
            _ => None,
        };
        config.http_listen = http_addr;
        // The engine is handed out once loaded: its worker's WorkerStats give the batch sizes.
        let cell: Arc<std::sync::OnceLock<gru_serve::engine::Engine>> =
            Arc::new(std::sync::OnceLock::new());
        let (engine, name) = (cell.clone(), args.model.clone());
        let (addr, stop, thread) =
            Self::spawn(args.server_threads, move |listener, stop| async move {
                let shutdown = async move {
                    let _ = stop.await;
                };
                gru_serve::server::run_with_engine(config, listener, shutdown, engine)
                    .await
                    .map_err(|e| e.to_string())
            })?;
        let stats: StatsSource = Some(Arc::new(move || {
            cell.get()
                .and_then(|e| e.model(&name, None).ok())
                .map(|m| m.worker.stats.clone())
        }));
        Ok(InProcess {
            addr,
            http_addr,
            shutdown: Some(stop),
            thread: Some(thread),
            stats,
            _dir: Some(dir),
        })
    }

    pub fn start_echo(args: &Args) -> Result<InProcess, BoxError> {
        let echo = Echo {
            hidden: args.hidden_size,
            next_id: Arc::new(AtomicU64::new(1)),
        };
        let (addr, stop, thread) =
            Self::spawn(args.server_threads, move |listener, stop| async move {
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                tonic::transport::Server::builder()
                    .add_service(
                        GruServiceServer::new(echo)
                            .max_decoding_message_size(64 << 20)
                            .max_encoding_message_size(64 << 20),
                    )
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.await;
                    })
                    .await
                    .map_err(|e| e.to_string())
            })?;
        Ok(InProcess {
            addr,
            http_addr: None,
            shutdown: Some(stop),
            thread: Some(thread),
            stats: None,
            _dir: None,
        })
    }

    pub fn stop(mut self) -> Result<(), BoxError> {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| "the server thread panicked")??;
        }
        Ok(())
    }
}
