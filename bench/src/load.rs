//! The Rust load generator: tonic clients over a few HTTP/2 connections, closed loop (as
//! fast as answers come) for throughput, open loop (a fixed schedule) for latency, with
//! latencies in HDR histograms (microseconds).
//!
//! Open-loop latency is measured from when a call was *due*, not when it was sent, if the
//! worker was late because its previous call was slow: that is the queueing a real caller
//! would see (no coordinated omission). A worker late only because the timer woke it late
//! measures from the wake-up, so the timer's 1 ms granularity is not charged to the server.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokenvend::pb::{GetTokenRequest, token_service_client::TokenServiceClient};
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// Where and how to call.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) port: u16,
    /// Trust this certificate and call over TLS.
    pub(crate) tls: Option<String>,
    /// Send `authorization: Bearer <token>`.
    pub(crate) bearer: Option<String>,
    pub(crate) profile: String,
}

/// What a run measured.
pub(crate) struct Outcome {
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Histogram<u64>,
}

impl Outcome {
    pub(crate) fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    /// A percentile in milliseconds.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

type Client = TokenServiceClient<Channel>;

pub(crate) async fn connect(target: &Target, connections: usize) -> Result<Vec<Client>, String> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let endpoint = match &target.tls {
            None => Endpoint::from_shared(format!("http://127.0.0.1:{}", target.port)),
            Some(pem) => Endpoint::from_shared(format!("https://localhost:{}", target.port))
                .and_then(|e| {
                    e.tls_config(
                        ClientTlsConfig::new()
                            .ca_certificate(Certificate::from_pem(pem))
                            .domain_name("localhost"),
                    )
                }),
        }
        .map_err(|e| e.to_string())?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        clients.push(TokenServiceClient::new(channel));
    }
    Ok(clients)
}

fn request(
    target: &Target,
    bearer: Option<&MetadataValue<tonic::metadata::Ascii>>,
) -> Request<GetTokenRequest> {
    let mut request = Request::new(GetTokenRequest {
        profile: target.profile.clone(),
        ..Default::default()
    });
    if let Some(value) = bearer {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

fn bearer(target: &Target) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, String> {
    target
        .bearer
        .as_ref()
        .map(|t| {
            format!("Bearer {t}")
                .parse()
                .map_err(|_| "bad bearer token".to_owned())
        })
        .transpose()
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// `per_connection` callers on each of `connections` connections, each calling again as
/// soon as it is answered, for `duration`.
pub(crate) async fn closed(
    target: &Target,
    connections: usize,
    per_connection: usize,
    duration: Duration,
) -> Result<Outcome, String> {
    let clients = connect(target, connections).await?;
    let bearer = bearer(target)?;
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for client in &clients {
        for _ in 0..per_connection {
            let mut client = client.clone();
            let target = target.clone();
            let bearer = bearer.clone();
            tasks.push(tokio::spawn(async move {
                let mut hist = histogram();
                let (mut calls, mut errors) = (0u64, 0u64);
                while Instant::now() < end {
                    let sent = Instant::now();
                    match client.get_token(request(&target, bearer.as_ref())).await {
                        Ok(_) => calls += 1,
                        Err(_) => errors += 1,
                    }
                    let _ = hist.record(sent.elapsed().as_micros() as u64);
                }
                (hist, calls, errors)
            }));
        }
    }
    collect(tasks, start).await
}

/// `rate` calls per second for `duration`, spread over `workers` callers on `connections`
/// connections, each on a fixed schedule.
pub(crate) async fn open(
    target: &Target,
    connections: usize,
    workers: usize,
    rate: f64,
    duration: Duration,
) -> Result<Outcome, String> {
    let clients = connect(target, connections).await?;
    let bearer = bearer(target)?;
    let interval = Duration::from_secs_f64(workers as f64 / rate);
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + duration;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = clients[w % clients.len()].clone();
        let target = target.clone();
        let bearer = bearer.clone();
        // Workers are offset evenly within one interval.
        let first = start + interval.mul_f64(w as f64 / workers as f64);
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let (mut calls, mut errors) = (0u64, 0u64);
            let mut due = first;
            let mut done = first;
            while due < end {
                let sent = if done > due {
                    due // behind because the last call was slow: count the wait
                } else {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                };
                match client.get_token(request(&target, bearer.as_ref())).await {
                    Ok(_) => calls += 1,
                    Err(_) => errors += 1,
                }
                done = Instant::now();
                let _ = hist.record(done.duration_since(sent).as_micros() as u64);
                due += interval;
            }
            (hist, calls, errors)
        }));
    }
    collect(tasks, start).await
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<(Histogram<u64>, u64, u64)>>,
    start: Instant,
) -> Result<Outcome, String> {
    let mut outcome = Outcome {
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for task in tasks {
        let (hist, calls, errors) = task.await.map_err(|e| e.to_string())?;
        outcome.latency.add(hist).map_err(|e| e.to_string())?;
        outcome.calls += calls;
        outcome.errors += errors;
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

/// Calls `profile` from `callers` concurrent callers spread over `connections`
/// connections, all released at once; returns each call's latency.
pub(crate) async fn burst(
    target: &Target,
    connections: usize,
    callers: usize,
) -> Result<Outcome, String> {
    let clients = connect(target, connections).await?;
    let gate = std::sync::Arc::new(tokio::sync::Barrier::new(callers + 1));
    let mut tasks = Vec::with_capacity(callers);
    for c in 0..callers {
        let mut client = clients[c % clients.len()].clone();
        let target = target.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            gate.wait().await;
            let sent = Instant::now();
            let ok = client.get_token(request(&target, None)).await.is_ok();
            let _ = hist.record(sent.elapsed().as_micros() as u64);
            (hist, u64::from(ok), u64::from(!ok))
        }));
    }
    gate.wait().await;
    collect(tasks, Instant::now()).await
}

/// `calls` token requests, one after another, straight to the IdP at `token_url` over one
/// kept-alive connection: what a service that fetched its own tokens would wait.
pub(crate) async fn direct(token_url: &str, calls: usize) -> Result<Outcome, String> {
    let client = reqwest::Client::new();
    let mut outcome = Outcome {
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    let start = Instant::now();
    for _ in 0..calls {
        let sent = Instant::now();
        let reply = client
            .post(token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&client_id=bench&client_secret=bench-secret")
            .send()
            .await;
        let ok = match reply {
            Ok(reply) if reply.status().is_success() => reply.bytes().await.is_ok(),
            _ => false,
        };
        let _ = outcome.latency.record(sent.elapsed().as_micros() as u64);
        outcome.calls += u64::from(ok);
        outcome.errors += u64::from(!ok);
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

/// One call, for its latency and its encoded reply.
pub(crate) async fn once(
    client: &mut Client,
    target: &Target,
) -> Result<(Duration, Vec<u8>), String> {
    let sent = Instant::now();
    let token = client
        .get_token(request(target, bearer(target)?.as_ref()))
        .await
        .map_err(|s| format!("GetToken {}: {s}", target.profile))?
        .into_inner();
    Ok((sent.elapsed(), prost::Message::encode_to_vec(&token)))
}
