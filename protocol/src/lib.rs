//! The wire contract of fedcrm: the `fedcrm.v1` gRPC services (generated from
//! `proto/fedcrm/v1/fedcrm.proto` at build time with a vendored protoc), the parsed
//! domain types everyone else uses ([`wire`]; the plain types they share with the
//! audit log are in `fedcrm-analysis` and `fedcrm-pki`), tonic's TLS configurations
//! for the brand PKI ([`tls`]), TOML loading ([`config`]) and signed model artifacts
//! ([`model`]).
//!
//! prost types stay in here: `node` and `coordinator` convert at the edge with
//! `TryFrom`, so malformed messages are rejected before any logic sees them.

#![forbid(unsafe_code)]

pub mod config;
pub mod model;
pub mod psi;
pub mod tls;
pub mod wire;

/// Generated code. Only the service traits/clients and the two envelope messages
/// are meant to be used outside this crate.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("fedcrm.v1");
}

/// Human-readable software string sent in `Hello`.
pub const SOFTWARE: &str = concat!("fedcrm ", env!("CARGO_PKG_VERSION"));

/// Largest gRPC message either side accepts (tonic's default is 4 MiB; vectors are
/// chunked well below it).
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Elements per masked-vector chunk: 64 Ki words = 512 KiB of payload.
pub const DEFAULT_CHUNK_ELEMENTS: u32 = 65_536;

/// The most elements a chunk may carry: 8-byte words (`fixed64`) with 64 KiB to spare
/// for the rest of the message and its receipt stay under [`MAX_MESSAGE_BYTES`].
pub const MAX_CHUNK_ELEMENTS: u32 = ((MAX_MESSAGE_BYTES - 64 * 1024) / 8) as u32;
