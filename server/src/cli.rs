//! The `tokenvend` command line: one module per subcommand, each turning its arguments
//! into calls of the library, so that the binary itself only parses and dispatches.

mod authorize;
mod check;
mod get;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The command line.
#[derive(Parser)]
#[command(
    name = "tokenvend",
    version,
    about = "Vends OAuth 2.0 access tokens over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(serve::Args),
    /// Print a token for a profile, from a running server.
    Get(get::Args),
    /// Authorize a refresh-token profile once: open the printed URL, approve, and the
    /// refresh token is stored in the state directory.
    Authorize(authorize::Args),
    /// Check a configuration as `serve` would (every secret, key and file it names), and
    /// exit.
    Check(check::Args),
}

/// Runs the command.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Get(args) => get::run(args).await,
        Command::Authorize(args) => authorize::run(args).await,
        Command::Check(args) => check::run(args),
    };
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The profile names of a configuration, for messages.
fn profile_names(config: &crate::Config) -> String {
    config
        .profiles
        .iter()
        .map(|p| p.name.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
