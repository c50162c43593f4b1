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
    /// This host cannot have the kernel path (no iptables, no right to
    /// change the nat table, an address that is not IPv4).
    #[error("the kernel path is not available here: {0}")]
    KernelUnavailable(String),
    /// A netfilter tool could not be run.
    #[error("cannot run {command}: {source}")]
    Command {
        command: String,
        #[source]
        source: io::Error,
    },
    /// A netfilter tool ran and failed.
    #[error("{command} failed (exit {status:?}): {stderr}")]
    Netfilter {
        command: String,
        status: Option<i32>,
        stderr: String,
    },
}

/// `Result` with embassy's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
