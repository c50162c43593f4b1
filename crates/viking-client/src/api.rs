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
//! | DELETE | /v1/jobs/{name}?force=true | remove a job and its record; with   |
//! |        |   `&volumes=true`          | its data directory and history too |
//! | GET    | /v1/jobs/{name}/logs       | logs (framed stream), `follow=true`|
//!
//! `POST /v1/jobs` runs a daemonized job and answers with [`RunResponse`];
//! with `dry_run=true` it only answers where the job would go
//! ([`DryRunResponse`]); with `progress=true` the answer is a stream of
//! [`ProgressLine`]s ending in the result. A non-daemonized job needs the
//! headers `Connection: Upgrade` and `Upgrade: viking-attach`: the server
//! answers `101` and the connection then carries [`crate::frame`]s.

use crate::wire::{Host, JobIntent, JobState, Placements};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
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
    /// A cause the caller acts on that the status alone does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorReason>,
}

/// Causes of an error that a caller acts on (beyond its status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorReason {
    /// A host port the job publishes is taken on the chosen host: another
    /// host may take the job.
    HostPortInUse,
    /// The server asked to place a job does not lead the cluster (any
    /// more): the asking server places the job itself.
    NotLeader,
}

/// A daemonized job that now runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResponse {
    pub job: Job,
    /// The running container's record; `None` when the job waits for a
    /// host (a fixed job whose host is gone).
    pub ps: Option<JobState>,
    /// Why the job waits, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// A job with replicas: each instance's record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<JobState>,
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
    pub host: Host,
    /// Whether its floki lease is alive.
    pub alive: bool,
    /// Whether it is the leader that reconciles the cluster.
    #[serde(default)]
    pub leader: bool,
    /// What the jobs placed on it reserve, as the leader last published
    /// it: bytes of memory, and thousandths of a CPU.
    #[serde(default)]
    pub reserved_memory: u64,
    #[serde(default)]
    pub reserved_millicpus: u64,
}

/// One service port: what `viking services` lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServicePort {
    pub service: String,
    pub container_port: u16,
    /// The cluster-wide port embassy serves it on, on every node.
    pub ambassador_port: u16,
    /// The host that runs it now.
    pub host: Option<String>,
    /// Live endpoints: `host address:published port`.
    pub endpoints: Vec<String>,
}

/// Everything viking knows about one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InspectResponse {
    pub name: String,
    pub proc: Option<JobIntent>,
    pub ps: Option<JobState>,
    pub history: Placements,
    /// The job's service ports, if it is a service.
    #[serde(default)]
    pub services: Vec<ServicePort>,
}

/// How often a server writes a blank line into a newline-delimited answer
/// (the progress of a start, a push) while it has nothing else to say, so
/// its client can tell a slow step from a stopped server.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest wait a request may ask for, in seconds (a stop's grace
/// period, a push's settle time): one day. Longer is refused, not clamped.
pub const MAX_WAIT_SECONDS: u64 = 86_400;

/// `GET /v1/health`: whether the server acts on its containers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub name: String,
    /// The cluster the server belongs to (absent before it joined one).
    pub cluster: Option<String>,
    /// Why the server holds (does not act on its containers), if it does.
    pub held: Option<String>,
}

/// `GET /v1/mesh/ca`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshCa {
    pub ca_pem: String,
}

/// `POST /v1/mesh/join`: a machine asks to join the mesh.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token's secret.
    pub secret: String,
    /// The machine's name (its server's, its etcd member's).
    pub name: String,
    /// The address the mesh reaches it at.
    pub ip: String,
    /// A certificate request for the key the machine keeps (PEM).
    pub csr_pem: String,
    /// How many etcd members the mesh grows to.
    pub max_members: usize,
    /// Whether it can run an etcd member (its etcd ports are free).
    pub can_be_member: bool,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("name", &self.name)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

/// What a joining machine becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinRole {
    /// An etcd member (added as a learner; the machine promotes it once
    /// it has caught up) and a viking server.
    Member,
    /// A viking server only.
    Server,
}

/// The answer to a join the cluster accepted.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub role: JoinRole,
    /// The machine's certificate, signed by the cluster's CA (PEM).
    pub cert_pem: String,
    pub ca_pem: String,
    /// The operator's token (the API's), for the machine's server and CLI.
    pub token: String,
    /// The store prefix (`--key`).
    pub key: String,
    /// The etcd client URLs of the started members.
    pub etcd_endpoints: Vec<String>,
    /// A member's `--initial-cluster` (empty for a server).
    #[serde(default)]
    pub initial_cluster: String,
    /// A member's id in etcd (hex), to promote it or take it out again.
    #[serde(default)]
    pub member_id: Option<String>,
    /// How many etcd members the mesh has with this one.
    pub members: usize,
}

impl std::fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinResponse")
            .field("role", &self.role)
            .field("key", &self.key)
            .field("etcd_endpoints", &self.etcd_endpoints)
            .field("member_id", &self.member_id)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/recover`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecoverRequest {
    /// Take over a store that carries another cluster's id.
    #[serde(default)]
    pub adopt: bool,
}

/// What a recovery did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecoverSummary {
    /// The cluster id the store carries now.
    pub cluster: String,
    /// The hosts whose containers were read.
    pub hosts: Vec<String>,
    /// Hosts alive in floki that could not be asked (their jobs were not
    /// recovered; run it again when they answer).
    pub unreachable: Vec<String>,
    /// Jobs written back to viking-proc and viking-ps (running containers).
    pub recovered: Vec<String>,
    /// Jobs whose container had exited: written to viking-ps only, as
    /// stopped (`viking ps -a`), not restarted.
    pub stopped: Vec<String>,
    /// Jobs that already had records, or containers without what they
    /// carry of their job, each with why.
    pub skipped: Vec<String>,
}

/// One of a host's containers, with what it carries of its job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostContainer {
    pub job: Job,
    /// Container port → ambassador port of the service.
    #[serde(default)]
    pub ambassador: std::collections::BTreeMap<u16, u16>,
    pub state: JobState,
}

/// `POST /v1/push`: new code was pushed; restart the daemonized, non-static
/// jobs whose image changed, one at a time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushRequest {
    /// Only jobs of these images (default: every image).
    #[serde(default)]
    pub images: Vec<String>,
    /// Restart every non-static job, changed or not.
    #[serde(default)]
    pub all: bool,
    /// How many jobs restart at once (default 1).
    #[serde(default)]
    pub parallel: usize,
    /// Pull each image first (where a registry serves it).
    #[serde(default)]
    pub pull: bool,
    /// How long each new container must stay up (and healthy) before the
    /// next job is pushed, in ms (default 3000).
    #[serde(default)]
    pub settle_ms: Option<u64>,
}

/// What happened to one job in a push.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushEvent {
    pub job: String,
    pub host: String,
    /// `unchanged`, `static`, `not running`, `restarting`, `restarted`,
    /// `failed`, `untouched`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The outcome of a push.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushSummary {
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
    pub static_jobs: Vec<String>,
    /// Jobs not pushed because an earlier one failed.
    pub untouched: Vec<String>,
    /// The job whose new version failed, and why (it was rolled back).
    pub failed: Option<PushEvent>,
}

/// One line of a push's answer (newline-delimited JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushLine {
    Event(PushEvent),
    Done(PushSummary),
    Error(ErrorBody),
}

/// One line of `GET /v1/events`: something that happened in the fleet,
/// with the store revision it came from (ask again with `since=REV+1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEvent {
    pub rev: i64,
    /// When it happened (unix milliseconds; the record's own time where it
    /// has one).
    pub time: u64,
    /// `job`, `host` or `leader`.
    pub kind: String,
    /// `accepted`, `placed`, `started`, `exited`, `restarted`, `moved`,
    /// `replacing` (a push step or a restart), `health check failed`,
    /// `waiting for host`, `failed`, `stopped`, `removed`; `joined`,
    /// `gone`, `returned`; `changed`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, String>,
}

/// `POST /v1/certificates/client`: an operator's certificate request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertRequest {
    /// Who it is for (in the certificate's name: `operator-NAME`).
    pub name: String,
    /// The request (PEM), made where the key stays.
    pub csr_pem: String,
}

/// The signed certificate and the CA that signed it (PEM).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientCertResponse {
    pub cert_pem: String,
    pub ca_pem: String,
}

/// `GET /v1/internal/images`: one image a host has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRow {
    pub id: String,
    pub tags: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub size: i64,
}

/// `POST /v1/jobs/{name}/exec`: a command to run in the job's running
/// container, attached (`viking exec`, `docker exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// With a TTY (one output stream).
    #[serde(default)]
    pub tty: bool,
}

/// `POST /v1/internal/replace`: restart one job of this host on the image
/// its tag names now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplaceRequest {
    pub job: String,
    /// How long the new container must stay up (and healthy) to count.
    pub settle_ms: u64,
    /// A restart asked for by name (`docker restart`): a static job too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
}

/// `POST /v1/internal/place`: a server asks the leader to place a
/// daemonized job and claim it for `claimant`, which starts it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceRequest {
    pub job: Job,
    pub claimant: String,
    /// Hosts the asking server placed this job's sibling instances on
    /// (the leader may not hold their claims yet): ranked last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apart: Vec<String>,
}

/// Where the leader placed and claimed a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceResponse {
    /// The chosen host; `None` when the job waits for its host.
    pub host: Option<String>,
    /// The host a fixed job waits for, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The revision of the claim: of its `starting` record when placed.
    pub claim_rev: i64,
    /// The chosen host's floki record as the leader holds it (where to
    /// send the start), so the asking server need not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_record: Option<viking_core::records::HostRecord>,
}

/// `POST /v1/internal/resolve`: the image id a reference names on a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveRequest {
    pub image: String,
    pub pull: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolveResponse {
    pub image_id: Option<String>,
}

/// `GET /v1/ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ping {
    pub name: String,
    pub version: String,
    pub store: String,
    /// The cluster's store prefix (`--key`): a machine joining the mesh
    /// uses it. Absent from servers before it was added.
    #[serde(default)]
    pub key: String,
}
