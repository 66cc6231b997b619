//! A real `redis-server` on loopback for the shared-state tests, started as a child
//! process on a free port (no system service), and killed when dropped.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running redis-server.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or returns `None` (and says so) when `redis-server` is not installed
    /// and `TOKENVEND_REQUIRE_REDIS` is unset; `scripts/test` sets it, so CI never skips.
    pub fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("TOKENVEND_REQUIRE_REDIS").is_none(),
                "TOKENVEND_REQUIRE_REDIS is set but redis-server is not installed"
            );
            eprintln!("skipping: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self { port, child: None };
        server.restart();
        Some(server)
    }

    /// `redis://` URL of the server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data with it: nothing is persisted).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let started = Instant::now();
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a command and returns the raw first reply line (`$-1` for nil, else the
    /// bulk string's contents), or `None` if the server cannot be reached.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = Vec::new();
        let mut buf = [0; 4096];
        loop {
            let n = stream.read(&mut buf).ok()?;
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply);
            if n == 0 || complete(&text) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&reply).into_owned();
        let (first, rest) = text.split_once("\r\n")?;
        if first.starts_with('$') && first != "$-1" {
            Some(rest.trim_end_matches("\r\n").to_owned())
        } else {
            Some(first.to_owned())
        }
    }

    /// Every key, for inspecting what tokenvend stored.
    pub fn keys(&self) -> Vec<String> {
        // KEYS answers an array; decode just enough of it.
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis");
        stream
            .write_all(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text.split("\r\n")
            .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
            .map(str::to_owned)
            .collect()
    }
}

fn complete(text: &str) -> bool {
    let Some((first, rest)) = text.split_once("\r\n") else {
        return false;
    };
    match first.strip_prefix('$') {
        Some(len) => match len.parse::<i64>() {
            Ok(n) if n >= 0 => rest.len() >= n as usize + 2,
            _ => true,
        },
        None => true,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
