//! smesh: bootstraps a cluster of machines with Docker and etcd.
//!
//! `viking mesh` turns machines that have only Docker and the `viking`
//! binary into one cluster: the first machine starts an etcd member and a
//! viking server (`init`), the next ones join through etcd's membership API
//! (a learner first, then promoted, through
//! [`viking_store::etcd::membership`]) until etcd has [`DEFAULT_MAX_MEMBERS`]
//! members, and further machines join as viking servers only (`join`).
//!
//! Layout:
//! - [`state`]: the data directory (`mesh.json`, the token, the etcd data,
//!   pid and log files) and the machine's settings;
//! - [`supervisor`]: `viking mesh up`, the process that runs this machine's
//!   etcd member and viking server and restarts them when they exit; and
//!   starting/stopping it in the background;
//! - [`options`]: the options of `init` and `join` and their checks;
//! - [`net`]: this machine's name and address, `ip:port`, `HOST[:PORT]`;
//! - [`launch`]: starting the supervisor (and undoing it), waiting until
//!   etcd and the server are ready; `start`, `stop`, `up`;
//! - [`init`], [`join`], [`leave`], [`status`], [`defrag`], [`token`]: the
//!   commands of those names.
//!
//! Everything in a mesh runs on mutual TLS with certificates from the
//! cluster's CA (made by `init`): etcd answers nothing else, servers call
//! each other with their certificates, the CLI trusts only that CA. A
//! joining machine checks the CA its join token names before it sends the
//! token's secret; the cluster (a server, `viking_server::admission`)
//! checks the secret, adds the etcd member and signs the machine's
//! certificate.
//!
//! Every command that changes something undoes its own work when a later
//! step fails, so a failed `init` or `join` leaves nothing half made.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod defrag;
pub mod init;
pub mod join;
pub mod launch;
pub mod leave;
pub mod net;
pub mod options;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod token;

pub use defrag::defrag;
pub use init::init;
pub use join::join;
pub use launch::{shutdown_signal, start, stop, up};
pub use leave::leave;
pub use options::{InitOptions, JoinOptions, DEFAULT_ETCD_IMAGE};
pub use status::status;
pub use token::token;

/// etcd's client port on every member.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port on every member.
pub const ETCD_PEER_PORT: u16 = 2380;
/// The viking server's API port.
pub const DEFAULT_API_PORT: u16 = 8791;
/// How many etcd members a mesh grows to before further machines join as
/// servers only.
pub const DEFAULT_MAX_MEMBERS: usize = 3;

/// What can go wrong; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("{0} is already part of a mesh ({1} exists): `viking mesh start` resumes it, `viking mesh leave` takes it out")]
    AlreadyInitialised(String, String),
    #[error(
        "{0} is not part of a mesh (no {1}): run `viking mesh init` or `viking mesh join` first"
    )]
    NotInitialised(String, String),
    #[error("the join token was refused by the cluster at {0}: check --token (`viking mesh token` on a machine of the mesh prints the current one)")]
    WrongToken(String),
    #[error("the server at {addr} shows a CA whose fingerprint is {shown}, not the {expected} the join token names: not the mesh the token is for (or someone in between); nothing was sent")]
    WrongCa {
        addr: String,
        shown: String,
        expected: String,
    },
    #[error("certificates: {0}")]
    Pki(#[from] viking_pki::PkiError),
    #[error("{0}")]
    Context(#[from] viking_client::context::ContextError),
    #[error("cannot reach {what} at {addr}: {reason}")]
    Unreachable {
        what: String,
        addr: String,
        reason: String,
    },
    #[error("a machine named {0:?} is already in the mesh: pick another --name, or run `viking mesh leave` on that machine first")]
    NameTaken(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("etcd: {0}")]
    Store(#[from] viking_store::StoreError),
    /// From this machine's Docker engine (the etcd container).
    #[error("{0}")]
    Docker(#[from] viking_docker::RuntimeError),
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

pub type Result<T, E = MeshError> = std::result::Result<T, E>;

impl From<viking_client::ClientError> for MeshError {
    fn from(e: viking_client::ClientError) -> Self {
        MeshError::Failed(e.to_string())
    }
}

/// Adds a description of what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| MeshError::Io {
            context: what(),
            source,
        })
    }
}
