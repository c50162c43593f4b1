//! viking-client: the HTTP API's wire format and a client for it.
//!
//! Layout:
//! - [`api`]: the JSON bodies of the versioned API (`/v1/...`);
//! - [`frame`]: the framing of attached streams (an interactive job's stdin,
//!   stdout, stderr and exit code over one upgraded connection; logs);
//! - [`routes`]: every path of the API, written once;
//! - [`client`]: [`Client`], used by the CLI and by servers forwarding work
//!   to each other: one typed method per route;
//! - [`body`]: streamed answers read as bytes or as newline-delimited JSON;
//! - [`context`]: a CLI context (server, CA, token) in one file.
//!
//! Architecture invariant: the server and its clients share these types and
//! nothing else, so the wire format is defined in exactly one place.
#![forbid(unsafe_code)]

pub mod api;
pub mod body;
pub mod client;
pub mod context;
pub mod frame;
pub mod routes;
pub mod wire;

pub use client::{Client, ClientError};
