//! Real servers for the multi-replica tests: N `gru-serve` processes on one
//! model directory, optionally a `redis-server`, and a real load balancer in
//! front (nginx or HAProxy, from Debian's packages) hashing the
//! `x-session-key` metadata onto the replicas. The balancers run the example
//! configs in deploy/ (deploy/nginx/gru-serve.conf, deploy/haproxy/haproxy.cfg)
//! with only their ports and upstream lines rewritten, so the tests check
//! what users copy. Loopback only; every process is killed on Drop and every
//! wait is bounded.
//!
//! ```ignore
//! let mut c = Cluster::start(3, Balancer::Nginx, &["--session-ttl", "1m"]).await;
//! let mut client = c.client().await;           // through the balancer
//! client.open_session(keyed("user-7", req)).await?;
//! c.kill(1);                                   // SIGKILL replica 1
//! c.restart(1).await;                          // same ports, same model dir
//! ```
//!
//! Arguments may name `{redis}` (the Redis URL; Redis is then started),
//! `{replica}` (the replica's index) and `{dir}` (the cluster's temporary
//! folder), e.g. `--state-dir {dir}/state-{replica}`; see [`ClusterSpec`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;
use tonic_health::pb::health_check_response::ServingStatus;

use super::process::{free_port, http_get, Spawned};
use super::server::{small_repo, Client};

/// How long a started process may take to accept connections.
const START_WITHIN: Duration = Duration::from_secs(30);

/// What sits in front of the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    /// nginx, `grpc_pass` with `hash $http_x_session_key consistent`.
    Nginx,
    /// HAProxy, `proto h2` with `balance hdr(x-session-key)` + `hash-type consistent`.
    Haproxy,
    /// No balancer: `balancer_addr()` panics; talk to the replicas directly.
    None,
}

/// Everything a cluster is started from; `Cluster::start` fills the usual.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub replicas: usize,
    pub balancer: Balancer,
    /// Flags for every replica, after the harness's own (`--listen`,
    /// `--metrics-listen`, `--model-dir`, `--drain-timeout 2s`), so they can
    /// override them. `{redis}` becomes the Redis URL (and starts Redis),
    /// `{replica}` the replica's index, `{dir}` the cluster's temporary
    /// folder (e.g. `--state-dir {dir}/state-{replica}`).
    pub args: Vec<String>,
    /// Environment for every replica (`GRU_LOG` is `info` unless set here).
    pub env: Vec<(String, String)>,
    /// Start `redis-server` even when no argument names `{redis}`.
    pub redis: bool,
    /// The shared model directory; by default a temporary one holding the
    /// small model `m` (tests/common/sessions.rs's sizes).
    pub model_dir: Option<PathBuf>,
}

impl ClusterSpec {
    pub fn new(replicas: usize, balancer: Balancer) -> ClusterSpec {
        ClusterSpec {
            replicas,
            balancer,
            args: Vec::new(),
            env: Vec::new(),
            redis: false,
            model_dir: None,
        }
    }

    pub fn args(mut self, args: &[&str]) -> ClusterSpec {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> ClusterSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn redis(mut self) -> ClusterSpec {
        self.redis = true;
        self
    }

    pub fn model_dir(mut self, dir: &Path) -> ClusterSpec {
        self.model_dir = Some(dir.to_path_buf());
        self
    }
}

/// One gru-serve replica: its ports and, while running, its process.
pub struct Replica {
    pub port: u16,
    pub metrics_port: u16,
    /// stdout and stderr of every run of this replica, appended.
    pub log: PathBuf,
    process: Option<Spawned>,
}

impl Replica {
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.0.id())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(p) => p.0.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

/// A helper process (redis-server, nginx, haproxy): stopped on Drop with
/// SIGTERM, then SIGKILL if it lingers.
pub struct Daemon {
    pub name: &'static str,
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Daemon {
    /// Spawns `cmd` (output to `log`) and waits until `port` accepts TCP.
    fn spawn(name: &'static str, mut cmd: Command, port: u16, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {name} ({e}): install it (.ci/run does: apt-get install redis-server nginx-full haproxy)")
            });
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{name} exited at start ({status}); its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} does not accept connections on port {port} within {START_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            name,
            port,
            log,
            child,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server` on a free loopback port: no persistence, its own folder.
pub fn start_redis(dir: &Path) -> Daemon {
    let port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir);
    let d = Daemon::spawn("redis-server", cmd, port, dir.join("redis.log"));
    // Accepting TCP is not yet answering: wait for a PONG.
    let deadline = Instant::now() + START_WITHIN;
    while !redis_ping(port) {
        assert!(
            Instant::now() < deadline,
            "redis-server never answered PING"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// The example config in deploy/, read as users get it.
fn deploy_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Rewrites an example config for loopback: the first line starting with
/// `listen_word` gets `listen`; the run of upstream `server` lines becomes
/// one line per replica made by `server_line(index, replica, template)`.
fn rewrite(
    text: &str,
    listen_word: &str,
    listen: &str,
    replicas: &[Replica],
    server_line: impl Fn(usize, &Replica, &str) -> String,
) -> String {
    let mut out = Vec::new();
    let (mut listened, mut servers_done) = (false, false);
    for line in text.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if !listened && t.starts_with(listen_word) {
            out.push(format!("{indent}{listen}"));
            listened = true;
        } else if t.starts_with("server ") && t.contains(":50051") {
            if !servers_done {
                for (i, r) in replicas.iter().enumerate() {
                    out.push(format!("{indent}{}", server_line(i, r, t)));
                }
                servers_done = true;
            }
        } else {
            out.push(line.to_string());
        }
    }
    assert!(
        listened && servers_done,
        "the example config lost its `{listen_word}` or `server` lines"
    );
    out.join("\n") + "\n"
}

/// The part of `template` after its address (`server NAME ADDR rest` for
/// HAProxy, `server ADDR rest` for nginx).
fn after_addr(template: &str) -> String {
    let words: Vec<&str> = template.trim_end_matches(';').split_whitespace().collect();
    let at = words.iter().position(|w| w.contains(":50051")).unwrap();
    words[at + 1..].join(" ")
}

/// nginx with deploy/nginx/gru-serve.conf, one process (`master_process
/// off`, so a kill leaves no workers behind), in the foreground.
pub fn start_nginx(dir: &Path, replicas: &[Replica]) -> Daemon {
    let port = free_port();
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let site = rewrite(
        &deploy_file("nginx/gru-serve.conf"),
        "listen ",
        &format!("listen 127.0.0.1:{port} http2;"),
        replicas,
        |_, r, t| format!("server 127.0.0.1:{} {};", r.port, after_addr(t)),
    );
    std::fs::write(prefix.join("gru-serve.conf"), site).unwrap();
    let p = prefix.display();
    // As root nginx would switch to `nobody`, who cannot write the prefix.
    let user = if running_as_root() { "user root;" } else { "" };
    let main = format!(
        "{user}\ndaemon off;\nmaster_process off;\nerror_log {p}/logs/error.log info;\npid {p}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n    access_log {p}/logs/access.log;\n\
         client_body_temp_path {p}/client_body;\n    proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\n    uwsgi_temp_path {p}/uwsgi;\n    scgi_temp_path {p}/scgi;\n\
         include {p}/gru-serve.conf;\n}}\n"
    );
    std::fs::write(prefix.join("nginx.conf"), main).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .arg("-e")
        .arg(prefix.join("logs/error.log"));
    Daemon::spawn("nginx", cmd, port, prefix.join("logs/stdout.log"))
}

/// HAProxy with deploy/haproxy/haproxy.cfg in the foreground (`-db`),
/// logging to its stdout (the log file).
pub fn start_haproxy(dir: &Path, replicas: &[Replica]) -> Daemon {
    let port = free_port();
    let cfg = rewrite(
        &deploy_file("haproxy/haproxy.cfg"),
        "bind ",
        &format!("bind 127.0.0.1:{port} proto h2"),
        replicas,
        |i, r, t| {
            let rest = after_addr(t).replace("port 9090", &format!("port {}", r.metrics_port));
            format!("server r{i} 127.0.0.1:{} {rest}", r.port)
        },
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    Daemon::spawn("haproxy", cmd, port, dir.join("haproxy.log"))
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// N replicas, their model directory, Redis if asked for, and a balancer.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub replicas: Vec<Replica>,
    pub redis: Option<Daemon>,
    pub balancer: Option<Daemon>,
    model_dir: PathBuf,
    /// Logs, configs, Redis's folder (and the model directory by default).
    pub dir: TempDir,
    _models: Option<TempDir>,
}

impl Cluster {
    /// `n` replicas behind `balancer`, each started with `args` (see
    /// [`ClusterSpec::args`]), on a fresh copy of the small model `m`.
    pub async fn start(n: usize, balancer: Balancer, args: &[&str]) -> Cluster {
        Cluster::start_spec(ClusterSpec::new(n, balancer).args(args)).await
    }

    pub async fn start_spec(spec: ClusterSpec) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("gru-cluster")
            .tempdir()
            .unwrap();
        let (models, model_dir) = match &spec.model_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = small_repo();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let wants_redis = spec.redis || spec.args.iter().any(|a| a.contains("{redis}"));
        let redis = wants_redis.then(|| start_redis(dir.path()));
        let replicas = (0..spec.replicas)
            .map(|i| Replica {
                port: free_port(),
                metrics_port: free_port(),
                log: dir.path().join(format!("replica-{i}.log")),
                process: None,
            })
            .collect();
        let mut c = Cluster {
            spec,
            replicas,
            redis,
            balancer: None,
            model_dir,
            dir,
            _models: models,
        };
        for i in 0..c.replicas.len() {
            c.spawn(i);
        }
        for i in 0..c.replicas.len() {
            c.wait_serving(i).await;
        }
        c.balancer = match c.spec.balancer {
            Balancer::Nginx => Some(start_nginx(c.dir.path(), &c.replicas)),
            Balancer::Haproxy => Some(start_haproxy(c.dir.path(), &c.replicas)),
            Balancer::None => None,
        };
        if c.balancer.is_some() {
            c.wait_balanced().await;
        }
        c
    }

    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// `redis://127.0.0.1:PORT` (panics when Redis was not started).
    pub fn redis_url(&self) -> String {
        let r = self.redis.as_ref().expect("this cluster runs no Redis");
        format!("redis://127.0.0.1:{}", r.port)
    }

    /// `http://127.0.0.1:PORT` of the balancer.
    pub fn balancer_addr(&self) -> String {
        let b = self
            .balancer
            .as_ref()
            .expect("this cluster runs no balancer");
        format!("http://127.0.0.1:{}", b.port)
    }

    pub fn replica_addr(&self, i: usize) -> String {
        self.replicas[i].addr()
    }

    /// A client through the balancer.
    pub async fn client(&self) -> Client {
        connect(&self.balancer_addr()).await
    }

    /// A client straight to replica `i`.
    pub async fn replica_client(&self, i: usize) -> Client {
        connect(&self.replica_addr(i)).await
    }

    /// A channel straight to replica `i` (for the other services' clients).
    pub async fn replica_channel(&self, i: usize) -> Channel {
        channel(&self.replica_addr(i)).await
    }

    fn args_for(&self, i: usize) -> Vec<String> {
        let redis = self
            .redis
            .as_ref()
            .map(|r| format!("redis://127.0.0.1:{}", r.port))
            .unwrap_or_default();
        self.spec
            .args
            .iter()
            .map(|a| {
                a.replace("{redis}", &redis)
                    .replace("{replica}", &i.to_string())
                    .replace("{dir}", &self.dir.path().display().to_string())
            })
            .collect()
    }

    fn spawn(&mut self, i: usize) {
        let args = self.args_for(i);
        let r = &mut self.replicas[i];
        assert!(r.process.is_none(), "replica {i} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gru-serve"));
        cmd.env("GRU_LOG", "info")
            .args(["--listen", &format!("127.0.0.1:{}", r.port)])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", r.metrics_port)])
            .arg("--model-dir")
            .arg(&self.model_dir)
            .args(["--drain-timeout", "2s"])
            .args(&args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        r.process = Some(Spawned(cmd.spawn().expect("spawn gru-serve")));
    }

    /// Waits until replica `i` reports SERVING (60 s at most).
    pub async fn wait_serving(&mut self, i: usize) {
        let addr = self.replicas[i].addr();
        let p = self.replicas[i]
            .process
            .as_mut()
            .expect("replica not running");
        p.wait_serving(&addr).await;
    }

    /// Waits until a health check through the balancer answers SERVING.
    async fn wait_balanced(&self) {
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Ok(ch) = Endpoint::from_shared(self.balancer_addr())
                .unwrap()
                .connect()
                .await
            {
                let r = tonic_health::pb::health_client::HealthClient::new(ch)
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await;
                if r.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the balancer never answered SERVING; its log:\n{}",
                self.balancer
                    .as_ref()
                    .map(Daemon::log_text)
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: replica `i` dies at once, as in a crash.
    pub fn kill(&mut self, i: usize) {
        let mut p = self.replicas[i]
            .process
            .take()
            .expect("replica not running");
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }

    /// SIGTERM: replica `i` drains and exits; asserts a clean exit (30 s).
    pub async fn terminate(&mut self, i: usize) {
        let mut p = self.replicas[i]
            .process
            .take()
            .expect("replica not running");
        p.terminate().await;
    }

    /// Starts replica `i` again (same ports, flags and model directory) and
    /// waits until it is SERVING; stops it first (SIGTERM) if it still runs.
    pub async fn restart(&mut self, i: usize) {
        if self.replicas[i].process.is_some() {
            self.terminate(i).await;
        }
        self.spawn(i);
        self.wait_serving(i).await;
    }

    /// The balancer's log (nginx: its error log; HAProxy: its request log).
    pub fn balancer_log(&self) -> String {
        match (&self.balancer, self.spec.balancer) {
            (Some(_), Balancer::Nginx) => {
                std::fs::read_to_string(self.dir.path().join("nginx/logs/error.log"))
                    .unwrap_or_default()
            }
            (Some(b), _) => b.log_text(),
            (None, _) => String::new(),
        }
    }

    /// Replica `i`'s output, over all its runs.
    pub fn replica_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.replicas[i].log).unwrap_or_default()
    }

    /// The sum of every sample of `metric` (all label sets) in replica
    /// `i`'s Prometheus scrape; 0 when absent.
    pub async fn metric(&self, i: usize, metric: &str) -> f64 {
        let addr = ([127, 0, 0, 1], self.replicas[i].metrics_port).into();
        let (code, body) = http_get(addr, "/metrics")
            .await
            .unwrap_or_else(|| panic!("replica {i}'s metrics port does not answer"));
        assert_eq!(code, 200, "replica {i} /metrics: {body}");
        sum_metric(&body, metric)
    }
}

/// The sum of the samples of `metric` in a Prometheus text scrape.
pub fn sum_metric(scrape: &str, metric: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plaintext channel to `addr`, connected (10 s at most).
pub async fn channel(addr: &str) -> Channel {
    tokio::time::timeout(
        Duration::from_secs(10),
        Endpoint::from_shared(addr.to_string()).unwrap().connect(),
    )
    .await
    .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
    .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// A `gru.v1.GruService` client on [`channel`].
pub async fn connect(addr: &str) -> Client {
    Client::new(channel(addr).await)
}

/// `msg` with `x-session-key: key` metadata, as the balancers hash it.
pub fn keyed<T>(key: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-session-key", MetadataValue::try_from(key).unwrap());
    r
}
