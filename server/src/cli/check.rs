//! `tokenvend check`: builds a configuration exactly as `serve` would, without listening,
//! and prints every error (and warning) it finds.

use std::{net::SocketAddr, path::PathBuf};

use crate::{app::App, config::Config};

#[derive(clap::Args)]
pub(super) struct Args {
    /// The configuration file.
    #[arg(long, env = "TOKENVEND_CONFIG")]
    config: PathBuf,
    /// The gRPC listen address `serve --listen` would use, overriding `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The admin listen address `serve --admin-listen` would use, overriding
    /// `server.admin_listen`.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

pub(super) fn run(args: Args) -> Result<(), ()> {
    let path = args.config.display();
    let config = Config::load(&args.config).map_err(|errors| {
        for error in errors.iter() {
            eprintln!("tokenvend check: {path}: {error}");
        }
    })?;
    let listen = args.listen.unwrap_or(config.server.listen);
    let admin = args.admin_listen.unwrap_or(config.server.admin_listen);
    let forward_auth = config.server.forward_auth.as_ref().map(|f| f.listen);
    let app = App::build(config, listen, Some(admin), forward_auth).map_err(|errors| {
        for error in errors.iter() {
            eprintln!("tokenvend check: {path}: {error}");
        }
    })?;
    for warning in app.warnings() {
        eprintln!("tokenvend check: {path}: warning: {warning}");
    }
    println!(
        "{path}: valid; profiles: {}",
        super::profile_names(app.config())
    );
    Ok(())
}
