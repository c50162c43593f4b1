//! floki: this server's entry in the fleet registry.
//!
//! The server registers under a lease at `hosts/<name>` (name, addresses,
//! tags, capacity, load, version, start time) and keeps the lease alive;
//! when the server dies its entry expires after the TTL. A durable copy at
//! `fleet/<name>` remembers the server after that, so `viking hosts` can
//! say since when it is gone. If the lease is lost (a partition longer than
//! the TTL), the server registers again with a new lease.

use std::time::Duration;

use std::sync::Arc;

use viking_client::api::HostView;
use viking_core::keys;
use viking_core::records::{decode, encode, HostRecord};
use viking_store::{Election, LeaseId, Op, StoreError};

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

async fn record(sh: &Shared) -> HostRecord {
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
    }
}

async fn publish(sh: &Shared, lease: LeaseId) -> Result<(), StoreError> {
    let rec = encode(&record(sh).await).map_err(|e| StoreError::Invalid(e.0))?;
    sh.store
        .txn(
            vec![],
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
        .await
        .map(|_| ())
}

/// Register once, before the server answers requests.
pub async fn join(sh: &Shared) -> Result<LeaseId, StoreError> {
    let id = sh.store.lease_grant(sh.config.host_ttl).await?;
    publish(sh, id).await?;
    tracing::info!(name = %sh.config.name, "registered in floki");
    Ok(id)
}

/// Stay registered until shutdown. A host whose Docker engine stops
/// answering for a TTL is treated as gone: its lease is revoked, so the
/// reconciler moves its jobs, and it registers again when Docker is back.
pub async fn register(sh: Arc<Shared>, first: LeaseId) {
    let ttl = sh.config.host_ttl;
    let beat = (ttl / 3).max(Duration::from_millis(200));
    let mut shutdown = sh.shutdown.clone();
    let mut lease: Option<LeaseId> = Some(first);
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
                if let Some(id) = lease.take() {
                    tracing::error!("Docker is not answering: leaving floki until it does");
                    let _ = sh.store.lease_revoke(id).await;
                }
            }
        }
        let step = async {
            let id = match lease {
                Some(id) => match sh.store.lease_keep_alive(id).await {
                    Ok(()) => id,
                    Err(StoreError::LeaseNotFound(_)) => {
                        tracing::warn!("floki lease expired; registering again");
                        lease = None;
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                },
                None if docker_ok => {
                    let id = sh.store.lease_grant(ttl).await?;
                    publish(&sh, id).await?;
                    last_publish = tokio::time::Instant::now();
                    lease = Some(id);
                    tracing::info!(name = %sh.config.name, "registered in floki again");
                    // Back from a partition: drop copies of jobs that moved.
                    sh.resync_now.notify_one();
                    id
                }
                None => return Ok(()),
            };
            if last_publish.elapsed() >= LOAD_REFRESH && docker_ok {
                publish(&sh, id).await?;
                last_publish = tokio::time::Instant::now();
            }
            Ok::<(), StoreError>(())
        };
        if let Err(e) = step.await {
            tracing::warn!("floki registration: {e}");
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
