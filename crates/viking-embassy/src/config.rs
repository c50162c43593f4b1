//! Embassy's tunables: the [`Config`] an [`Embassy`](crate::Embassy) runs
//! with, and the [`CopyMode`] that decides how a connection's bytes are moved
//! (with [`ADAPTIVE_SWITCH`], the point where the adaptive mode changes
//! method). Plain data, no I/O.

use std::net::IpAddr;
use std::time::Duration;

/// How bytes are moved between the client and the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Zero-copy through a kernel pipe with `splice(2)`: the least CPU per
    /// byte.
    Splice,
    /// Read into a user-space buffer and write it out: the lowest latency
    /// for small messages.
    Buffered,
    /// Each direction starts buffered and switches to splice once it has
    /// carried [`ADAPTIVE_SWITCH`] bytes (the default): small exchanges get
    /// the buffered path's latency, bulk transfers splice's economy, and an
    /// idle or chatty connection holds no pipes.
    Adaptive,
}

/// Bytes a direction carries before [`CopyMode::Adaptive`] switches it to
/// splice.
pub const ADAPTIVE_SWITCH: u64 = 1 << 20;

/// Connections one ambassador port serves at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How long a connection may move no byte either way before it is closed,
/// by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Tunables of an [`Embassy`](crate::Embassy).
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The address every ambassador port listens on (e.g. the Docker bridge
    /// gateway, 172.17.0.1).
    pub bind: IpAddr,
    /// How long one connect to an endpoint may take before the next one is
    /// tried.
    pub connect_timeout: Duration,
    /// How bytes are copied.
    pub copy: CopyMode,
    /// Buffer (or pipe) size per direction of a connection, in bytes.
    pub buffer_size: usize,
    /// Listen backlog of each ambassador port (capped by the kernel's
    /// `net.core.somaxconn`).
    pub backlog: u32,
    /// Connections one ambassador port serves at once. A connection
    /// accepted beyond it is closed at once (and counted as refused).
    pub max_connections: usize,
    /// A connection where neither direction moved a byte for this long is
    /// closed.
    pub idle_timeout: Duration,
}

impl Config {
    /// The defaults: 1 s connect timeout, [`CopyMode::Adaptive`] (buffered,
    /// then splice after [`ADAPTIVE_SWITCH`] bytes) with 256 KiB buffers and
    /// pipes per direction (a buffer is lent only while bytes are in transit,
    /// a pipe made at a direction's first data), backlog 4096,
    /// [`DEFAULT_MAX_CONNECTIONS`] per port, [`DEFAULT_IDLE_TIMEOUT`].
    pub fn new(bind: IpAddr) -> Self {
        Config {
            bind,
            connect_timeout: Duration::from_secs(1),
            copy: CopyMode::Adaptive,
            buffer_size: 256 * 1024,
            backlog: 4096,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}
