//! Logging and tracing set-up: the log lines (text or JSON) and, when
//! `--otlp-endpoint` is set, OpenTelemetry trace export over OTLP/gRPC.
//!
//! Every RPC runs inside one `grpc` span made by [`rpc_span`] (in the RPC
//! layer, `rpc.rs`), named after the method, with the W3C `traceparent` of
//! the request as its parent, so a caller's trace continues into the server.
//! The span carries `trace_id` (the caller's, else a new one) and the
//! caller's `x-request-id`, so every log line of the call has them. For
//! streaming RPCs the span covers the call's set-up, not the stream's life.
//!
//! Log lines: values by their display form, absent fields absent, ANSI colour
//! only on a terminal; JSON lines carry `trace_id`/`request_id` at the top and
//! one `span` object (the enclosing spans' fields, innermost winning). The
//! HTTP/2 internals (h2, hyper, tonic, tower) log at warn unless the filter
//! names them.

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
    let filter = tracing_subscriber::EnvFilter::try_new(quiet_transport(filter))?;
    let fmt = tracing_subscriber::fmt::layer();
    let fmt = match format {
        LogFormat::Json => fmt
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(json::JsonLines)
            .with_ansi(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            fmt.with_ansi(std::io::stdout().is_terminal())
                .with_filter(filter)
                .boxed()
        }
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
        trace_id = tracing::field::Empty,
        request_id = tracing::field::Empty,
    );
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    #[cfg(feature = "otlp")]
    let exported = otlp::set_parent(&span, headers);
    #[cfg(not(feature = "otlp"))]
    let exported: Option<String> = None;
    // The exported span's trace id when traces are exported (the same as the
    // caller's when it sent one), else the caller's, else a new one.
    let trace_id = exported
        .or_else(|| header("traceparent").and_then(traceparent_trace_id))
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>().max(1)));
    span.record("trace_id", trace_id.as_str());
    if let Some(id) = header("x-request-id").filter(|v| request_id_ok(v)) {
        span.record("request_id", id);
    }
    span
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`);
/// None when malformed or all zeros (invalid by the spec).
pub fn traceparent_trace_id(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0');
    ok.then(|| trace.to_ascii_lowercase())
}

/// A request id is logged as sent when it is short, printable ASCII; a
/// longer or stranger one is left out rather than echoed into the logs.
fn request_id_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// The HTTP/2 machinery logs every frame at debug: quiet (warn) unless the
/// filter names its target, so `--log debug` means this server's debug.
pub fn quiet_transport(filter: &str) -> String {
    const TRANSPORT: [&str; 5] = ["h2", "hyper", "hyper_util", "tonic", "tower"];
    let named: Vec<&str> = filter
        .split(',')
        .map(|d| d.split(['=', '[']).next().unwrap_or("").trim())
        .collect();
    let mut out = filter.to_string();
    for t in TRANSPORT {
        // EnvFilter matches targets by prefix: `hyper` covers `hyper_util`.
        let mentioned = named
            .iter()
            .any(|n| !n.is_empty() && (t.starts_with(n) || n.starts_with(t)));
        if !mentioned {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(t);
            out.push_str("=warn");
        }
    }
    out
}

/// JSON lines: one object per event with `timestamp`, `level`, `target`,
/// `trace_id`/`request_id` when inside an RPC, the event's fields, and one
/// `span` object (name of the innermost span, fields of all of them).
mod json {
    use serde_json::{Map, Value};
    use std::fmt;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::fmt::format::{JsonFields, Writer};
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
    use tracing_subscriber::registry::LookupSpan;

    /// Lifted out of the span object to the top of each line.
    const HOISTED: [&str; 2] = ["trace_id", "request_id"];

    pub struct JsonLines;

    struct Fields<'a>(&'a mut Map<String, Value>);

    impl Visit for Fields<'_> {
        fn record_str(&mut self, f: &Field, v: &str) {
            self.0.insert(f.name().into(), v.into());
        }
        fn record_bool(&mut self, f: &Field, v: bool) {
            self.0.insert(f.name().into(), v.into());
        }
        fn record_i64(&mut self, f: &Field, v: i64) {
            self.0.insert(f.name().into(), v.into());
        }
        fn record_u64(&mut self, f: &Field, v: u64) {
            self.0.insert(f.name().into(), v.into());
        }
        fn record_f64(&mut self, f: &Field, v: f64) {
            self.0.insert(f.name().into(), v.into());
        }
        fn record_error(&mut self, f: &Field, v: &(dyn std::error::Error + 'static)) {
            self.0.insert(f.name().into(), v.to_string().into());
        }
        fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
            self.0.insert(f.name().into(), format!("{v:?}").into());
        }
    }

    impl<S> FormatEvent<S, JsonFields> for JsonLines
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, JsonFields>,
            mut writer: Writer<'_>,
            event: &tracing::Event<'_>,
        ) -> fmt::Result {
            let mut line = Map::new();
            let mut time = String::new();
            SystemTime.format_time(&mut Writer::new(&mut time))?;
            line.insert("timestamp".into(), time.into());
            let meta = event.metadata();
            line.insert("level".into(), meta.level().as_str().into());
            line.insert("target".into(), meta.target().into());
            let mut span = Map::new();
            if let Some(scope) = ctx.event_scope() {
                let mut name = None;
                for s in scope.from_root() {
                    name = Some(s.name());
                    let ext = s.extensions();
                    let Some(fields) = ext.get::<FormattedFields<JsonFields>>() else {
                        continue;
                    };
                    if let Ok(Value::Object(f)) = serde_json::from_str::<Value>(&fields.fields) {
                        span.extend(f);
                    }
                }
                // The OpenTelemetry naming attributes repeat the method.
                span.retain(|k, _| !k.starts_with("otel.") && k != "rpc.system");
                for k in HOISTED {
                    if let Some(v) = span.remove(k) {
                        line.insert(k.into(), v);
                    }
                }
                if let Some(name) = name {
                    span.insert("name".into(), name.into());
                }
            }
            event.record(&mut Fields(&mut line));
            if !span.is_empty() {
                line.insert("span".into(), Value::Object(span));
            }
            let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
            writeln!(writer, "{text}")
        }
    }
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

    /// Makes the caller's W3C trace context (if any) the span's parent, and
    /// returns the trace id the span is exported under (None when no
    /// OpenTelemetry layer is installed).
    pub(super) fn set_parent(span: &tracing::Span, headers: &http::HeaderMap) -> Option<String> {
        use opentelemetry::trace::TraceContextExt as _;
        if headers.contains_key("traceparent") {
            let cx = TraceContextPropagator::new().extract(&Headers(headers));
            // Fails only when no OpenTelemetry layer is installed: nothing to do.
            let _ = span.set_parent(cx);
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.trace_id()
            .ne(&opentelemetry::trace::TraceId::INVALID)
            .then(|| sc.trace_id().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_trace_ids_are_read_and_bad_ones_refused() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            traceparent_trace_id(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
            Some(id)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
        ] {
            assert_eq!(traceparent_trace_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn transport_targets_are_quiet_unless_named() {
        assert_eq!(
            quiet_transport("debug"),
            "debug,h2=warn,hyper=warn,hyper_util=warn,tonic=warn,tower=warn"
        );
        let named = quiet_transport("info,h2=trace,tonic::transport=debug");
        assert!(
            !named.contains("h2=warn") && !named.contains("tonic=warn"),
            "{named}"
        );
        assert!(named.contains("hyper=warn"), "{named}");
    }
}
