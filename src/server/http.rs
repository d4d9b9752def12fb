//! The HTTP port (`--metrics-listen`): Prometheus `/metrics`, and health for
//! HTTP-only checkers (Kubernetes httpGet probes, nginx, HAProxy):
//!
//! - `/livez`: 200 while the process is up (it answers, so it is).
//! - `/readyz`: 200 when models are loaded and the server is not draining;
//!   503 with a JSON reason otherwise. Turns 503 at SIGTERM, before the gRPC
//!   listener closes (see `--shutdown-delay-secs`).
//! - `/readyz/models/{name}`: the same for one model (404 if unknown).
//!
//! The same answers as grpc.health.v1, which stays for gRPC-aware checkers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

use crate::engine::Engine;

/// What `/readyz` answers from, shared with the server's start and stop.
#[derive(Default)]
pub struct Readiness {
    engine: Arc<OnceLock<Engine>>,
    draining: AtomicBool,
    load_error: Mutex<Option<String>>,
}

/// 200 or 503, and the JSON body.
type Answer = (http::StatusCode, String);

impl Readiness {
    pub fn new(engine: Arc<OnceLock<Engine>>) -> Self {
        Readiness {
            engine,
            ..Readiness::default()
        }
    }

    /// From now on `/readyz` is 503 (shutdown has begun).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Loading the models failed: `/readyz` says why.
    pub fn load_failed(&self, error: String) {
        *self.load_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Why the server is not ready, or None when it is.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if self.draining.load(Ordering::SeqCst) {
            return Some("draining: the server is shutting down".into());
        }
        if let Some(e) = &*self.load_error.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(format!("loading models failed: {e}"));
        }
        match self.engine.get() {
            None => Some("loading models".into()),
            Some(e) if !e.has_models() => Some(e.no_models_reason()),
            Some(_) => None,
        }
    }

    fn readyz(&self) -> Answer {
        match self.not_ready() {
            None => answer(http::StatusCode::OK, serde_json::json!({"status": "ready"})),
            Some(reason) => not_ready(reason, serde_json::json!({})),
        }
    }

    fn readyz_model(&self, name: &str) -> Answer {
        let model = serde_json::json!({ "model": name });
        if self.draining.load(Ordering::SeqCst) {
            return not_ready("draining: the server is shutting down".into(), model);
        }
        let Some(engine) = self.engine.get() else {
            // Still loading, or the load failed: the server's own reason.
            let reason = self.not_ready().unwrap_or_else(|| "loading models".into());
            return not_ready(reason, model);
        };
        if !engine.has_models() {
            // Nothing served at all (no model directory, or an empty one):
            // the server is not ready, whatever the name.
            return not_ready(engine.no_models_reason(), model);
        }
        let versions = engine.versions(name);
        if versions.is_empty() {
            // Loaded models do not include it: a typo, or not published yet.
            let mut body = not_ready(format!("model '{name}' is not loaded"), model);
            body.0 = http::StatusCode::NOT_FOUND;
            return body;
        }
        answer(
            http::StatusCode::OK,
            serde_json::json!({"status": "ready", "model": name, "versions": versions}),
        )
    }
}

fn answer(status: http::StatusCode, body: serde_json::Value) -> Answer {
    (status, body.to_string())
}

fn not_ready(reason: String, mut extra: serde_json::Value) -> Answer {
    extra["status"] = "not_ready".into();
    extra["reason"] = reason.into();
    (http::StatusCode::SERVICE_UNAVAILABLE, extra.to_string())
}

/// Answers one request of the HTTP port.
fn route(method: &http::Method, path: &str, ready: &Readiness) -> http::Response<Full<Bytes>> {
    let json = |(status, body): Answer| {
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body + "\n")))
    };
    let response = if method != http::Method::GET && method != http::Method::HEAD {
        http::Response::builder()
            .status(http::StatusCode::METHOD_NOT_ALLOWED)
            .header("allow", "GET, HEAD")
            .body(Full::new(Bytes::from_static(b"GET or HEAD\n")))
    } else {
        match path {
            "/metrics" => {
                let handle = super::metrics::handle();
                handle.run_upkeep();
                let mut text = handle.render();
                text.push_str(&super::process::render());
                http::Response::builder()
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(Full::new(Bytes::from(text)))
            }
            "/livez" => json((
                http::StatusCode::OK,
                serde_json::json!({"status": "live"}).to_string(),
            )),
            "/readyz" => json(ready.readyz()),
            p => match p.strip_prefix("/readyz/models/") {
                Some(name) if !name.is_empty() && !name.contains('/') => {
                    json(ready.readyz_model(name))
                }
                _ => http::Response::builder()
                    .status(http::StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::from_static(
                        b"this port serves /metrics, /livez, /readyz and /readyz/models/{name}\n",
                    ))),
            },
        }
    };
    response.expect("static response parts are valid")
}

/// Serves the port on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, ready: Arc<Readiness>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ready = ready.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let response = route(req.method(), req.uri().path(), &ready);
                async move { Ok::<_, Infallible>(response) }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: &Readiness, path: &str) -> (u16, String) {
        let resp = route(&http::Method::GET, path, r);
        let s = resp.status().as_u16();
        let body = resp.into_body();
        let bytes = futures_body(body);
        (s, bytes)
    }

    fn futures_body(b: Full<Bytes>) -> String {
        use hyper::body::Body;
        let mut b = std::pin::pin!(b);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match b.as_mut().poll_frame(&mut cx) {
            std::task::Poll::Ready(Some(Ok(f))) => {
                String::from_utf8_lossy(f.data_ref().map_or(&[][..], |d| &d[..])).into_owned()
            }
            _ => String::new(),
        }
    }

    #[test]
    fn readiness_says_why_until_models_load_and_again_when_draining() {
        let r = Readiness::default();
        assert_eq!(status(&r, "/livez").0, 200);
        let (code, body) = status(&r, "/readyz");
        assert_eq!(code, 503);
        assert!(body.contains(r#""reason":"loading models""#), "{body}");
        r.load_failed("model dir /nope: not found".into());
        let (code, body) = status(&r, "/readyz");
        assert_eq!(code, 503);
        assert!(body.contains("model dir /nope"), "{body}");
        assert_eq!(status(&r, "/readyz/models/m").0, 503);
        r.drain();
        assert!(status(&r, "/readyz").1.contains("draining"));
        assert_eq!(status(&r, "/nope").0, 404);
        assert_eq!(status(&r, "/readyz/models/").0, 404);
    }
}
