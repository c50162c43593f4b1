//! embassy: the ambassador on every node.
//!
//! Every viking node runs one embassy. A daemonized job with ports is a
//! *service*; each (service, container port) pair gets a cluster-wide
//! *ambassador port*. Embassy listens on every ambassador port on one address
//! that the node's containers can reach (e.g. the Docker bridge gateway) and
//! forwards each TCP connection to a live endpoint of the service (host IP +
//! published host port, possibly on another node).
//!
//! Layout:
//! - [`table`]: the routing table, pure data (`RoutingTable`, `Route`);
//! - [`config`]: the tunables (`Config`, `CopyMode`), plain data;
//! - [`embassy`]: the running ambassador: listeners, `apply`, `shutdown`,
//!   stats (`Embassy`, `ApplyReport`);
//! - [`kernel`]: the kernel path (`--embassy-mode kernel`): the same
//!   table written as netfilter rules of viking's own chains, in one
//!   `iptables-restore` transaction (`Kernel`, `render`);
//! - `route`: the runtime state of one served route (endpoints watched by
//!   its connections, round-robin cursor, counters);
//! - `listener`: one accept loop per ambassador port, with its connection
//!   cap;
//! - `forward`: one task per connection: endpoint choice with failover, the
//!   byte pump (`splice(2)` or buffered copy) and the idle timeout;
//! - `buffer`: the pool the buffered pump borrows from while bytes are in
//!   transit (idle connections hold no buffer);
//! - `splice`: the only `unsafe` code, thin wrappers over `pipe2`, `splice`
//!   and `shutdown`;
//! - [`stats`]: per-route counters, and each port's count of open
//!   connections against its cap;
//! - `shutdown`: the graceful-shutdown signal threaded through every task;
//! - [`error`]: the crate's error type.
//!
//! Module graph (`use crate::…`; no cycles, checked by
//! `tests/module_graph.rs`):
//! - `embassy` -> `listener`, `route`, `config`, `buffer`, `table`, `stats`,
//!   `shutdown`, `error`;
//! - `listener` -> `forward`, `route`, `config`, `buffer`, `stats`,
//!   `shutdown`;
//! - `forward` -> `route`, `config`, `buffer`, `splice`, `stats`, `shutdown`;
//! - `route` -> `table`, `stats`;
//! - `kernel` -> `table`, `error`;
//! - `config`, `table`, `stats`, `error`, `shutdown`, `splice`, `buffer`:
//!   none.
//!
//! Invariant: embassy knows nothing about the store or Docker. The server
//! computes the routing table and calls [`Embassy::apply`] whenever it changes.
#![deny(unsafe_code)]

mod buffer;
pub mod config;
pub mod embassy;
pub mod error;
mod forward;
pub mod kernel;
mod listener;
mod route;
mod shutdown;
mod splice;
pub mod stats;
pub mod table;

pub use config::{
    Config, CopyMode, ADAPTIVE_SWITCH, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
pub use embassy::{ApplyReport, Embassy, PortFailure};
pub use error::{Error, Result};
pub use kernel::{parse_counters, Kernel, KernelSpec, PortCounts};
pub use stats::RouteStats;
pub use table::{Route, RoutingTable};
