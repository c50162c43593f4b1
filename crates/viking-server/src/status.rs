//! How a [`ServerError`] crosses the wire: its HTTP status and the JSON
//! body every error answer carries. The only mapping from causes to status
//! codes; the API's responses and the attached stream's error frame both use
//! it.

use axum::http::StatusCode;
use viking_client::api::{ErrorBody, ErrorReason};
use viking_docker::RuntimeError;

use crate::error::ServerError;
use crate::volume::VolumeProblem;

/// The HTTP status of an error.
pub fn of(e: &ServerError) -> StatusCode {
    match e {
        ServerError::Invalid(_) => StatusCode::BAD_REQUEST,
        ServerError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        ServerError::NotFound(_) => StatusCode::NOT_FOUND,
        ServerError::Conflict(_) | ServerError::HostPortInUse { .. } => StatusCode::CONFLICT,
        // History the store no longer holds (`/v1/events?since=`).
        ServerError::Store(viking_store::StoreError::Compacted { .. }) => StatusCode::GONE,
        ServerError::Unavailable(_) | ServerError::NotLeader(_) | ServerError::Store(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ServerError::Exhausted(_) => StatusCode::INSUFFICIENT_STORAGE,
        ServerError::PeerUnreachable { .. } | ServerError::Upstream(_) => StatusCode::BAD_GATEWAY,
        ServerError::Peer { status, .. } => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        ServerError::RolledBack { source, .. } => of(source),
        ServerError::Runtime(RuntimeError::NotFound(_)) => StatusCode::NOT_FOUND,
        ServerError::Runtime(RuntimeError::Conflict(_)) => StatusCode::CONFLICT,
        ServerError::Runtime(_) => StatusCode::BAD_GATEWAY,
        ServerError::Volume { problem, .. } => match problem {
            VolumeProblem::Symlink | VolumeProblem::NotADirectory => StatusCode::CONFLICT,
            VolumeProblem::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        ServerError::Record(_) | ServerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The message a user reads.
fn message(e: &ServerError) -> String {
    match e {
        ServerError::Runtime(RuntimeError::NotFound(m)) => m.clone(),
        other => other.to_string(),
    }
}

/// The cause a caller acts on, where the status does not say it.
fn reason(e: &ServerError) -> Option<ErrorReason> {
    match e {
        ServerError::HostPortInUse { .. } => Some(ErrorReason::HostPortInUse),
        ServerError::NotLeader(_) => Some(ErrorReason::NotLeader),
        ServerError::Peer { reason, .. } => *reason,
        ServerError::RolledBack { source, .. } => reason(source),
        _ => None,
    }
}

/// The JSON body of an error answer.
pub fn body(e: &ServerError) -> ErrorBody {
    ErrorBody {
        error: message(e),
        status: of(e).as_u16(),
        reason: reason(e),
    }
}
