//! `tokenvend get`: prints a token from a running server, for scripts and debugging.

use std::path::PathBuf;

#[derive(clap::Args)]
pub(super) struct Args {
    /// The profile.
    profile: String,
    /// The server: `http://host:port`, `https://host:port`, or `host:port` (plaintext,
    /// or TLS when --ca or --cert is given).
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
}

/// Why no token was printed.
#[derive(Debug, thiserror::Error)]
enum GetError {
    #[error("cannot read {path}: {kind}")]
    Read {
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    #[error("{0}")]
    Client(#[from] tokenvend_client::Error),
}

pub(super) async fn run(args: Args) -> Result<(), ()> {
    get(args).await.map_err(|e| eprintln!("tokenvend get: {e}"))
}

async fn get(args: Args) -> Result<(), GetError> {
    let mut builder = tokenvend_client::TokenClient::builder(args.server);
    if let Some(file) = args.token_file {
        builder = builder.service_account_token_file(file);
    }
    if args.ca.is_some() || args.cert.is_some() {
        builder = builder.tls(client_tls(args.ca, args.cert.zip(args.key))?);
    }
    // Connects with the call, so that the error of the call names what went wrong
    // (refused, no such host, TLS) rather than a bare "transport error".
    let client = builder.build()?;
    let token = client.get_token(&args.profile).await?;
    println!("{}", token.access_token);
    Ok(())
}

/// A CA to trust and, for mutual TLS, an identity.
fn client_tls(
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
) -> Result<tonic::transport::ClientTlsConfig, GetError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| GetError::Read {
            path: path.clone(),
            kind: e.kind(),
        })
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
