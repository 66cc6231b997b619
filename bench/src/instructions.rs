//! Instructions per cache hit, counted by callgrind: unlike calls per second, a count that
//! does not depend on what else the machine is doing, so two runs agree to within a few
//! hundred instructions. Each server runs under `valgrind --tool=callgrind` twice, for a
//! short and a long h2load run of cache hits; the difference between the two totals,
//! divided by the difference in calls, is the cost of one hit, with start-up, warm-up and
//! shutdown cancelled out.

use std::path::Path;

use crate::{
    h2load::{self, Length},
    process::{Launch, Server},
};

const SHORT: u64 = 20_000;
const LONG: u64 = 60_000;

/// A server to count: how to start it, and a call that must succeed before counting
/// (tokenvend's first token).
pub(crate) struct Counted<'a> {
    pub(crate) role: &'a str,
    pub(crate) program: &'a Path,
    pub(crate) args: &'a [&'a str],
}

/// Instructions per cache hit of `server`, the whole process counted (every thread:
/// HTTP/2, the service, the log writer).
pub(crate) async fn per_hit<F, R>(
    launch: &Launch,
    server: &Counted<'_>,
    dir: &Path,
    body: &Path,
    ready: F,
) -> Result<f64, String>
where
    F: Fn(u16) -> R,
    R: Future<Output = Result<(), String>>,
{
    let mut totals = Vec::with_capacity(2);
    for calls in [SHORT, LONG] {
        let out = dir.join(format!("callgrind.{}.{calls}.out", server.role));
        let mut args = vec![
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
            server.program.display().to_string(),
        ];
        args.extend(server.args.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = dir.join(format!("callgrind.{}.log", server.role));
        let mut process = Server::start(launch, server.role, Path::new("valgrind"), &args, &log)?;
        process.serving().await?;
        ready(process.port).await?;
        let run = h2load::run(process.port, false, None, body, Length::Calls(calls))?;
        if run.failed > 0 {
            return Err(format!(
                "{}: h2load saw {} failed calls",
                server.role, run.failed
            ));
        }
        // Stopping it makes callgrind write its counts.
        drop(process);
        totals.push(total(&out)?);
    }
    Ok((totals[1] - totals[0]) as f64 / (LONG - SHORT) as f64)
}

/// The `totals:` line of a callgrind output file.
fn total(out: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(out)
        .map_err(|e| format!("{}: {e} (did the server exit cleanly?)", out.display()))?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("{}: no totals line", out.display()))
}

/// Whether valgrind can be run.
pub(crate) fn available() -> bool {
    std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
