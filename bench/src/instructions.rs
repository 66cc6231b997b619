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

/// A server to count: the program, its arguments (without `--listen`), and the role that
/// names its callgrind files.
pub(crate) struct Counted<'a> {
    pub(crate) role: &'a str,
    pub(crate) program: &'a Path,
    pub(crate) args: &'a [&'a str],
}

/// Instructions per cache hit of `server`, the whole process counted (every thread:
/// HTTP/2, the service, the log writer). `ready` must succeed before counting starts
/// (tokenvend's first token is in its cache).
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

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_totals_line_of_a_callgrind_file() {
        let dir = std::env::temp_dir().join(format!("tokenvend-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("callgrind.out");
        // The header's `summary:` comes first; `totals:` closes the file.
        std::fs::write(
            &out,
            "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 1149970312\n\nfn=(1) main\n5 12\n\ntotals: 1149970498\n",
        )
        .unwrap();
        assert_eq!(super::total(&out).unwrap(), 1_149_970_498);
        std::fs::write(&out, "events: Ir\nsummary: 1\n").unwrap();
        assert!(super::total(&out).unwrap_err().contains("no totals line"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
