//! Drives a server with h2load (nghttp2), the independent load generator: C, one thread,
//! no gRPC library in common with the servers. h2load does not read gRPC trailers, so a
//! gRPC error would count as a success: the Rust generator, which does, runs against the
//! same servers in the same round and fails the run on any error.

use std::{path::Path, process::Command};

/// What one h2load run measured.
pub(crate) struct Run {
    pub(crate) rate: f64,
    pub(crate) failed: u64,
}

/// The gRPC request body for `GetToken(profile)`: the 5-byte frame header and the message.
pub(crate) fn body(profile: &str) -> Vec<u8> {
    let message = prost::Message::encode_to_vec(&tokenvend::pb::GetTokenRequest {
        profile: profile.to_owned(),
        ..Default::default()
    });
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

/// How long an h2load run lasts.
#[derive(Clone, Copy)]
pub(crate) enum Length {
    /// This many seconds, after a 1 s warm-up.
    Seconds(u64),
    /// This many calls, from the first.
    Calls(u64),
}

pub(crate) fn run(
    port: u16,
    tls: bool,
    bearer: Option<&str>,
    body: &Path,
    length: Length,
) -> Result<Run, String> {
    let scheme = if tls { "https" } else { "http" };
    let mut command = Command::new("h2load");
    command.args([
        "--clients=4",
        "--max-concurrent-streams=32",
        "--threads=1",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        &format!("--data={}", body.display()),
    ]);
    match length {
        Length::Seconds(seconds) => {
            command.args(["--warm-up-time=1", &format!("--duration={seconds}")])
        }
        Length::Calls(calls) => command.arg(format!("--requests={calls}")),
    };
    if let Some(token) = bearer {
        command.arg(format!("--header=authorization: Bearer {token}"));
    }
    command.arg(format!(
        "{scheme}://127.0.0.1:{port}/tokenvend.v1.TokenService/GetToken"
    ));
    let output = command
        .output()
        .map_err(|e| format!("h2load: {e} (install nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("cannot read h2load's output:\n{text}"))
}

/// `GET path` over HTTP/1.1 (h2load `--h1`): `clients` kept-alive connections, one request
/// at a time on each, as a proxy's connection pool sends them (no pipelining). A status
/// other than 2xx counts as failed.
pub(crate) fn run_http1(
    port: u16,
    path: &str,
    clients: usize,
    length: Length,
) -> Result<Run, String> {
    let mut command = Command::new("h2load");
    command.args([
        "--h1",
        &format!("--clients={clients}"),
        "--max-concurrent-streams=1",
        "--threads=1",
    ]);
    match length {
        Length::Seconds(seconds) => {
            command.args(["--warm-up-time=1", &format!("--duration={seconds}")])
        }
        Length::Calls(calls) => command.arg(format!("--requests={calls}")),
    };
    command.arg(format!("http://127.0.0.1:{port}{path}"));
    let output = command
        .output()
        .map_err(|e| format!("h2load: {e} (install nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut run = parse(&text).ok_or_else(|| format!("cannot read h2load's output:\n{text}"))?;
    // status codes: 2xx, 3xx, 4xx, 5xx
    let not_2xx = text
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .map(|codes| {
            codes
                .split(", ")
                .skip(1)
                .filter_map(|c| c.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .ok_or_else(|| format!("h2load printed no status codes:\n{text}"))?;
    run.failed += not_2xx;
    Ok(run)
}

fn parse(text: &str) -> Option<Run> {
    let number = |s: &str| s.trim().parse::<f64>().ok();
    let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix));
    // finished in 5.00s, 41234.20 req/s, 100.23MB/s
    let rate = line("finished in")?
        .split(", ")
        .find_map(|p| p.strip_suffix(" req/s"))
        .and_then(number)?;
    // requests: N total, N started, N done, N succeeded, F failed, ...
    let requests = line("requests:")?;
    let field = |name: &str| {
        requests
            .split(", ")
            .find_map(|p| p.trim_start_matches("requests: ").strip_suffix(name))
            .and_then(number)
    };
    let failed = field(" failed")? as u64;
    Some(Run { rate, failed })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_h2load_output() {
        let text = "finished in 5.00s, 41234.20 req/s, 100.23MB/s\n\
            requests: 206171 total, 206171 started, 206171 done, 206171 succeeded, 0 failed, 0 errored, 0 timeout\n";
        let run = super::parse(text).unwrap();
        assert_eq!(run.rate, 41234.2);
        assert_eq!(run.failed, 0);
    }
}
