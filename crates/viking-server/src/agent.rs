//! The host agent: keeps this host's viking-ps true from its Docker engine.
//!
//! It follows Docker's event stream for viking's containers and brings the
//! job's record up to date on every start, stop and exit; a full resync runs
//! at start, after the event stream breaks, when floki re-registers after a
//! partition, and periodically, so a missed event is corrected within one
//! period. For each of this host's containers it applies the same rules:
//!
//! - the container the job's viking-ps record names: refresh the record;
//! - a daemonized job that is not in viking-proc any more (stopped or removed,
//!   perhaps while this host was cut off): stop it, and remove it if no
//!   record is left;
//! - a copy of a job whose record now names another host or container (the
//!   job moved while this host was cut off): remove it, so exactly one copy
//!   runs;
//! - an interactive job's container whose client is gone: remove it.
//!
//! Architecture invariant: the agent only writes records of its own host
//! (`node == this server`) and only touches containers labelled by viking
//! for this cluster and this node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use viking_core::records::{decode, encode, PsRecord};
use viking_core::{keys, Status};
use viking_docker::ContainerInfo;
use viking_store::{Compare, Op, StoreExt};

use crate::error::ServerError;
use crate::Shared;

/// Follow Docker's events and resync periodically, until shutdown.
pub async fn run(sh: Arc<Shared>) {
    let mut shutdown = sh.shutdown.clone();
    let mut ticker = tokio::time::interval(sh.config.resync);
    ticker.tick().await;
    'outer: loop {
        let mut events = sh.runtime.events_for(&sh.config.key);
        loop {
            tokio::select! {
                _ = crate::stopped(&mut shutdown) => break 'outer,
                _ = ticker.tick() => resync_logged(&sh, "periodic resync").await,
                _ = sh.resync_now.notified() => resync_logged(&sh, "resync").await,
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        if matches!(ev.action.as_str(), "start" | "die" | "stop" | "kill" | "destroy" | "oom" | "restart" | "pause" | "unpause") {
                            if let Err(e) = sync_one(&sh, &ev.id, &ev.job).await {
                                tracing::warn!(job = %ev.job, "updating viking-ps after {}: {}", ev.action, e);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!("docker event stream: {e}; reconnecting");
                        break;
                    }
                    None => break,
                },
            }
        }
        // The stream broke: events may have been missed.
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => break 'outer,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        resync_logged(&sh, "resync after the event stream broke").await;
    }
}

async fn resync_logged(sh: &Shared, what: &str) {
    if let Err(e) = resync(sh).await {
        tracing::warn!("{what}: {e:#}");
    }
}

async fn get_ps(sh: &Shared, job: &str) -> Result<Option<(PsRecord, i64)>, ServerError> {
    match sh.store.get(&keys::ps(job)).await? {
        Some(kv) => Ok(Some((decode(&kv.value)?, kv.mod_revision))),
        None => Ok(None),
    }
}

/// Apply the rules to one container after a Docker event.
async fn sync_one(sh: &Shared, id: &str, job: &str) -> Result<(), ServerError> {
    let rec = get_ps(sh, job).await?;
    match sh.runtime.inspect(id).await? {
        Some(c) if c.node == sh.config.name && c.cluster == sh.config.key => {
            let in_proc = sh.store.get(&keys::proc(job)).await?.is_some();
            apply_rules(sh, &c, rec, in_proc).await
        }
        Some(_) => Ok(()),
        // Destroyed: the record says missing, if it named this container.
        None => {
            if let Some((r, rev)) = rec {
                if r.node == sh.config.name && r.container_id == id && r.daemonize {
                    mark_missing(sh, &r, rev).await?;
                }
            }
            Ok(())
        }
    }
}

async fn apply_rules(
    sh: &Shared,
    c: &ContainerInfo,
    rec: Option<(PsRecord, i64)>,
    in_proc: bool,
) -> Result<(), ServerError> {
    if !c.daemonize {
        // An interactive job's container outlives its session only if this
        // server died during it: nobody can attach again.
        if !sh.in_session(&c.job) {
            tracing::info!(job = %c.job, "removing the container of an interactive job whose client is gone");
            sh.runtime.remove(&c.id, true).await?;
        }
        return Ok(());
    }
    let mine = |r: &PsRecord| r.node == sh.config.name && r.container_id == c.id;
    match rec {
        // Being started right now by this server: the starter records it.
        Some((r, _)) if r.node == sh.config.name && r.status == Status::Starting => Ok(()),
        Some((r, _)) if mine(&r) => {
            if !in_proc && c.status == "running" {
                tracing::info!(job = %c.job, "stopping a job that is not in viking-proc any more");
                sh.runtime.stop(&c.id, 10).await?;
            }
            crate::container::refresh_ps(sh, &c.job).await?;
            Ok(())
        }
        Some((r, _)) => {
            tracing::info!(job = %c.job, now_on = %r.node, "removing a stale copy of a job that moved");
            sh.runtime.remove(&c.id, true).await?;
            Ok(())
        }
        None if in_proc => {
            // Started, but the server died before it wrote viking-ps.
            let fresh = crate::container::ps_from(sh, c, 0);
            sh.store
                .txn(
                    vec![Compare::Absent(keys::ps(&c.job))],
                    vec![Op::Put {
                        key: keys::ps(&c.job),
                        value: encode(&fresh)?,
                        lease: None,
                    }],
                    vec![],
                )
                .await?;
            Ok(())
        }
        None => {
            tracing::info!(job = %c.job, "removing a container that no job claims");
            sh.runtime.remove(&c.id, true).await?;
            Ok(())
        }
    }
}

async fn mark_missing(sh: &Shared, rec: &PsRecord, rev: i64) -> Result<(), ServerError> {
    if rec.status == Status::Missing {
        return Ok(());
    }
    let mut gone = rec.clone();
    gone.status = Status::Missing;
    gone.error = Some("the container vanished from Docker".to_string());
    if gone.finished_at.is_none() {
        gone.finished_at = Some(crate::now_ms());
    }
    sh.store
        .cas(&keys::ps(&rec.job), rev, encode(&gone)?)
        .await?;
    Ok(())
}

/// Compare every viking container of this host with viking-ps and
/// viking-proc, and make the records true.
pub async fn resync(sh: &Shared) -> anyhow::Result<()> {
    resync_inner(sh, false).await
}

/// The first resync after the server starts.
pub async fn initial_resync(sh: &Shared) -> anyhow::Result<()> {
    resync_inner(sh, true).await
}

async fn resync_inner(sh: &Shared, initial: bool) -> anyhow::Result<()> {
    let containers: Vec<ContainerInfo> = sh
        .runtime
        .list(&sh.config.key)
        .await?
        .into_iter()
        .filter(|c| c.node == sh.config.name)
        .collect();
    let (ps_kvs, _) = sh.store.list(keys::PS).await?;
    let mut records: HashMap<String, (PsRecord, i64)> = HashMap::new();
    for kv in ps_kvs {
        let rec: PsRecord = decode(&kv.value)?;
        records.insert(rec.job.clone(), (rec, kv.mod_revision));
    }
    let (proc_kvs, _) = sh.store.list(keys::PROC).await?;
    let procs: HashSet<String> = proc_kvs
        .iter()
        .filter_map(|kv| keys::name_of(keys::PROC, &kv.key).map(str::to_string))
        .collect();

    let ids: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
    let running: Vec<&ContainerInfo> = containers
        .iter()
        .filter(|c| c.status == "running")
        .collect();
    let memory: u64 = running
        .iter()
        .filter_map(|c| viking_docker::container_memory(&c.id))
        .sum();
    sh.running
        .store(running.len() as u64, std::sync::atomic::Ordering::Relaxed);
    sh.memory_used
        .store(memory, std::sync::atomic::Ordering::Relaxed);
    for c in &containers {
        let rec = records.get(&c.job).cloned();
        if let Err(e) = apply_rules(sh, c, rec, procs.contains(&c.job)).await {
            tracing::warn!(job = %c.job, "resync: {}", e);
        }
    }
    // Records of this host whose container is gone.
    for (name, (rec, rev)) in &records {
        if rec.node != sh.config.name || ids.contains(rec.container_id.as_str()) {
            continue;
        }
        let outcome = if !rec.daemonize {
            // A fresh claim may belong to a session that is being set up
            // (possibly by another server); only old ones are leftovers.
            let fresh = crate::now_ms().saturating_sub(rec.created_at) < 60_000;
            if !sh.in_session(name) && !fresh {
                sh.store
                    .delete(&keys::ps(name))
                    .await
                    .map(|_| ())
                    .map_err(ServerError::from)
            } else {
                Ok(())
            }
        } else if rec.status == Status::Starting {
            // At start-up no start of this server is in flight: one that was
            // cut short by a restart failed, and the reconciler retries it.
            if initial {
                let mut failed = rec.clone();
                failed.status = Status::Failed;
                failed.error = Some("the server restarted while starting it".to_string());
                failed.finished_at = Some(crate::now_ms());
                sh.store
                    .cas(&keys::ps(name), *rev, encode(&failed)?)
                    .await
                    .map(|_| ())
                    .map_err(ServerError::from)
            } else {
                Ok(())
            }
        } else if !rec.container_id.is_empty() {
            mark_missing(sh, rec, *rev).await
        } else {
            Ok(())
        };
        if let Err(e) = outcome {
            tracing::warn!(job = %name, "resync: {}", e);
        }
    }
    Ok(())
}
