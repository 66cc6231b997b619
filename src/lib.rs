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
