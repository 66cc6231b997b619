//! The `tokenvend` command: parses the command line and hands it to the library
//! ([`tokenvend_server::cli`]), so that tests run exactly what production runs.

use std::process::ExitCode;

use clap::Parser as _;
use tokenvend_server::cli::{self, Cli};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    cli::run(Cli::parse()).await
}
