//! `tokenvend authorize`: the one-time authorization-code flow that seeds a refresh-token
//! profile's chain, with a person at the terminal.

use std::path::PathBuf;

use crate::config::Config;

#[derive(clap::Args)]
pub(super) struct Args {
    /// The profile.
    profile: String,
    /// For a template profile: the subject (tenant, customer, user) whose connection this
    /// authorization makes.
    #[arg(long)]
    subject: Option<String>,
    /// The configuration file.
    #[arg(long, env = "TOKENVEND_CONFIG")]
    config: PathBuf,
}

pub(super) async fn run(args: Args) -> Result<(), ()> {
    let config = Config::load(&args.config).map_err(|errors| {
        for error in errors.iter() {
            eprintln!("tokenvend authorize: {}: {error}", args.config.display());
        }
    })?;
    crate::authorize::run_for(
        &config,
        &args.profile,
        args.subject.as_deref(),
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
    .map_err(|e| eprintln!("tokenvend authorize: {e}"))?;
    match &args.subject {
        None => eprintln!(
            "Authorized: the refresh token of `{}` is stored; a running server uses it at its next attempt.",
            args.profile
        ),
        Some(_) => eprintln!(
            "Authorized: the connection of `{}` for this subject is stored; a running server uses it at its next call.",
            args.profile
        ),
    }
    Ok(())
}
