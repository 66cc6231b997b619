//! Metrics: OpenTelemetry instruments, read as Prometheus text at `/metrics` and, when an
//! OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`), exported by OTLP too.
//!
//! Each server has its own `MeterProvider` (no global): tests run many servers in one
//! process, and each `/metrics` shows its own server.
//!
//! The hot path (a cache hit) must stay lock-free and allocation-free. An SDK counter
//! takes a read lock shared by every attribute set of the instrument and hashes the
//! attributes at each call, so the per-call counts (requests, cache lookups) are kept
//! instead as atomics in a [`ProfileMetrics`] per profile, and reported by observable
//! counters when a reader collects. The rarer events (provider requests, refreshes,
//! reloads) use ordinary SDK instruments.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram, Meter, MeterProvider as _},
};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tonic::Code;

/// The instrumentation scope of every instrument.
const SCOPE: &str = "tokenvend";

/// The label value for requests naming no configured profile: profile names come from
/// callers, and must not become labels (a caller could create any number of series).
/// Parentheses cannot appear in a profile name.
pub(crate) const UNKNOWN_PROFILE: &str = "(unknown)";

/// Bucket boundaries for durations, in seconds: those the OpenTelemetry HTTP semantic
/// conventions advise for `http.client.request.duration`.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A server's metrics; cheap to clone.
#[derive(Clone)]
pub(crate) struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    profiles: Arc<Profiles>,
    idp_requests: Counter<u64>,
    idp_duration: Histogram<f64>,
    waits: Histogram<f64>,
    refreshes: Counter<u64>,
    refresh_failures: Counter<u64>,
    reloads: Counter<u64>,
}

/// The per-profile counters, by profile name; kept across reloads so that a changed
/// profile's counters go on rising instead of starting again.
#[derive(Default)]
struct Profiles {
    // Taken when a slot is created (start-up, reload) and when a reader collects; never
    // on the request path, which holds an `Arc<ProfileMetrics>` from its slot.
    by_name: Mutex<HashMap<Arc<str>, Arc<ProfileMetrics>>>,
}

impl Profiles {
    fn get(&self, name: &Arc<str>) -> Arc<ProfileMetrics> {
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        by_name
            .entry(name.clone())
            .or_insert_with(|| Arc::new(ProfileMetrics::new(name.clone())))
            .clone()
    }

    fn all(&self) -> Vec<Arc<ProfileMetrics>> {
        let by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        by_name.values().cloned().collect()
    }
}

/// The `result` attribute of the cache instruments: what a call's cache lookup found.
/// Metrics' own type rather than the cache's, so that the cache imports metrics and not
/// the other way round; the cache says which of these each of its results counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheLookup {
    /// A token before its refresh time.
    Hit,
    /// A token past its refresh time.
    Stale,
    /// No usable token, and no provider request to join.
    Miss,
    /// No usable token, and a provider request in flight, which the call joined.
    Coalesced,
}

impl CacheLookup {
    const ALL: [Self; 4] = [Self::Hit, Self::Stale, Self::Miss, Self::Coalesced];

    /// The attribute value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
        }
    }
}

/// The RPCs counted per profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rpc {
    /// `GetToken`.
    GetToken,
    /// `WatchToken`.
    WatchToken,
    /// Envoy's `envoy.service.auth.v3.Authorization/Check`.
    Check,
    /// `GET /v1/headers/{profile}` on the forward-auth port.
    Headers,
}

impl Rpc {
    const ALL: [Self; 4] = [Self::GetToken, Self::WatchToken, Self::Check, Self::Headers];

    /// The method name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::GetToken => "GetToken",
            Self::WatchToken => "WatchToken",
            Self::Check => "Check",
            Self::Headers => "Headers",
        }
    }
}

/// What started a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A call found no usable token.
    Caller,
    /// The refresher: refresh ahead, a retry after a failure, warm-up.
    Background,
}

impl Trigger {
    /// The attribute value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Background => "background",
        }
    }
}

/// One profile's counters, updated with one atomic add per call.
pub(crate) struct ProfileMetrics {
    name: Arc<str>,
    cache: [AtomicU64; 4],
    /// Calls answered with a token, by RPC.
    served: [AtomicU64; Rpc::ALL.len()],
    /// Calls refused, by RPC, outcome and status code; an error path, so a lock (this
    /// profile's own) is fine.
    refused: Mutex<HashMap<(Rpc, &'static str, Code), u64>>,
    /// When the current token expires, in milliseconds since the Unix epoch; `i64::MIN`
    /// when there is none.
    expires_at_ms: AtomicI64,
    /// Provider requests per minute over the last hour, for the admin page: one bucket
    /// per minute of the hour, each `minute since the epoch << 32 | count`, so that a
    /// bucket left from an earlier hour is told apart and restarted, without a lock.
    recent_idp: [AtomicU64; 60],
}

impl ProfileMetrics {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            cache: Default::default(),
            served: Default::default(),
            refused: Mutex::default(),
            expires_at_ms: AtomicI64::new(i64::MIN),
            recent_idp: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts a provider request in the minute `now` falls in.
    fn count_idp_request(&self, now: SystemTime) {
        let minute = minute_of(now);
        let bucket = &self.recent_idp[(minute % 60) as usize];
        let mut seen = bucket.load(Ordering::Relaxed);
        loop {
            let next = if seen >> 32 == minute {
                seen.saturating_add(1)
            } else {
                minute << 32 | 1
            };
            match bucket.compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => seen = actual,
            }
        }
    }

    /// Provider requests in the 60 minutes up to `now` (the current minute included).
    pub(crate) fn idp_requests_last_hour(&self, now: SystemTime) -> u64 {
        let minute = minute_of(now);
        self.recent_idp
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .filter(|packed| minute.checked_sub(packed >> 32).is_some_and(|age| age < 60))
            .map(|packed| packed & u64::from(u32::MAX))
            .sum()
    }

    /// Counts a cache lookup.
    pub(crate) fn cache(&self, lookup: CacheLookup) {
        self.cache[lookup as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call answered with a token.
    pub(crate) fn served(&self, rpc: Rpc) {
        self.served[rpc as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call refused with this outcome and code.
    pub(crate) fn refused(&self, rpc: Rpc, outcome: &'static str, code: Code) {
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        *refused.entry((rpc, outcome, code)).or_default() += 1;
    }

    /// Records the expiry of the token now cached; `None` when the cache was emptied.
    pub(crate) fn token_expires_at(&self, expires_at: Option<SystemTime>) {
        let ms = expires_at.map_or(i64::MIN, |t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(_) => 0,
        });
        self.expires_at_ms.store(ms, Ordering::Relaxed);
    }

    fn seconds_to_expiry(&self, now: SystemTime) -> Option<f64> {
        let ms = self.expires_at_ms.load(Ordering::Relaxed);
        if ms == i64::MIN {
            return None;
        }
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Some((ms - now_ms) as f64 / 1000.0)
    }
}

/// Where metrics go besides `/metrics`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Export {
    /// Export by OTLP/gRPC; the exporter reads the endpoint, headers and timeout from the
    /// standard `OTEL_EXPORTER_OTLP_*` variables, and the interval from
    /// `OTEL_METRIC_EXPORT_INTERVAL`.
    pub otlp: bool,
}

impl Export {
    /// From the environment: OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set, unless `OTEL_METRICS_EXPORTER=none`.
    pub(crate) fn from_env() -> Self {
        let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let disabled = std::env::var("OTEL_METRICS_EXPORTER").is_ok_and(|v| v == "none");
        Self {
            otlp: !disabled
                && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
                    || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")),
        }
    }
}

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus exporter.
    #[error("cannot set up the Prometheus exporter: {0}")]
    Prometheus(String),
    /// The OTLP exporter.
    #[error("cannot set up the OTLP metric exporter: {0}")]
    Otlp(String),
}

impl Metrics {
    /// A new set of instruments, on a meter provider of its own. Must be called within a
    /// Tokio runtime when `export.otlp` is set (the gRPC channel is spawned on it).
    pub(crate) fn new(export: &Export) -> Result<Self, MetricsError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // `otel_scope_*` labels on every series say nothing here: one scope only.
            .scope_info_enabled(false)
            .build()
            .map_err(|e| MetricsError::Prometheus(e.to_string()))?;
        let resource = crate::telemetry::resource();
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(prometheus);
        if export.otlp {
            use opentelemetry_otlp::WithTonicConfig as _;
            let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic();
            if let Some(tls) =
                crate::telemetry::otlp_tls(None, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            {
                exporter = exporter.with_tls_config(tls);
            }
            let exporter = exporter
                .build()
                .map_err(|e| MetricsError::Otlp(e.to_string()))?;
            builder = builder
                .with_reader(opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build());
        }
        let provider = builder.build();
        let meter = provider.meter(SCOPE);
        let profiles = Arc::new(Profiles::default());
        register_observed(&meter, &profiles);
        let inner = Inner {
            idp_requests: meter
                .u64_counter("tokenvend.idp.requests")
                .with_unit("{request}")
                .with_description("Token requests sent to identity providers, by profile and outcome.")
                .build(),
            idp_duration: meter
                .f64_histogram("http.client.request.duration")
                .with_unit("s")
                .with_description("Duration of token requests to identity providers, from sending to the whole answer read.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            waits: meter
                .f64_histogram("tokenvend.cache.wait.duration")
                .with_unit("s")
                .with_description("How long calls that found no usable token waited for the identity provider.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            refreshes: meter
                .u64_counter("tokenvend.refreshes")
                .with_unit("{refresh}")
                .with_description("Attempts to obtain a new token, by profile and trigger (caller or background).")
                .build(),
            refresh_failures: meter
                .u64_counter("tokenvend.refresh.failures")
                .with_unit("{refresh}")
                .with_description("Failed attempts to obtain a new token, by profile, trigger and reason.")
                .build(),
            reloads: meter
                .u64_counter("tokenvend.config.reloads")
                .with_unit("{reload}")
                .with_description("New configuration versions, applied or refused.")
                .build(),
            provider,
            registry,
            profiles,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The counters of a profile; the same ones for the same name, across reloads.
    pub(crate) fn profile(&self, name: &Arc<str>) -> Arc<ProfileMetrics> {
        self.inner.profiles.get(name)
    }

    /// The counters for calls that name no configured profile.
    pub(crate) fn unknown_profile(&self) -> Arc<ProfileMetrics> {
        self.inner.profiles.get(&Arc::from(UNKNOWN_PROFILE))
    }

    /// Records one token request to a provider.
    pub(crate) fn idp_request(&self, request: &IdpRequest<'_>) {
        self.inner
            .profiles
            .get(request.profile)
            .count_idp_request(SystemTime::now());
        let outcome = request.error.unwrap_or("ok");
        self.inner.idp_requests.add(
            1,
            &[
                KeyValue::new("profile", request.profile.clone()),
                KeyValue::new("outcome", outcome),
            ],
        );
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("server.address", request.host.to_owned()),
            KeyValue::new("profile", request.profile.clone()),
        ];
        if let Some(status) = request.status {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(error) = request.error {
            attributes.push(KeyValue::new("error.type", error));
        }
        self.inner
            .idp_duration
            .record(request.duration.as_secs_f64(), &attributes);
    }

    /// Records how long a call waited for a provider request it started or joined.
    pub(crate) fn waited(&self, profile: &Arc<str>, lookup: CacheLookup, waited: Duration) {
        self.inner.waits.record(
            waited.as_secs_f64(),
            &[
                KeyValue::new("profile", profile.clone()),
                KeyValue::new("result", lookup.as_str()),
            ],
        );
    }

    /// Records the end of an attempt to obtain a token; `failure` is the reason it failed.
    pub(crate) fn refreshed(
        &self,
        profile: &Arc<str>,
        trigger: Trigger,
        failure: Option<&'static str>,
    ) {
        let attributes = [
            KeyValue::new("profile", profile.clone()),
            KeyValue::new("trigger", trigger.as_str()),
        ];
        self.inner.refreshes.add(1, &attributes);
        if let Some(reason) = failure {
            let [profile, trigger] = attributes;
            self.inner
                .refresh_failures
                .add(1, &[profile, trigger, KeyValue::new("reason", reason)]);
        }
    }

    /// A gauge read when the metrics are collected, such as a count of open streams.
    pub(crate) fn observe(
        &self,
        name: &'static str,
        unit: &'static str,
        description: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.inner
            .provider
            .meter(SCOPE)
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer| observer.observe(read(), &[]))
            .build();
    }

    /// Records a new configuration version, applied or refused.
    pub(crate) fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.inner
            .reloads
            .add(1, &[KeyValue::new("result", result)]);
    }

    /// Stops the OTLP export, after a last one. The periodic reader exports from a thread
    /// of its own, so the wait happens off the runtime's threads.
    pub(crate) async fn shutdown(&self) {
        let provider = self.inner.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }

    /// The metrics in the Prometheus text format.
    pub(crate) fn prometheus_text(&self) -> String {
        use prometheus::Encoder as _;
        let families = self.inner.registry.gather();
        let mut text = Vec::new();
        if let Err(error) = prometheus::TextEncoder::new().encode(&families, &mut text) {
            tracing::warn!(%error, "cannot encode the metrics");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

/// One token request, as [`Metrics::idp_request`] records it.
pub(crate) struct IdpRequest<'a> {
    /// The profile.
    pub profile: &'a Arc<str>,
    /// The token endpoint's host.
    pub host: &'a str,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// Why it failed, if it did: a short reason such as `timeout` or `http_error`.
    pub error: Option<&'static str>,
    /// From sending to having read the answer.
    pub duration: Duration,
}

/// The instruments whose values are read when a reader collects: the per-profile
/// counters, the time to each token's expiry, and the build.
fn register_observed(meter: &Meter, profiles: &Arc<Profiles>) {
    let table = profiles.clone();
    meter
        .u64_observable_counter("tokenvend.requests")
        .with_unit("{request}")
        .with_description("Calls that asked for a profile's token, by RPC, profile, outcome and gRPC status code.")
        .with_callback(move |observer| {
            for profile in table.all() {
                for rpc in Rpc::ALL {
                    let served = profile.served[rpc as usize].load(Ordering::Relaxed);
                    if served > 0 {
                        observer.observe(served, &request_attributes(&profile, rpc, "served", Code::Ok));
                    }
                }
                let refused = profile.refused.lock().unwrap_or_else(PoisonError::into_inner).clone();
                for ((rpc, outcome, code), count) in refused {
                    observer.observe(count, &request_attributes(&profile, rpc, outcome, code));
                }
            }
        })
        .build();
    let table = profiles.clone();
    meter
        .u64_observable_counter("tokenvend.cache.lookups")
        .with_unit("{lookup}")
        .with_description("Cache lookups by calls, by profile and result: hit, stale (served past its refresh time), miss, coalesced (joined a request in flight).")
        .with_callback(move |observer| {
            for profile in table.all() {
                for result in CacheLookup::ALL {
                    let count = profile.cache[result as usize].load(Ordering::Relaxed);
                    if count > 0 {
                        observer.observe(
                            count,
                            &[
                                KeyValue::new("profile", profile.name.clone()),
                                KeyValue::new("result", result.as_str()),
                            ],
                        );
                    }
                }
            }
        })
        .build();
    let table = profiles.clone();
    meter
        .f64_observable_gauge("tokenvend.token.time_to_expiry")
        .with_unit("s")
        .with_description("Seconds until the cached token of each profile expires; negative once it has expired. Absent for a profile that never had a token.")
        .with_callback(move |observer| {
            let now = SystemTime::now();
            for profile in table.all() {
                if let Some(seconds) = profile.seconds_to_expiry(now) {
                    observer.observe(seconds, &[KeyValue::new("profile", profile.name.clone())]);
                }
            }
        })
        .build();
    meter
        .u64_observable_gauge("tokenvend.build.info")
        .with_description("Always 1; the attributes describe the build.")
        .with_callback(|observer| {
            observer.observe(1, &[KeyValue::new("version", env!("CARGO_PKG_VERSION"))]);
        })
        .build();
}

fn request_attributes(
    profile: &ProfileMetrics,
    rpc: Rpc,
    outcome: &'static str,
    code: Code,
) -> [KeyValue; 4] {
    [
        KeyValue::new("rpc", rpc.as_str()),
        KeyValue::new("profile", profile.name.clone()),
        KeyValue::new("outcome", outcome),
        KeyValue::new("code", code_name(code)),
    ]
}

/// The status code as gRPC documents name it (`NOT_FOUND`).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn minute_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

#[cfg(test)]
mod hourly_tests {
    use super::*;

    #[test]
    fn provider_requests_are_counted_for_the_last_hour_only() {
        let metrics = ProfileMetrics::new("p".into());
        let start = UNIX_EPOCH + Duration::from_secs(1_000 * 3600);
        for _ in 0..3 {
            metrics.count_idp_request(start);
        }
        metrics.count_idp_request(start + Duration::from_secs(59 * 60));
        assert_eq!(metrics.idp_requests_last_hour(start), 3);
        assert_eq!(
            metrics.idp_requests_last_hour(start + Duration::from_secs(59 * 60)),
            4
        );
        // An hour on, the first minute's bucket has aged out, and its slot restarts.
        let later = start + Duration::from_secs(60 * 60);
        assert_eq!(metrics.idp_requests_last_hour(later), 1);
        metrics.count_idp_request(later);
        assert_eq!(metrics.idp_requests_last_hour(later), 2);
    }
}
