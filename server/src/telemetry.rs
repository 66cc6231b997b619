//! Logs and traces: log lines human-readable by default or JSON for log collectors, levels
//! from `RUST_LOG`; spans exported by OTLP when the standard `OTEL_*` variables ask for it,
//! with W3C trace context taken from callers and passed on to identity providers.
//!
//! Spans tokenvend makes itself have targets under `tokenvend::` (`tokenvend::rpc`,
//! `tokenvend::idp`, `tokenvend::refresh`). They go to the OTLP exporter only, not to log
//! lines: with no exporter nobody wants them, and `tracing` then skips them at the cost
//! of one cached check, so the hot path pays nothing for tracing while it is off.

mod batch;

use std::{
    io::{self, IsTerminal as _, Stderr},
    time::Duration,
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    resource::{EnvResourceDetector, TelemetryResourceDetector},
    trace::SdkTracerProvider,
};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, filter_fn},
    fmt::{self, MakeWriter, writer::EitherWriter},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

use self::batch::{BatchWriter, FlushGuard};

/// The target prefix of the spans made for tracing.
const SPAN_TARGETS: &str = "tokenvend::";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter: {0}")]
pub struct TraceError(String);

/// Keeps the trace exporter and the log writer running; [`Telemetry::shutdown`] sends
/// what is left, and dropping it writes out the last log lines.
#[derive(Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    logs: Option<FlushGuard<Stderr>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.traces.is_some())
            .field("logs", &self.logs.is_some())
            .finish()
    }
}

/// Where log lines go: stderr, in batches (see `batch`), or straight if the thread that
/// writes batches could not be started.
#[derive(Clone)]
enum LogOutput {
    Batched(BatchWriter<Stderr>),
    Direct,
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = EitherWriter<&'a BatchWriter<Stderr>, Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Self::Batched(writer) => EitherWriter::A(writer),
            Self::Direct => EitherWriter::B(io::stderr()),
        }
    }
}

impl Telemetry {
    /// Sends the spans not yet exported, and waits for the exporter to have done so.
    pub async fn flush(&self) {
        if let Some(provider) = self.traces.clone() {
            // The batch processor exports from a thread of its own: wait off the runtime.
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        }
    }

    /// Exports what is left and stops the exporter.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.traces.take() {
            let _ = tokio::task::spawn_blocking(move || {
                provider.shutdown_with_timeout(Duration::from_secs(5))
            })
            .await;
        }
    }
}

/// Whether the environment asks for OTLP traces: `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and `OTEL_TRACES_EXPORTER` is not `none`.
pub fn traces_wanted() -> bool {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let disabled = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber, with OTLP traces if the environment asks for them
/// (see [`traces_wanted`]). `RUST_LOG` sets log levels; the default is `info`. Must be
/// called within a Tokio runtime.
pub fn init(format: LogFormat) -> Result<Telemetry, TraceError> {
    let traces = traces_wanted().then(|| tracer_provider(None)).transpose()?;
    Ok(install(format, traces))
}

/// An OTLP/gRPC trace exporter behind a batch processor, with the sampler from
/// `OTEL_TRACES_SAMPLER(_ARG)` (default: parent-based, always on). `endpoint` overrides
/// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`. Must be called within a Tokio runtime.
pub fn tracer_provider(endpoint: Option<&str>) -> Result<SdkTracerProvider, TraceError> {
    use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(tls) = otlp_tls(endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        exporter = exporter.with_tls_config(tls);
    }
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().map_err(|e| TraceError(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build())
}

/// TLS with the system's root certificates for an `https` collector: the exporter would
/// otherwise use TLS with no roots at all, and trust nothing.
pub(crate) fn otlp_tls(
    endpoint: Option<&str>,
    signal_variable: &str,
) -> Option<tonic::transport::ClientTlsConfig> {
    let endpoint = endpoint.map(str::to_owned).or_else(|| {
        [signal_variable, "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .into_iter()
            .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    })?;
    endpoint
        .starts_with("https://")
        .then(|| tonic::transport::ClientTlsConfig::new().with_enabled_roots())
}

/// Installs the global subscriber: log lines as `format` says, filtered by `RUST_LOG`,
/// and, given a tracer provider, tokenvend's spans (and warnings and errors, as span
/// events) exported through it.
pub fn install(format: LogFormat, traces: Option<SdkTracerProvider>) -> Telemetry {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Tracing spans are for the exporter; log lines keep the shape they always had.
    let not_a_trace_span =
        filter_fn(|meta| !(meta.is_span() && meta.target().starts_with(SPAN_TARGETS)));
    let audit = |meta: &tracing::Metadata<'_>| meta.target() == crate::audit::TARGET;
    // Colours only for a terminal: in a pod's log they are escape codes a log collector has
    // to strip.
    let (output, flush) = match BatchWriter::new(io::stderr()) {
        Ok((writer, guard)) => (LogOutput::Batched(writer), Some(guard)),
        Err(e) => {
            eprintln!("tokenvend: log lines are written one by one: no writer thread: {e}");
            (LogOutput::Direct, None)
        }
    };
    let logs = fmt::layer()
        .with_ansi(io::stderr().is_terminal())
        .with_writer(output.clone());
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
    }
    .with_filter(
        filter()
            .and(not_a_trace_span)
            .and(filter_fn(move |m| !audit(m))),
    );
    // Audit events, one per call, have a writer of their own that costs a fraction of the
    // general formatter's (see `audit::AuditLines`).
    let audit_lines =
        crate::audit::AuditLines::new(format, output).with_filter(filter().and(filter_fn(audit)));
    let otel = traces.as_ref().map(|provider| {
        let wanted = filter_fn(|meta| {
            if meta.is_span() {
                meta.target().starts_with(SPAN_TARGETS)
            } else {
                *meta.level() <= tracing::Level::WARN
            }
        });
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tokenvend"))
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(wanted)
    });
    let subscriber = tracing_subscriber::registry().with(logs).with(audit_lines);
    // Not `.with(otel)` with an `Option`: a `None` layer declares interest in every
    // callsite, and the registry then records every span of every crate (h2 opens several
    // per frame), disabled or not — two thirds of the cost of a cache hit (callgrind).
    match otel {
        Some(otel) => subscriber.with(otel).init(),
        None => subscriber.init(),
    }
    Telemetry {
        traces,
        logs: flush,
    }
}

/// The resource describing this process: `service.name` `tokenvend` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names it otherwise, the
/// attributes of `OTEL_RESOURCE_ATTRIBUTES`, and the SDK's.
pub fn resource() -> Resource {
    let mut builder = Resource::builder_empty()
        .with_service_name("tokenvend")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Ok(name) = std::env::var("OTEL_SERVICE_NAME")
        && !name.is_empty()
    {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// The trace context a caller sent in its gRPC metadata (`traceparent`, `tracestate`).
pub fn remote_context(metadata: &tonic::metadata::MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// Adds `traceparent` (and `tracestate`) for this context to an HTTP request's headers.
pub fn inject(context: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(context, &mut HeaderInjector(headers));
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => key.as_str(),
                tonic::metadata::KeyRef::Binary(key) => key.as_str(),
            })
            .collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
