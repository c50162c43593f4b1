//! Code pushes: `viking push` restarts every daemonized, non-static job
//! whose image now resolves to a different image id on its host, rolling.
//!
//! The server that receives the push orchestrates it: for each candidate
//! job it asks the job's host what its image resolves to now, and restarts
//! the changed ones through that host, `parallel` at a time (default one),
//! each new container running (and passing its health checks, if it has
//! any) for a settle period before the next one starts. The first failure
//! stops the push: that job's host puts the previous container back (so it
//! runs its previous image id again), and the jobs not yet pushed are left
//! untouched. Static jobs are never restarted by a push.
//!
//! On the job's host, a replacement keeps the old container until the new
//! one has proved itself, start-first: the old one is renamed aside and
//! left running (stopped first only when the job has volumes, whose data
//! two processes must never share, or publishes a fixed host port, which
//! two containers cannot hold), the new one is created under
//! the job's name, and the old one is stopped and removed once the new one
//! has settled; on failure the new one goes and the old one is renamed
//! back (and started, if it was stopped). While the record says `starting`
//! the instance is out of embassy's rotation, so a service with two or
//! more instances, pushed one at a time, always answers. While it happens the job's
//! viking-ps record says `starting`, which keeps the agent and the
//! reconciler out of the way.

use std::time::Duration;

use futures::StreamExt;
use viking_client::api::{
    PushEvent, PushRequest, PushSummary, ReplaceRequest, ResolveRequest, ResolveResponse,
};
use viking_core::records::{decode, HostRecord, ProcRecord, PsRecord};
use viking_core::{keys, Status};
use viking_store::Revision;

use crate::error::{Result, ServerError};
use crate::state;
use crate::{now_ms, Shared};

/// How long a new container must stay up before the next job is pushed.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(3);
/// How long a new container has to pass its health checks.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// `image` with `:latest` when it names no tag or digest, for comparing.
fn normalize(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The image id `image` names on this host, pulling first if asked.
pub async fn resolve_here(sh: &Shared, req: &ResolveRequest) -> Result<ResolveResponse> {
    if req.pull {
        if let Err(e) = viking_docker::pull_quietly(sh.runtime.as_ref(), &req.image).await {
            tracing::info!(image = %req.image, "push: pull failed, using the local image: {e}");
        }
    }
    Ok(ResolveResponse {
        image_id: sh.runtime.image_id(&req.image).await?,
    })
}

/// A client of the server of `node` (alive in floki).
async fn host_client(sh: &Shared, node: &str) -> Result<viking_client::Client> {
    let host: HostRecord = match sh.store.get(&keys::host(node)).await? {
        Some(kv) => decode(&kv.value)?,
        None => {
            return Err(ServerError::Unavailable(format!(
                "host {node} is not alive"
            )))
        }
    };
    crate::peer::peer(sh, &host)
}

pub(crate) async fn resolve_on(
    sh: &Shared,
    node: &str,
    req: &ResolveRequest,
) -> Result<Option<String>> {
    let r: ResolveResponse = if node == sh.config.name {
        resolve_here(sh, req).await?
    } else {
        host_client(sh, node)
            .await?
            .resolve(req)
            .await
            .map_err(|e| ServerError::from_peer(node, e))?
    };
    Ok(r.image_id)
}

pub(crate) async fn replace_on(sh: &Shared, node: &str, req: &ReplaceRequest) -> Result<PsRecord> {
    if node == sh.config.name {
        replace_here(sh, req).await
    } else {
        host_client(sh, node)
            .await?
            .replace(req)
            .await
            .map(|s| PsRecord::from(&s))
            .map_err(|e| ServerError::from_peer(node, e))
    }
}

/// Refuse a push request that asks for what cannot be done, before any
/// job is touched.
pub fn check(req: &PushRequest) -> Result<()> {
    check_settle(req.settle_ms.unwrap_or(DEFAULT_SETTLE.as_millis() as u64))
}

fn check_settle(settle_ms: u64) -> Result<()> {
    let max = viking_client::api::MAX_WAIT_SECONDS;
    if settle_ms > max * 1000 {
        return Err(ServerError::Invalid(format!(
            "settle_ms: {settle_ms} ms is longer than the longest settle time, {max} s"
        )));
    }
    Ok(())
}

/// Run a push, reporting each event; the summary says what happened.
pub async fn push(
    sh: &Shared,
    req: PushRequest,
    events: &(dyn Fn(PushEvent) + Sync),
) -> Result<PushSummary> {
    let procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
    let ps: Vec<PsRecord> = state::list(sh.store.as_ref(), keys::PS).await?;
    let wanted: Vec<String> = req.images.iter().map(|i| normalize(i)).collect();
    let mut summary = PushSummary::default();
    let mut todo = Vec::new();
    for p in &procs {
        let job = &p.job;
        if !wanted.is_empty() && !wanted.contains(&normalize(&job.image)) {
            continue;
        }
        let rec = ps.iter().find(|r| r.job == job.name);
        let host = rec.map(|r| r.node.clone()).unwrap_or_default();
        let ev = |event: &str| PushEvent {
            job: job.name.clone(),
            host: host.clone(),
            event: event.to_string(),
            old_image_id: rec.map(|r| r.image_id.clone()),
            new_image_id: None,
            message: None,
        };
        if job.static_ {
            events(ev("static"));
            summary.static_jobs.push(job.name.clone());
            continue;
        }
        let Some(rec) = rec.filter(|r| r.is_running()) else {
            events(ev("not running"));
            continue;
        };
        let resolve = ResolveRequest {
            image: job.image.clone(),
            pull: req.pull,
        };
        let new_id = resolve_on(sh, &rec.node, &resolve).await?;
        let changed = new_id.as_deref().is_some_and(|id| id != rec.image_id);
        if !changed && !req.all {
            events(ev("unchanged"));
            summary.unchanged.push(job.name.clone());
            continue;
        }
        todo.push((
            job.name.clone(),
            rec.node.clone(),
            rec.image_id.clone(),
            new_id,
        ));
    }

    // Roll: `parallel` at a time; the first failure stops the rest.
    let parallel = req.parallel.max(1);
    let failed = std::sync::Mutex::new(None::<PushEvent>);
    let mut queue = todo.into_iter();
    loop {
        let batch: Vec<_> = queue.by_ref().take(parallel).collect();
        if batch.is_empty() {
            break;
        }
        let results = futures::stream::iter(batch)
            .map(|(job, node, old, new)| async move {
                let mut ev = PushEvent {
                    job: job.clone(),
                    host: node.clone(),
                    event: "restarting".to_string(),
                    old_image_id: Some(old.clone()),
                    new_image_id: new.clone(),
                    message: None,
                };
                events(ev.clone());
                let r = replace_on(
                    sh,
                    &node,
                    &ReplaceRequest {
                        job: job.clone(),
                        settle_ms: req.settle_ms.unwrap_or(DEFAULT_SETTLE.as_millis() as u64),
                        restart: false,
                    },
                )
                .await;
                match r {
                    Ok(rec) => {
                        ev.event = "restarted".to_string();
                        ev.new_image_id = Some(rec.image_id);
                        events(ev.clone());
                        Ok(ev)
                    }
                    Err(e) => {
                        ev.event = "failed".to_string();
                        ev.message = Some(e.to_string());
                        events(ev.clone());
                        Err(ev)
                    }
                }
            })
            .buffer_unordered(parallel)
            .collect::<Vec<_>>()
            .await;
        for r in results {
            match r {
                Ok(ev) => summary.restarted.push(ev.job),
                Err(ev) => {
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(ev);
                    }
                }
            }
        }
        if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
            break;
        }
    }
    for (job, node, old, _) in queue {
        events(PushEvent {
            job: job.clone(),
            host: node,
            event: "untouched".to_string(),
            old_image_id: Some(old),
            new_image_id: None,
            message: Some("the push stopped at an earlier failure".to_string()),
        });
        summary.untouched.push(job);
    }
    summary.failed = failed.into_inner().unwrap_or(None);
    Ok(summary)
}

async fn get_ps(sh: &Shared, name: &str) -> Result<(PsRecord, i64)> {
    match sh.store.get(&keys::ps(name)).await? {
        Some(kv) => Ok((decode(&kv.value)?, kv.mod_revision)),
        None => Err(ServerError::NotFound(format!(
            "job {name:?} has no container"
        ))),
    }
}

/// Replace one job's container on this host; roll back on failure.
pub async fn replace_here(sh: &Shared, req: &ReplaceRequest) -> Result<PsRecord> {
    check_settle(req.settle_ms)?;
    let name = &req.job;
    let proc = match sh.store.get(&keys::proc(name)).await? {
        Some(kv) => decode::<ProcRecord>(&kv.value)?,
        None => {
            return Err(ServerError::NotFound(format!(
                "job {name:?} is not in viking-proc"
            )))
        }
    };
    if proc.job.static_ && !req.restart {
        return Err(ServerError::Conflict(format!(
            "job {name:?} is static: a push never restarts it"
        )));
    }
    let (old, rev) = get_ps(sh, name).await?;
    if old.node != sh.config.name || !old.is_running() {
        return Err(ServerError::Conflict(format!(
            "job {name:?} is not running on this host"
        )));
    }
    // Fence: the record says starting while the containers change hands.
    let mut starting = old.clone();
    starting.status = Status::Starting;
    starting.created_at = now_ms();
    let Some(fence) = state::put_ps_if(sh.store.as_ref(), &starting, rev).await? else {
        return Err(ServerError::Conflict(format!(
            "job {name:?} changed during the push; try again"
        )));
    };
    let aside = format!(
        "{name}.prev-{}",
        &old.container_id[..12.min(old.container_id.len())]
    );
    // Start-first, unless the job has volumes (two processes must never
    // share its data) or publishes a fixed host port (two containers
    // cannot both hold it): the old container keeps running, aside, until
    // the new one has proved itself. Its instance is out of embassy's
    // rotation meanwhile (its record says starting), so a service's other
    // instances answer and none of its requests fails.
    let start_first = proc.job.volumes.is_empty() && !crate::placement::needs_host_ports(&proc.job);
    let outcome: Result<PsRecord> = async {
        if !start_first {
            sh.runtime.stop(&old.container_id, 10).await?;
        }
        sh.runtime.rename(&old.container_id, &aside).await?;
        start_new(sh, &proc, req, &old, fence).await
    }
    .await;
    match outcome {
        Ok(new) => {
            if start_first {
                if let Err(e) = sh.runtime.stop(&old.container_id, 10).await {
                    tracing::warn!(job = %name, "stopping the previous container: {e}");
                }
            }
            if let Err(e) = sh.runtime.remove(&old.container_id, true).await {
                tracing::warn!(job = %name, "removing the previous container: {e}");
            }
            Ok(new)
        }
        Err(e) => {
            rollback(sh, name, &old, &aside, fence).await;
            Err(ServerError::RolledBack {
                source: Box::new(e),
                previous_image: old.image_id.clone(),
            })
        }
    }
}

/// Create and start the new container, and wait until it has proved itself.
/// Every write of viking-ps is conditional on `fence`, the revision of the
/// push's own "starting" record: a concurrent `rm` is never undone.
async fn start_new(
    sh: &Shared,
    proc: &ProcRecord,
    req: &ReplaceRequest,
    old: &PsRecord,
    fence: Revision,
) -> Result<PsRecord> {
    let job = &proc.job;
    let spec = crate::container::container_spec(sh, job).await?;
    let id = sh.runtime.create(&spec).await?;
    if let Err(e) = sh.runtime.start(&id).await {
        return Err(ServerError::Upstream(format!(
            "the new version did not start: {e}"
        )));
    }
    // It must stay up for the settle period, and pass its health checks.
    let settle = Duration::from_millis(req.settle_ms);
    let checks = job.health_checks();
    let deadline = tokio::time::Instant::now()
        + settle.max(if checks.is_empty() {
            Duration::ZERO
        } else {
            HEALTH_TIMEOUT
        });
    let settled_at = tokio::time::Instant::now() + settle;
    let mut healthy = checks.is_empty();
    loop {
        let info = sh
            .runtime
            .inspect(&id)
            .await?
            .ok_or_else(|| ServerError::Upstream("the new container vanished".to_string()))?;
        if info.status != "running" {
            return Err(ServerError::Upstream(format!(
                "the new version exited with code {} within {:?}",
                info.exit_code.unwrap_or(-1),
                settle
            )));
        }
        if !healthy {
            let rec = crate::container::ps_from(sh, &info, 0);
            let mut ok = true;
            for c in &checks {
                if crate::health::check(*c, &rec, info.ip.as_deref())
                    .await
                    .is_err()
                {
                    ok = false;
                }
            }
            healthy = ok;
        }
        let now = tokio::time::Instant::now();
        if healthy && now >= settled_at {
            let mut rec = crate::container::ps_from(sh, &info, old.restarts);
            rec.crash_streak = old.crash_streak;
            rec.last_exit = old.last_exit;
            if state::put_ps_if(sh.store.as_ref(), &rec, fence)
                .await?
                .is_none()
            {
                return Err(ServerError::Conflict(format!(
                    "job {:?} was stopped or removed during the push",
                    job.name
                )));
            }
            return Ok(rec);
        }
        if now >= deadline {
            return Err(ServerError::Upstream(format!(
                "the new version did not pass its health checks within {HEALTH_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Put the previous container back under the job's name and start it.
async fn rollback(sh: &Shared, name: &str, old: &PsRecord, aside: &str, fence: Revision) {
    tracing::warn!(job = %name, "push failed: rolling back to image {}", old.image_id);
    // The failed new container holds the name: remove it.
    if let Ok(Some(c)) = sh
        .runtime
        .inspect(&viking_docker::container_name(name))
        .await
    {
        if c.id != old.container_id {
            if let Err(e) = sh.runtime.remove(&c.id, true).await {
                tracing::warn!(job = %name, "rollback: removing the failed new container: {e}");
            }
        }
    }
    if let Err(e) = sh
        .runtime
        .rename(&old.container_id, &viking_docker::container_name(name))
        .await
    {
        tracing::error!(job = %name, "rollback: renaming {aside} back: {e}");
    }
    if let Err(e) = sh.runtime.start(&old.container_id).await {
        tracing::error!(job = %name, "rollback: starting the previous container: {e}");
    }
    let mut rec = old.clone();
    if let Ok(Some(info)) = sh.runtime.inspect(&old.container_id).await {
        rec = crate::container::ps_from(sh, &info, old.restarts);
        rec.crash_streak = old.crash_streak;
        rec.last_exit = old.last_exit;
        rec.created_at = old.created_at;
    }
    match state::put_ps_if(sh.store.as_ref(), &rec, fence).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::warn!(job = %name, "rollback: the job's record changed meanwhile (stopped or removed); left as it is")
        }
        Err(e) => tracing::error!(job = %name, "rollback: writing viking-ps: {e}"),
    }
}
