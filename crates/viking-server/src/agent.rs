//! The host agent: keeps this host's viking-ps true from its Docker engine.
//!
//! It follows Docker's event stream for viking's containers and updates a
//! job's record on every start, stop and exit; a full resync runs at start,
//! after the event stream breaks, and periodically, so a missed event is
//! corrected within one period. The resync also cleans up after a crash:
//! containers of interactive jobs whose client is gone are removed, and a
//! daemonized job's container that no job in viking-proc or viking-ps
//! claims any more is removed.
//!
//! Architecture invariant: the agent only writes records of its own host
//! (`node == this server`) and only touches containers labelled by viking
//! for this cluster and this node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use viking_core::keys;
use viking_core::records::{decode, encode, PsRecord};
use viking_docker::ContainerInfo;
use viking_store::{Compare, Op, StoreExt};

use crate::api::ApiError;
use crate::{jobs, Shared};

/// Follow Docker's events and resync periodically, until shutdown.
pub async fn run(sh: Arc<Shared>) {
    let mut shutdown = sh.shutdown.clone();
    let mut ticker = tokio::time::interval(sh.config.resync);
    ticker.tick().await;
    'outer: loop {
        let mut events = sh.runtime.events();
        loop {
            tokio::select! {
                _ = crate::stopped(&mut shutdown) => break 'outer,
                _ = ticker.tick() => {
                    if let Err(e) = resync(&sh).await {
                        tracing::warn!("periodic resync: {e:#}");
                    }
                }
                ev = events.next() => match ev {
                    Some(Ok(ev)) => {
                        if matches!(ev.action.as_str(), "start" | "die" | "stop" | "kill" | "destroy" | "oom" | "restart" | "pause" | "unpause") {
                            if let Err(e) = sync_job(&sh, &ev.job).await {
                                tracing::warn!(job = %ev.job, "updating viking-ps after {}: {e:?}", ev.action);
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
        if let Err(e) = resync(&sh).await {
            tracing::warn!("resync after the event stream broke: {e:#}");
        }
    }
}

/// Update one job's record from its container, if the record is this
/// host's.
async fn sync_job(sh: &Shared, job: &str) -> Result<(), ApiError> {
    let Some(kv) = sh.store.get(&keys::ps(job)).await? else {
        return Ok(());
    };
    let ps: PsRecord = decode(&kv.value)?;
    if ps.node != sh.config.name || ps.container_id.is_empty() {
        return Ok(());
    }
    jobs::refresh_ps(sh, job).await?;
    Ok(())
}

/// Compare every viking container of this host with viking-ps and
/// viking-proc, and make the records true.
pub async fn resync(sh: &Shared) -> anyhow::Result<()> {
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
    let procs: std::collections::HashSet<String> = proc_kvs
        .iter()
        .filter_map(|kv| keys::name_of(keys::PROC, &kv.key).map(str::to_string))
        .collect();

    let by_id: HashMap<&str, &ContainerInfo> =
        containers.iter().map(|c| (c.id.as_str(), c)).collect();
    for c in &containers {
        if !c.daemonize {
            // An interactive job's container outlives its session only if
            // this server died during the session: nobody can attach again.
            if !sh.in_session(&c.job) {
                tracing::info!(job = %c.job, "removing the container of an interactive job whose client is gone");
                sh.runtime.remove(&c.id, true).await?;
            }
            continue;
        }
        match records.get(&c.job) {
            Some((rec, rev)) if rec.node == sh.config.name && rec.container_id == c.id => {
                let fresh = jobs::ps_from(sh, c, rec.restarts);
                let fresh = PsRecord {
                    created_at: rec.created_at,
                    ..fresh
                };
                if &fresh != rec {
                    sh.store
                        .cas(&keys::ps(&c.job), *rev, encode(&fresh))
                        .await?;
                }
            }
            None if procs.contains(&c.job) => {
                // Started, but the server died before it wrote viking-ps.
                let fresh = jobs::ps_from(sh, c, 0);
                sh.store
                    .txn(
                        vec![Compare::Absent(keys::ps(&c.job))],
                        vec![Op::Put {
                            key: keys::ps(&c.job),
                            value: encode(&fresh),
                            lease: None,
                        }],
                        vec![],
                    )
                    .await?;
            }
            None => {
                // No job claims it: it was removed while this server was down.
                tracing::info!(job = %c.job, "removing a container that no job claims");
                sh.runtime.remove(&c.id, true).await?;
            }
            Some(_) => {
                // Another container (or host) holds the job now; a stopped
                // leftover of this host is removed, a running one is left to
                // the reconciler so a job never runs zero times.
                if c.status != "running" {
                    sh.runtime.remove(&c.id, true).await?;
                }
            }
        }
    }
    // Records of this host whose container is gone.
    for (name, (rec, rev)) in &records {
        if rec.node != sh.config.name || by_id.contains_key(rec.container_id.as_str()) {
            continue;
        }
        if !rec.daemonize {
            // A fresh claim may belong to a session that is being set up
            // (possibly by another server); only old ones are leftovers.
            let fresh = crate::now_ms().saturating_sub(rec.created_at) < 60_000;
            if !sh.in_session(name) && !fresh {
                sh.store.delete(&keys::ps(name)).await?;
            }
            continue;
        }
        if rec.status != "missing" && !rec.container_id.is_empty() {
            let mut gone = rec.clone();
            gone.status = "missing".to_string();
            gone.error = Some("the container vanished from Docker".to_string());
            sh.store.cas(&keys::ps(name), *rev, encode(&gone)).await?;
        }
    }
    Ok(())
}
