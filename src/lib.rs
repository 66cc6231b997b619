//! The tokenvend gRPC API: generated messages and stubs for `tokenvend.v1`, and the encoded
//! descriptor set that the server offers through gRPC reflection.

pub mod wire;

/// The generated `tokenvend.v1` API.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tokenvend.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/server/tokenvend.v1.rs"));
}

/// The encoded `FileDescriptorSet` of the API and the files it imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tokenvend_descriptor.bin"));

/// Envoy's external authorization API, `envoy.service.auth.v3.Authorization`, with the
/// packages it uses, compiled from the files vendored under `proto/`.
#[cfg(feature = "envoy")]
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod envoy_pb {
    include!(concat!(env!("OUT_DIR"), "/envoy/mod.rs"));
}

/// The encoded `FileDescriptorSet` of Envoy's external authorization API, for reflection.
#[cfg(feature = "envoy")]
pub const ENVOY_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));
