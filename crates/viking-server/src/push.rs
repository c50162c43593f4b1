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
//! one has proved itself: the old one is stopped and renamed aside, the new
//! one is created under the job's name; on failure the new one goes and the
//! old one is renamed back and started. While it happens the job's
//! viking-ps record says `starting`, which keeps the agent and the
//! reconciler out of the way.

use std::time::Duration;

use axum::http::StatusCode;
use futures::StreamExt;
use hyper::Method;
use viking_client::api::{
    PushEvent, PushRequest, PushSummary, ReplaceRequest, ResolveRequest, ResolveResponse,
};
use viking_core::keys;
use viking_core::records::{decode, encode, HostRecord, ProcRecord, PsRecord};
use viking_store::StoreExt;

use crate::api::{list_records, ApiError};
use crate::{jobs, now_ms, Shared};

type ApiResult<T> = Result<T, ApiError>;

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
pub async fn resolve_here(sh: &Shared, req: &ResolveRequest) -> ApiResult<ResolveResponse> {
    if req.pull {
        if let Err(e) = viking_docker::pull_quietly(sh.runtime.as_ref(), &req.image).await {
            tracing::info!(image = %req.image, "push: pull failed, using the local image: {e}");
        }
    }
    Ok(ResolveResponse {
        image_id: sh.runtime.image_id(&req.image).await?,
    })
}

/// POST `req` to `path` on the server of `node` (alive in floki), and
/// read its JSON answer.
async fn call_host<Req, Resp>(sh: &Shared, node: &str, path: &str, req: &Req) -> ApiResult<Resp>
where
    Req: serde::Serialize,
    Resp: serde::de::DeserializeOwned,
{
    let host: HostRecord = match sh.store.get(&keys::host(node)).await? {
        Some(kv) => decode(&kv.value)?,
        None => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("host {node} is not alive"),
            ))
        }
    };
    let body = serde_json::to_vec(req)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    jobs::peer(sh, &host)?
        .json(Method::POST, path, Some(body))
        .await
        .map_err(|e| jobs::peer_error(node, e))
}

async fn resolve_on(sh: &Shared, node: &str, req: &ResolveRequest) -> ApiResult<Option<String>> {
    let r: ResolveResponse = if node == sh.config.name {
        resolve_here(sh, req).await?
    } else {
        call_host(sh, node, "/v1/internal/resolve", req).await?
    };
    Ok(r.image_id)
}

async fn replace_on(sh: &Shared, node: &str, req: &ReplaceRequest) -> ApiResult<PsRecord> {
    if node == sh.config.name {
        replace_here(sh, req).await
    } else {
        call_host(sh, node, "/v1/internal/replace", req).await
    }
}

/// Run a push, reporting each event; the summary says what happened.
pub async fn push(
    sh: &Shared,
    req: PushRequest,
    events: &(dyn Fn(PushEvent) + Sync),
) -> ApiResult<PushSummary> {
    let procs: Vec<ProcRecord> = list_records(sh.store.as_ref(), keys::PROC).await?;
    let ps: Vec<PsRecord> = list_records(sh.store.as_ref(), keys::PS).await?;
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
                        ev.message = Some(e.message);
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

async fn get_ps(sh: &Shared, name: &str) -> ApiResult<(PsRecord, i64)> {
    match sh.store.get(&keys::ps(name)).await? {
        Some(kv) => Ok((decode(&kv.value)?, kv.mod_revision)),
        None => Err(ApiError::not_found(format!(
            "job {name:?} has no container"
        ))),
    }
}

/// Replace one job's container on this host; roll back on failure.
pub async fn replace_here(sh: &Shared, req: &ReplaceRequest) -> ApiResult<PsRecord> {
    let name = &req.job;
    let proc = match sh.store.get(&keys::proc(name)).await? {
        Some(kv) => decode::<ProcRecord>(&kv.value)?,
        None => {
            return Err(ApiError::not_found(format!(
                "job {name:?} is not in viking-proc"
            )))
        }
    };
    if proc.job.static_ {
        return Err(ApiError::conflict(format!(
            "job {name:?} is static: a push never restarts it"
        )));
    }
    let (old, rev) = get_ps(sh, name).await?;
    if old.node != sh.config.name || !old.is_running() {
        return Err(ApiError::conflict(format!(
            "job {name:?} is not running on this host"
        )));
    }
    // Fence: the record says starting while the containers change hands.
    let mut starting = old.clone();
    starting.status = "starting".to_string();
    starting.created_at = now_ms();
    if !sh
        .store
        .cas(&keys::ps(name), rev, encode(&starting))
        .await?
    {
        return Err(ApiError::conflict(format!(
            "job {name:?} changed during the push; try again"
        )));
    }
    let aside = format!(
        "{name}.prev-{}",
        &old.container_id[..12.min(old.container_id.len())]
    );
    let outcome: ApiResult<PsRecord> = async {
        sh.runtime.stop(&old.container_id, 10).await?;
        sh.runtime.rename(&old.container_id, &aside).await?;
        start_new(sh, &proc, req).await
    }
    .await;
    match outcome {
        Ok(new) => {
            if let Err(e) = sh.runtime.remove(&old.container_id, true).await {
                tracing::warn!(job = %name, "removing the previous container: {e}");
            }
            Ok(new)
        }
        Err(e) => {
            rollback(sh, name, &old, &aside).await;
            Err(ApiError::new(
                e.status,
                format!(
                    "{}; rolled back to its previous image {}",
                    e.message, old.image_id
                ),
            ))
        }
    }
}

/// Create and start the new container, and wait until it has proved itself.
async fn start_new(sh: &Shared, proc: &ProcRecord, req: &ReplaceRequest) -> ApiResult<PsRecord> {
    let job = &proc.job;
    let spec = jobs::container_spec(sh, job).await?;
    let id = sh.runtime.create(&spec).await?;
    if let Err(e) = sh.runtime.start(&id).await {
        return Err(ApiError::docker(format!(
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
            .ok_or_else(|| ApiError::docker("the new container vanished"))?;
        if info.status != "running" {
            return Err(ApiError::docker(format!(
                "the new version exited with code {} within {:?}",
                info.exit_code.unwrap_or(-1),
                settle
            )));
        }
        if !healthy {
            let rec = jobs::ps_from(sh, &info, 0);
            let mut ok = true;
            for c in &checks {
                if crate::health::check(*c, &rec).await.is_err() {
                    ok = false;
                }
            }
            healthy = ok;
        }
        let now = tokio::time::Instant::now();
        if healthy && now >= settled_at {
            let (restarts, streak, last) = match get_ps(sh, &job.name).await {
                Ok((p, _)) => (p.restarts, p.crash_streak, p.last_exit),
                Err(_) => (0, 0, None),
            };
            let mut rec = jobs::ps_from(sh, &info, restarts);
            rec.crash_streak = streak;
            rec.last_exit = last;
            sh.store.put(&keys::ps(&job.name), encode(&rec)).await?;
            return Ok(rec);
        }
        if now >= deadline {
            return Err(ApiError::docker(format!(
                "the new version did not pass its health checks within {HEALTH_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Put the previous container back under the job's name and start it.
async fn rollback(sh: &Shared, name: &str, old: &PsRecord, aside: &str) {
    tracing::warn!(job = %name, "push failed: rolling back to image {}", old.image_id);
    // The failed new container holds the name: remove it.
    if let Ok(Some(c)) = sh.runtime.inspect(name).await {
        if c.id != old.container_id {
            let _ = sh.runtime.remove(&c.id, true).await;
        }
    }
    if let Err(e) = sh.runtime.rename(&old.container_id, name).await {
        tracing::error!(job = %name, "rollback: renaming {aside} back: {e}");
    }
    if let Err(e) = sh.runtime.start(&old.container_id).await {
        tracing::error!(job = %name, "rollback: starting the previous container: {e}");
    }
    let mut rec = old.clone();
    if let Ok(Some(info)) = sh.runtime.inspect(&old.container_id).await {
        rec = jobs::ps_from(sh, &info, old.restarts);
        rec.crash_streak = old.crash_streak;
        rec.last_exit = old.last_exit;
        rec.created_at = old.created_at;
    }
    if let Err(e) = sh.store.put(&keys::ps(name), encode(&rec)).await {
        tracing::error!(job = %name, "rollback: writing viking-ps: {e}");
    }
}
