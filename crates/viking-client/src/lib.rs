//! viking-client: the HTTP API's wire format and a client for it.
//!
//! Layout:
//! - [`api`]: the JSON bodies of the versioned API (`/v1/...`);
//! - [`frame`]: the framing of attached streams (an interactive job's stdin,
//!   stdout, stderr and exit code over one upgraded connection; logs);
//! - [`client`]: [`Client`], used by the CLI and by servers forwarding work
//!   to each other.
//!
//! Architecture invariant: the server and its clients share these types and
//! nothing else, so the wire format is defined in exactly one place.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod frame;

pub use client::{Client, ClientError};
