//! floki: this server's entry in the fleet registry.
//!
//! The server registers under a lease at `hosts/<name>` (name, addresses,
//! tags, capacity, load, version, start time) and keeps the lease alive;
//! when the server dies its entry expires after the TTL. A durable copy at
//! `fleet/<name>` remembers the server after that, so `viking hosts` can
//! say since when it is gone. If the lease is lost (a partition longer than
//! the TTL), the server registers again with a new lease.
//!
//! One name, one server: the entry carries the server's id, and every write
//! is conditional (the key absent, or last written by this server), so a
//! second server with the same name is refused instead of overwriting it.
//!
//! Quiet when idle: liveness is the lease alone (keep-alives write nothing
//! to the store's history). The record is written again only when
//! something in it changed (the load figures rounded, so noise is not a
//! change; `updated_at` alone never is), at most every
//! [`MIN_PUBLISH_GAP`]. The durable `fleet/<name>` alone is refreshed every
//! [`FLEET_REFRESH`], so when a server's lease expires its `fleet/` record
//! says when it was last known alive, to within that: `viking hosts` shows
//! "gone since" that time. (`hosts/` is not rewritten for it, so nothing
//! that watches `hosts/` wakes up for an idle server.)
//!
//! Docker's liveness: one ping a second ([`PING_EVERY`]); after
//! `--docker-ping-failures` failed pings in a row (default 3) the server
//! leaves floki (revokes its lease: its jobs move) until Docker answers
//! again. One slow answer does not move a host's jobs.

use std::time::Duration;

use std::sync::Arc;

use viking_client::api::HostView;
use viking_core::keys;
use viking_core::records::{decode, encode, HostRecord};
use viking_store::{Compare, Election, LeaseId, Op, Revision, StoreError};

use crate::error::ServerError;
use crate::state;
use crate::{now_ms, Shared};

/// The shortest time between two writes of the record (a change in the
/// load waits that long).
pub const MIN_PUBLISH_GAP: Duration = Duration::from_secs(2);
/// How often `fleet/<name>` is refreshed while nothing changes.
pub const FLEET_REFRESH: Duration = Duration::from_secs(60);
/// How often Docker is pinged, and how long one ping may take.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// The memory figure is published rounded down to its first
/// `MEMORY_BITS` significant bits (within 1/8 of its value), so noise
/// never causes a write while small figures stay above zero.
const MEMORY_BITS: u32 = 4;

/// Every server floki knows, alive or gone, sorted by name.
pub async fn list(sh: &Shared) -> Result<Vec<HostView>, ServerError> {
    let alive: Vec<HostRecord> = state::list(sh.store.as_ref(), keys::HOSTS).await?;
    let known: Vec<HostRecord> = state::list(sh.store.as_ref(), keys::FLEET).await?;
    let leader = Election::new(sh.store.clone(), "reconciler")
        .leader()
        .await?;
    // What each host's jobs reserve, from the leader's index.
    let reserved: std::collections::HashMap<String, viking_core::job::Reservation> =
        state::list::<viking_core::records::AssignedRecord>(sh.store.as_ref(), keys::ASSIGNED)
            .await?
            .into_iter()
            .map(|r| (r.host, r.reserved))
            .collect();
    Ok(viking_core::records::fleet(alive, known)
        .into_iter()
        .map(|(host, alive)| {
            let r = reserved.get(&host.name).copied().unwrap_or_default();
            HostView {
                leader: alive && leader.as_deref() == Some(host.name.as_str()),
                host: viking_client::wire::Host::from(&host),
                alive,
                reserved_memory: r.memory,
                reserved_millicpus: r.cpus,
            }
        })
        .collect())
}

/// This server's record as floki publishes it now.
pub async fn record(sh: &Shared) -> HostRecord {
    let (cpus, memory) = (sh.engine.cpus, sh.engine.memory);
    let running = sh.running.load(std::sync::atomic::Ordering::Relaxed);
    HostRecord {
        name: sh.config.name.clone(),
        ip: sh.config.ip.clone(),
        api: sh.config.api_url(),
        tags: sh.config.tags.clone(),
        cpus,
        memory,
        running,
        memory_used: round_memory(sh.memory_used.load(std::sync::atomic::Ordering::Relaxed)),
        // In tenths of a CPU: a busy host rewrites its record only when
        // its figure moves by one.
        cpu_used: sh.cpu_used.load(std::sync::atomic::Ordering::Relaxed) / 100 * 100,
        version: crate::VERSION.to_string(),
        started_at: sh.started_at,
        updated_at: now_ms(),
        server_id: sh.server_id.clone(),
        held: sh.standing().held(),
    }
}

/// Memory in use as published: rounded down to its first
/// [`MEMORY_BITS`] significant bits.
fn round_memory(bytes: u64) -> u64 {
    let bits = u64::BITS - bytes.leading_zeros();
    let shift = bits.saturating_sub(MEMORY_BITS);
    (bytes >> shift) << shift
}

/// Whether two records say the same (the time they were written aside).
fn same_content(a: &HostRecord, b: &HostRecord) -> bool {
    HostRecord {
        updated_at: 0,
        ..a.clone()
    } == HostRecord {
        updated_at: 0,
        ..b.clone()
    }
}

/// Write `rec` as this server's records (`hosts/<name>` under the lease
/// and the durable `fleet/<name>`; only `fleet/` when `fleet_only`), if
/// `hosts/<name>` is as `guard` says (absent, or last written at a
/// revision this server knows is its own). The revision of `hosts/<name>`
/// afterwards, or `None` when the guard did not hold.
async fn write_record(
    sh: &Shared,
    lease: LeaseId,
    guard: Compare,
    rec: &HostRecord,
    fleet_only: bool,
) -> Result<Option<Revision>, ServerError> {
    let value = encode(rec)?;
    let mut ops = vec![Op::Put {
        key: keys::fleet(&sh.config.name),
        value: value.clone(),
        lease: None,
    }];
    if !fleet_only {
        ops.push(Op::Put {
            key: keys::host(&sh.config.name),
            value,
            lease: Some(lease),
        });
    }
    let kept = match &guard {
        Compare::ModRevision(_, rev) if fleet_only => Some(*rev),
        _ => None,
    };
    let r = sh.store.txn(vec![guard], ops, vec![]).await?;
    Ok(r.succeeded.then(|| kept.unwrap_or(r.revision)))
}

/// Write this server's record as it is now; see [`write_record`].
async fn publish(
    sh: &Shared,
    lease: LeaseId,
    guard: Compare,
) -> Result<Option<(Revision, HostRecord)>, ServerError> {
    let rec = record(sh).await;
    Ok(write_record(sh, lease, guard, &rec, false)
        .await?
        .map(|rev| (rev, rec)))
}

/// This server's registration: its lease, the revision of its last write
/// of `hosts/<name>` (every write is conditional on it) and what it wrote.
#[derive(Debug, Clone)]
pub struct Registered {
    pub lease: LeaseId,
    pub revision: Revision,
    pub published: HostRecord,
}

/// Who holds this server's name in floki now.
enum Holder {
    /// Nobody: the name is free.
    Nobody,
    /// This server (the same id: a restart, or its own earlier lease), whose
    /// record was last written at this revision.
    Us(Revision),
    /// Another server with the same name.
    Other(Box<HostRecord>),
}

async fn holder(sh: &Shared) -> Result<Holder, ServerError> {
    let Some(kv) = sh.store.get(&keys::host(&sh.config.name)).await? else {
        return Ok(Holder::Nobody);
    };
    let rec: HostRecord = decode(&kv.value)?;
    Ok(if rec.server_id == sh.server_id {
        Holder::Us(kv.mod_revision)
    } else {
        Holder::Other(Box::new(rec))
    })
}

/// Register under a new lease if the name is free or ours; `None` while
/// another server holds it.
async fn try_register(sh: &Shared) -> Result<Result<Registered, HostRecord>, ServerError> {
    loop {
        let guard = match holder(sh).await? {
            Holder::Nobody => Compare::Absent(keys::host(&sh.config.name)),
            Holder::Us(rev) => Compare::ModRevision(keys::host(&sh.config.name), rev),
            Holder::Other(rec) => return Ok(Err(*rec)),
        };
        let lease = sh.store.lease_grant(sh.config.host_ttl).await?;
        match publish(sh, lease, guard).await {
            Ok(Some((rev, rec))) => {
                return Ok(Ok(Registered {
                    lease,
                    revision: rev,
                    published: rec,
                }))
            }
            // The record changed between the read and the write: look again.
            Ok(None) => {
                let _ = sh.store.lease_revoke(lease).await;
            }
            Err(e) => {
                let _ = sh.store.lease_revoke(lease).await;
                return Err(e);
            }
        }
    }
}

fn name_taken(name: &str, other: &HostRecord) -> ServerError {
    ServerError::Conflict(format!(
        "another server named {name:?} is alive (ip {}, API {}, up since {} ms after the epoch): \
         two servers cannot share a name; start this one with another --name",
        other.ip, other.api, other.started_at
    ))
}

/// Register once, before the server answers requests. The name must be
/// free or this server's own (same server id). A record of another server
/// is waited out for up to twice the TTL, time for the lease of a server
/// that crashed to expire; if it is still alive then, this server is
/// refused.
pub async fn join(sh: &Shared) -> Result<Registered, ServerError> {
    let ttl = sh.config.host_ttl;
    let deadline = tokio::time::Instant::now() + ttl * 2 + Duration::from_secs(1);
    let mut said = false;
    loop {
        match try_register(sh).await? {
            Ok(registered) => {
                tracing::info!(name = %sh.config.name, "registered in floki");
                return Ok(registered);
            }
            Err(other) if tokio::time::Instant::now() >= deadline => {
                return Err(name_taken(&sh.config.name, &other));
            }
            Err(other) => {
                if !said {
                    tracing::warn!(
                        name = %sh.config.name,
                        ip = %other.ip,
                        "another server holds this name in floki; waiting for its lease to expire"
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Ping Docker every [`PING_EVERY`] (each ping given that long) and tell
/// how many failed in a row, until `tx` has no receiver.
async fn ping_docker(sh: Arc<Shared>, tx: tokio::sync::watch::Sender<u32>) {
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => return,
        }
        let ok = tokio::time::timeout(PING_EVERY, sh.runtime.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        failures = if ok { 0 } else { failures.saturating_add(1) };
        // Only a change wakes floki up.
        tx.send_if_modified(|v| std::mem::replace(v, failures) != failures);
    }
}

/// Stay registered until shutdown: keep the lease alive, and write the
/// record again only when it changed (see the module docs). A host whose
/// Docker engine failed `--docker-ping-failures` pings in a row is treated
/// as gone: its lease is revoked, so the reconciler moves its jobs, and it
/// registers again when Docker answers. Every write is conditional on the
/// record being this server's last: if another server with the same name
/// registered meanwhile (this one was cut off longer than its lease), this
/// server stops with an error.
pub async fn register(sh: Arc<Shared>, first: Registered) {
    let ttl = sh.config.host_ttl;
    let beat = (ttl / 3).max(Duration::from_millis(200));
    let max_failures = sh.config.docker_ping_failures.max(1);
    let mut shutdown = sh.shutdown.clone();
    let mut current: Option<Registered> = Some(first);
    let mut last_publish = tokio::time::Instant::now();
    let mut last_fleet = last_publish;
    let (ping_tx, mut ping_rx) = tokio::sync::watch::channel(0u32);
    let pinger = tokio::spawn(ping_docker(sh.clone(), ping_tx));
    let _pinger = AbortOnDrop(pinger);
    let mut pinging = true;
    loop {
        let failures = *ping_rx.borrow_and_update();
        let docker_ok = failures == 0;
        if failures >= max_failures {
            if let Some(reg) = current.take() {
                tracing::error!(
                    failures,
                    "Docker did not answer {failures} pings in a row: leaving floki until it does"
                );
                let _ = sh.store.lease_revoke(reg.lease).await;
            }
        }
        let step = async {
            let reg = match current.take() {
                Some(reg) => match sh.store.lease_keep_alive(reg.lease).await {
                    Ok(()) => reg,
                    Err(StoreError::LeaseNotFound(_)) => {
                        tracing::warn!("floki lease expired; registering again");
                        return Ok(true);
                    }
                    Err(e) => {
                        current = Some(reg);
                        return Err(e.into());
                    }
                },
                None if docker_ok => match try_register(&sh).await? {
                    Ok(registered) => {
                        last_publish = tokio::time::Instant::now();
                        last_fleet = last_publish;
                        tracing::info!(name = %sh.config.name, "registered in floki again");
                        // Back from a partition: drop copies of jobs that moved.
                        sh.resync_now.notify_one();
                        current = Some(registered);
                        return Ok(true);
                    }
                    Err(other) => {
                        tracing::error!("{}", name_taken(&sh.config.name, &other));
                        return Ok(false);
                    }
                },
                None => return Ok(true),
            };
            let now = record(&sh).await;
            let changed = !same_content(&now, &reg.published);
            let due = if changed {
                last_publish.elapsed() >= MIN_PUBLISH_GAP
            } else {
                last_fleet.elapsed() >= FLEET_REFRESH
            };
            if !due || !docker_ok {
                current = Some(reg);
                return Ok(true);
            }
            let guard = Compare::ModRevision(keys::host(&sh.config.name), reg.revision);
            let fleet_only = !changed;
            match write_record(&sh, reg.lease, guard, &now, fleet_only).await {
                Ok(Some(rev)) => {
                    last_fleet = tokio::time::Instant::now();
                    if changed {
                        last_publish = last_fleet;
                    }
                    current = Some(Registered {
                        lease: reg.lease,
                        revision: rev,
                        published: if changed { now } else { reg.published },
                    });
                }
                Ok(None) => match holder(&sh).await? {
                    Holder::Other(other) => {
                        tracing::error!("{}", name_taken(&sh.config.name, &other));
                        return Ok(false);
                    }
                    // Gone with the lease, or rewritten by this server's
                    // id elsewhere: register again.
                    Holder::Nobody | Holder::Us(_) => {
                        let _ = sh.store.lease_revoke(reg.lease).await;
                    }
                },
                Err(e) => {
                    current = Some(reg);
                    return Err(e);
                }
            }
            Ok::<bool, ServerError>(true)
        };
        match step.await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!("floki registration: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(beat) => {}
            // A failed ping is acted on at once, not a beat later.
            r = ping_rx.changed(), if pinging => {
                if r.is_err() {
                    tracing::error!("floki's Docker pings stopped");
                    pinging = false;
                }
            }
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
}

/// Aborts a task when dropped (floki's pinger ends with floki).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A host's record from the store, alive or not.
pub async fn host(sh: &Shared, name: &str) -> Result<Option<HostRecord>, ServerError> {
    for key in [keys::host(name), keys::fleet(name)] {
        if let Some(kv) = sh.store.get(&key).await? {
            return Ok(Some(decode(&kv.value)?));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(running: u64, memory_used: u64, updated_at: u64) -> HostRecord {
        HostRecord {
            name: "n1".into(),
            ip: "10.0.0.1".into(),
            api: "http://10.0.0.1:8791".into(),
            tags: vec![],
            cpus: 4,
            memory: 8 << 30,
            running,
            memory_used: round_memory(memory_used),
            cpu_used: 0,
            version: "1".into(),
            started_at: 1,
            updated_at,
            server_id: "id".into(),
            held: None,
        }
    }

    #[test]
    fn the_time_alone_or_memory_noise_is_no_change() {
        let base = rec(2, 300 << 20, 1_000);
        assert!(same_content(&base, &rec(2, 300 << 20, 9_000)));
        // Ten megabytes either way (within one 32 MiB step): no change.
        assert!(same_content(&base, &rec(2, 290 << 20, 9_000)));
        assert!(same_content(&base, &rec(2, 310 << 20, 9_000)));
        // A job more, or a tenth more memory: a change.
        assert!(!same_content(&base, &rec(3, 300 << 20, 1_000)));
        assert!(!same_content(&base, &rec(2, 330 << 20, 1_000)));
        // Within an eighth below, never above; small figures stay above 0.
        for b in [1u64, 7, 900 << 10, 300 << 20, u64::MAX] {
            let r = round_memory(b);
            assert!(r <= b && r >= b - b / 8 && r > 0, "{b} -> {r}");
        }
        assert_eq!(round_memory(0), 0);
    }
}
