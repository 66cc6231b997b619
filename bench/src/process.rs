//! The servers under test, as child processes: start, wait for SERVING, read RSS, stop.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How servers are started.
pub(crate) struct Launch {
    /// Run servers on this CPU only (`taskset`); they size their runtimes for one.
    pub(crate) cpu: Option<usize>,
    /// Where an instrumented build writes its profile (`LLVM_PROFILE_FILE`), one file per
    /// process named for its role: the training run of a PGO build.
    pub(crate) profiles: Option<PathBuf>,
}

/// A server process. Dropping it stops it.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    started: Instant,
}

/// A free loopback port (bound, read, released).
pub(crate) fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

impl Server {
    /// Starts `program args…` with `--listen 127.0.0.1:<free port>` appended; its stderr
    /// (tokenvend's log) goes to `log`; `role` names its profile files (see [`Launch`]).
    pub(crate) fn start(
        launch: &Launch,
        role: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<Self, String> {
        let port = free_port()?;
        let log = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let started = Instant::now();
        let mut command = match launch.cpu {
            Some(cpu) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["--cpu-list", &cpu.to_string()]).arg(program);
                taskset
            }
            None => Command::new(program),
        };
        if let Some(dir) = &launch.profiles {
            command.env("LLVM_PROFILE_FILE", dir.join(format!("{role}-%p.profraw")));
        }
        let child = command
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        Ok(Self {
            child,
            port,
            started,
        })
    }

    /// Waits until gRPC health says SERVING; returns the time since the process started.
    pub(crate) async fn serving(&mut self) -> Result<Duration, String> {
        let deadline = self.started + Duration::from_secs(60);
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
            .map_err(|e| e.to_string())?;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("the server exited ({status}); see its log"));
            }
            if let Ok(channel) = endpoint.connect().await {
                let mut health = HealthClient::new(channel);
                if let Ok(reply) = health.check(HealthCheckRequest::default()).await
                    && reply.get_ref().status() == ServingStatus::Serving
                {
                    return Ok(self.started.elapsed());
                }
            }
            if Instant::now() > deadline {
                return Err("the server did not become SERVING within 60 s".into());
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    /// Resident set size now, in KiB (`VmRSS` in /proc/<pid>/status).
    pub(crate) fn rss_kib(&self) -> Result<u64, String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(|e| e.to_string())?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmRSS in /proc/<pid>/status".into())
    }
}

impl Drop for Server {
    /// Stops the server with SIGTERM, as Kubernetes would, so that callgrind and an
    /// instrumented (PGO) build write their output on the way out; kills it if it has not
    /// exited within 30 s.
    fn drop(&mut self) {
        let terminated = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if terminated {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
