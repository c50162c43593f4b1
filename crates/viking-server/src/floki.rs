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

use std::time::Duration;

use std::sync::Arc;

use viking_client::api::HostView;
use viking_core::keys;
use viking_core::records::{decode, encode, HostRecord};
use viking_store::{Compare, Election, LeaseId, Op, Revision, StoreError};

use crate::error::ServerError;
use crate::state;
use crate::{now_ms, Shared};

/// How often the load in the record is refreshed.
const LOAD_REFRESH: Duration = Duration::from_secs(2);

/// Every server floki knows, alive or gone, sorted by name.
pub async fn list(sh: &Shared) -> Result<Vec<HostView>, ServerError> {
    let alive: Vec<HostRecord> = state::list(sh.store.as_ref(), keys::HOSTS).await?;
    let known: Vec<HostRecord> = state::list(sh.store.as_ref(), keys::FLEET).await?;
    let leader = Election::new(sh.store.clone(), "reconciler")
        .leader()
        .await?;
    Ok(viking_core::records::fleet(alive, known)
        .into_iter()
        .map(|(host, alive)| HostView {
            leader: alive && leader.as_deref() == Some(host.name.as_str()),
            host: viking_client::wire::Host::from(&host),
            alive,
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
        memory_used: sh.memory_used.load(std::sync::atomic::Ordering::Relaxed),
        version: crate::VERSION.to_string(),
        started_at: sh.started_at,
        updated_at: now_ms(),
        server_id: sh.server_id.clone(),
        held: sh.standing().held(),
    }
}

/// Write this server's records, if `hosts/<name>` is as `guard` says
/// (absent, or last written at a revision this server knows is its own).
/// The revision of the write, or `None` when the guard did not hold.
async fn publish(
    sh: &Shared,
    lease: LeaseId,
    guard: Compare,
) -> Result<Option<Revision>, ServerError> {
    let rec = encode(&record(sh).await)?;
    let r = sh
        .store
        .txn(
            vec![guard],
            vec![
                Op::Put {
                    key: keys::host(&sh.config.name),
                    value: rec.clone(),
                    lease: Some(lease),
                },
                Op::Put {
                    key: keys::fleet(&sh.config.name),
                    value: rec,
                    lease: None,
                },
            ],
            vec![],
        )
        .await?;
    Ok(r.succeeded.then_some(r.revision))
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
async fn try_register(sh: &Shared) -> Result<Result<(LeaseId, Revision), HostRecord>, ServerError> {
    loop {
        let guard = match holder(sh).await? {
            Holder::Nobody => Compare::Absent(keys::host(&sh.config.name)),
            Holder::Us(rev) => Compare::ModRevision(keys::host(&sh.config.name), rev),
            Holder::Other(rec) => return Ok(Err(*rec)),
        };
        let lease = sh.store.lease_grant(sh.config.host_ttl).await?;
        match publish(sh, lease, guard).await {
            Ok(Some(rev)) => return Ok(Ok((lease, rev))),
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
pub async fn join(sh: &Shared) -> Result<(LeaseId, Revision), ServerError> {
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

/// Stay registered until shutdown. A host whose Docker engine stops
/// answering for a TTL is treated as gone: its lease is revoked, so the
/// reconciler moves its jobs, and it registers again when Docker is back.
/// Every write is conditional on the record being this server's last: if
/// another server with the same name registered meanwhile (this one was
/// cut off longer than its lease), this server stops with an error.
pub async fn register(sh: Arc<Shared>, first: (LeaseId, Revision)) {
    let ttl = sh.config.host_ttl;
    let beat = (ttl / 3).max(Duration::from_millis(200));
    let mut shutdown = sh.shutdown.clone();
    let mut current: Option<(LeaseId, Revision)> = Some(first);
    let mut last_publish = tokio::time::Instant::now();
    let mut docker_down_since: Option<tokio::time::Instant> = None;
    loop {
        let docker_ok = tokio::time::timeout(beat.max(Duration::from_secs(1)), sh.runtime.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if docker_ok {
            docker_down_since = None;
        } else {
            let since = *docker_down_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= ttl {
                if let Some((id, _)) = current.take() {
                    tracing::error!("Docker is not answering: leaving floki until it does");
                    let _ = sh.store.lease_revoke(id).await;
                }
            }
        }
        let step = async {
            let (id, rev) = match current {
                Some((id, rev)) => match sh.store.lease_keep_alive(id).await {
                    Ok(()) => (id, rev),
                    Err(StoreError::LeaseNotFound(_)) => {
                        tracing::warn!("floki lease expired; registering again");
                        current = None;
                        return Ok(true);
                    }
                    Err(e) => return Err(e.into()),
                },
                None if docker_ok => match try_register(&sh).await? {
                    Ok(registered) => {
                        current = Some(registered);
                        last_publish = tokio::time::Instant::now();
                        tracing::info!(name = %sh.config.name, "registered in floki again");
                        // Back from a partition: drop copies of jobs that moved.
                        sh.resync_now.notify_one();
                        registered
                    }
                    Err(other) => {
                        tracing::error!("{}", name_taken(&sh.config.name, &other));
                        return Ok(false);
                    }
                },
                None => return Ok(true),
            };
            if last_publish.elapsed() >= LOAD_REFRESH && docker_ok {
                let guard = Compare::ModRevision(keys::host(&sh.config.name), rev);
                match publish(&sh, id, guard).await? {
                    Some(rev) => current = Some((id, rev)),
                    None => match holder(&sh).await? {
                        Holder::Other(other) => {
                            tracing::error!("{}", name_taken(&sh.config.name, &other));
                            return Ok(false);
                        }
                        // Gone with the lease, or rewritten by this server's
                        // id elsewhere: register again.
                        Holder::Nobody | Holder::Us(_) => {
                            let _ = sh.store.lease_revoke(id).await;
                            current = None;
                        }
                    },
                }
                last_publish = tokio::time::Instant::now();
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
            _ = crate::stopped(&mut shutdown) => break,
        }
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
