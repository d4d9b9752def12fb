//! Health: the grpc.health.v1 statuses this server reports (NOT_SERVING
//! until a model is served and again while draining), and the client behind
//! `gru-serve health`.

use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

const GRU_SERVICE: &str = "gru.v1.GruService";
const TRAINING_SERVICE: &str = "gru.v1.TrainingService";
/// Health-checked service names: the whole server ("") and each service.
const HEALTH_NAMES: [&str; 3] = ["", GRU_SERVICE, TRAINING_SERVICE];

/// The health service and its reporter, every name NOT_SERVING until the
/// models are loaded.
pub(super) async fn not_serving_reporter() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    for svc in HEALTH_NAMES {
        health
            .set_service_status(svc, ServingStatus::NotServing)
            .await;
    }
    (health, health_service)
}

pub(super) async fn mark_serving(health: &HealthReporter) {
    for svc in HEALTH_NAMES {
        health.set_service_status(svc, ServingStatus::Serving).await;
    }
    tracing::info!("models loaded; serving");
}

/// At shutdown: every name NOT_SERVING, and open Watch streams ended.
pub(super) async fn mark_draining(health: &mut HealthReporter) {
    for svc in HEALTH_NAMES {
        health
            .set_service_status(svc, ServingStatus::NotServing)
            .await;
        // Dropping the status channel ends open health Watch streams
        // (after they hear NOT_SERVING), which would otherwise hold
        // the drain for drain_timeout; re-adding it keeps Check
        // answering NOT_SERVING while draining.
        health.clear_service_status(svc).await;
        health
            .set_service_status(svc, ServingStatus::NotServing)
            .await;
    }
}

/// TLS settings of the `gru-serve health` probe.
#[derive(Debug, Clone, Default)]
pub struct ProbeTls {
    pub ca: std::path::PathBuf,
    pub domain: Option<String>,
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Asks `addr`'s grpc.health.v1 Check for `service` and says whether it
/// answered SERVING. Errors name what failed (bad address, unreachable,
/// timeout, unknown service, TLS files).
pub async fn check_health(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&ProbeTls>,
) -> Result<bool, String> {
    Ok(probe_health(addr, service, timeout, tls).await? == Health::Serving)
}

/// The `gru-serve health` probe: [`check_health`], and if not SERVING, why.
pub async fn probe_health(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&ProbeTls>,
) -> Result<Health, String> {
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    let uri = endpoint_uri(addr, tls.is_some())?;
    let mut endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("address '{addr}': {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(t) = tls {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&t.ca)?));
        if let Some(d) = &t.domain {
            c = c.domain_name(d.clone());
        }
        if let Some((cert, key)) = &t.client {
            c = c.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(c).map_err(|e| format!("TLS: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect to {uri}: {}", error_chain(&e)))?;
    let reply = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| format!("health check: {:?}: {}", s.code(), s.message()))?;
    if reply.into_inner().status == Wire::Serving as i32 {
        return Ok(Health::Serving);
    }
    // Say why, when the server lets us ask (with auth on it may not).
    use crate::service::pb::gru_service_client::GruServiceClient;
    let why = match GruServiceClient::new(channel)
        .list_models(crate::service::pb::ListModelsRequest {})
        .await
    {
        Ok(r) if r.get_ref().models.is_empty() => Some(
            "no model is loaded: the server's model directory holds none yet (its log names the directory)".to_string(),
        ),
        Ok(_) => Some("models are loaded but the server is shutting down (draining)".to_string()),
        // Still starting: the server says so ("models are still loading").
        Err(s) if s.code() == tonic::Code::Unavailable => Some(s.message().to_string()),
        Err(_) => None,
    };
    Ok(Health::NotServing(why))
}

/// What `gru-serve health` learnt.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Serving,
    /// With the reason when the server told it.
    NotServing(Option<String>),
}

/// An error and its sources on one line: tonic's own text is often just
/// "transport error".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

/// The URI a client connects to, from what people type: `host:port`
/// (http, or https when `tls`), `http://host:port` or `https://host:port`.
/// Every client of ours takes `--addr` through this: the `health` probe,
/// the examples, the load generator.
pub fn endpoint_uri(addr: &str, tls: bool) -> Result<String, String> {
    let addr = addr.trim();
    let (scheme, rest) = match addr.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest),
        Some((s, _)) => {
            return Err(format!(
                "address '{addr}': scheme '{s}' is not http or https (or give host:port)"
            ))
        }
        None => (if tls { "https" } else { "http" }, addr),
    };
    let host_port = rest.trim_end_matches('/');
    let port_ok = host_port
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!(
            "address '{addr}': expected host:port, http://host:port or https://host:port"
        ));
    }
    Ok(format!("{scheme}://{host_port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_port_or_http_urls() {
        let ok = |a: &str, tls| endpoint_uri(a, tls).unwrap();
        assert_eq!(ok("127.0.0.1:50051", false), "http://127.0.0.1:50051");
        assert_eq!(ok("localhost:50051", true), "https://localhost:50051");
        assert_eq!(ok("http://h:1/", false), "http://h:1");
        assert_eq!(ok("https://h:1", false), "https://h:1");
        assert_eq!(ok("[::1]:50051", false), "http://[::1]:50051");
        for bad in ["", "h", "h:port", ":1", "ftp://h:1", "http://h"] {
            assert!(endpoint_uri(bad, false).is_err(), "{bad}");
        }
    }
}
