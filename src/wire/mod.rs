//! The wire: the generated `dujiang.v1` gRPC types (from `proto/dujiang/v1/*.proto`,
//! compiled by `build.rs`) and the encoded file descriptor set that server reflection
//! serves. It stands apart from `serve` so the load generator and the daemon's front ends
//! depend on the wire format, not on the daemon.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("dujiang.v1");

/// Encoded `FileDescriptorSet` of every dujiang proto file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dujiang_descriptor");
