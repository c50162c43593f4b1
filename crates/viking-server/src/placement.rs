//! Where a job goes: the snapshot dowding decides over (floki's hosts, the
//! load and host ports in viking-ps and viking-proc, the job's history), the
//! decision, and its explanation for `--dry-run`. The decision itself is
//! `viking_core::scheduler`'s pure function; this module only gathers its
//! input.

use std::collections::{BTreeSet, HashMap};

use viking_client::api::DryRunResponse;
use viking_core::job::Reservation;
use viking_core::records::{HostRecord, ProcRecord, PsRecord};
use viking_core::scheduler::{self, HostSnapshot};
use viking_core::{keys, Job, Status};

use viking_store::{Compare, Revision};

use crate::error::{Result, ServerError};
use crate::{state, Shared};

/// A Docker-style name for a job that was not given one.
pub fn generate_name() -> String {
    viking_core::names::generate(rand::random())
}

/// How often a placement is decided again when another claim on its host
/// came first (by this server's placement or the leader's).
pub const TRIES: usize = 16;

/// Whether `job` publishes a fixed host port: its placement needs every
/// host's ports in use, the whole snapshot from the store.
pub fn needs_host_ports(job: &Job) -> bool {
    job.ports.iter().any(|p| p.host.is_some())
}

/// A host's placements key as it was when a snapshot was read: the claim
/// that places a job there holds only if no other claim placed one there
/// since (its revision, or `None` when nothing ever was).
#[derive(Debug, Clone)]
pub struct Guard {
    pub host: String,
    pub revision: Option<Revision>,
    /// The key's value then: how many claims were ever placed on the host.
    pub claims: u64,
}

impl Guard {
    /// The guard of `host`, whose placements key was seen at this
    /// (revision, claim count), or never written (`None`).
    pub fn new(host: &str, seen: Option<(Revision, u64)>) -> Self {
        Guard {
            host: host.to_string(),
            revision: seen.map(|(r, _)| r),
            claims: seen.map_or(0, |(_, n)| n),
        }
    }

    /// The transaction's condition.
    pub fn compare(&self) -> Compare {
        let key = keys::placements(&self.host);
        match self.revision {
            Some(r) => Compare::ModRevision(key, r),
            None => Compare::Absent(key),
        }
    }
}

/// The revision and the claim count of every host's placements key, read
/// before the snapshot (so any claim the snapshot misses changes them).
pub async fn guards(sh: &Shared) -> Result<HashMap<String, (Revision, u64)>> {
    let (kvs, _) = sh.store.list(keys::PLACEMENTS).await?;
    Ok(kvs
        .into_iter()
        .filter_map(|kv| {
            let host = keys::name_of(keys::PLACEMENTS, &kv.key)?;
            Some((host.to_string(), (kv.mod_revision, claim_count(&kv.value))))
        })
        .collect())
}

/// A placements key's claim count. An older server wrote the time of the
/// last claim there instead; it reads as no count (0).
pub fn claim_count(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n < 1 << 40)
        .unwrap_or(0)
}

/// The snapshot dowding needs: floki's hosts and the host ports in use,
/// from every record of viking-ps and viking-proc.
pub async fn snapshot(sh: &Shared) -> Result<Vec<HostSnapshot>> {
    let ps: Vec<PsRecord> = state::list(sh.store.as_ref(), keys::PS).await?;
    let procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
    let hosts = floki_hosts(sh).await?;
    Ok(snapshot_over(
        &hosts,
        ps.iter(),
        &procs,
        sh.config.policy.reserve,
    ))
}

/// What the jobs placed on each host reserve: each job of viking-proc
/// counts on the host it is placed on, with `default` for a limit it does
/// not set.
pub fn reserved<'a>(
    procs: impl IntoIterator<Item = &'a ProcRecord>,
    default: Reservation,
) -> HashMap<&'a str, Reservation> {
    let mut out: HashMap<&str, Reservation> = HashMap::new();
    for p in procs {
        if let Some(n) = &p.placed_on {
            let r = out.entry(n.as_str()).or_default();
            *r = r.plus(Reservation::of(&p.job, default));
        }
    }
    out
}

/// The load of each host: jobs running there, plus jobs placed there that
/// have not started yet (so concurrent runs spread too).
pub fn load<'a>(
    ps: impl Iterator<Item = &'a PsRecord> + Clone,
    procs: &'a [ProcRecord],
) -> HashMap<&'a str, BTreeSet<&'a str>> {
    let mut load: HashMap<&str, BTreeSet<&str>> = Default::default();
    for p in ps.filter(|p| p.is_running() || p.status == Status::Created) {
        load.entry(p.node.as_str())
            .or_default()
            .insert(p.job.as_str());
    }
    for p in procs {
        if let Some(n) = &p.placed_on {
            load.entry(n.as_str())
                .or_default()
                .insert(p.job.name.as_str());
        }
    }
    load
}

/// The snapshot from the leader's index (`assigned/<host>`: each host's
/// load as of the leader's last round) plus the claims placed on each host
/// since (its placements counter): a few small records per host, not every
/// record of the fleet. Host ports are not in it: a job that publishes a
/// fixed host port is placed over [`snapshot`].
pub async fn snapshot_indexed(
    sh: &Shared,
    guards: &HashMap<String, (Revision, u64)>,
) -> Result<Vec<HostSnapshot>> {
    let hosts = floki_hosts(sh).await?;
    let index: HashMap<String, viking_core::records::AssignedRecord> =
        state::list::<viking_core::records::AssignedRecord>(sh.store.as_ref(), keys::ASSIGNED)
            .await?
            .into_iter()
            .map(|r| (r.host.clone(), r))
            .collect();
    Ok(indexed(
        &hosts,
        |name| {
            let (load, accounted) = index.get(name).map_or((0, 0), |r| (r.load, r.claims));
            let now = guards.get(name).map_or(0, |(_, n)| *n);
            load + now.saturating_sub(accounted)
        },
        |name| index.get(name).map(|r| r.reserved).unwrap_or_default(),
    ))
}

/// dowding's hosts from floki's records (each with whether it is alive)
/// and each host's load as an index tells it: no host ports (a job that
/// publishes a fixed host port is placed over [`snapshot`]), and what its
/// jobs reserve.
pub fn indexed(
    hosts: &[(HostRecord, bool)],
    load: impl Fn(&str) -> u64,
    reserved: impl Fn(&str) -> Reservation,
) -> Vec<HostSnapshot> {
    hosts
        .iter()
        .map(|(h, alive)| HostSnapshot {
            running: load(&h.name),
            alive: *alive,
            tags: h.tags.iter().cloned().collect(),
            memory: h.memory,
            memory_used: h.memory_used,
            cpu_used: h.cpu_used,
            used_ports: BTreeSet::new(),
            cpus: h.cpus.saturating_mul(1000),
            reserved: reserved(&h.name),
            name: h.name.clone(),
        })
        .collect()
}

/// floki's hosts, each with whether it is alive.
pub async fn floki_hosts(sh: &Shared) -> Result<Vec<(HostRecord, bool)>> {
    let alive: Vec<HostRecord> = state::list(sh.store.as_ref(), keys::HOSTS).await?;
    let known: Vec<HostRecord> = state::list(sh.store.as_ref(), keys::FLEET).await?;
    Ok(viking_core::records::fleet(alive, known))
}

/// [`snapshot`] over records already read (the leader's round).
pub fn snapshot_over<'a>(
    hosts: &[(HostRecord, bool)],
    ps: impl Iterator<Item = &'a PsRecord> + Clone,
    procs: &'a [ProcRecord],
    default: Reservation,
) -> Vec<HostSnapshot> {
    let load = load(ps.clone(), procs);
    let reserved = reserved(procs, default);
    let ps: Vec<&PsRecord> = ps.collect();
    // Host ports in use, per host: what running containers publish, and
    // the fixed host ports of every job placed there (its start may be in
    // flight).
    let mut ports: std::collections::HashMap<&str, BTreeSet<(u16, viking_core::Proto)>> =
        Default::default();
    for p in ps.iter().filter(|p| p.is_running()) {
        let set = ports.entry(p.node.as_str()).or_default();
        set.extend(p.ports.iter().map(|pp| (pp.host_port, pp.proto())));
    }
    for p in procs {
        if let Some(n) = &p.placed_on {
            let set = ports.entry(n.as_str()).or_default();
            set.extend(
                p.job
                    .ports
                    .iter()
                    .filter_map(|pp| pp.host.map(|h| (h, pp.proto))),
            );
        }
    }
    hosts
        .iter()
        .map(|(h, alive)| HostSnapshot {
            used_ports: ports.remove(h.name.as_str()).unwrap_or_default(),
            alive: *alive,
            tags: h.tags.iter().cloned().collect(),
            running: load.get(h.name.as_str()).map_or(0, |s| s.len() as u64),
            memory: h.memory,
            memory_used: h.memory_used,
            cpu_used: h.cpu_used,
            cpus: h.cpus.saturating_mul(1000),
            reserved: reserved.get(h.name.as_str()).copied().unwrap_or_default(),
            name: h.name.clone(),
        })
        .collect()
}

/// Ask dowding where `job` goes; with `explain`, why every other host
/// would not take it.
pub async fn place(sh: &Shared, job: &Job, explain: bool) -> Result<scheduler::Decision> {
    Ok(place_guarded(sh, job, explain).await?.0)
}

/// [`place`], with the guard of the chosen host.
async fn place_guarded(
    sh: &Shared,
    job: &Job,
    explain: bool,
) -> Result<(scheduler::Decision, Option<Guard>)> {
    let mut guards = guards(sh).await?;
    // A job that publishes a fixed host port needs every host's ports in
    // use, and an explanation every host as it is now: the whole snapshot.
    // Any other job is placed over the index.
    let hosts = if explain || needs_host_ports(job) {
        snapshot(sh).await?
    } else {
        snapshot_indexed(sh, &guards).await?
    };
    let (hist, _) = state::history(sh.store.as_ref(), &job.name).await?;
    let need = Reservation::of(job, sh.config.policy.reserve);
    let d = if explain {
        scheduler::explain(job, need, &hosts, Some(&hist))
    } else {
        let apart = apart(sh, job).await?;
        scheduler::place_apart(job, need, &hosts, Some(&hist), &apart)
    };
    let guard = d.host.as_ref().map(|h| Guard::new(h, guards.remove(h)));
    Ok((d, guard))
}

/// Where the other instances of `job`'s service are placed (none for a job
/// that is not an instance): one read of the service's records.
pub async fn apart(sh: &Shared, job: &Job) -> Result<BTreeSet<String>> {
    let Some(service) = &job.service else {
        return Ok(BTreeSet::new());
    };
    let procs: Vec<ProcRecord> =
        state::list(sh.store.as_ref(), &keys::proc(&format!("{service}."))).await?;
    Ok(procs
        .into_iter()
        .filter(|p| p.job.name != job.name && p.job.service.as_deref() == Some(service.as_str()))
        .filter_map(|p| p.placed_on)
        .collect())
}

/// Where the job would run, without running it.
pub async fn dry_run(sh: &Shared, job: Job) -> Result<DryRunResponse> {
    let d = place(sh, &job, true).await?;
    Ok(DryRunResponse {
        job,
        host: d.host,
        rejected: d.rejected,
    })
}

/// Where a job goes now.
pub enum Target {
    /// This server.
    Here,
    /// Another server of the fleet.
    There(HostRecord),
    /// A fixed job whose host is not alive: it waits for it.
    Waiting(String),
}

/// Ask dowding, and turn its answer into a [`Target`] (with the guard a
/// claim on it compares) or the reasons no host can take the job.
pub async fn choose(sh: &Shared, job: &Job) -> Result<(Target, Option<Guard>)> {
    let (d, guard) = place_guarded(sh, job, false).await?;
    match (d.host.clone(), d.waiting_for.clone()) {
        (Some(h), _) => Ok((
            target(sh, &h)
                .await?
                .ok_or_else(|| ServerError::Unavailable(format!("host {h:?} left floki")))?,
            guard,
        )),
        (None, Some(w)) => Ok((Target::Waiting(w), None)),
        (None, None) => Err(ServerError::Unavailable(d.explain())),
    }
}

/// The [`Target`] of a host dowding chose: this server, or its record in
/// floki (`None` when it left floki meanwhile).
pub async fn target(sh: &Shared, host: &str) -> Result<Option<Target>> {
    if host == sh.config.name {
        return Ok(Some(Target::Here));
    }
    Ok(crate::floki::host(sh, host).await?.map(Target::There))
}
