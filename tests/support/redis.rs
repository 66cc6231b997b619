//! A real `redis-server` on loopback for the shared-state tests, started as a child
//! process on a free port (no system service), and killed when dropped; replicas of it,
//! and `redis-sentinel`s watching it, the same way.

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
    /// The port of the server this one replicates, if it is a replica.
    replica_of: Option<u16>,
    /// Its working directory, new at each start: a replica writes the primary's data
    /// there (`dump.rdb`), and a server loads whatever it finds there when it starts.
    dir: Option<tempfile::TempDir>,
}

/// Whether `program` (from the Debian package `package`) is installed; if not, says so,
/// or fails when `TOKENVEND_REQUIRE_REDIS` is set (`scripts/test` sets it, so CI never
/// skips).
pub fn installed(program: &str, package: &str) -> bool {
    let installed = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            std::env::var_os("TOKENVEND_REQUIRE_REDIS").is_none(),
            "TOKENVEND_REQUIRE_REDIS is set but {program} is not installed"
        );
        eprintln!("skipping: {program} is not installed (apt-get install {package})");
    }
    installed
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl RedisServer {
    /// Starts one, or returns `None` (and says so) when `redis-server` is not installed
    /// and `TOKENVEND_REQUIRE_REDIS` is unset; `scripts/test` sets it, so CI never skips.
    pub fn start() -> Option<Self> {
        if !installed("redis-server", "redis-server") {
            return None;
        }
        let mut server = Self {
            port: free_port(),
            child: None,
            replica_of: None,
            dir: None,
        };
        server.restart();
        Some(server)
    }

    /// Starts a replica of this server, and waits until it has caught up.
    pub fn replica(&self) -> Self {
        let mut replica = Self {
            port: free_port(),
            child: None,
            replica_of: None,
            dir: None,
        };
        replica.restart_as_replica_of(self.port);
        replica
    }

    /// Starts the server again on the same port, empty, as a replica of the server on
    /// `port`, and waits until it has caught up (as Sentinel makes of a failed primary
    /// that comes back).
    pub fn restart_as_replica_of(&mut self, port: u16) {
        self.replica_of = Some(port);
        self.restart();
        let started = Instant::now();
        while !self.info("replication").contains("master_link_status:up") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the replica did not catch up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process (SIGSTOP): it answers nothing, and reads nothing, until resumed.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// A section of `INFO`, or nothing if the server cannot be reached.
    pub fn info(&self, section: &str) -> String {
        match call(self.port, &["INFO", section]) {
            Some(Resp::Bulk(Some(text))) => text,
            _ => String::new(),
        }
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
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // A replica is sent the data at once, not after waiting 5 s for others.
            .args(["--repl-diskless-sync-delay", "0"]);
        if let Some(port) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &port.to_string()]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.dir = Some(dir);
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

/// A reply, as far as the tests need to read one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    fn parse(text: &str) -> Option<(Self, &str)> {
        let (line, rest) = text.split_once("\r\n")?;
        let (kind, value) = line.split_at_checked(1)?;
        match kind {
            "+" => Some((Self::Simple(value.to_owned()), rest)),
            "-" => Some((Self::Error(value.to_owned()), rest)),
            ":" => Some((Self::Integer(value.parse().ok()?), rest)),
            "$" => match value.parse::<i64>().ok()? {
                n if n < 0 => Some((Self::Bulk(None), rest)),
                n => {
                    let n = n as usize;
                    let body = rest.get(..n)?;
                    let rest = rest.get(n..)?.strip_prefix("\r\n")?;
                    Some((Self::Bulk(Some(body.to_owned())), rest))
                }
            },
            "*" => match value.parse::<i64>().ok()? {
                n if n < 0 => Some((Self::Array(None), rest)),
                n => {
                    let mut items = Vec::new();
                    let mut rest = rest;
                    for _ in 0..n {
                        let (item, after) = Self::parse(rest)?;
                        items.push(item);
                        rest = after;
                    }
                    Some((Self::Array(Some(items)), rest))
                }
            },
            _ => None,
        }
    }

    /// The items of an array reply (none for anything else).
    pub fn items(&self) -> &[Resp] {
        match self {
            Self::Array(Some(items)) => items,
            _ => &[],
        }
    }

    /// The text of a bulk or simple string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Bulk(Some(text)) | Self::Simple(text) => Some(text),
            _ => None,
        }
    }
}

/// Sends a command to a server or sentinel on loopback and reads its whole reply, or
/// `None` if it cannot be reached or does not answer within two seconds.
pub fn call(port: u16, args: &[&str]) -> Option<Resp> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
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
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some((resp, _)) = Resp::parse(&String::from_utf8_lossy(&reply)) {
            return Some(resp);
        }
    }
}

/// `redis-sentinel`s watching one master group on loopback, quick to fail it over:
/// a primary that does not answer for 500 ms is down.
pub struct Sentinels {
    pub ports: Vec<u16>,
    /// The master group's name.
    pub master: String,
    children: Vec<Child>,
    /// Each sentinel rewrites its configuration file as it learns.
    _dir: tempfile::TempDir,
}

impl Sentinels {
    /// Starts `n` sentinels (a quorum of a majority) watching `primary` as `master`, or
    /// returns `None` (and says so) when `redis-sentinel` is not installed and
    /// `TOKENVEND_REQUIRE_REDIS` is unset.
    pub fn start(master: &str, primary: &RedisServer, n: usize) -> Option<Self> {
        if !installed("redis-sentinel", "redis-sentinel") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..n {
            let port = free_port();
            let file = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &file,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {master} 127.0.0.1 {primary} {quorum}\n\
                     sentinel down-after-milliseconds {master} 500\n\
                     sentinel failover-timeout {master} 2000\n",
                    dir = dir.path().display(),
                    primary = primary.port,
                    quorum = n / 2 + 1,
                ),
            )
            .unwrap();
            let child = Command::new("redis-sentinel")
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel starts");
            ports.push(port);
            children.push(child);
        }
        let sentinels = Self {
            ports,
            master: master.to_owned(),
            children,
            _dir: dir,
        };
        let started = Instant::now();
        while !sentinels
            .ports
            .iter()
            .all(|&p| call(p, &["PING"]) == Some(Resp::Simple("PONG".into())))
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-sentinel did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(sentinels)
    }

    /// `["127.0.0.1:<port>", ...]`, for `server.store.redis.sentinel.nodes`.
    pub fn nodes(&self) -> String {
        let nodes: Vec<_> = self
            .ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        format!("[{}]", nodes.join(", "))
    }

    /// Whether every sentinel knows `replicas` replicas and every other sentinel: what a
    /// failover needs (they learn both from the primary, in a few seconds).
    pub fn ready(&self, replicas: usize) -> bool {
        self.ports.iter().all(|&p| {
            let known = |what: &str| {
                call(p, &["SENTINEL", what, &self.master]).map_or(0, |r| r.items().len())
            };
            known("REPLICAS") == replicas && known("SENTINELS") == self.ports.len() - 1
        })
    }

    /// The port of the primary a majority of the sentinels name.
    pub fn primary(&self) -> Option<u16> {
        let named: Vec<u16> = self
            .ports
            .iter()
            .filter_map(|&p| {
                let reply = call(p, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master])?;
                reply.items().get(1)?.text()?.parse().ok()
            })
            .collect();
        named
            .iter()
            .copied()
            .find(|port| named.iter().filter(|p| *p == port).count() > self.ports.len() / 2)
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
