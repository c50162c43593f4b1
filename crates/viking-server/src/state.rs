//! Typed access to the cluster's records: viking-proc, viking-ps, the
//! placement history and the ambassador ports, over the [`Store`] seam.
//!
//! Every read that decodes a record and every write that must hold against
//! a concurrent writer lives here, once: the name claims of daemonized and
//! attached jobs, the "started" record with its history entry, the
//! allocation and release of ambassador ports.
//!
//! Invariants: a name is claimed by one transaction that requires neither
//! `proc/<job>` nor `ps/<job>` to exist, and a daemonized job's ambassador
//! ports are allocated in that same transaction, so a refused claim leaves
//! nothing behind. Every write here is conditional on what was read.

use std::collections::{BTreeMap, BTreeSet};

use viking_client::wire::JobState;
use viking_core::records::{decode, encode, History, ProcRecord, PsRecord, Record};
use viking_core::{keys, Job, Status};
use viking_store::{Compare, Op, Revision, Store, StoreExt};

use crate::error::{Result, ServerError};

/// How often a conditional write is tried again when another writer got
/// there first.
const RETRIES: usize = 16;

/// A record under a prefix that could not be read (not JSON, not the
/// record it should be, or written by a newer viking): its key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The key, relative to the cluster prefix (`ps/web`).
    pub key: String,
    pub error: String,
}

impl Unreadable {
    /// The job (or host) the key names under `prefix`.
    pub fn name(&self, prefix: &str) -> Option<&str> {
        keys::name_of(prefix, &self.key)
    }
}

/// Every readable record under a prefix with its revision, and the keys
/// whose record could not be read. One unreadable record (garbage, or a
/// newer version during a rolling upgrade) is reported (logged once per
/// key and revision) and skipped: it never stops a loop over every other
/// record. What a caller does about the skipped key is its own decision
/// (the reconciler and the agent leave that job alone; `viking ps` shows a
/// row).
pub async fn list_with_revs<T: Record>(
    store: &dyn Store,
    prefix: &str,
) -> Result<(Vec<(T, Revision)>, Vec<Unreadable>)> {
    let (kvs, _) = store.list(prefix).await?;
    let mut good = Vec::with_capacity(kvs.len());
    let mut bad = Vec::new();
    for kv in kvs {
        match decode::<T>(&kv.value) {
            Ok(r) => good.push((r, kv.mod_revision)),
            Err(e) => {
                report_unreadable(&kv.key, kv.mod_revision, &e.0);
                bad.push(Unreadable {
                    key: kv.key,
                    error: e.0,
                });
            }
        }
    }
    Ok((good, bad))
}

/// Every readable record under a prefix, and the unreadable keys (see
/// [`list_with_revs`]).
pub async fn list_all<T: Record>(
    store: &dyn Store,
    prefix: &str,
) -> Result<(Vec<T>, Vec<Unreadable>)> {
    let (good, bad) = list_with_revs(store, prefix).await?;
    Ok((good.into_iter().map(|(r, _)| r).collect(), bad))
}

/// Every readable record under a prefix; an unreadable one is reported
/// and skipped (see [`list_with_revs`]).
pub async fn list<T: Record>(store: &dyn Store, prefix: &str) -> Result<Vec<T>> {
    Ok(list_all(store, prefix).await?.0)
}

/// `viking ps` rows for unreadable viking-ps and viking-proc records:
/// status `unreadable`, the key's job as the name, and the error (which
/// record, and why) in the row's error.
pub fn unreadable_rows(ps: &[Unreadable], proc: &[Unreadable]) -> Vec<JobState> {
    ps.iter()
        .map(|u| (u, keys::PS, "viking-ps"))
        .chain(proc.iter().map(|u| (u, keys::PROC, "viking-proc")))
        .map(|(u, prefix, what)| JobState {
            job: u.name(prefix).unwrap_or(&u.key).to_string(),
            node: String::new(),
            container_id: String::new(),
            image: String::new(),
            image_id: String::new(),
            command: vec![],
            daemonize: false,
            status: UNREADABLE.to_string(),
            exit_code: None,
            error: Some(format!("{what} record {:?}: {}", u.key, u.error)),
            ports: vec![],
            created_at: 0,
            started_at: None,
            finished_at: None,
            restarts: 0,
            crash_streak: 0,
            last_exit: None,
        })
        .collect()
}

/// The status of a `viking ps` row whose record cannot be read.
pub const UNREADABLE: &str = "unreadable";

/// Log an unreadable record once per key and revision (every loop meets
/// it again each round; the log says it once, `viking ps` every time).
fn report_unreadable(key: &str, revision: Revision, error: &str) {
    static SEEN: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashSet<(String, Revision)>>,
    > = std::sync::OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if seen.len() > 10_000 {
        seen.clear();
    }
    if seen.insert((key.to_string(), revision)) {
        tracing::error!(
            %key,
            revision,
            "a record cannot be read and is skipped (every other record is used): {error}"
        );
    }
}

/// A job's viking-ps record and its revision.
pub async fn ps(store: &dyn Store, name: &str) -> Result<Option<(PsRecord, Revision)>> {
    match store.get(&keys::ps(name)).await? {
        Some(kv) => Ok(Some((decode(&kv.value)?, kv.mod_revision))),
        None => Ok(None),
    }
}

/// Any one record at `key`, with its revision.
pub async fn get<T: Record>(store: &dyn Store, key: &str) -> Result<Option<(T, Revision)>> {
    match store.get(key).await? {
        Some(kv) => Ok(Some((decode(&kv.value)?, kv.mod_revision))),
        None => Ok(None),
    }
}

/// A job's viking-proc record.
pub async fn proc(store: &dyn Store, name: &str) -> Result<Option<ProcRecord>> {
    match store.get(&keys::proc(name)).await? {
        Some(kv) => Ok(Some(decode(&kv.value)?)),
        None => Ok(None),
    }
}

/// A job's placement history and its revision (0: none yet).
pub async fn history(store: &dyn Store, name: &str) -> Result<(History, Revision)> {
    match store.get(&keys::history(name)).await? {
        Some(kv) => Ok((decode(&kv.value)?, kv.mod_revision)),
        None => Ok((History::default(), 0)),
    }
}

/// What a start reads of its job before it creates the container, in one
/// request: its viking-ps record (the claim) and viking-proc record, its
/// placement history, and the store's cluster id.
pub struct StartView {
    pub ps: Option<(PsRecord, Revision)>,
    pub proc: Option<ProcRecord>,
    pub history: (History, Revision),
    pub cluster_id: Option<String>,
}

impl StartView {
    /// Whether the job's viking-ps record is still the one written at
    /// `claim`.
    pub fn claim_holds(&self, claim: Revision) -> bool {
        self.ps.as_ref().is_some_and(|(_, rev)| *rev == claim)
    }
}

/// Read a [`StartView`].
pub async fn start_view(store: &dyn Store, name: &str) -> Result<StartView> {
    let got = store
        .get_many(&[
            keys::ps(name),
            keys::proc(name),
            keys::history(name),
            keys::CLUSTER_ID.to_string(),
        ])
        .await?;
    let mut got = got.into_iter();
    let mut next = || got.next().flatten();
    let ps = match next() {
        Some(kv) => Some((decode(&kv.value)?, kv.mod_revision)),
        None => None,
    };
    let proc = match next() {
        Some(kv) => Some(decode(&kv.value)?),
        None => None,
    };
    let history = match next() {
        Some(kv) => (decode(&kv.value)?, kv.mod_revision),
        None => (History::default(), 0),
    };
    let cluster_id = next()
        .map(|kv| String::from_utf8_lossy(&kv.value).trim().to_string())
        .filter(|s| !s.is_empty());
    Ok(StartView {
        ps,
        proc,
        history,
        cluster_id,
    })
}

/// Delete a job's placement history (`rm --volumes`): a job of that name
/// run again is placed afresh.
pub async fn forget_history(store: &dyn Store, name: &str) -> Result<()> {
    store.delete(&keys::history(name)).await?;
    Ok(())
}

/// The error of a name that is in use.
pub fn taken(name: &str) -> ServerError {
    ServerError::Conflict(format!(
        "the name {name:?} is already in use by a job; remove it with `viking rm {name}` or choose another --name"
    ))
}

/// The error of a job that does not exist.
pub fn no_such_job(name: &str) -> ServerError {
    ServerError::NotFound(format!("no such job: {name:?} (see `viking ps -a`)"))
}

/// The viking-ps record of a job being started on `node`, by `claimed_by`
/// (the server that carries the start out).
pub fn starting_record(job: &Job, node: &str, claimed_by: Option<&str>, now: u64) -> PsRecord {
    PsRecord {
        job: job.name.clone(),
        node: node.to_string(),
        container_id: String::new(),
        image: job.image.clone(),
        image_id: String::new(),
        command: job.command.clone(),
        daemonize: job.daemonize,
        status: Status::Starting,
        exit_code: None,
        error: None,
        ports: vec![],
        created_at: now,
        started_at: None,
        finished_at: None,
        restarts: 0,
        crash_streak: 0,
        last_exit: None,
        claimed_by: claimed_by.map(str::to_string),
    }
}

/// The cluster-wide range ambassador ports come from (`--embassy-ports`).
pub type PortRange = (u16, u16);

/// The compares and writes that allocate the missing ambassador ports of
/// `service`, to run in one transaction with whatever else must hold.
/// Allocation is serialised by the port counter's revision: every
/// allocation rewrites it, so two allocations read at the same revision
/// cannot both commit. Ports freed by [`release_ports`] are used again.
struct PortPlan {
    compares: Vec<Compare>,
    ops: Vec<Op>,
}

async fn plan_ports(
    store: &dyn Store,
    service: &str,
    container_ports: &[u16],
    (lo, hi): PortRange,
) -> Result<PortPlan> {
    let mut plan = PortPlan {
        compares: vec![],
        ops: vec![],
    };
    if container_ports.is_empty() {
        return Ok(plan);
    }
    // The counter first: a listing read after it is at least as new.
    let counter = store.get(keys::PORT_COUNTER).await?;
    let (kvs, _) = store.list(keys::PORTS).await?;
    let mut used = BTreeSet::new();
    let mut have = BTreeSet::new();
    for kv in &kvs {
        used.insert(port_value(&kv.key, &kv.value)?);
        have.insert(kv.key.clone());
    }
    let mut candidates = (lo..=hi).filter(|p| !used.contains(p));
    for &cport in container_ports {
        let key = keys::ambassador_port(service, cport);
        if have.contains(&key) {
            continue;
        }
        let port = candidates.next().ok_or_else(|| {
            ServerError::Exhausted(format!(
                "the ambassador port range {lo}-{hi} is used up; widen --embassy-ports or remove services"
            ))
        })?;
        plan.compares.push(Compare::Absent(key.clone()));
        plan.ops.push(Op::Put {
            key,
            value: port.to_string().into_bytes(),
            lease: None,
        });
    }
    if plan.ops.is_empty() {
        return Ok(plan);
    }
    let (count, cmp) = match &counter {
        Some(kv) => (
            std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ServerError::Internal(format!("{} is not a number", keys::PORT_COUNTER))
                })?,
            Compare::ModRevision(keys::PORT_COUNTER.to_string(), kv.mod_revision),
        ),
        None => (0, Compare::Absent(keys::PORT_COUNTER.to_string())),
    };
    plan.compares.push(cmp);
    plan.ops.push(Op::Put {
        key: keys::PORT_COUNTER.to_string(),
        value: (count + plan.ops.len() as u64).to_string().into_bytes(),
        lease: None,
    });
    Ok(plan)
}

/// An ambassador port as stored (a bare decimal).
fn port_value(key: &str, value: &[u8]) -> Result<u16> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ServerError::Internal(format!("bad ambassador port at {key}")))
}

/// The ambassador port of (service, container port), if allocated.
pub async fn ambassador_port(store: &dyn Store, service: &str, cport: u16) -> Result<Option<u16>> {
    let key = keys::ambassador_port(service, cport);
    match store.get(&key).await? {
        Some(kv) => Ok(Some(port_value(&key, &kv.value)?)),
        None => Ok(None),
    }
}

/// Allocate the missing ambassador ports of a service on their own (a
/// service from before ports were allocated with the claim).
pub async fn allocate_ports(
    store: &dyn Store,
    service: &str,
    container_ports: &[u16],
    range: PortRange,
) -> Result<()> {
    for _ in 0..RETRIES {
        let plan = plan_ports(store, service, container_ports, range).await?;
        if plan.ops.is_empty() {
            return Ok(());
        }
        if store.txn(plan.compares, plan.ops, vec![]).await?.succeeded {
            return Ok(());
        }
    }
    Err(ServerError::Unavailable(format!(
        "allocating ambassador ports for {service:?} kept racing; try again"
    )))
}

/// Free a removed service's ambassador ports.
pub async fn release_ports(store: &dyn Store, service: &str) -> Result<()> {
    let (kvs, _) = store.list(&format!("{}{service}/", keys::PORTS)).await?;
    if kvs.is_empty() {
        return Ok(());
    }
    let ops = kvs
        .into_iter()
        .map(|kv| Op::Delete { key: kv.key })
        .collect();
    store.txn(vec![], ops, vec![]).await?;
    Ok(())
}

/// What a daemonized job's claim writes besides its name.
pub struct DaemonClaim<'a> {
    pub job: &'a Job,
    /// The host it was placed on, or `None` when it waits for its host.
    pub placed_on: Option<String>,
    /// The server that claims it and carries out its start.
    pub claimant: &'a str,
    pub waiting: Option<String>,
    /// The chosen host's placements key as the placement saw it.
    pub guard: Option<crate::placement::Guard>,
    /// The job's TCP container ports that get ambassador ports.
    pub service_ports: Vec<u16>,
    pub ports: PortRange,
    pub now: u64,
    /// The cluster id this server belongs to: the claim holds only while
    /// the store carries it (an emptied or foreign store gets nothing).
    pub cluster: Option<String>,
}

/// What became of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The job is in viking-proc, at this revision (that of its `starting`
    /// record, when it was placed).
    Yes(Revision),
    /// Another job was placed on the chosen host since the placement was
    /// decided: nothing was written; decide again.
    HostChanged,
    /// The store does not carry this server's cluster id (emptied, or
    /// another cluster's): nothing was written.
    NotMember,
}

/// Write a daemonized job to viking-proc (and, when placed, its start in
/// flight to viking-ps) and allocate its ambassador ports, in one
/// transaction that holds only if neither proc nor ps has its name and no
/// other job was placed on the chosen host since the placement saw it.
pub async fn claim_daemon(store: &dyn Store, c: DaemonClaim<'_>) -> Result<Claimed> {
    let name = &c.job.name;
    let rec = ProcRecord {
        job: c.job.clone(),
        created_at: c.now,
        placed_on: c.placed_on.clone(),
        waiting: c.waiting.clone(),
    };
    for _ in 0..RETRIES {
        // A service's instances share its ambassador ports.
        let service = c.job.service_name();
        let plan = plan_ports(store, service, &c.service_ports, c.ports).await?;
        let mut compares = vec![
            Compare::Absent(keys::proc(name)),
            Compare::Absent(keys::ps(name)),
        ];
        if service != name {
            // No job of the service's own name: the name is the service's.
            compares.push(Compare::Absent(keys::proc(service)));
        } else {
            // Nor a job named after a service with replicas.
            compares.push(Compare::Absent(keys::service(name)));
        }
        compares.extend(plan.compares);
        if let Some(id) = &c.cluster {
            compares.push(Compare::Value(
                keys::CLUSTER_ID.to_string(),
                id.clone().into_bytes(),
            ));
        }
        let mut ops = plan.ops;
        if let Some(g) = &c.guard {
            compares.push(g.compare());
            ops.push(Op::Put {
                key: keys::placements(&g.host),
                value: (g.claims + 1).to_string().into_bytes(),
                lease: None,
            });
        }
        if let Some(node) = &c.placed_on {
            // The start in flight, so the reconciler does not start it too.
            ops.push(Op::Put {
                key: keys::ps(name),
                value: encode(&starting_record(c.job, node, Some(c.claimant), c.now))?,
                lease: None,
            });
        }
        ops.push(Op::Put {
            key: keys::proc(name),
            value: encode(&rec)?,
            lease: None,
        });
        if service != name {
            ops.push(Op::Put {
                key: keys::service(service),
                value: Vec::new(),
                lease: None,
            });
        }
        let r = store.txn(compares, ops, vec![]).await?;
        if r.succeeded {
            return Ok(Claimed::Yes(r.revision));
        }
        if let Some(id) = &c.cluster {
            let held = store.get(keys::CLUSTER_ID).await?;
            if held.is_none_or(|kv| kv.value != id.as_bytes()) {
                return Ok(Claimed::NotMember);
            }
        }
        if name_in_use(store, name).await? {
            return Err(taken(name));
        }
        if service != name && name_in_use(store, service).await? {
            return Err(taken(service));
        }
        if service == name && store.get(&keys::service(name)).await?.is_some() {
            return Err(taken(name));
        }
        if let Some(g) = &c.guard {
            let now = store
                .get(&keys::placements(&g.host))
                .await?
                .map(|kv| kv.mod_revision);
            if now != g.revision {
                return Ok(Claimed::HostChanged);
            }
        }
        // Another allocation of ambassador ports came first: again.
    }
    Err(ServerError::Unavailable(format!(
        "claiming {name:?} kept racing with other allocations of ambassador ports; try again"
    )))
}

/// Record that the start claimed at `claim_rev` failed, if viking-ps is
/// still that claim: `failed`, with the error, so the reconciler's backoff
/// applies and `viking ps` shows why. `claim` is the claim's record when
/// the caller has it (else it is read).
pub async fn fail_start(
    store: &dyn Store,
    job: &str,
    claim_rev: Revision,
    claim: Option<PsRecord>,
    error: &str,
) -> Result<()> {
    let claim = match claim {
        Some(c) => c,
        None => match ps(store, job).await? {
            Some((rec, rev)) if rev == claim_rev => rec,
            _ => return Ok(()),
        },
    };
    let failed = PsRecord {
        status: Status::Failed,
        claimed_by: None,
        error: Some(error.to_string()),
        finished_at: Some(crate::now_ms()),
        ..claim
    };
    store
        .txn(
            vec![Compare::ModRevision(keys::ps(job), claim_rev)],
            vec![Op::Put {
                key: keys::ps(job),
                value: encode(&failed)?,
                lease: None,
            }],
            vec![],
        )
        .await?;
    Ok(())
}

async fn name_in_use(store: &dyn Store, name: &str) -> Result<bool> {
    Ok(
        store.get(&keys::proc(name)).await?.is_some()
            || store.get(&keys::ps(name)).await?.is_some(),
    )
}

/// Claim an interactive job's name in viking-ps for `node`; the claim's
/// revision.
pub async fn claim_attached(
    store: &dyn Store,
    job: &Job,
    node: &str,
    now: u64,
) -> Result<Revision> {
    let rec = PsRecord {
        status: Status::Created,
        ..starting_record(job, node, None, now)
    };
    let r = store
        .txn(
            vec![
                Compare::Absent(keys::proc(&job.name)),
                Compare::Absent(keys::ps(&job.name)),
            ],
            vec![Op::Put {
                key: keys::ps(&job.name),
                value: encode(&rec)?,
                lease: None,
            }],
            vec![],
        )
        .await?;
    if r.succeeded {
        Ok(r.revision)
    } else {
        Err(taken(&job.name))
    }
}

/// Release an interactive job's claim, unless it was replaced since
/// `claim_rev` or by a later write of this session (`node`'s, not
/// daemonized).
pub async fn release_attached(store: &dyn Store, name: &str, node: &str) -> Result<()> {
    let Some((p, rev)) = ps(store, name).await? else {
        return Ok(());
    };
    if p.node == node && !p.daemonize {
        store
            .txn(
                vec![Compare::ModRevision(keys::ps(name), rev)],
                vec![Op::Delete {
                    key: keys::ps(name),
                }],
                vec![],
            )
            .await?;
    }
    Ok(())
}

/// Write viking-ps and append the placement to the job's history, in one
/// transaction (tried again if the history changed meanwhile). With
/// `claim`, only while viking-ps is still the `starting` record written at
/// that revision: `false` when it is not (the job was moved, stopped or
/// removed meanwhile) and nothing was written. `read`: the history as the
/// start read it, if it did.
pub async fn record_started(
    store: &dyn Store,
    ps: &PsRecord,
    claim: Option<Revision>,
    now: u64,
    mut read: Option<(History, Revision)>,
) -> Result<bool> {
    for _ in 0..RETRIES {
        let (mut hist, rev) = match read.take() {
            Some(h) => h,
            None => history(store, &ps.job).await?,
        };
        hist.push(&ps.node, now);
        let hist_cmp = if rev == 0 {
            Compare::Absent(keys::history(&ps.job))
        } else {
            Compare::ModRevision(keys::history(&ps.job), rev)
        };
        let mut compares = vec![hist_cmp];
        if let Some(c) = claim {
            compares.push(Compare::ModRevision(keys::ps(&ps.job), c));
        }
        let r = store
            .txn(
                compares,
                vec![
                    Op::Put {
                        key: keys::ps(&ps.job),
                        value: encode(ps)?,
                        lease: None,
                    },
                    Op::Put {
                        key: keys::history(&ps.job),
                        value: encode(&hist)?,
                        lease: None,
                    },
                ],
                vec![],
            )
            .await?;
        if r.succeeded {
            return Ok(true);
        }
        if let Some(c) = claim {
            if !claim_holds(store, &ps.job, c).await? {
                return Ok(false);
            }
        }
    }
    Err(ServerError::Unavailable(format!(
        "could not record job {:?}: its history kept changing",
        ps.job
    )))
}

/// Whether a job's viking-ps record is still the one written at `claim`
/// (the `starting` record of a start in flight).
pub async fn claim_holds(store: &dyn Store, name: &str, claim: Revision) -> Result<bool> {
    Ok(matches!(
        store.get(&keys::ps(name)).await?,
        Some(kv) if kv.mod_revision == claim
    ))
}

/// Write a viking-ps record only if it is still at `rev` (so a record that
/// a concurrent `rm` deleted is never brought back); its new revision, or
/// `None` when it had changed.
pub async fn put_ps_if(
    store: &dyn Store,
    ps: &PsRecord,
    rev: Revision,
) -> Result<Option<Revision>> {
    let r = store
        .txn(
            vec![Compare::ModRevision(keys::ps(&ps.job), rev)],
            vec![Op::Put {
                key: keys::ps(&ps.job),
                value: encode(ps)?,
                lease: None,
            }],
            vec![],
        )
        .await?;
    Ok(r.succeeded.then_some(r.revision))
}

/// Make the records under `prefix` (one per name, at `prefix` + name) equal
/// to `want`, writing only those that differ from `published` (what this
/// writer wrote last; read from the store when `None`) and deleting those
/// not wanted; `published` becomes `want`. For the indexes the leader
/// publishes: idempotent, so a new leader or a round after a crash writes
/// only what differs.
pub async fn publish_index<T: Record + Clone + PartialEq>(
    store: &dyn Store,
    prefix: &str,
    want: BTreeMap<String, T>,
    published: &mut Option<BTreeMap<String, T>>,
) -> Result<()> {
    let have = match published.take() {
        Some(h) => h,
        None => {
            let (kvs, _) = store.list(prefix).await?;
            kvs.iter()
                .filter_map(|kv| {
                    let name = keys::name_of(prefix, &kv.key)?;
                    Some((name.to_string(), decode::<T>(&kv.value).ok()?))
                })
                .collect()
        }
    };
    let mut ops = Vec::new();
    for (name, r) in &want {
        if have.get(name) != Some(r) {
            ops.push(Op::Put {
                key: format!("{prefix}{name}"),
                value: encode(r)?,
                lease: None,
            });
        }
    }
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        ops.push(Op::Delete {
            key: format!("{prefix}{name}"),
        });
    }
    // In transactions of at most 64 operations (etcd's default limit is 128).
    for chunk in ops.chunks(64) {
        store.txn(vec![], chunk.to_vec(), vec![]).await?;
    }
    *published = Some(want);
    Ok(())
}
