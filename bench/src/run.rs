//! The benchmark run: start the IdP, tokenvend (plain, TLS, ServiceAccount JWT) and the
//! baseline; measure each figure, alternating between servers round by round so that
//! noise from other work on the machine falls on both; print the table.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    h2load::{self, Length},
    idp::Idp,
    instructions::{self, Counted},
    keys,
    load::{self, Outcome, Target},
    process::{Launch, Server},
};

/// Options of `tokenvend-bench run`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// The tokenvend binary (a release build).
    #[arg(long, default_value = "target/release/tokenvend")]
    tokenvend: PathBuf,
    /// Where configurations, keys and server logs go.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Rounds of each alternating comparison.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per load run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Profiles for the scale figure.
    #[arg(long, default_value_t = 10_000)]
    profiles: usize,
    /// Connections of a template profile for the connections figure.
    #[arg(long, default_value_t = 5_000)]
    connections: usize,
    /// Concurrent cold callers.
    #[arg(long, default_value_t = 10_000)]
    callers: usize,
    /// The IdP's answer time for the miss figures, in milliseconds.
    #[arg(long, default_value_t = 50)]
    idp_ms: u64,
    /// Measure only these parts (comma-separated; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// The program to run as the baseline server (`<it> baseline …`); default: this
    /// harness. For a baseline built another way, such as with PGO.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Give every server `LLVM_PROFILE_FILE=<dir>/<role>-%p.profraw`: with instrumented
    /// builds, a run is the training run of a PGO build (scripts/build-pgo).
    #[arg(long)]
    profile_dir: Option<PathBuf>,
    /// Run every server on the last CPU and the harness (load generators, IdP) on the
    /// others, so that the server under test does not share its CPU with the load.
    #[arg(long)]
    pin: bool,
}

/// The parts of a run, each a group of rows in the table.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    /// Cache-hit throughput: plain, TLS, ServiceAccount JWT, baseline.
    Hits,
    /// Latency at half the baseline's peak.
    Latency,
    /// Concurrent cold callers and single misses against a slow IdP.
    Misses,
    /// Start to SERVING and idle memory.
    Startup,
    /// Many profiles holding tokens: memory and hit throughput.
    Scale,
    /// Instructions per cache hit, by callgrind: the figure machine noise does not move.
    Instructions,
    /// The forward-auth port (HTTP/1.1) against gRPC GetToken, on one server.
    ForwardAuth,
    /// Memory of a template profile's connections, each holding a token.
    Connections,
}

impl Options {
    /// With `--pin`, moves this process off the last CPU and returns that CPU, for the
    /// servers. Call it before any other thread starts.
    pub(crate) fn pin(&self) -> Result<Option<usize>, String> {
        self.pin.then(pin_harness).transpose()
    }

    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// A server as the load generators see it.
struct Variant {
    name: &'static str,
    target: Target,
}

const MISS_PROFILES: usize = 200;

/// HTTP/1.1 connections of the forward-auth load: as many requests in flight as the gRPC
/// load's 4 connections × 32 streams.
const FORWARD_CLIENTS: usize = 128;

fn server_settings() -> &'static str {
    // One load generator is one caller; the default per-caller rate (100/s) would measure
    // the limiter's refusals. The bucket is still checked on every call. The burst is
    // large so the bucket never runs dry: with a tolerance of a few milliseconds, a worker
    // descheduled between reading the clock and its compare-and-swap can be refused.
    // A stopped server goes at once: no load balancer needs to notice it leave.
    "  shutdown_delay: 0s\n  limits: { rate: 1000000, burst: 1000000000, max_concurrent_streams: 1024 }\n"
}

fn profile(name: &str, token_url: &str, warm: bool, allow: &str) -> String {
    format!(
        "  {name}:\n    token_url: {token_url}\n    client_id: bench\n    \
         client_secret: {{ value: bench-secret }}\n    warm_up: {warm}\n    \
         idp_requests_per_minute: 100000\n{allow}"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> Result<String, String> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.display().to_string())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub(crate) async fn run(o: Options, server_cpu: Option<usize>) -> Result<(), String> {
    std::fs::create_dir_all(&o.dir).map_err(|e| e.to_string())?;
    let dir = o.dir.canonicalize().map_err(|e| e.to_string())?;
    let tokenvend = o
        .tokenvend
        .canonicalize()
        .map_err(|e| format!("{}: {e}", o.tokenvend.display()))?;
    let me = match &o.baseline {
        Some(path) => path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let profiles = match &o.profile_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            Some(d.canonicalize().map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let launch = Launch {
        cpu: server_cpu,
        profiles,
    };
    let idp = Idp::start().await.map_err(|e| e.to_string())?;
    let url = idp.token_url();
    let cert = keys::write_server_cert(&dir)?;
    let bearer = keys::write_jwks_and_token(&dir)?;
    println!(
        "# tokenvend-bench: {} rounds of {} s, {} logical CPUs{}",
        o.rounds,
        o.seconds,
        server_cpu.map_or_else(cpus, |cpu| cpu + 1),
        match server_cpu {
            Some(cpu) => format!("; servers on CPU {cpu}, load generators on the others"),
            None => "; servers and load generators share them".into(),
        }
    );
    println!(
        "# tokenvend: {}; baseline: {}",
        tokenvend.display(),
        me.display()
    );

    // Configurations.
    let mut plain = format!("server:\n{}profiles:\n", server_settings());
    plain += &profile("bench", &url, true, "");
    plain += &profile("cold", &url, false, "");
    for i in 0..MISS_PROFILES {
        plain += &profile(&format!("miss-{i}"), &url, false, "");
    }
    let plain = write(&dir, "plain.yaml", &plain)?;
    let idle = write(
        &dir,
        "idle.yaml",
        &format!(
            "server:\n{}profiles:\n{}",
            server_settings(),
            profile("bench", &url, true, "")
        ),
    )?;
    let tls = write(
        &dir,
        "tls.yaml",
        &format!(
            "server:\n{}  tls:\n    cert: {d}/server.crt\n    key: {d}/server.key\nprofiles:\n{}",
            server_settings(),
            profile("bench", &url, true, ""),
            d = dir.display()
        ),
    )?;
    let jwt = write(
        &dir,
        "jwt.yaml",
        &format!(
            "server:\n{}  auth:\n    service_account:\n      issuer: {}\n      jwks_file: {}/jwks.json\nprofiles:\n{}",
            server_settings(),
            keys::ISSUER,
            dir.display(),
            profile(
                "bench",
                &url,
                true,
                "    allow: [\"system:serviceaccount:bench:*\"]\n"
            )
        ),
    )?;
    // The forward-auth port beside gRPC, on one server: connections enough for the HTTP/1.1
    // load generator's, which has one request in flight per connection.
    let forward_port = crate::process::free_port()?;
    let forward = write(
        &dir,
        "forward.yaml",
        &format!(
            "server:\n{}  forward_auth:\n    listen: 127.0.0.1:{forward_port}\nprofiles:\n{}",
            server_settings().replace(
                "max_concurrent_streams: 1024 }",
                &format!(
                    "max_concurrent_streams: 1024, max_connections_per_peer: {} }}",
                    FORWARD_CLIENTS + 8
                )
            ),
            profile("bench", &url, true, "")
        ),
    )?;
    let mut scale = format!("server:\n{}profiles:\n", server_settings());
    for i in 0..o.profiles {
        scale += &profile(&format!("p-{i:05}"), &url, true, "");
    }
    let scale = write(&dir, "scale.yaml", &scale)?;

    let serve = |config: &str, log: &str| {
        Server::start(
            &launch,
            "tokenvend",
            &tokenvend,
            &["serve", "--config", config, "--admin-listen", "127.0.0.1:0"],
            &dir.join(log),
        )
    };

    // Servers for the hit figures.
    let mut ours = serve(&plain, "tokenvend-plain.log")?;
    ours.serving().await?;
    let ours_tls = serve(&tls, "tokenvend-tls.log")?;
    let mut ours_jwt = serve(&jwt, "tokenvend-jwt.log")?;
    // TLS health is not reachable over plaintext: wait for the token instead.
    ours_jwt.serving().await.ok();
    let target = |port, tls: Option<&str>, bearer: Option<&str>| Target {
        port,
        tls: tls.map(str::to_owned),
        bearer: bearer.map(str::to_owned),
        profile: "bench".into(),
    };
    let mut client = load::connect(&target(ours.port, None, None), 1)
        .await?
        .remove(0);
    let (_, reply) = load::once(&mut client, &target(ours.port, None, None)).await?;
    let reply_path = dir.join("reply.bin");
    std::fs::write(&reply_path, &reply).map_err(|e| e.to_string())?;
    let reply_path = reply_path.display().to_string();
    let mut base = Server::start(
        &launch,
        "baseline",
        &me,
        &["baseline", "--reply", &reply_path],
        &dir.join("baseline.log"),
    )?;
    base.serving().await?;
    wait_token(&target(ours_tls.port, Some(&cert), None)).await?;
    wait_token(&target(ours_jwt.port, None, Some(&bearer))).await?;
    println!(
        "# reply: {} bytes (access token {} bytes)",
        reply.len(),
        crate::idp::TOKEN_BYTES
    );

    let variants = [
        Variant {
            name: "baseline",
            target: target(base.port, None, None),
        },
        Variant {
            name: "tokenvend",
            target: target(ours.port, None, None),
        },
        Variant {
            name: "tokenvend+TLS",
            target: target(ours_tls.port, Some(&cert), None),
        },
        Variant {
            name: "tokenvend+SA-JWT",
            target: target(ours_jwt.port, None, Some(&bearer)),
        },
    ];
    let body = dir.join("request.bin");
    std::fs::write(&body, h2load::body("bench")).map_err(|e| e.to_string())?;

    // Rows of the table, in the order measured.
    let mut rows: Vec<String> = Vec::new();
    let mib = |kib: f64| kib / 1024.0;
    let secs = Duration::from_secs(o.seconds);
    let n = variants.len();

    // Throughput: each round runs every variant, in an order rotated per round.
    let mut h2: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut rust: Vec<Vec<f64>> = vec![Vec::new(); n];
    if o.wants(Part::Hits) {
        for round in 0..o.rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let v = &variants[i];
                let run = h2load::run(
                    v.target.port,
                    v.target.tls.is_some(),
                    v.target.bearer.as_deref(),
                    &body,
                    Length::Seconds(o.seconds),
                )?;
                if run.failed > 0 {
                    return Err(format!(
                        "{}: h2load saw {} failed calls",
                        v.name, run.failed
                    ));
                }
                h2[i].push(run.rate);
            }
            for k in 0..n {
                let i = (k + round) % n;
                let v = &variants[i];
                let out = load::closed(&v.target, 4, 32, secs).await?;
                check(v.name, &out)?;
                rust[i].push(out.rate());
            }
            eprintln!(
                "round {}: h2load {:?}",
                round + 1,
                h2.iter()
                    .map(|r| r.last().copied().unwrap_or(0.0) as u64)
                    .collect::<Vec<_>>()
            );
        }
        // Ratios are per round (paired), then the median.
        let ratio_to = |runs: &[Vec<f64>], i: usize, j: usize| {
            median(runs[i].iter().zip(&runs[j]).map(|(a, b)| a / b).collect())
        };
        rows.push(format!(
            "| cache-hit throughput, h2load (calls/s) | {:.0} | {:.0} | {:.3} | ≥ 0.95 |",
            median(h2[1].clone()),
            median(h2[0].clone()),
            ratio_to(&h2, 1, 0)
        ));
        rows.push(format!(
            "| cache-hit throughput, Rust client (calls/s) | {:.0} | {:.0} | {:.3} | ≥ 0.95 |",
            median(rust[1].clone()),
            median(rust[0].clone()),
            ratio_to(&rust, 1, 0)
        ));
        for (i, name) in [(2, "TLS"), (3, "SA-JWT caller auth")] {
            rows.push(format!(
                "| {name}: throughput, h2load / Rust (calls/s) | {:.0} / {:.0} | | {:.3} / {:.3} of baseline; {:.3} / {:.3} of plain tokenvend | |",
                median(h2[i].clone()),
                median(rust[i].clone()),
                ratio_to(&h2, i, 0),
                ratio_to(&rust, i, 0),
                ratio_to(&h2, i, 1),
                ratio_to(&rust, i, 1)
            ));
        }
    }

    // Latency at half the baseline's peak (as the Rust generator reaches it).
    if o.wants(Part::Latency) {
        let peak = match rust[0].is_empty() {
            false => median(rust[0].clone()),
            true => {
                let out = load::closed(&variants[0].target, 4, 32, secs).await?;
                check(variants[0].name, &out)?;
                out.rate()
            }
        };
        let rate = peak / 2.0;
        let mut lat: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
        for round in 0..o.rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let out = load::open(&variants[i].target, 4, 64, rate, secs).await?;
                check(variants[i].name, &out)?;
                match &mut lat[i] {
                    Some(total) => {
                        total.latency.add(&out.latency).map_err(|e| e.to_string())?;
                        total.calls += out.calls;
                    }
                    slot @ None => *slot = Some(out),
                }
            }
        }
        let l = |i: usize| {
            lat[i]
                .as_ref()
                .map_or((0.0, 0.0, 0.0), |o| (o.ms(0.5), o.ms(0.99), o.ms(0.999)))
        };
        let (b50, b99, b999) = l(0);
        for (i, name) in [(1, "plain"), (2, "TLS"), (3, "SA-JWT")] {
            let (p50, p99, p999) = l(i);
            rows.push(format!(
                "| latency at {rate:.0}/s, {name}: p50 / p99 / p99.9 (ms) | {p50:.3} / {p99:.3} / {p999:.3} | {b50:.3} / {b99:.3} / {b999:.3} | {:.2} (p99) | p99 ≤ 1 ms |",
                p99 / b99
            ));
        }
    }
    if o.wants(Part::Hits) || o.wants(Part::Latency) {
        rows.push(format!(
            "| RSS after the hit runs (MiB) | {:.1} | | | |",
            mib(ours.rss_kib()? as f64)
        ));
    }
    drop(ours_tls);
    drop(ours_jwt);

    // Misses: N concurrent cold callers, then single misses against a slow IdP.
    if o.wants(Part::Misses) {
        idp.set_delay(Duration::from_millis(o.idp_ms));
        let before = idp.requests();
        let cold = load::burst(
            &Target {
                profile: "cold".into(),
                ..target(ours.port, None, None)
            },
            100,
            o.callers,
        )
        .await?;
        let cold_requests = idp.requests() - before;
        let mut miss = load::burst(
            &Target {
                profile: "miss-0".into(),
                ..target(ours.port, None, None)
            },
            1,
            1,
        )
        .await?;
        for i in 1..MISS_PROFILES {
            let one = load::burst(
                &Target {
                    profile: format!("miss-{i}"),
                    ..target(ours.port, None, None)
                },
                1,
                1,
            )
            .await?;
            miss.latency.add(&one.latency).map_err(|e| e.to_string())?;
            miss.calls += one.calls;
            miss.errors += one.errors;
        }
        // The same number of requests straight to the IdP: its latency as a caller sees it,
        // with the HTTP round trip and the timer's rounding that a miss through tokenvend
        // also pays.
        let direct = load::direct(&url, MISS_PROFILES).await?;
        check("direct IdP requests", &direct)?;
        idp.set_delay(Duration::ZERO);
        rows.push(format!(
            "| {} concurrent cold callers: IdP requests / calls served | {} / {} ({} errors) | | | 1 / {} |",
            o.callers, cold_requests, cold.calls, cold.errors, o.callers
        ));
        rows.push(format!(
            "| cold callers' latency p50 / p99 (ms), IdP {} ms | {:.1} / {:.1} | | | |",
            o.idp_ms,
            cold.ms(0.5),
            cold.ms(0.99)
        ));
        rows.push(format!(
            "| miss latency p50 / p99 (ms), IdP {} ms, {} misses; baseline: the same requests straight to the IdP | {:.1} / {:.1} | {:.1} / {:.1} | p99 {:+.1} ms | ≤ IdP + 5 ms |",
            o.idp_ms,
            MISS_PROFILES,
            miss.ms(0.5),
            miss.ms(0.99),
            direct.ms(0.5),
            direct.ms(0.99),
            miss.ms(0.99) - direct.ms(0.99)
        ));
    }
    drop(ours);

    // Start-up and idle memory, alternating with the baseline.
    if o.wants(Part::Startup) {
        let (mut up, mut up_base, mut first_token, mut idle_rss, mut base_rss) =
            (vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..o.rounds.max(3) {
            let mut s = serve(&idle, "tokenvend-idle.log")?;
            up.push(s.serving().await?.as_secs_f64() * 1e3);
            let t = Instant::now();
            wait_token(&target(s.port, None, None)).await?;
            first_token.push(up.last().copied().unwrap_or(0.0) + t.elapsed().as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_secs(1)).await;
            idle_rss.push(s.rss_kib()? as f64);
            drop(s);
            let mut b = Server::start(
                &launch,
                "baseline",
                &me,
                &["baseline", "--reply", &reply_path],
                &dir.join("baseline.log"),
            )?;
            up_base.push(b.serving().await?.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_secs(1)).await;
            base_rss.push(b.rss_kib()? as f64);
        }
        rows.push(format!(
            "| RSS idle, 1 profile (MiB) | {:.1} | {:.1} | {:.2} | ≤ 20 MiB |",
            mib(median(idle_rss.clone())),
            mib(median(base_rss.clone())),
            median(idle_rss.clone()) / median(base_rss.clone())
        ));
        rows.push(format!(
            "| start to SERVING (ms) | {:.1} | {:.1} | {:.2} | |",
            median(up.clone()),
            median(up_base.clone()),
            median(up.clone()) / median(up_base.clone())
        ));
        rows.push(format!(
            "| start to first token served (ms) | {:.1} | | | |",
            median(first_token.clone())
        ));
    }

    // Instructions per hit, each server under callgrind for a short and a long run.
    if o.wants(Part::Instructions) {
        if instructions::available() {
            let ready = |port| {
                let t = target(port, None, None);
                async move { wait_token(&t).await }
            };
            let base_args = ["baseline", "--reply", reply_path.as_str()];
            let ours_args = [
                "serve",
                "--config",
                idle.as_str(),
                "--admin-listen",
                "127.0.0.1:0",
            ];
            let servers = [
                ("callgrind-baseline", &me, &base_args[..]),
                ("callgrind-tokenvend", &tokenvend, &ours_args[..]),
            ];
            let mut counts = Vec::with_capacity(servers.len());
            for (role, program, args) in servers {
                let server = Counted {
                    role,
                    program,
                    args,
                };
                counts.push(instructions::per_hit(&launch, &server, &dir, &body, ready).await?);
            }
            let (base_count, ours_count) = (counts[0], counts[1]);
            rows.push(format!(
                "| instructions per cache hit, whole process (callgrind) | {:.0} | {:.0} | {:.3} | |",
                ours_count,
                base_count,
                ours_count / base_count
            ));
        } else {
            eprintln!("valgrind is not installed: no instruction counts");
        }
    }

    // Forward auth: HTTP/1.1 `GET /v1/headers/bench` against gRPC GetToken, the same
    // server, the same in-flight requests (128), alternating round by round.
    if o.wants(Part::ForwardAuth) {
        let mut f = serve(&forward, "tokenvend-forward.log")?;
        f.serving().await?;
        wait_token(&target(f.port, None, None)).await?;
        let (mut http, mut grpc) = (vec![], vec![]);
        for round in 0..o.rounds {
            for k in 0..2 {
                if (k + round) % 2 == 0 {
                    let run = h2load::run_http1(
                        forward_port,
                        "/v1/headers/bench",
                        FORWARD_CLIENTS,
                        Length::Seconds(o.seconds),
                    )?;
                    if run.failed > 0 {
                        return Err(format!("forward-auth: {} requests failed", run.failed));
                    }
                    http.push(run.rate);
                } else {
                    let run = h2load::run(f.port, false, None, &body, Length::Seconds(o.seconds))?;
                    if run.failed > 0 {
                        return Err(format!("GetToken: h2load saw {} failed calls", run.failed));
                    }
                    grpc.push(run.rate);
                }
            }
        }
        let ratio = median(http.iter().zip(&grpc).map(|(a, b)| a / b).collect());
        drop(f);
        rows.push(format!(
            "| forward-auth `GET /v1/headers` (HTTP/1.1, {FORWARD_CLIENTS} connections) / gRPC GetToken (4 × 32), same server, h2load (requests/s) | {:.0} / {:.0} | | {:.3} | |",
            median(http),
            median(grpc),
            ratio
        ));
    }

    // Scale: many profiles, every one holding a token.
    if o.wants(Part::Scale) {
        let before = idp.requests();
        let started = Instant::now();
        let mut s = serve(&scale, "tokenvend-scale.log")?;
        s.serving().await?;
        while idp.requests() - before < o.profiles as u64 {
            if started.elapsed() > Duration::from_secs(300) {
                return Err(format!(
                    "only {} of {} profiles fetched a token",
                    idp.requests() - before,
                    o.profiles
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let warm_all = started.elapsed();
        let last = format!("p-{:05}", o.profiles - 1);
        wait_token(&Target {
            profile: last.clone(),
            ..target(s.port, None, None)
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let scale_rss = s.rss_kib()?;
        std::fs::write(dir.join("request-scale.bin"), h2load::body(&last))
            .map_err(|e| e.to_string())?;
        let (mut scale_hits, mut scale_base) = (vec![], vec![]);
        for round in 0..o.rounds {
            let runs = [(s.port, "request-scale.bin"), (base.port, "request.bin")];
            for k in 0..2 {
                let (port, file) = runs[(k + round) % 2];
                let r = h2load::run(
                    port,
                    false,
                    None,
                    &dir.join(file),
                    Length::Seconds(o.seconds),
                )?
                .rate;
                if port == s.port {
                    scale_hits.push(r)
                } else {
                    scale_base.push(r)
                }
            }
        }
        let scale_ratio = median(
            scale_hits
                .iter()
                .zip(&scale_base)
                .map(|(a, b)| a / b)
                .collect(),
        );
        drop(s);
        rows.push(format!(
            "| RSS with {} profiles holding tokens (MiB) | {:.1} | | | ≤ 64 MiB |",
            o.profiles,
            mib(scale_rss as f64)
        ));
        rows.push(format!(
            "| cache-hit throughput with {} profiles, h2load | {:.0} | {:.0} | {:.3} | flat |",
            o.profiles,
            median(scale_hits.clone()),
            median(scale_base.clone()),
            scale_ratio
        ));
        rows.push(format!(
            "| {} profiles: start to every token cached (s) | {:.2} | | | |",
            o.profiles,
            warm_all.as_secs_f64()
        ));
    }

    if o.wants(Part::Connections) {
        let state = dir.join("connections-state");
        // A fresh state directory: the figure is for connections made in this run.
        let _ = std::fs::remove_dir_all(&state);
        let config = write(
            &dir,
            "connections.yaml",
            &crate::connections::config(server_settings(), &state, &url),
        )?;
        let mut server = serve(&config, "tokenvend-connections.log")?;
        rows.extend(crate::connections::measure(&mut server, o.connections).await?);
    }

    println!();
    println!("| figure | tokenvend | baseline | ratio | goal |");
    println!("|---|---:|---:|---:|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

fn check(name: &str, out: &Outcome) -> Result<(), String> {
    if out.errors > 0 {
        return Err(format!("{name}: {} calls failed", out.errors));
    }
    Ok(())
}

async fn wait_token(target: &Target) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut client = load::connect(target, 1).await?.remove(0);
            load::once(&mut client, target).await
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Moves this process (and so the threads and h2load runs it starts later) off the last
/// CPU, and returns that CPU for the servers.
fn pin_harness() -> Result<usize, String> {
    let n = cpus();
    if n < 2 {
        return Err("--pin needs at least two CPUs".into());
    }
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--pid", "--cpu-list"])
        .arg(format!("0-{}", n - 2))
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?;
    if !status.success() {
        return Err(format!("taskset failed: {status}"));
    }
    Ok(n - 1)
}
