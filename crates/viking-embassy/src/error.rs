//! The crate's error type: every failure embassy reports, with its context.

use std::io;
use std::net::SocketAddr;

/// A failure reported by embassy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ambassador port could not be opened (in use, no permission, bad address).
    #[error("cannot listen on ambassador port {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The routing table names a port embassy cannot serve.
    #[error("invalid route on ambassador port {port}: {reason}")]
    InvalidRoute { port: u16, reason: &'static str },
    /// `apply` was called after `shutdown`.
    #[error("embassy is shut down")]
    ShutDown,
}

/// `Result` with embassy's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
