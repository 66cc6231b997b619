//! `tokenvend serve`: logging, the configuration (a file, or the `--dev` demo with its
//! issuer), the listeners, and the server until SIGTERM or Ctrl-C.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio::net::TcpListener;

use crate::{
    Listeners,
    config::Config,
    dev::DevIssuer,
    logging::{self, LogFormat},
};

#[derive(clap::Args)]
pub(super) struct Args {
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
}

/// Why the server did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("--config or TOKENVEND_CONFIG is required")]
    NoConfig,
    #[error("cannot start the dev issuer: {0}")]
    DevIssuer(std::io::Error),
    #[error("{path}: {errors}")]
    Config {
        path: String,
        errors: crate::config::ConfigErrors,
    },
    #[error("cannot listen for {what} on {addr}: {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
}

pub(super) async fn run(args: Args) -> Result<(), ()> {
    let telemetry = logging::init(args.log_format).map_err(|e| eprintln!("tokenvend: {e}"))?;
    let result = serve(args).await.map_err(|e| {
        for line in e.to_string().lines() {
            tracing::error!("{line}");
        }
    });
    // The last spans, such as those of the shutdown's refreshes.
    telemetry.shutdown().await;
    result
}

async fn serve(args: Args) -> Result<(), ServeError> {
    // Kept alive for as long as the server runs.
    let mut issuer = None;
    let config = if args.dev {
        let dev = DevIssuer::start(Duration::from_secs(300))
            .await
            .map_err(ServeError::DevIssuer)?;
        let config = dev.demo_config();
        issuer = Some(dev);
        config
    } else {
        let path = args.config.ok_or(ServeError::NoConfig)?;
        Config::load(&path).map_err(|errors| ServeError::Config {
            path: path.display().to_string(),
            errors,
        })?
    };
    // The flags override the file for binding only: a reload compares the file's
    // addresses with the file's, and so warns only when the file itself changes them.
    let grpc = bind(args.listen.unwrap_or(config.server.listen), "gRPC").await?;
    let admin = bind(
        args.admin_listen.unwrap_or(config.server.admin_listen),
        "admin",
    )
    .await?;
    // `serve` says it is listening once the configuration is built: one it refuses
    // never appears to have started.
    let grpc_addr = grpc
        .local_addr()
        .map_err(crate::server::ServerError::from)?;
    if let Some(issuer) = &issuer {
        tracing::info!(issuer = %issuer.url(), "dev mode: demo issuer running");
        eprintln!(
            "\n  try: grpcurl -plaintext -d '{{\"profile\":\"demo\"}}' {grpc_addr} tokenvend.v1.TokenService/GetToken\n"
        );
    }
    let forward_auth = match &config.server.forward_auth {
        Some(forward) => Some(bind(forward.listen, "forward-auth").await?),
        None => None,
    };
    let listeners = Listeners {
        grpc,
        admin: Some(admin),
        forward_auth,
    };
    crate::serve(listeners, config, shutdown_signal()).await?;
    Ok(())
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServeError::Bind { what, addr, error })
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
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
