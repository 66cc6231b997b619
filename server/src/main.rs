//! The `tokenvend` command: `serve`, `get`, `check`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tokenvend_server::{
    Config, Listeners,
    config::ServerConfig,
    dev::DevIssuer,
    logging::{self, LogFormat},
};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "tokenvend",
    version,
    about = "Vends OAuth 2.0 access tokens over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// The configuration file.
        #[arg(long, env = "TOKENVEND_CONFIG", required_unless_present = "dev")]
        config: Option<PathBuf>,
        /// Run a self-contained demo: a local OAuth 2.0 issuer and a `demo` profile.
        #[arg(long, conflicts_with = "config")]
        dev: bool,
        /// The gRPC listen address, overriding `server.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// The admin HTTP listen address, overriding `server.admin_listen`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// How log lines are written.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Print a token for a profile, from a running server.
    Get {
        /// The profile.
        profile: String,
        /// The server; `https://` for TLS.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        /// A ServiceAccount (or other bearer) token file to identify this caller.
        #[arg(long, env = "TOKENVEND_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// CA certificate (PEM) to trust for the server's certificate.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Client certificate (PEM) for mutual TLS; needs --key.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Client private key (PEM) for mutual TLS.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Authorize a refresh-token profile once: open the printed URL, approve, and the
    /// refresh token is stored in the state directory.
    Authorize {
        /// The profile.
        profile: String,
        /// The configuration file.
        #[arg(long, env = "TOKENVEND_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    Check {
        /// The configuration file.
        #[arg(long, env = "TOKENVEND_CONFIG")]
        config: PathBuf,
    },
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve {
            config,
            dev,
            listen,
            admin_listen,
            log_format,
        } => {
            let telemetry = match logging::init(log_format) {
                Ok(telemetry) => telemetry,
                Err(e) => {
                    eprintln!("tokenvend: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = serve(config, dev, listen, admin_listen).await;
            let code = report(result.map_err(|e| tracing::error!("{e}")));
            // The last spans, such as those of the shutdown's refreshes.
            telemetry.shutdown().await;
            code
        }
        Command::Get {
            profile,
            server,
            token_file,
            ca,
            cert,
            key,
        } => {
            let result = async {
                let mut builder = tokenvend_client::TokenClient::builder(server);
                if let Some(file) = token_file {
                    builder = builder.service_account_token_file(file);
                }
                if ca.is_some() || cert.is_some() {
                    builder = builder.tls(client_tls(ca, cert.zip(key))?);
                }
                let client = builder.connect().await.map_err(|e| e.to_string())?;
                let token = client
                    .get_token(&profile)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("{}", token.access_token);
                Ok::<_, String>(())
            }
            .await;
            report(result.map_err(|e| eprintln!("tokenvend get: {e}")))
        }
        Command::Authorize { profile, config } => {
            let result = async {
                let config = Config::load(&config).map_err(|e| format!("{}: {e}", config.display()))?;
                tokenvend_server::authorize::run(
                    &config,
                    &profile,
                    |url| {
                        eprintln!("Open this URL in a browser and approve the access:\n\n  {url}\n");
                    },
                    async || {
                        eprintln!("Then paste the URL the browser was sent to, and press Enter:");
                        tokio::task::spawn_blocking(|| {
                            let mut line = String::new();
                            std::io::stdin().read_line(&mut line).map(|_| line)
                        })
                        .await
                        .map_err(std::io::Error::other)?
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
                eprintln!("Authorized: the refresh token of `{profile}` is stored; a running server uses it at its next attempt.");
                Ok::<_, String>(())
            }
            .await;
            report(result.map_err(|e| eprintln!("tokenvend authorize: {e}")))
        }
        Command::Check {
            config: config_path,
        } => match Config::load(&config_path) {
            Ok(config) => {
                println!(
                    "{}: valid; profiles: {}",
                    config_path.display(),
                    config_name(&config)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tokenvend check: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// TLS settings for `tokenvend get`: a CA to trust and, for mutual TLS, an identity.
fn client_tls(
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
) -> Result<tonic::transport::ClientTlsConfig, String> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))
    };
    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &ca {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    if let Some((cert, key)) = &identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read(cert)?,
            read(key)?,
        ));
    }
    Ok(tls)
}

fn config_name(config: &Config) -> String {
    config
        .profiles
        .iter()
        .map(|p| p.name.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(result: Result<(), ()>) -> ExitCode {
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn serve(
    config: Option<PathBuf>,
    dev: bool,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
) -> Result<(), String> {
    // Kept alive for as long as the server runs.
    let mut issuer = None;
    let config = if dev {
        let dev_issuer = DevIssuer::start(Duration::from_secs(300))
            .await
            .map_err(|e| format!("cannot start the dev issuer: {e}"))?;
        // The demo listens on loopback only: it has an open profile and no caller checks.
        let server = ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            // No load balancer to wait for: Ctrl-C stops the demo at once.
            shutdown_delay: Duration::ZERO,
            ..ServerConfig::default()
        };
        let config = dev_issuer.config(server);
        issuer = Some(dev_issuer);
        config
    } else {
        let path = config.ok_or("--config or TOKENVEND_CONFIG is required")?;
        Config::load(&path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    // The flags override the file for binding only: a reload compares the file's
    // addresses with the file's, and so warns only when the file itself changes them.
    let grpc = bind(listen.unwrap_or(config.server.listen), "gRPC").await?;
    let admin = bind(admin_listen.unwrap_or(config.server.admin_listen), "admin").await?;
    let grpc_addr = grpc.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        grpc = %grpc_addr,
        admin = %admin_addr,
        profiles = %config_name(&config),
        "tokenvend listening"
    );
    if let Some(issuer) = &issuer {
        tracing::info!(issuer = %issuer.url(), "dev mode: demo issuer running");
        eprintln!(
            "\n  try: grpcurl -plaintext -d '{{\"profile\":\"demo\"}}' {grpc_addr} tokenvend.v1.TokenService/GetToken\n"
        );
    }
    let listeners = Listeners {
        grpc,
        admin: Some(admin),
    };
    tokenvend_server::serve(listeners, config, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for {what} on {addr}: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the server");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
