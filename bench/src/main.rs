//! `tokenvend-bench`: measures tokenvend against a bare tonic server on this machine and
//! prints every figure as a ratio to the baseline measured in the same run (see
//! BENCHMARKS.md). `scripts/bench` builds everything and runs `tokenvend-bench run`.

mod baseline;
mod connections;
mod h2load;
mod idp;
mod instructions;
mod keys;
mod load;
mod process;
mod run;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tokenvend-bench",
    about = "Benchmarks tokenvend against a bare tonic server"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every measurement and print the table.
    Run(run::Options),
    /// The baseline server (started by `run`).
    Baseline {
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
        /// A file holding the encoded `Token` to answer with.
        #[arg(long)]
        reply: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Pinning comes before the runtime, which then sizes itself for the CPUs left: two
    // worker threads time-sliced on one CPU would add milliseconds to the latency tail.
    let pinned = match &cli.command {
        Cmd::Run(options) => options.pin(),
        Cmd::Baseline { .. } => Ok(None),
    };
    let result = pinned.and_then(|server_cpu| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            match cli.command {
                Cmd::Run(options) => run::run(options, server_cpu).await,
                Cmd::Baseline { listen, reply } => baseline::serve(listen, &reply).await,
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokenvend-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
