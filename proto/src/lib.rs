//! The `sluice.v1` API shared by the daemon and its clients.
//!
//! Generated from `proto/sluice/v1/*.proto`. Byte fields are [`bytes::Bytes`]
//! so that payload chunks are sliced, never copied, on their way into a message.

#![allow(missing_debug_implementations)]

pub mod fdpass;

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("sluice.v1");

    /// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sluice_v1_descriptor");
}

/// Default chunk size of streamed payloads: 1 MiB keeps each gRPC message
/// well under tonic's 4 MiB default decode limit while amortising framing.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;

/// Largest message either side accepts: a chunk plus its metadata.
pub const MAX_MESSAGE_SIZE: usize = 8 << 20;
