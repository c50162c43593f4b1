//! The JSON bodies of the HTTP API. Paths (all need `Authorization: Bearer
//! <token>`):
//!
//! | method | path                       | what                               |
//! |--------|----------------------------|------------------------------------|
//! | GET    | /v1/ping                   | liveness of this server            |
//! | POST   | /v1/jobs                   | run a job (body: job document)     |
//! | GET    | /v1/ps?all=true            | viking-ps                          |
//! | GET    | /v1/proc                   | viking-proc                        |
//! | GET    | /v1/hosts                  | floki                              |
//! | GET    | /v1/jobs/{name}            | inspect: proc, ps and history      |
//! | POST   | /v1/jobs/{name}/stop       | stop a job, take it out of proc    |
//! | DELETE | /v1/jobs/{name}?force=true | remove a job and its record        |
//! | GET    | /v1/jobs/{name}/logs       | logs (framed stream), `follow=true`|
//!
//! `POST /v1/jobs` runs a daemonized job and answers with [`RunResponse`];
//! with `dry_run=true` it only answers where the job would go
//! ([`DryRunResponse`]); with `progress=true` the answer is a stream of
//! [`ProgressLine`]s ending in the result. A non-daemonized job needs the
//! headers `Connection: Upgrade` and `Upgrade: viking-attach`: the server
//! answers `101` and the connection then carries [`crate::frame`]s.

use serde::{Deserialize, Serialize};
use viking_core::records::{History, HostRecord, ProcRecord, PsRecord};
use viking_core::Job;

/// The `Upgrade` protocol name of an attached stream.
pub const ATTACH_PROTOCOL: &str = "viking-attach";

/// Every error the API returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, and where possible what to do about it.
    pub error: String,
    /// The HTTP status, repeated for streamed answers.
    pub status: u16,
}

/// A daemonized job that now runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResponse {
    pub job: Job,
    /// The running container's record; `None` when the job waits for a
    /// host (a fixed job whose host is gone).
    pub ps: Option<PsRecord>,
    /// Why the job waits, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

pub use viking_core::scheduler::Rejection;

/// Where a job would run, and why the other hosts would not take it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DryRunResponse {
    pub job: Job,
    /// The chosen host, or none when no host can take the job.
    pub host: Option<String>,
    pub rejected: Vec<Rejection>,
}

/// One line of a `progress=true` run answer (newline-delimited JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressLine {
    Progress(String),
    Done(Box<RunResponse>),
    Error(ErrorBody),
}

/// A server of the fleet as `viking hosts` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub host: HostRecord,
    /// Whether its floki lease is alive.
    pub alive: bool,
    /// Whether it is the leader that reconciles the cluster.
    #[serde(default)]
    pub leader: bool,
}

/// Everything viking knows about one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InspectResponse {
    pub name: String,
    pub proc: Option<ProcRecord>,
    pub ps: Option<PsRecord>,
    pub history: History,
}

/// `GET /v1/ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    pub name: String,
    pub version: String,
    pub store: String,
}
