//! Log lines, human-readable by default or JSON for log collectors, levels from
//! `RUST_LOG`; and the global subscriber that writes them and, when the standard `OTEL_*`
//! variables ask for it, exports spans by OTLP (see `telemetry`).
//!
//! Spans tokenvend makes itself have targets under `tokenvend::` (`tokenvend::rpc`,
//! `tokenvend::idp`, `tokenvend::refresh`). They go to the OTLP exporter only, not to log
//! lines: with no exporter nobody wants them, and `tracing` then skips them at the cost
//! of one cached check, so the hot path pays nothing for tracing while it is off.

mod batch;
mod lines;

use std::{
    io::{self, IsTerminal as _, Stderr},
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, filter_fn},
    fmt::{self, MakeWriter, writer::EitherWriter},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

use self::batch::{BatchWriter, FlushGuard};
pub use self::lines::AuditLines;
use crate::telemetry::{TraceError, tracer_provider, traces_wanted};

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

/// Installs the global subscriber, with OTLP traces if the environment asks for them
/// (see [`traces_wanted`]). `RUST_LOG` sets log levels; the default is `info`. Must be
/// called within a Tokio runtime.
pub fn init(format: LogFormat) -> Result<Telemetry, TraceError> {
    let traces = traces_wanted().then(|| tracer_provider(None)).transpose()?;
    Ok(install(format, traces))
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
    // general formatter's (see `lines`).
    let audit_lines = AuditLines::new(format, output).with_filter(filter().and(filter_fn(audit)));
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
