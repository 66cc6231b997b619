//! OpenTelemetry helpers: the OTLP trace exporter and its TLS, the resource that names
//! this process, and W3C trace context taken from callers and passed on to identity
//! providers. A leaf: it imports nothing else of the crate, so that `idp`, `metrics` and
//! `service` can use it while `logging`, which installs the subscriber, imports `audit`.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    resource::{EnvResourceDetector, TelemetryResourceDetector},
    trace::SdkTracerProvider,
};

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter: {0}")]
pub struct TraceError(String);

/// Whether the environment asks for OTLP traces: `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and `OTEL_TRACES_EXPORTER` is not `none`.
pub fn traces_wanted() -> bool {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let disabled = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
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
