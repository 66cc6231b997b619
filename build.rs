//! Generates the tokenvend API from `proto/` with a pure-Rust protobuf compiler (protox),
//! so that building needs no `protoc` on the machine.

use std::{env, error::Error, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    let fds = protox::compile(["tokenvend/v1/tokenvend.proto"], ["proto"])?;
    std::fs::write(
        out_dir.join("tokenvend_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    // Messages and the client, as every caller sees them.
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds.clone())?;

    // The server stubs, generated separately so that `Token` replies can go out as bytes
    // encoded once per token rather than once per call (see `src/wire.rs`).
    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".tokenvend.v1", "crate::pb")
        .extern_path(".tokenvend.v1.Token", "crate::wire::EncodedToken")
        .out_dir(&server_dir)
        .compile_fds(fds)?;

    if env::var_os("CARGO_FEATURE_ENVOY").is_some() {
        envoy(&out_dir)?;
    }
    Ok(())
}

/// Envoy's external authorization API (`envoy.service.auth.v3`) and what it imports, from
/// the vendored files under `proto/` (see `proto/README.md`): messages, client and server.
fn envoy(out_dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let fds = protox::compile(["envoy/service/auth/v3/external_auth.proto"], ["proto"])?;
    std::fs::write(out_dir.join("envoy_descriptor.bin"), fds.encode_to_vec())?;
    let envoy_dir = out_dir.join("envoy");
    std::fs::create_dir_all(&envoy_dir)?;
    tonic_prost_build::configure()
        .out_dir(&envoy_dir)
        // One file that nests the packages as modules, so that their references to each
        // other (`super::super::...`) resolve.
        .include_file("mod.rs")
        .compile_fds(fds)?;
    Ok(())
}
