//! The reconciler: keeps the cluster converged on viking-proc.
//!
//! Every server campaigns for leadership (`election/reconciler`, through the
//! store; on the embedded store the one server always wins). Only the leader
//! reconciles. It is level-triggered: any change under `proc/`, `ps/` or
//! `hosts/`, a backoff coming due, or the periodic resync makes it read the
//! whole state, ask the pure planner (`viking_core::reconcile::plan`) what
//! to do, and do it. Starts run concurrently (a few at a time), so a slow
//! or crash-looping job never holds up the others.
//!
//! Each start is fenced by a transaction: the job's viking-ps record must
//! still be at the revision the plan saw, and the job must still be in
//! proc. A stale plan, or a leader that lost its lease and does not know
//! yet, therefore cannot start a job twice. A leader stops acting as soon
//! as it sees its leadership or its lease lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use viking_core::reconcile::{self, Action, Snapshot};
use viking_core::records::{decode, encode, History, ProcRecord, PsRecord};
use viking_core::{keys, Status};
use viking_store::{spawn_keep_alive, Compare, Election, Op, Revision, StoreError};

use crate::error::ServerError;
use crate::placement::Target;
use crate::state;
use crate::{now_ms, Shared};

/// How many starts run at once.
const PARALLEL_STARTS: usize = 8;

/// Campaign, and reconcile while leader, until shutdown.
pub async fn run(sh: Arc<Shared>) {
    let mut shutdown = sh.shutdown.clone();
    loop {
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            r = campaign_and_lead(&sh) => {
                if let Err(e) = r {
                    tracing::warn!("reconciler: {e}");
                }
            }
        }
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn campaign_and_lead(sh: &Arc<Shared>) -> Result<(), StoreError> {
    let ttl = sh.config.host_ttl;
    let lease = sh.store.lease_grant(ttl).await?;
    let keep = spawn_keep_alive(sh.store.clone(), lease, ttl);
    let election = Election::new(sh.store.clone(), "reconciler");
    let leadership = tokio::select! {
        l = election.campaign(&sh.config.name, lease) => l?,
        _ = keep.lost() => return Ok(()),
    };
    tracing::info!(name = %sh.config.name, "leader: reconciling the cluster");
    tokio::select! {
        _ = leadership.lost() => tracing::warn!("lost leadership"),
        _ = keep.lost() => tracing::warn!("leader lease lost"),
        r = lead(sh) => r?,
        // The leader also keeps the store's history short (never ends).
        _ = crate::compaction::run(sh.clone()) => {}
    }
    // Stop acting at once; let the lease go so another server takes over.
    keep.abort();
    let _ = sh.store.lease_revoke(lease).await;
    Ok(())
}

/// The leader's loop: reconcile on every change, on time, and on backoffs.
async fn lead(sh: &Arc<Shared>) -> Result<(), StoreError> {
    let rev = sh.store.revision().await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watchers = tokio::task::JoinSet::new();
    for prefix in [keys::PROC, keys::PS, keys::HOSTS] {
        let mut w = sh.store.watch(prefix, rev + 1).await?;
        let tx = tx.clone();
        watchers.spawn(async move {
            while let Some(ev) = w.next().await {
                if ev.is_err() {
                    break;
                }
                let _ = tx.try_send(());
            }
        });
    }
    drop(tx);
    let mut wake_at: Option<u64> = None;
    loop {
        match reconcile_once(sh).await {
            Ok(w) => wake_at = w,
            Err(e) => tracing::warn!("reconcile: {}", e),
        }
        let sleep = match wake_at {
            Some(t) => Duration::from_millis(t.saturating_sub(now_ms()).max(10)),
            None => sh.config.resync,
        }
        .min(sh.config.resync);
        tokio::select! {
            r = rx.recv() => {
                if r.is_none() {
                    // A watch broke: resync from a fresh revision.
                    return Ok(());
                }
                // Let a burst of changes settle into one round.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// One level-triggered round; when to plan again for a backoff.
pub async fn reconcile_once(sh: &Arc<Shared>) -> Result<Option<u64>, ServerError> {
    // A store that is not this cluster's (emptied, replaced) is not acted on.
    if !crate::standing::may_act(sh).await? {
        return Ok(None);
    }
    let (procs, ps, ps_revs) = read_state(sh).await?;
    let hosts = crate::placement::snapshot(sh).await?;
    // Every history in one read, not one per job.
    let (hist_kvs, _) = sh.store.list(keys::HISTORY).await?;
    let wanted: std::collections::HashSet<&str> =
        procs.iter().map(|p| p.job.name.as_str()).collect();
    let mut histories = BTreeMap::new();
    for kv in hist_kvs {
        if let Some(name) = keys::name_of(keys::HISTORY, &kv.key) {
            if wanted.contains(name) {
                histories.insert(name.to_string(), decode::<History>(&kv.value)?);
            }
        }
    }
    let snap = Snapshot {
        procs,
        ps,
        hosts,
        histories,
    };
    let policy = sh.config.policy;
    let now = now_ms();
    let plan = reconcile::plan(&snap, &policy, now);
    if !plan.actions.is_empty() {
        tracing::info!(actions = plan.actions.len(), "reconciling");
    }
    let snap = Arc::new(snap);
    let ps_revs = Arc::new(ps_revs);
    futures::stream::iter(plan.actions)
        .map(|a| {
            let sh = sh.clone();
            let snap = snap.clone();
            let revs = ps_revs.clone();
            async move {
                let job = a.job().to_string();
                if let Err(e) = execute(&sh, &snap, &revs, a).await {
                    tracing::warn!(%job, "reconcile action failed: {}", e);
                }
            }
        })
        .buffer_unordered(PARALLEL_STARTS)
        .collect::<Vec<_>>()
        .await;
    Ok(plan.wake_at)
}

type PsRevs = BTreeMap<String, Revision>;

async fn read_state(
    sh: &Shared,
) -> Result<(Vec<ProcRecord>, BTreeMap<String, PsRecord>, PsRevs), ServerError> {
    // An unreadable record is skipped (and reported): a job whose proc
    // cannot be read is not planned, nor one whose ps cannot be (it may
    // run: starting it again could run it twice).
    let mut procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
    let (good, bad) = state::list_with_revs::<PsRecord>(sh.store.as_ref(), keys::PS).await?;
    let unreadable: std::collections::HashSet<&str> =
        bad.iter().filter_map(|u| u.name(keys::PS)).collect();
    procs.retain(|p| !unreadable.contains(p.job.name.as_str()));
    let mut ps = BTreeMap::new();
    let mut revs = BTreeMap::new();
    for (r, rev) in good {
        revs.insert(r.job.clone(), rev);
        ps.insert(r.job.clone(), r);
    }
    Ok((procs, ps, revs))
}

fn ps_compare(job: &str, revs: &PsRevs) -> Compare {
    match revs.get(job) {
        Some(r) => Compare::ModRevision(keys::ps(job), *r),
        None => Compare::Absent(keys::ps(job)),
    }
}

async fn execute(
    sh: &Arc<Shared>,
    snap: &Snapshot,
    revs: &PsRevs,
    action: Action,
) -> Result<(), ServerError> {
    let Some(proc) = snap.procs.iter().find(|p| p.job.name == action.job()) else {
        return Ok(());
    };
    let old = snap.ps.get(action.job());
    match action {
        Action::Wait { job, reason } => {
            let mut p = proc.clone();
            p.waiting = Some(reason.clone());
            let mut ops = vec![Op::Put {
                key: keys::proc(&job),
                value: encode(&p)?,
                lease: None,
            }];
            if let Some(o) = old {
                let mut w = o.clone();
                w.status = Status::Waiting;
                w.error = Some(reason);
                ops.push(Op::Put {
                    key: keys::ps(&job),
                    value: encode(&w)?,
                    lease: None,
                });
            }
            sh.store
                .txn(
                    vec![Compare::Exists(keys::proc(&job)), ps_compare(&job, revs)],
                    ops,
                    vec![],
                )
                .await?;
            Ok(())
        }
        Action::Start {
            job,
            node,
            restarts,
            crash_streak,
        } => {
            // Fence: claim the start in viking-ps at the revision we saw.
            let starting = PsRecord {
                image_id: old.map(|o| o.image_id.clone()).unwrap_or_default(),
                restarts,
                crash_streak,
                last_exit: old.and_then(|o| o.exit_code.or(o.last_exit)),
                ..crate::state::starting_record(&proc.job, &node, now_ms())
            };
            let mut placed = proc.clone();
            placed.placed_on = Some(node.clone());
            placed.waiting = None;
            let r = sh
                .store
                .txn(
                    vec![Compare::Exists(keys::proc(&job)), ps_compare(&job, revs)],
                    vec![
                        Op::Put {
                            key: keys::ps(&job),
                            value: encode(&starting)?,
                            lease: None,
                        },
                        Op::Put {
                            key: keys::proc(&job),
                            value: encode(&placed)?,
                            lease: None,
                        },
                    ],
                    vec![],
                )
                .await?;
            if !r.succeeded {
                return Ok(());
            }
            tracing::info!(%job, %node, restarts, "starting");
            let target = if node == sh.config.name {
                Target::Here
            } else {
                match crate::floki::host(sh, &node).await? {
                    Some(h) => Target::There(h),
                    None => Target::Waiting(node.clone()),
                }
            };
            let started = crate::jobs::start_on(sh, &proc.job, &target, &|_| {}).await;
            if let Err(e) = started {
                // Record the failure (if the record is still our claim), so
                // the backoff applies and `viking ps` shows why.
                let mut failed = starting.clone();
                failed.status = Status::Failed;
                failed.error = Some(e.to_string());
                failed.finished_at = Some(now_ms());
                sh.store
                    .txn(
                        vec![Compare::ModRevision(keys::ps(&job), r.revision)],
                        vec![Op::Put {
                            key: keys::ps(&job),
                            value: encode(&failed)?,
                            lease: None,
                        }],
                        vec![],
                    )
                    .await?;
                return Err(e);
            }
            Ok(())
        }
    }
}
