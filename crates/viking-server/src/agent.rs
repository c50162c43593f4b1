//! The host agent: keeps this host's viking-ps true from its Docker engine.
//!
//! It follows Docker's event stream for viking's containers and brings the
//! job's record up to date on every start, stop and exit; a full resync runs
//! at start, after the event stream breaks, when floki re-registers after a
//! partition, and periodically, so a missed event is corrected within one
//! period. Its rules are `viking_core::agent::plan`, a pure function of
//! (containers, records, sessions, now) → actions; this module only reads
//! the view and carries the actions out. For each of this host's containers:
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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use viking_core::agent::{self, plan, Action, Removal, View};
use viking_core::records::{encode, PsRecord};
use viking_core::{keys, Status};
use viking_docker::ContainerInfo;
use viking_store::{Compare, Op, Revision};

use crate::error::ServerError;
use crate::{state, Shared};

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

/// Apply the rules to one container after a Docker event. After Docker
/// answered, one read brings the job's viking-ps and viking-proc records
/// and the store's cluster id (whether this server may act); a refresh
/// starts from that read, as fresh as if it read the record itself.
async fn sync_one(sh: &Shared, id: &str, job: &str) -> Result<(), ServerError> {
    let container = sh.runtime.inspect(id).await?;
    let got = sh
        .store
        .get_many(&[keys::ps(job), keys::proc(job), keys::CLUSTER_ID.to_string()])
        .await?;
    let [ps, proc, cluster] = <[_; 3]>::try_from(got).map_err(|_| {
        ServerError::Internal("the store answered a read of 3 keys with another count".into())
    })?;
    let rec: Option<(PsRecord, Revision)> = match ps {
        Some(kv) => Some((viking_core::records::decode(&kv.value)?, kv.mod_revision)),
        None => None,
    };
    let cluster = cluster
        .map(|kv| String::from_utf8_lossy(&kv.value).trim().to_string())
        .filter(|s| !s.is_empty());
    let action = match container {
        Some(c) if c.node == sh.config.name && c.cluster == sh.config.key => {
            let view = View {
                node: sh.config.name.clone(),
                containers: vec![seen(&c)],
                records: rec.into_iter().map(|r| (job.to_string(), r)).collect(),
                procs: proc
                    .is_some()
                    .then(|| job.to_string())
                    .into_iter()
                    .collect(),
                sessions: sessions(sh),
                now: crate::now_ms(),
                full: false,
                startup: false,
            };
            let actions = plan(&view);
            // Nothing is touched while this server holds.
            if actions.is_empty()
                || crate::standing::judge(sh, cluster) != crate::standing::Standing::Member
            {
                return Ok(());
            }
            return apply(sh, &[c], &actions, &view.records).await;
        }
        Some(_) => None,
        // Destroyed: the record says missing, if it named this container.
        None => agent::on_destroyed(&sh.config.name, id, rec.as_ref()),
    };
    carry_out(sh, &[], action.as_slice()).await
}

/// What the planner needs of a container.
fn seen(c: &ContainerInfo) -> agent::Container {
    agent::Container {
        id: c.id.clone(),
        job: c.job.clone(),
        node: c.node.clone(),
        daemonize: c.daemonize,
        running: c.status == "running",
    }
}

fn sessions(sh: &Shared) -> BTreeSet<String> {
    sh.sessions
        .lock()
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default()
}

/// Carry out the planner's actions, unless this server holds (the store is
/// not its cluster's: then nothing is touched); the first error ends the
/// list (the next event or resync plans again).
async fn carry_out(
    sh: &Shared,
    containers: &[ContainerInfo],
    actions: &[Action],
) -> Result<(), ServerError> {
    if actions.is_empty() || !crate::standing::may_act(sh).await? {
        return Ok(());
    }
    apply(sh, containers, actions, &BTreeMap::new()).await
}

/// Carry out actions already cleared by [`crate::standing::may_act`].
/// `read`: viking-ps records as the caller just read them (a refresh
/// starts from its job's instead of reading it again).
async fn apply(
    sh: &Shared,
    containers: &[ContainerInfo],
    actions: &[Action],
    read: &BTreeMap<String, (PsRecord, Revision)>,
) -> Result<(), ServerError> {
    for a in actions {
        let outcome = match a {
            Action::Remove { id, job, why } => {
                let why = match why {
                    Removal::Orphaned => "an interactive job whose client is gone",
                    Removal::Stale => "a stale copy of a job that moved",
                };
                tracing::info!(%job, "removing {why}");
                sh.runtime.remove(id, true).await.map_err(ServerError::from)
            }
            Action::Stop { id, job } => {
                tracing::info!(%job, "stopping a job that is not in viking-proc any more");
                sh.runtime.stop(id, 10).await.map_err(ServerError::from)
            }
            Action::Refresh { job, id } => {
                let first = read.get(job).cloned();
                match crate::container::refresh_ps(sh, job, id, first).await {
                    // The record moved on since the view was read: look
                    // again, so a stale copy here goes at once.
                    Ok(None) => {
                        sh.resync_now.notify_one();
                        Ok(())
                    }
                    other => other.map(|_| ()),
                }
            }
            Action::Adopt { id, .. } => match containers.iter().find(|c| &c.id == id) {
                // Started, but the server died before it wrote viking-ps.
                Some(c) => adopt(sh, c).await,
                None => Ok(()),
            },
            Action::DeleteClaim { job, rev } => delete_if(sh, job, *rev).await,
            Action::MarkFailed { job, rev } => {
                update_if(sh, job, *rev, |r| {
                    r.status = Status::Failed;
                    r.error = Some("the server restarted while starting it".to_string());
                    r.finished_at = Some(crate::now_ms());
                })
                .await
            }
            Action::MarkMissing { job, rev } => {
                if container_lives(sh, job, *rev).await? {
                    // The record is newer than the listing it was checked
                    // against: its container was made after the list.
                    continue;
                }
                update_if(sh, job, *rev, |r| {
                    r.status = Status::Missing;
                    r.error = Some("the container vanished from Docker".to_string());
                    if r.finished_at.is_none() {
                        r.finished_at = Some(crate::now_ms());
                    }
                })
                .await
            }
        };
        outcome?;
    }
    Ok(())
}

async fn adopt(sh: &Shared, c: &ContainerInfo) -> Result<(), ServerError> {
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

/// Whether the container that job's record (at `rev`) names is on this
/// engine after all. A full resync lists the containers before it reads the
/// records, so a job started here in between has a record whose container
/// is not in the list: it is not missing, and marking it so would make the
/// reconciler replace a healthy copy.
async fn container_lives(sh: &Shared, job: &str, rev: i64) -> Result<bool, ServerError> {
    let Some((r, now_rev)) = state::ps(sh.store.as_ref(), job).await? else {
        return Ok(false);
    };
    if now_rev != rev || r.container_id.is_empty() {
        return Ok(false);
    }
    Ok(sh
        .runtime
        .inspect(&r.container_id)
        .await?
        .is_some_and(|c| c.node == sh.config.name && c.cluster == sh.config.key))
}

async fn delete_if(sh: &Shared, job: &str, rev: i64) -> Result<(), ServerError> {
    sh.store
        .txn(
            vec![Compare::ModRevision(keys::ps(job), rev)],
            vec![Op::Delete { key: keys::ps(job) }],
            vec![],
        )
        .await?;
    Ok(())
}

async fn update_if(
    sh: &Shared,
    job: &str,
    rev: i64,
    change: impl FnOnce(&mut PsRecord),
) -> Result<(), ServerError> {
    let Some((mut r, now_rev)) = state::ps(sh.store.as_ref(), job).await? else {
        return Ok(());
    };
    if now_rev != rev {
        return Ok(());
    }
    change(&mut r);
    state::put_ps_if(sh.store.as_ref(), &r, rev).await?;
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

async fn resync_inner(sh: &Shared, startup: bool) -> anyhow::Result<()> {
    let containers: Vec<ContainerInfo> = sh
        .runtime
        .list(&sh.config.key)
        .await?
        .into_iter()
        .filter(|c| c.node == sh.config.name)
        .collect();
    // A job whose viking-ps record cannot be read is left alone: its
    // containers are not in the view, so nothing is decided about them.
    let (records, unreadable, procs) = if startup {
        every_record(sh, &containers).await?
    } else {
        own_records(sh, &containers).await?
    };

    let running: Vec<&ContainerInfo> = containers
        .iter()
        .filter(|c| c.status == "running")
        .collect();
    let memory: u64 = running
        .iter()
        .filter_map(|c| sh.runtime.memory_used(&c.id))
        .sum();
    sh.running
        .store(running.len() as u64, std::sync::atomic::Ordering::Relaxed);
    sh.memory_used
        .store(memory, std::sync::atomic::Ordering::Relaxed);
    let cpu = running
        .iter()
        .filter_map(|c| sh.runtime.cpu_used(&c.id).map(|u| (c.id.clone(), u)));
    if let Ok(mut w) = sh.cpu_window.lock() {
        let used = w.sample(crate::now_ms(), cpu);
        sh.cpu_used
            .store(used, std::sync::atomic::Ordering::Relaxed);
    }
    let view = View {
        node: sh.config.name.clone(),
        containers: containers
            .iter()
            .filter(|c| !unreadable.contains(&c.job))
            .map(seen)
            .collect(),
        records,
        procs,
        sessions: sessions(sh),
        now: crate::now_ms(),
        full: true,
        startup,
    };
    // Nothing is touched while this server holds.
    if !crate::standing::may_act(sh).await? {
        return Ok(());
    }
    // One action at a time, so one failure does not hold up the rest. The
    // refreshes last, together: their records are read again in one
    // request once Docker has answered for every container (it may have
    // been slow since the records were read, and a job that moved
    // meanwhile must be seen); only those that changed are read alone.
    let none = BTreeMap::new();
    let mut refreshes = Vec::new();
    for a in plan(&view) {
        if let Action::Refresh { job, id } = &a {
            refreshes.push((job.clone(), id.clone()));
            continue;
        }
        if let Err(e) = apply(sh, &containers, std::slice::from_ref(&a), &none).await {
            tracing::warn!("resync: {a:?}: {e}");
        }
    }
    if !refreshes.is_empty() {
        match crate::container::refresh_many(sh, &refreshes, &view.records).await {
            Ok(outcomes) => {
                for (job, outcome) in outcomes {
                    match outcome {
                        // The record moved on: look again, so a stale
                        // copy here goes at once.
                        Ok(None) => sh.resync_now.notify_one(),
                        Ok(Some(_)) => {}
                        Err(e) => tracing::warn!(%job, "resync: refreshing its record: {e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("resync: reading the records to refresh: {e}"),
        }
    }
    remove_marked(sh, &containers).await;
    Ok(())
}

/// viking-ps by job (with revisions), the jobs whose record cannot be
/// read, and the jobs in viking-proc.
type Records = (
    BTreeMap<String, (PsRecord, Revision)>,
    BTreeSet<String>,
    BTreeSet<String>,
);

/// Every record of the store, read at start, when this host may hold
/// containers of jobs no index lists yet; kept are those the planner looks
/// at: the records naming this host and those of its containers' jobs
/// (and which of those jobs are in viking-proc).
async fn every_record(sh: &Shared, containers: &[ContainerInfo]) -> Result<Records, ServerError> {
    let theirs: BTreeSet<&str> = containers.iter().map(|c| c.job.as_str()).collect();
    let (good, bad) = state::list_with_revs::<PsRecord>(sh.store.as_ref(), keys::PS).await?;
    let records = good
        .into_iter()
        .filter(|(rec, _)| rec.node == sh.config.name || theirs.contains(rec.job.as_str()))
        .map(|(rec, rev)| (rec.job.clone(), (rec, rev)))
        .collect();
    let unreadable = bad
        .iter()
        .filter_map(|u| u.name(keys::PS))
        .map(str::to_string)
        .collect();
    let (proc_kvs, _) = sh.store.list(keys::PROC).await?;
    let procs = proc_kvs
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(keys::PROC))
        .filter(|job| theirs.contains(job))
        .map(str::to_string)
        .collect();
    Ok((records, unreadable, procs))
}

/// The records of this host's work only: the jobs of its containers and
/// the jobs the leader's index lists for it (`assigned/<host>`), each read
/// for itself. What a periodic resync needs, at a cost that grows with the
/// host's jobs, not the fleet's.
async fn own_records(sh: &Shared, containers: &[ContainerInfo]) -> Result<Records, ServerError> {
    let mut jobs: BTreeSet<String> = crate::assigned::mine(sh).await?;
    jobs.extend(containers.iter().map(|c| c.job.clone()));
    // Each job's viking-ps and viking-proc keys, read together.
    let jobs: Vec<String> = jobs.into_iter().collect();
    let wanted: Vec<String> = jobs
        .iter()
        .flat_map(|j| [keys::ps(j), keys::proc(j)])
        .collect();
    let got = sh.store.get_many(&wanted).await?;
    let mut records = BTreeMap::new();
    let mut unreadable = BTreeSet::new();
    let mut procs = BTreeSet::new();
    for (job, pair) in jobs.into_iter().zip(got.chunks(2)) {
        let [ps, proc] = pair else { continue };
        if let Some(kv) = ps {
            match viking_core::records::decode::<PsRecord>(&kv.value) {
                Ok(rec) => {
                    records.insert(job.clone(), (rec, kv.mod_revision));
                }
                Err(e) => {
                    tracing::warn!(%job, "its viking-ps record cannot be read: {e}");
                    unreadable.insert(job.clone());
                }
            }
        }
        if proc.is_some() {
            procs.insert(job);
        }
    }
    Ok((records, unreadable, procs))
}

/// Remove the containers of this host that `viking rm` marked while this
/// host was gone (`removed/<job>/<id>` naming this host), then the marks.
/// The one way a container goes without its job's record: a positive mark
/// naming that exact container.
async fn remove_marked(sh: &Shared, containers: &[ContainerInfo]) {
    let marks = match sh.store.list(keys::REMOVED).await {
        Ok((kvs, _)) => kvs,
        Err(e) => {
            tracing::warn!("reading removal marks: {e}");
            return;
        }
    };
    for kv in marks
        .into_iter()
        .filter(|kv| kv.value == sh.config.name.as_bytes())
    {
        let Some(rest) = keys::name_of(keys::REMOVED, &kv.key) else {
            continue;
        };
        let Some((job, id)) = rest.rsplit_once('/') else {
            continue;
        };
        if let Some(c) = containers.iter().find(|c| c.id == id && c.job == job) {
            tracing::info!(%job, "removing the container of a job removed while this host was gone");
            if let Err(e) = sh.runtime.remove(&c.id, true).await {
                tracing::warn!(%job, "removing a marked container: {e}");
                continue;
            }
        }
        let _ = sh
            .store
            .txn(
                vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)],
                vec![Op::Delete { key: kv.key }],
                vec![],
            )
            .await;
    }
}
