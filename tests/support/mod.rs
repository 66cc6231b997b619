//! Helpers shared by the end-to-end tests: a real HTTP identity provider on loopback, and
//! the real server on `127.0.0.1:0` with the generated client.

#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod idp;
pub mod logs;
pub mod metrics;
pub mod raw;
pub mod redis;
pub mod security;
pub mod webhook;

use std::{net::SocketAddr, time::Duration};

use tokenvend::pb::{GetTokenRequest, Token, token_service_client::TokenServiceClient};
use tokenvend_server::{Config, Listeners};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

pub use idp::{Behaviour, TestIdp};

/// A running tokenvend server.
pub struct Server {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The forward-auth port, when the configuration turns it on.
    pub forward_addr: Option<SocketAddr>,
    pub client: TokenServiceClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tokenvend_server::server::ServerError>>,
}

impl Server {
    /// Starts the server with a configuration given as YAML. Unless the YAML sets
    /// `shutdown_delay`, it is zero: tests stop their servers at once.
    pub async fn start(yaml: &str) -> Self {
        let mut config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}"));
        if !yaml.contains("shutdown_delay") {
            config.server.shutdown_delay = Duration::ZERO;
        }
        Self::start_with(config).await
    }

    /// Starts the server with a configuration file, which it watches for changes.
    pub async fn start_file(file: &ConfigFile) -> Self {
        let config = Config::load(&file.path()).unwrap_or_else(|e| panic!("test config: {e}"));
        Self::start_with(config).await
    }

    /// Starts the server with a configuration.
    pub async fn start_with(config: Config) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (forward_auth, forward_addr) = forward_listener(&config).await;
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(tokenvend_server::serve(
            Listeners {
                grpc,
                admin: Some(admin),
                forward_auth,
            },
            config,
            async move {
                let _ = signal.await;
            },
        ));
        let client = TokenServiceClient::new(Self::channel_to(addr).await);
        Self {
            addr,
            admin_addr,
            forward_addr,
            client,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Starts a server whose port may need TLS: the default client connects lazily.
    pub async fn start_secured(yaml: &str) -> Self {
        let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}"));
        Self::start_secured_with(config).await
    }

    /// Starts a server whose port may need TLS from a file, which it watches for changes.
    pub async fn start_secured_file(file: &ConfigFile) -> Self {
        let config = Config::load(&file.path()).unwrap_or_else(|e| panic!("test config: {e}"));
        Self::start_secured_with(config).await
    }

    async fn start_secured_with(config: Config) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let (forward_auth, forward_addr) = forward_listener(&config).await;
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(tokenvend_server::serve(
            Listeners {
                grpc,
                admin: None,
                forward_auth,
            },
            config,
            async move {
                let _ = signal.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        Self {
            addr,
            admin_addr: addr,
            forward_addr,
            client: TokenServiceClient::new(channel),
            shutdown: Some(shutdown),
            task,
        }
    }

    /// A new connection to the server.
    pub async fn channel(&self) -> Channel {
        Self::channel_to(self.addr).await
    }

    async fn channel_to(addr: SocketAddr) -> Channel {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A client on its own connection.
    pub async fn new_client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel().await)
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Shuts down and waits for `serve` to return.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }

    /// Ends the server abruptly, as a crash would: no drain, no cleanup beyond what the
    /// operating system does for a killed process (its locks are released).
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// The server's `/metrics`, parsed.
    pub async fn metrics(&self) -> metrics::Metrics {
        metrics::Metrics::scrape(self.admin_addr).await
    }

    /// GetToken reporting `token` as rejected by the resource API.
    pub async fn reject(&self, profile: &str, token: &str) -> Result<Token, tonic::Status> {
        self.client
            .clone()
            .get_token(GetTokenRequest {
                profile: profile.to_owned(),
                rejected_token: token.to_owned(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// GetToken with only a profile.
    pub async fn get(&self, profile: &str) -> Result<Token, tonic::Status> {
        get(&mut self.client.clone(), profile).await
    }
}

/// A listener on loopback for the forward-auth port, if the configuration turns it on.
async fn forward_listener(config: &Config) -> (Option<TcpListener>, Option<SocketAddr>) {
    if config.server.forward_auth.is_none() {
        return (None, None);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (Some(listener), Some(addr))
}

pub async fn get(
    client: &mut TokenServiceClient<Channel>,
    profile: &str,
) -> Result<Token, tonic::Status> {
    client
        .get_token(GetTokenRequest {
            profile: profile.to_owned(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A configuration file in a directory laid out as Kubernetes lays out a ConfigMap volume:
/// `config.yaml -> ..data/config.yaml`, `..data -> ..<version>`. An update writes a new
/// version directory and swaps the `..data` symlink in one rename, as the kubelet does, so
/// the file's own inode never changes.
pub struct ConfigFile {
    dir: tempfile::TempDir,
    version: usize,
}

impl ConfigFile {
    pub fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("..data/config.yaml", dir.path().join("config.yaml")).unwrap();
        let mut file = Self { dir, version: 0 };
        file.update(yaml);
        file
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Replaces the content atomically.
    pub fn update(&mut self, yaml: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let dir = self.dir.path();
        std::fs::create_dir(dir.join(&version)).unwrap();
        std::fs::write(dir.join(&version).join("config.yaml"), yaml).unwrap();
        std::os::unix::fs::symlink(&version, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    }
}

/// Log lines written on this thread while the guard lives (a test's single-threaded
/// runtime runs the server's tasks on it).
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's log lines until the guard is dropped.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        );
        (logs, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A profile pointed at a test IdP, with client secret post and the IdP's credentials.
pub fn profile(name: &str, idp: &TestIdp, extra: &str) -> String {
    format!(
        "  {name}:\n    token_url: {url}\n    client_id: \"{id}\"\n    client_secret: {{ value: \"{secret}\" }}\n{extra}",
        url = idp.token_url(),
        id = idp::CLIENT_ID,
        secret = idp::CLIENT_SECRET,
    )
}

/// A whole configuration with one profile.
pub fn config(name: &str, idp: &TestIdp, extra: &str) -> String {
    format!("profiles:\n{}", profile(name, idp, extra))
}

/// Seconds until a token's `expires_at`.
pub fn seconds_left(token: &Token) -> f64 {
    let expires = token.expires_at.expect("expires_at is set");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    expires.seconds as f64 + f64::from(expires.nanos) / 1e9 - now.as_secs_f64()
}
