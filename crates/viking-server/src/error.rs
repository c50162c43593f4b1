//! The server's one error type: what went wrong, classified by cause.
//!
//! Every part of the server (jobs, attach, agent, reconciler, floki, push,
//! services) returns [`ServerError`]; none of them knows HTTP. How an error
//! crosses the wire (its status and body) is decided in one place,
//! [`crate::status`], used by the API and by the attached stream's error
//! frame.

use viking_client::api::ErrorReason;
use viking_client::ClientError;
use viking_core::records::RecordError;
use viking_docker::RuntimeError;
use viking_store::StoreError;

/// Why a request or a step of a background loop failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The request is wrong (a bad job, a bad body): nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// A credential other than the API token was wrong (a join secret).
    #[error("{0}")]
    Unauthorized(String),
    /// No such job (or other named thing).
    #[error("{0}")]
    NotFound(String),
    /// The name is taken, or the job is not in the state the request needs.
    #[error("{0}")]
    Conflict(String),
    /// No host can take the job now, or a retry budget ran out.
    #[error("{0}")]
    Unavailable(String),
    /// A placement was asked of a server that does not lead the cluster.
    #[error("{0}")]
    NotLeader(String),
    /// A finite resource of the cluster is used up (the ambassador ports).
    #[error("{0}")]
    Exhausted(String),
    /// The chosen host's server could not be reached at all: the work may
    /// go to another host.
    #[error("host {host}: {source}")]
    PeerUnreachable {
        host: String,
        #[source]
        source: ClientError,
    },
    /// Another server answered with an error, kept as it said it.
    #[error("{message}")]
    Peer {
        host: String,
        status: u16,
        message: String,
        reason: Option<ErrorReason>,
    },
    /// A host port the job publishes is taken on this host (by a process or
    /// a container viking does not know): another host may take the job.
    #[error("host {host}: port {port}/{proto} is already in use")]
    HostPortInUse {
        host: String,
        port: u16,
        proto: &'static str,
    },
    /// A step on a host failed (a container that would not start, a new
    /// version that exited, a peer that said something unexpected).
    #[error("{0}")]
    Upstream(String),
    /// A push step failed and the job was put back on its previous image.
    #[error("{source}; rolled back to its previous image {previous_image}")]
    RolledBack {
        source: Box<ServerError>,
        previous_image: String,
    },
    /// A volume's host directory cannot be used (or removed) safely: a
    /// symlink or a file on its way below the volume root, or the
    /// filesystem refused.
    #[error("volume {volume:?} of job {job:?}: {}: {problem}", path.display())]
    Volume {
        job: String,
        volume: String,
        path: std::path::PathBuf,
        problem: crate::volume::VolumeProblem,
    },
    #[error("cluster store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{}", .0.0)]
    Record(#[from] RecordError),
    /// A bug or an impossible state: the message says which.
    #[error("{0}")]
    Internal(String),
}

impl ServerError {
    /// An error from a peer: unreachable, its own answer, or a broken
    /// exchange.
    pub fn from_peer(host: &str, e: ClientError) -> Self {
        match e {
            ClientError::Api {
                status,
                message,
                reason,
            } => ServerError::Peer {
                host: host.to_string(),
                status,
                message,
                reason,
            },
            // A peer that accepts and never answers (stopped, cut off) is
            // as good as unreachable.
            e @ (ClientError::Connect { .. } | ClientError::Timeout { .. }) => {
                ServerError::PeerUnreachable {
                    host: host.to_string(),
                    source: e,
                }
            }
            other => ServerError::Upstream(format!("host {host}: {other}")),
        }
    }

    /// Whether the work may be retried on another host.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ServerError::PeerUnreachable { .. })
    }

    /// Whether the job may go to another host: this one cannot be reached,
    /// or a host port it publishes is taken here.
    pub fn places_again(&self) -> bool {
        matches!(
            self,
            ServerError::PeerUnreachable { .. }
                | ServerError::HostPortInUse { .. }
                | ServerError::Peer {
                    reason: Some(ErrorReason::HostPortInUse),
                    ..
                }
        )
    }
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;
