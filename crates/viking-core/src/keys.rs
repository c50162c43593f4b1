//! The store's key layout, relative to the cluster prefix (`/viking` by
//! default). See ARCHITECTURE.md for the full table.

/// floki: one key per server, attached to the server's lease.
pub const HOSTS: &str = "hosts/";
/// floki's durable copy of every server ever seen (not under a lease), so
/// `viking hosts` can say since when a server is gone.
pub const FLEET: &str = "fleet/";
/// viking-proc: desired state, one key per daemonized job.
pub const PROC: &str = "proc/";
/// viking-ps: actual state, one key per job that has a container.
pub const PS: &str = "ps/";
/// embassy's ambassador ports: `ports/<service>/<container port>` holds the
/// port; `counters/ambassador-port` is the allocation counter. Kept when a
/// job is removed, so a service keeps its port.
pub const PORTS: &str = "ports/";
/// The ambassador port counter.
pub const PORT_COUNTER: &str = "counters/ambassador-port";
/// Placement history of each job (bounded).
pub const HISTORY: &str = "history/";
/// The cluster's id (plain text), made at its first start: a server acts
/// on its containers only while the store carries the id it belongs to.
pub const CLUSTER_ID: &str = "cluster-id";
/// A removed job's container on a host that was gone at the time:
/// `removed/<job>/<container id>` holds the host's name; that host's agent
/// removes exactly that container when it is back, then the key.
pub const REMOVED: &str = "removed/";

/// embassy's routes: `routes/<service>` holds a
/// [`crate::records::RouteRecord`], written by the leader from viking-proc,
/// viking-ps and floki when a service's endpoints change. Every server's
/// embassy follows this prefix alone, so a change of a job that is not a
/// service wakes no server but the leader.
pub const ROUTES: &str = "routes/";
/// `services/<name>`: a service run with replicas, written by each of its
/// instances' claims and deleted with its last instance; a job of the
/// service's own name is refused while it is there.
pub const SERVICES: &str = "services/";

/// Each host's jobs: `assigned/<host>` holds an
/// [`crate::records::AssignedRecord`], the jobs whose viking-ps record
/// names that host, written by the leader when the set changes. A host's
/// agent reads its own key and those jobs' records, not every record.
pub const ASSIGNED: &str = "assigned/";

/// One key per host, rewritten by every claim placed on that host: its
/// revision serialises the placements onto one host, so concurrent runs
/// see each other's load and host ports.
pub const PLACEMENTS: &str = "counters/placements/";

/// The cluster's CA (certificate and key, a [`crate::records::CaRecord`]),
/// written by `viking mesh init`: a server signs a joining machine's
/// certificate and renews its own with it. etcd answers only holders of a
/// certificate from this CA, so only servers can read it.
pub const MESH_CA: &str = "mesh/ca";
/// The join token: the CA's fingerprint and the secret (a
/// [`crate::records::JoinRecord`]); `viking mesh token --rotate` rewrites it.
pub const MESH_JOIN: &str = "mesh/join";

pub fn host(name: &str) -> String {
    format!("{HOSTS}{name}")
}

pub fn fleet(name: &str) -> String {
    format!("{FLEET}{name}")
}

pub fn removed(job: &str, container_id: &str) -> String {
    format!("{REMOVED}{job}/{container_id}")
}

pub fn service(name: &str) -> String {
    format!("{SERVICES}{name}")
}

pub fn placements(host: &str) -> String {
    format!("{PLACEMENTS}{host}")
}

pub fn assigned(host: &str) -> String {
    format!("{ASSIGNED}{host}")
}

pub fn route(service: &str) -> String {
    format!("{ROUTES}{service}")
}

pub fn proc(job: &str) -> String {
    format!("{PROC}{job}")
}

pub fn ps(job: &str) -> String {
    format!("{PS}{job}")
}

pub fn ambassador_port(service: &str, container_port: u16) -> String {
    format!("{PORTS}{service}/{container_port}")
}

pub fn history(job: &str) -> String {
    format!("{HISTORY}{job}")
}

/// The name part of a key under one of the prefixes above.
pub fn name_of<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(prefix)
}
