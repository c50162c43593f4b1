//! The records viking keeps in the store, each with a format version.
//!
//! Every record is written as an envelope `{"v": N, "data": {...}}`. A
//! reader accepts its own version and every older one ([`Record::migrate`]
//! upgrades older data), and refuses a newer one with a clear error rather
//! than misreading it: a cluster can be upgraded one server at a time.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::job::{Job, Proto};
use crate::status::Status;

/// How many placements a job's history keeps.
pub const HISTORY_LEN: usize = 20;

/// A record kept in the store.
pub trait Record: Serialize + DeserializeOwned {
    /// What the record is, for error messages.
    const KIND: &'static str;
    /// The version this code writes.
    const VERSION: u32;

    /// Upgrade data written by an older version. Version 1 is the first, so
    /// nothing needs migrating yet.
    fn migrate(version: u32, data: serde_json::Value) -> Result<Self, RecordError> {
        Err(RecordError(format!(
            "{} record version {version} cannot be migrated to {}: {data}",
            Self::KIND,
            Self::VERSION
        )))
    }
}

/// A record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    v: u32,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    v: u32,
    data: serde_json::Value,
}

/// Serialise a record in its envelope. It fails only for a record that
/// JSON cannot hold (a map with non-string keys, say): an error, never an
/// empty value written to the store.
pub fn encode<T: Record>(r: &T) -> Result<Vec<u8>, RecordError> {
    serde_json::to_vec(&EnvelopeOut {
        v: T::VERSION,
        data: r,
    })
    .map_err(|e| RecordError(format!("{} record cannot be written: {e}", T::KIND)))
}

/// Read a record, migrating older versions.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, RecordError> {
    let env: EnvelopeIn = serde_json::from_slice(bytes)
        .map_err(|e| RecordError(format!("{} record is not valid: {e}", T::KIND)))?;
    if env.v > T::VERSION {
        return Err(RecordError(format!(
            "{} record has version {}, newer than this viking understands ({}); upgrade viking",
            T::KIND,
            env.v,
            T::VERSION
        )));
    }
    if env.v < T::VERSION {
        return T::migrate(env.v, env.data);
    }
    serde_json::from_value(env.data)
        .map_err(|e| RecordError(format!("{} record is not valid: {e}", T::KIND)))
}

/// The cluster's CA, kept in the store by `viking mesh init`
/// ([`crate::keys::MESH_CA`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRecord").finish_non_exhaustive()
    }
}

impl Record for CaRecord {
    const KIND: &'static str = "mesh CA";
    const VERSION: u32 = 1;
}

/// The join token ([`crate::keys::MESH_JOIN`]): the CA's fingerprint it
/// carries and its secret, which a server compares a join's against. Kept
/// whole (as swarm keeps its join tokens in its store) so `viking mesh
/// token` can print it on any machine; only holders of a cluster
/// certificate can read etcd.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRecord {
    pub fingerprint: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRecord")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Record for JoinRecord {
    const KIND: &'static str = "mesh join";
    const VERSION: u32 = 1;
}

/// viking-proc: a daemonized job, written before anything runs, as the
/// statement of intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    pub job: Job,
    /// When the job was asked for (unix milliseconds).
    pub created_at: u64,
    /// The host dowding placed it on; `None` while it waits for a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_on: Option<String>,
    /// Why the job does not run now, e.g. "waiting for host n2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

impl Record for ProcRecord {
    const KIND: &'static str = "proc";
    const VERSION: u32 = 1;
}

/// A host port that Docker published for a container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub container: u16,
    pub proto: String,
    pub host_ip: String,
    pub host_port: u16,
}

impl PublishedPort {
    pub fn proto(&self) -> Proto {
        if self.proto == "udp" {
            Proto::Udp
        } else {
            Proto::Tcp
        }
    }
}

/// viking-ps: what runs where, with Docker's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsRecord {
    pub job: String,
    /// The server (floki name) whose Docker engine runs the container.
    pub node: String,
    pub container_id: String,
    pub image: String,
    pub image_id: String,
    pub command: Vec<String>,
    pub daemonize: bool,
    /// Docker's state or viking's own (see [`Status`]).
    pub status: Status,
    pub exit_code: Option<i64>,
    /// Why the job is not running, when viking knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ports: Vec<PublishedPort>,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// How many times the reconciler started the job again.
    #[serde(default)]
    pub restarts: u32,
    /// Failures in a row without a stable run: drives the restart backoff.
    #[serde(default)]
    pub crash_streak: u32,
    /// The exit code of the previous container, after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<i64>,
    /// While `starting`: the server that claimed the start and carries it
    /// out (itself, or by asking `node`'s server). When it is gone, the
    /// start is retried at once rather than after the start timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
}

impl Record for PsRecord {
    const KIND: &'static str = "ps";
    const VERSION: u32 = 1;
}

impl PsRecord {
    pub fn is_running(&self) -> bool {
        self.status == Status::Running
    }
}

/// What a container carries of its job (in its `viking.spec` label), so
/// the fleet can rebuild viking-proc, viking-ps and the services' ambassador
/// ports from its containers when the store is lost (`viking recover`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecLabel {
    /// The job's whole document as it was when the container was made.
    pub job: Job,
    /// The service's ambassador ports: container port → ambassador port.
    #[serde(default)]
    pub ambassador: std::collections::BTreeMap<u16, u16>,
}

impl Record for SpecLabel {
    const KIND: &'static str = "container spec";
    const VERSION: u32 = 1;
}

/// embassy's routes of one service, as the leader publishes them at
/// `routes/<service>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub service: String,
    pub ports: Vec<RoutePort>,
}

/// One port of a service: where embassy serves it and where it forwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePort {
    pub container_port: u16,
    /// The cluster-wide port embassy serves it on, on every node.
    pub ambassador_port: u16,
    /// The host that runs it now.
    pub host: Option<String>,
    /// Live endpoints: `host address:published port`.
    pub endpoints: Vec<String>,
}

impl Record for RouteRecord {
    const KIND: &'static str = "route";
    const VERSION: u32 = 1;
}

/// The jobs whose viking-ps record names a host, as the leader last saw
/// them (`assigned/<host>`): an index, never the authority (the agent reads
/// each job's own record before it acts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedRecord {
    pub host: String,
    pub jobs: std::collections::BTreeSet<String>,
    /// dowding's load figure of the host: jobs running there or placed
    /// there and not started yet.
    #[serde(default)]
    pub load: u64,
    /// The host's placements counter (`counters/placements/<host>`) as the
    /// leader read it before the records it counted: claims made since are
    /// the counter's value now minus this.
    #[serde(default)]
    pub claims: u64,
    /// What the jobs placed on the host reserve (their limits, or the
    /// default for a job without).
    #[serde(default)]
    pub reserved: crate::job::Reservation,
}

impl Record for AssignedRecord {
    const KIND: &'static str = "assigned jobs";
    const VERSION: u32 = 1;
}

/// floki: one server of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// The advertised address (`--ip`): where published ports are reached.
    pub ip: String,
    /// The server's API URL.
    pub api: String,
    pub tags: Vec<String>,
    pub cpus: u64,
    pub memory: u64,
    /// Running containers of viking jobs on this host.
    pub running: u64,
    /// Memory that those containers use, in bytes.
    pub memory_used: u64,
    /// The CPU those containers used over the last minute, in thousandths
    /// of a CPU (in steps of a tenth).
    #[serde(default)]
    pub cpu_used: u64,
    pub version: String,
    pub started_at: u64,
    pub updated_at: u64,
    /// The server's identity, made once and kept in its data directory: a
    /// server that restarts takes its name back at once, another server with
    /// the same name is refused while this one is alive. Empty in records
    /// written before it existed.
    #[serde(default)]
    pub server_id: String,
    /// Why the server holds (does not act on its containers), if it does:
    /// the store is empty or belongs to another cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

impl Record for HostRecord {
    const KIND: &'static str = "host";
    const VERSION: u32 = 1;
}

/// The fleet as one list, ordered by name: every server ever seen (its
/// `fleet/` record) with whether it is alive now; an alive server's `hosts/`
/// record, the fresher one, wins.
pub fn fleet(alive: Vec<HostRecord>, known: Vec<HostRecord>) -> Vec<(HostRecord, bool)> {
    let mut all: std::collections::BTreeMap<String, (HostRecord, bool)> = known
        .into_iter()
        .map(|h| (h.name.clone(), (h, false)))
        .collect();
    for h in alive {
        all.insert(h.name.clone(), (h, true));
    }
    all.into_values().collect()
}

/// One placement of a job on a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: String,
    pub at: u64,
}

/// Where a job has run, newest last, at most [`HISTORY_LEN`] entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub placements: Vec<Placement>,
}

impl Record for History {
    const KIND: &'static str = "history";
    const VERSION: u32 = 1;
}

impl History {
    /// Append a placement, dropping the oldest past the bound.
    pub fn push(&mut self, node: &str, at: u64) {
        self.placements.push(Placement {
            node: node.to_string(),
            at,
        });
        if self.placements.len() > HISTORY_LEN {
            let extra = self.placements.len() - HISTORY_LEN;
            self.placements.drain(..extra);
        }
    }

    /// The server the job last ran on.
    pub fn last_node(&self) -> Option<&str> {
        self.placements.last().map(|p| p.node.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, updated_at: u64) -> HostRecord {
        HostRecord {
            server_id: String::new(),
            held: None,
            name: name.into(),
            ip: String::new(),
            api: String::new(),
            tags: vec![],
            cpus: 1,
            memory: 1,
            running: 0,
            memory_used: 0,
            cpu_used: 0,
            version: String::new(),
            started_at: 0,
            updated_at,
        }
    }

    #[test]
    fn the_fleet_is_every_server_seen_with_the_alive_record_winning() {
        let got = fleet(
            vec![host("b", 9), host("c", 9)],
            vec![host("a", 1), host("b", 1)],
        );
        let names: Vec<(&str, u64, bool)> = got
            .iter()
            .map(|(h, alive)| (h.name.as_str(), h.updated_at, *alive))
            .collect();
        assert_eq!(names, vec![("a", 1, false), ("b", 9, true), ("c", 9, true)]);
    }

    #[test]
    fn envelope_round_trip_and_newer_refused() {
        let mut h = History::default();
        for i in 0..30 {
            h.push(&format!("n{i}"), i);
        }
        assert_eq!(h.placements.len(), HISTORY_LEN);
        assert_eq!(h.last_node(), Some("n29"));
        let bytes = encode(&h).unwrap();
        assert!(String::from_utf8_lossy(&bytes).starts_with(r#"{"v":1,"#));
        assert_eq!(decode::<History>(&bytes).unwrap(), h);
        let newer = br#"{"v":2,"data":{"placements":[]}}"#;
        let e = decode::<History>(newer).unwrap_err();
        assert!(e.0.contains("newer"), "{e}");
        assert!(decode::<History>(b"garbage").is_err());
    }
}
