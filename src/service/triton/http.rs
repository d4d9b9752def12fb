//! The KServe v2 / Triton protocol's HTTP/JSON form (`--http-listen`), over
//! the same core as the gRPC service: `/v2/health/{live,ready}`, `/v2`,
//! `/v2/models/{m}[/versions/{v}][/ready|/config|/stats|/infer]`,
//! `/v2/models/stats`, `/v2/repository/index` and model load/unload.
//! Tensors travel as JSON `data` or as binary data after the JSON
//! (`json.rs`). Errors are `{"error": "..."}`.
//! Bodies are bounded by `--max-message-bytes`; the health routes are open,
//! everything else needs a bearer token when authentication is on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;

use super::error::{Kind, TritonError};
use super::json::{decode, encode, HEADER_LENGTH};
use super::Triton;
use crate::service::auth::{Auth, Caller};

type Reply = http::Response<Full<Bytes>>;

/// Everything one request needs besides itself.
#[derive(Clone)]
pub struct HttpContext {
    pub core: Arc<Triton>,
    pub auth: Auth,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

fn respond(status: u16, content_type: &str, body: Vec<u8>, extra: Option<(&str, String)>) -> Reply {
    let mut b = http::Response::builder()
        .status(status)
        .header("content-type", content_type);
    if let Some((k, v)) = extra {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}

fn json_reply(status: u16, v: &Value) -> Reply {
    respond(status, "application/json", v.to_string().into_bytes(), None)
}

fn error_reply(e: &TritonError) -> Reply {
    json_reply(e.http_status(), &json!({ "error": e.message }))
}

fn not_found(path: &str) -> TritonError {
    TritonError::new(
        Kind::NotFound,
        format!(
            "no route for {}: see the README's Triton / KServe section",
            crate::engine::ids::clip(path)
        ),
    )
}

/// The routes, as the path names them.
enum Route<'a> {
    Live,
    Ready,
    Server,
    Index,
    Load(&'a str),
    Unload(&'a str),
    AllStats,
    Model {
        name: &'a str,
        version: &'a str,
        what: ModelRoute,
    },
}

#[derive(Clone, Copy)]
enum ModelRoute {
    Metadata,
    Ready,
    Config,
    Stats,
    Infer,
}

fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    Some(match segs.as_slice() {
        [] => Route::Server,
        ["health", "live"] => Route::Live,
        ["health", "ready"] => Route::Ready,
        ["repository", "index"] => Route::Index,
        ["repository", "models", m, "load"] => Route::Load(m),
        ["repository", "models", m, "unload"] => Route::Unload(m),
        ["models", "stats"] => Route::AllStats,
        ["models", name, tail @ ..] => {
            let (version, tail) = match tail {
                ["versions", v, t @ ..] => (*v, t),
                t => ("", t),
            };
            let what = match tail {
                [] => ModelRoute::Metadata,
                ["ready"] => ModelRoute::Ready,
                ["config"] => ModelRoute::Config,
                ["stats"] => ModelRoute::Stats,
                ["infer"] => ModelRoute::Infer,
                _ => return None,
            };
            Route::Model {
                name,
                version,
                what,
            }
        }
        _ => return None,
    })
}

/// The caller, when authentication is on (health routes never ask).
fn caller(auth: &Auth, headers: &http::HeaderMap) -> Result<Option<Caller>, TritonError> {
    if !auth.enabled() {
        return Ok(None);
    }
    let req = tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(headers.clone()),
        tonic::Extensions::default(),
        (),
    );
    Ok(Some(auth.authenticate(&req)?))
}

fn require_admin(c: &Option<Caller>, what: &str) -> Result<(), TritonError> {
    match c {
        Some(c) if !c.admin => Err(TritonError::new(
            Kind::PermissionDenied,
            format!(
                "tenant '{}' may not {what} models: this needs an admin token",
                c.tenant
            ),
        )),
        _ => Ok(()),
    }
}

/// Answers one request.
pub async fn handle(ctx: HttpContext, req: http::Request<hyper::body::Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let Some(r) = route(&path) else {
        return error_reply(&not_found(&path));
    };
    let get = method == http::Method::GET || method == http::Method::HEAD;
    let post = method == http::Method::POST;
    let core = &ctx.core;
    let result: Result<Reply, TritonError> = async {
        match r {
            Route::Live if get => Ok(respond(200, "text/plain", Vec::new(), None)),
            Route::Ready if get => Ok(match core.not_ready() {
                None => respond(200, "text/plain", Vec::new(), None),
                Some(why) => json_reply(400, &json!({ "error": why })),
            }),
            _ => {
                let who = caller(&ctx.auth, req.headers())?;
                let owner = who.as_ref().map(|c| c.tenant.clone());
                match r {
                    Route::Server if get => Ok(json_reply(
                        200,
                        &json!({
                            "name": super::SERVER_NAME,
                            "version": env!("CARGO_PKG_VERSION"),
                            "extensions": super::EXTENSIONS,
                        }),
                    )),
                    Route::Index if post => {
                        let models: Vec<Value> = core
                            .index()?
                            .into_iter()
                            .map(|e| json!({"name": e.name, "version": e.version, "state": e.state}))
                            .collect();
                        Ok(json_reply(200, &Value::Array(models)))
                    }
                    Route::Load(m) if post => {
                        require_admin(&who, "load")?;
                        core.load(m).await?;
                        Ok(respond(200, "application/json", Vec::new(), None))
                    }
                    Route::Unload(m) if post => {
                        require_admin(&who, "unload")?;
                        core.unload(m)?;
                        Ok(respond(200, "application/json", Vec::new(), None))
                    }
                    Route::AllStats if get => stats_reply(core, "", ""),
                    Route::Model { name, version, what } => match what {
                        ModelRoute::Metadata if get => {
                            let m = core.metadata(name, version)?;
                            let t = |v: &[super::model::TensorMeta]| {
                                v.iter()
                                    .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
                                    .collect::<Vec<_>>()
                            };
                            Ok(json_reply(
                                200,
                                &json!({
                                    "name": m.name, "versions": m.versions, "platform": m.platform,
                                    "inputs": t(&m.inputs), "outputs": t(&m.outputs),
                                }),
                            ))
                        }
                        ModelRoute::Ready if get => Ok(if core.model_ready(name, version)? {
                            respond(200, "text/plain", Vec::new(), None)
                        } else {
                            json_reply(400, &json!({"error": format!("model '{}' is not ready", crate::engine::ids::clip(name))}))
                        }),
                        ModelRoute::Config if get => Ok(json_reply(200, &core.config_json(name, version)?)),
                        ModelRoute::Stats if get => stats_reply(core, name, version),
                        ModelRoute::Infer if post => {
                            let headers = req.headers().clone();
                            let body = read_body(req.into_body(), &headers, ctx.max_body_bytes).await?;
                            let (request, binary_out) = decode(name, version, &headers, &body)?;
                            let submitted = core.submit(owner.as_deref(), request).await?;
                            let done = core.finish(submitted).await?;
                            let out = encode(done, &binary_out);
                            Ok(match out.json_len {
                                None => respond(200, "application/json", out.bytes, None),
                                Some(n) => respond(
                                    200,
                                    "application/octet-stream",
                                    out.bytes,
                                    Some((HEADER_LENGTH, n.to_string())),
                                ),
                            })
                        }
                        _ => Err(method_not_allowed(&method, &path)),
                    },
                    _ => Err(method_not_allowed(&method, &path)),
                }
            }
        }
    }
    .await;
    let reply = result.unwrap_or_else(|e| error_reply(&e));
    metrics::counter!(
        "gru_triton_http_requests_total",
        "code" => reply.status().as_u16().to_string()
    )
    .increment(1);
    reply
}

fn method_not_allowed(method: &http::Method, path: &str) -> TritonError {
    TritonError::invalid(format!(
        "{method} is not supported on {}",
        crate::engine::ids::clip(path)
    ))
}

fn stats_reply(core: &Triton, name: &str, version: &str) -> Result<Reply, TritonError> {
    let d = |d: &Option<super::pb::StatisticDuration>| {
        let d = d.unwrap_or_default();
        json!({"count": d.count, "ns": d.ns})
    };
    let stats: Vec<Value> = core
        .statistics(name, version)?
        .into_iter()
        .map(|s| {
            let i = s.inference_stats.unwrap_or_default();
            json!({
                "name": s.name, "version": s.version,
                "last_inference": s.last_inference,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": d(&i.success), "fail": d(&i.fail), "queue": d(&i.queue),
                    "compute_input": d(&i.compute_input), "compute_infer": d(&i.compute_infer),
                    "compute_output": d(&i.compute_output), "cache_hit": d(&i.cache_hit),
                    "cache_miss": d(&i.cache_miss),
                },
                "batch_stats": [],
            })
        })
        .collect();
    Ok(json_reply(200, &json!({ "model_stats": stats })))
}

async fn read_body(
    body: hyper::body::Incoming,
    headers: &http::HeaderMap,
    max: usize,
) -> Result<Bytes, TritonError> {
    let too_large = || {
        TritonError::invalid(format!(
            "request body is larger than {max} bytes (--max-message-bytes)"
        ))
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    if headers.contains_key(http::header::CONTENT_ENCODING) {
        return Err(TritonError::new(
            Kind::Unsupported,
            "compressed request bodies are not supported: send them uncompressed",
        ));
    }
    Limited::new(body, max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                TritonError::invalid(format!("reading the request body: {e}"))
            }
        })
}

/// Serves the HTTP port on `listener` until `stop`.
pub async fn serve(listener: TcpListener, ctx: HttpContext, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "v2 HTTP port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(ctx, req).await) }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let stop = stop.clone();
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

    #[test]
    fn paths_route_like_tritons() {
        assert!(matches!(route("/v2"), Some(Route::Server)));
        assert!(matches!(route("/v2/health/live"), Some(Route::Live)));
        assert!(matches!(
            route("/v2/repository/models/sine/load"),
            Some(Route::Load("sine"))
        ));
        assert!(matches!(
            route("/v2/models/sine/versions/2/infer"),
            Some(Route::Model {
                name: "sine",
                version: "2",
                what: ModelRoute::Infer
            })
        ));
        assert!(matches!(
            route("/v2/models/sine"),
            Some(Route::Model {
                name: "sine",
                version: "",
                what: ModelRoute::Metadata
            })
        ));
        assert!(route("/v2/models/sine/nope").is_none());
        assert!(route("/metrics").is_none());
    }
}
