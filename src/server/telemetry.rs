//! Logging and tracing set-up: the log lines (text or JSON) and, when
//! `--otlp-endpoint` is set, OpenTelemetry trace export over OTLP/gRPC.
//!
//! Every RPC runs inside one `grpc` span made by [`rpc_span`] (in the RPC
//! metrics layer), named after the method, with the W3C `traceparent` of the
//! request as its parent, so a caller's trace continues into the server. For
//! streaming RPCs the span covers the call's set-up, not the stream's life.

use tonic::codegen::http;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines are written (`--log-format`). Defined here, where it is
/// used, so that `config` imports telemetry and never the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where and how to export traces.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC address, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Fraction of new traces sampled; a caller's sampled flag wins.
    pub sample_ratio: f64,
}

/// Keeps the trace pipeline alive; dropping it flushes what is buffered.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    otlp: Option<otlp::Pipeline>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.otlp.take() {
            p.shutdown();
        }
    }
}

/// Installs the global subscriber: `filter` (EnvFilter syntax) for everything,
/// log lines in `format`, and the OTLP exporter when `otlp` is given.
pub fn init(
    filter: &str,
    format: LogFormat,
    otlp: Option<&OtlpConfig>,
) -> Result<Telemetry, Box<dyn std::error::Error>> {
    // The log filter applies to the log lines only: `--log warn` must not
    // switch off the (info-level) RPC spans that traces are made of.
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let fmt = tracing_subscriber::fmt::layer();
    let fmt = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otlp")]
    {
        let pipeline = otlp.map(otlp::Pipeline::start).transpose()?;
        let layer = pipeline.as_ref().map(|p| p.layer());
        registry.with(layer).try_init()?;
        Ok(Telemetry { otlp: pipeline })
    }
    #[cfg(not(feature = "otlp"))]
    {
        if otlp.is_some() {
            return Err("--otlp-endpoint: this build has no OTLP support; \
                        rebuild with the `otlp` feature (on by default)"
                .into());
        }
        registry.try_init()?;
        Ok(Telemetry {})
    }
}

/// The span an RPC runs in, named after its method (`gru.v1.GruService/Step`),
/// with OpenTelemetry's RPC attributes and the caller's trace as its parent.
pub fn rpc_span(method: &str, headers: &http::HeaderMap) -> tracing::Span {
    let (service, name) = method.split_once('/').unwrap_or((method, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = name,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    #[cfg(feature = "otlp")]
    otlp::set_parent(&span, headers);
    #[cfg(not(feature = "otlp"))]
    let _ = headers;
    span
}

#[cfg(feature = "otlp")]
mod otlp {
    use super::OtlpConfig;
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData};
    use std::sync::Arc;
    use std::time::Duration;
    use tonic::codegen::http;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer as _;

    /// The OTLP exporter, its runtime and the provider that batches spans.
    pub(super) struct Pipeline {
        provider: SdkTracerProvider,
        runtime: tokio::runtime::Runtime,
    }

    impl Pipeline {
        pub fn start(cfg: &OtlpConfig) -> Result<Self, Box<dyn std::error::Error>> {
            if !(0.0..=1.0).contains(&cfg.sample_ratio) {
                return Err(format!(
                    "--otlp-sample-ratio {}: expected a fraction in [0, 1]",
                    cfg.sample_ratio
                )
                .into());
            }
            // The SDK's batch processor exports from its own thread with a
            // plain executor, but tonic's channel needs a tokio reactor: the
            // exports run on this one-thread runtime (also used by nothing
            // else, so serving load never delays a flush and vice versa).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()?;
            let exporter = {
                let _cx = runtime.enter();
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(cfg.endpoint.clone())
                    .with_timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| format!("--otlp-endpoint {}: {e}", cfg.endpoint))?
            };
            let exporter = OnRuntime {
                inner: Arc::new(exporter),
                runtime: runtime.handle().clone(),
            };
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    cfg.sample_ratio,
                ))))
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(cfg.service_name.clone())
                        .build(),
                )
                .build();
            Ok(Pipeline { provider, runtime })
        }

        pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S>
        where
            S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
        {
            // This server's own spans only (not h2's, hyper's or tonic's).
            let ours = tracing_subscriber::filter::Targets::new()
                .with_target("gru_serve", tracing::Level::INFO);
            tracing_opentelemetry::layer()
                .with_tracer(self.provider.tracer("gru-serve"))
                .with_filter(ours)
        }

        /// Flushes buffered spans (bounded by the exporter's timeout).
        pub fn shutdown(self) {
            if let Err(e) = self.provider.shutdown() {
                eprintln!("gru-serve: OTLP trace export shutdown: {e}");
            }
            self.runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }

    /// Runs the tonic exporter's futures on a tokio runtime.
    #[derive(Debug)]
    struct OnRuntime {
        inner: Arc<opentelemetry_otlp::SpanExporter>,
        runtime: tokio::runtime::Handle,
    }

    impl opentelemetry_sdk::trace::SpanExporter for OnRuntime {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let inner = self.inner.clone();
            self.runtime
                .spawn(async move { inner.export(batch).await })
                .await
                .map_err(|e| OTelSdkError::InternalFailure(format!("OTLP export task: {e}")))?
        }

        fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
            self.inner.shutdown_with_timeout(timeout)
        }

        fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
            // Called while building the provider, before any export holds a clone.
            if let Some(inner) = Arc::get_mut(&mut self.inner) {
                inner.set_resource(resource);
            }
        }
    }

    struct Headers<'a>(&'a http::HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }

    /// Makes the caller's W3C trace context (if any) the span's parent.
    pub(super) fn set_parent(span: &tracing::Span, headers: &http::HeaderMap) {
        if !headers.contains_key("traceparent") {
            return;
        }
        let cx = TraceContextPropagator::new().extract(&Headers(headers));
        // Fails only when no OpenTelemetry layer is installed: nothing to do.
        let _ = span.set_parent(cx);
    }
}
