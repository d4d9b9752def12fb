#![cfg(feature = "grpc")]
//! The binary's command line as a user meets it: sizes and durations with
//! units, environment twins whose bad values name the variable, `--addr`
//! as host:port or a URL, and start-up errors that say what failed where.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::{free_port, Spawned};

fn gru_serve() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gru-serve"));
    c.env("GRU_LOG", "warn");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits (bounded) for a process that should exit by itself.
fn exits_within(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gru-serve did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn serve(port: u16, model_dir: &str) -> Spawned {
    Spawned(
        gru_serve()
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", "off", "--model-dir", model_dir])
            .args(["--max-predict-bytes", "64MiB", "--session-ttl", "10m"])
            .args(["--drain-timeout", "1s"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn health(args: &[&str]) -> Output {
    gru_serve().arg("health").args(args).output().unwrap()
}

#[test]
fn a_bad_environment_value_names_the_variable_and_a_bad_flag_names_the_flag() {
    let o = gru_serve().env("GRU_MAX_BATCH", "abc").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("environment variable GRU_MAX_BATCH") && e.contains("--max-batch"),
        "{e}"
    );
    let o = gru_serve()
        .env("GRU_MAX_PREDICT_BYTES", "12 parsecs")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(
        e.contains("GRU_MAX_PREDICT_BYTES") && e.contains("expected a size like"),
        "{e}"
    );
    // On the command line, the flag is what was wrong.
    let o = gru_serve().args(["--max-batch", "abc"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("'--max-batch") && !e.contains("environment"),
        "{e}"
    );
    // health's flags have twins too.
    let o = gru_serve()
        .arg("health")
        .env("GRU_HEALTH_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert!(stderr(&o).contains("GRU_HEALTH_TIMEOUT"), "{}", stderr(&o));
}

#[test]
fn help_shows_sizes_and_durations_with_units_under_headings() {
    let o = gru_serve().arg("--help").output().unwrap();
    let h = stdout(&o);
    for want in [
        "Network:",
        "Models:",
        "Sessions:",
        "Batching and limits:",
        "Training:",
        "Security:",
        "Observability:",
        "[default: 64MiB]",
        "[default: 1GiB]",
        "[default: 10m]",
        "[default: 30s]",
        "--session-ttl <DURATION>",
        "--max-predict-bytes <SIZE>",
    ] {
        assert!(h.contains(want), "--help lacks {want:?}:\n{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_takes_host_port_or_urls_and_says_why_it_fails() {
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/models");
    let port = free_port();
    let mut server = serve(port, models);
    server
        .wait_serving(&format!("http://127.0.0.1:{port}"))
        .await;
    for addr in [
        format!("127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}"),
    ] {
        let o = health(&["--addr", &addr]);
        assert!(o.status.success(), "{addr}: {}{}", stdout(&o), stderr(&o));
        assert_eq!(stdout(&o).trim(), "SERVING");
    }
    let o = health(&["--addr", "ftp://127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not http or https"), "{}", stderr(&o));
    server.terminate().await;
    let o = health(&["--addr", &format!("127.0.0.1:{port}"), "--timeout", "1s"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("connect to http://127.0.0.1:{port}")) && e.contains("refused"),
        "{e}"
    );
}

/// A model directory that does not exist yet: the server stays up,
/// NOT_SERVING with a reason, and serves once the directory holds a model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_dir_is_not_serving_with_a_reason_until_it_appears() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("models-later");
    let port = free_port();
    let mut server = Spawned(
        gru_serve()
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", "off", "--model-poll", "200ms"])
            .arg("--model-dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o = health(&["--addr", &format!("127.0.0.1:{port}")]);
        // Until the engine has loaded, the reason is that it is loading.
        if stdout(&o).starts_with("NOT_SERVING: no model") || Instant::now() > deadline {
            break o;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("NOT_SERVING: no model is loaded"),
        "{}",
        stdout(&o)
    );
    // The directory appears, with a model, in one rename: the rescans pick it up.
    let staging = root.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let sine = concat!(env!("CARGO_MANIFEST_DIR"), "/models/sine");
    assert!(Command::new("cp")
        .arg("-r")
        .arg(sine)
        .arg(staging.join("sine"))
        .status()
        .unwrap()
        .success());
    std::fs::rename(&staging, &dir).unwrap();
    server
        .wait_serving(&format!("http://127.0.0.1:{port}"))
        .await;
    server.terminate().await;
}

#[test]
fn a_taken_port_is_named_with_its_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let child = gru_serve()
        .args(["--listen", &addr.to_string(), "--metrics-listen", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = exits_within(child, Duration::from_secs(30));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&format!("cannot listen on {addr} (--listen)")) && e.contains("in use"),
        "{e}"
    );
}

#[test]
fn renamed_duration_variables_still_work_and_say_their_new_name() {
    // An unparsable old-name value proves it is read (and under which name).
    let o = gru_serve()
        .env("GRU_SESSION_TTL_SECS", "x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("GRU_SESSION_TTL_SECS is read as GRU_SESSION_TTL"),
        "{e}"
    );
    assert!(e.contains("--session-ttl"), "{e}");
}
