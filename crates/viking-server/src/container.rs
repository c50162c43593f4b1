//! This host's containers: the image (pulled with progress when missing),
//! the container's spec (link variables, volume directories), creating it
//! (replacing a leftover of the same job), starting it and recording it in
//! viking-ps, and bringing a record up to date with its container.
//!
//! A daemonized job's start is fenced by its claim: the revision of the
//! `starting` record in viking-ps that asked for it. The claim is checked
//! before the container is created (after a pull, which may be long), and
//! the "started" record is written only while it still holds; when it does
//! not (the job was moved, stopped or removed meanwhile, e.g. while this
//! server was stopped), the container just made is removed again, so a
//! stale start never leaves a second copy.

use std::collections::BTreeMap;

use futures::StreamExt;
use viking_core::records::{PsRecord, SpecLabel};
use viking_core::{keys, Job, Status};
use viking_docker::{ContainerInfo, ContainerSpec, RuntimeError};
use viking_store::Revision;

use crate::error::{Result, ServerError};
use crate::{now_ms, state, Shared};

/// Make sure the engine has `image`, pulling it with progress if not.
pub async fn ensure_image(
    sh: &Shared,
    image: &str,
    progress: &(dyn Fn(String) + Sync),
) -> Result<String> {
    if let Some(id) = sh.runtime.image_id(image).await? {
        return Ok(id);
    }
    progress(format!("Unable to find image '{image}' locally; pulling"));
    let mut pull = sh.runtime.pull(image);
    while let Some(line) = pull.next().await {
        match line {
            Ok(l) => progress(l),
            Err(e) => {
                return Err(ServerError::Upstream(format!(
                    "image {image:?} is not on this host and could not be pulled: {}",
                    match e {
                        RuntimeError::Image { reason, .. } => reason,
                        other => other.to_string(),
                    }
                )))
            }
        }
    }
    sh.runtime.image_id(image).await?.ok_or_else(|| {
        ServerError::Upstream(format!(
            "image {image:?} was pulled but the engine does not list it"
        ))
    })
}

/// Refuse a job that asks for more than this server allows (its pids
/// limit above `--pids-max`): before anything is written, by the server
/// that receives it, and again by the host that creates its container.
pub fn check_limits(sh: &Shared, job: &Job) -> Result<()> {
    let max = sh.config.containers.pids_max;
    match job.pids_limit {
        Some(n) if n > max => Err(ServerError::Invalid(format!(
            "invalid job: pids_limit: {n} is more than the maximum of {max} on server {} (--pids-max)",
            sh.config.name
        ))),
        _ => Ok(()),
    }
}

/// The container of `job` on this host: its spec with the link variables
/// pointing at this host's embassy, the server's log rotation and pids
/// limit, and its volume directories made and checked (no symlink below
/// the volume root: [`crate::volume`]). Every container viking creates
/// (a run, a restart, a push, an interactive job) gets its spec here, just
/// before it is created.
pub async fn container_spec(sh: &Shared, job: &Job) -> Result<ContainerSpec> {
    check_limits(sh, job)?;
    let mut spec =
        ContainerSpec::for_job(job, &sh.config.name, &sh.config.key, &sh.config.data_dir);
    spec.env.extend(crate::services::link_env(sh, job).await?);
    // The service's ambassador ports travel with the container, so a lost
    // store gets them back (`viking recover`).
    let mut ambassador = std::collections::BTreeMap::new();
    for cport in crate::services::tcp_ports(job) {
        if let Some(aport) =
            state::ambassador_port(sh.store.as_ref(), job.service_name(), cport).await?
        {
            ambassador.insert(cport, aport);
        }
    }
    let carried = viking_core::records::SpecLabel {
        job: job.clone(),
        ambassador,
    };
    spec.labels.insert(
        viking_docker::LABEL_SPEC.to_string(),
        String::from_utf8_lossy(&viking_core::records::encode(&carried)?).into_owned(),
    );
    let limits = &sh.config.containers;
    spec.pids_limit = Some(job.pids_limit.unwrap_or(limits.pids_limit));
    spec.log = Some(limits.log_rotation());
    for (host, volume) in spec.binds.iter_mut() {
        *host = crate::volume::prepare(&sh.config.data_dir, &job.name, volume)?;
    }
    Ok(spec)
}

/// Create a container, replacing a leftover container of this same job
/// that viking made earlier (e.g. before a crash) but no record claims.
pub async fn create_container(sh: &Shared, spec: &ContainerSpec) -> Result<String> {
    match sh.runtime.create(spec).await {
        Ok(id) => Ok(id),
        Err(RuntimeError::Conflict(_)) => {
            let existing = sh.runtime.inspect(&spec.name).await?;
            let job = spec
                .labels
                .get(viking_docker::LABEL_JOB)
                .map(String::as_str);
            match existing {
                Some(c) if Some(c.job.as_str()) == job && c.cluster == sh.config.key && c.node == sh.config.name => {
                    // The same daemonized job, running: a start that came
                    // while its record lagged (the host was gone and is
                    // back). It goes on running; it is not replaced.
                    if !spec.interactive && c.status == "running" && same_job(spec, &c) {
                        tracing::info!(job = %c.job, "the job's container already runs here: keeping it");
                        return Ok(c.id);
                    }
                    tracing::info!(job = %c.job, "removing a leftover container of this job");
                    sh.runtime.remove(&c.id, true).await?;
                    Ok(sh.runtime.create(spec).await?)
                }
                _ => Err(ServerError::Conflict(format!(
                    "a container named {:?} that viking did not create exists on this host; remove or rename it",
                    spec.name
                ))),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether container `c` carries the very job `spec` is for (the same
/// document in its `viking.spec` label).
fn same_job(spec: &ContainerSpec, c: &ContainerInfo) -> bool {
    let job_of = |label: Option<&str>| {
        label.and_then(|l| {
            viking_core::records::decode::<viking_core::records::SpecLabel>(l.as_bytes())
                .ok()
                .map(|s| s.job)
        })
    };
    let wanted = job_of(
        spec.labels
            .get(viking_docker::LABEL_SPEC)
            .map(String::as_str),
    );
    wanted.is_some() && wanted == job_of(c.spec.as_deref())
}

/// The job a container carries in its `viking.spec` label: `Ok(None)` when
/// it has no label or the label names another job than the container's,
/// an error when the label cannot be read.
pub fn carried_job(
    c: &ContainerInfo,
) -> std::result::Result<Option<SpecLabel>, viking_core::records::RecordError> {
    let Some(label) = c.spec.as_deref() else {
        return Ok(None);
    };
    let carried: SpecLabel = viking_core::records::decode(label.as_bytes())?;
    Ok((carried.job.name == c.job).then_some(carried))
}

/// A viking-ps record from Docker's view of a container.
pub fn ps_from(sh: &Shared, c: &ContainerInfo, restarts: u32) -> PsRecord {
    PsRecord {
        job: c.job.clone(),
        node: sh.config.name.clone(),
        container_id: c.id.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        command: c.command.clone(),
        daemonize: c.daemonize,
        status: Status::from(c.status.as_str()),
        exit_code: c.exit_code,
        error: c.error.clone(),
        ports: c.ports.clone(),
        created_at: now_ms(),
        started_at: c.started_at,
        finished_at: c.finished_at,
        restarts,
        crash_streak: 0,
        last_exit: None,
        claimed_by: None,
    }
}

/// Start a daemonized job here and record it; with `claim`, only while the
/// `starting` record written at that revision holds.
pub async fn start_container(
    sh: &Shared,
    job: &Job,
    claim: Option<Revision>,
    progress: &(dyn Fn(String) + Sync),
) -> Result<PsRecord> {
    start_checked(sh, job, claim, false, progress).await
}

/// [`start_container`] for a job another server placed here: its
/// viking-proc record must also name this host and hold this very job.
pub async fn start_placed_here(
    sh: &Shared,
    job: &Job,
    claim: Option<Revision>,
    progress: &(dyn Fn(String) + Sync),
) -> Result<PsRecord> {
    start_checked(sh, job, claim, true, progress).await
}

/// Before the container is made, one read ([`state::start_view`]) checks
/// that the store is this cluster's, that the claim holds and, with
/// `placed_here`, that viking-proc places this job here; the start's
/// counters and history come from the same read.
async fn start_checked(
    sh: &Shared,
    job: &Job,
    claim: Option<Revision>,
    placed_here: bool,
    progress: &(dyn Fn(String) + Sync),
) -> Result<PsRecord> {
    ensure_image(sh, &job.image, progress).await?;
    check_host_ports(sh, job).await?;
    let view = state::start_view(sh.store.as_ref(), &job.name).await?;
    crate::standing::require_member_by(sh, view.cluster_id.clone())?;
    if claim.is_some_and(|c| !view.claim_holds(c)) {
        return Err(superseded(&job.name));
    }
    if placed_here {
        let Some(p) = &view.proc else {
            return Err(ServerError::Conflict(format!(
                "job {:?} is not in viking-proc",
                job.name
            )));
        };
        if p.placed_on.as_deref() != Some(sh.config.name.as_str()) {
            return Err(ServerError::Conflict(format!(
                "job {:?} is placed on {:?}, not on this host",
                job.name, p.placed_on
            )));
        }
        if p.job != *job {
            return Err(ServerError::Conflict(format!(
                "job {:?} in viking-proc is not the one asked to start here",
                job.name
            )));
        }
    }
    let spec = container_spec(sh, job).await?;
    let id = create_container(sh, &spec).await?;
    let started = async {
        sh.runtime.start(&id).await?;
        sh.runtime.inspect(&id).await?.ok_or_else(|| {
            ServerError::Upstream(format!(
                "container of job {:?} vanished after it started",
                job.name
            ))
        })
    }
    .await;
    let info = match started {
        Ok(i) => i,
        Err(e) => {
            if let Err(re) = sh.runtime.remove(&id, true).await {
                tracing::error!(job = %job.name, "removing the container that failed to start: {re}");
            }
            return Err(e);
        }
    };
    // Keep the restart counters of the start claim (as read: with a claim,
    // the record is written only while it is still that one).
    let (restarts, streak, last_exit) = match &view.ps {
        Some((p, _)) if p.node == sh.config.name => (p.restarts, p.crash_streak, p.last_exit),
        _ => (0, 0, None),
    };
    let mut ps = ps_from(sh, &info, restarts);
    ps.crash_streak = streak;
    ps.last_exit = last_exit;
    let recorded =
        state::record_started(sh.store.as_ref(), &ps, claim, now_ms(), Some(view.history)).await;
    match recorded {
        Ok(true) => Ok(ps),
        Ok(false) => {
            tracing::warn!(job = %job.name, "the start claim was superseded while the container started; removing it");
            if let Err(re) = sh.runtime.remove(&id, true).await {
                tracing::error!(job = %job.name, "removing the container of a superseded start: {re}");
            }
            Err(superseded(&job.name))
        }
        Err(e) => Err(e),
    }
}

fn superseded(name: &str) -> ServerError {
    ServerError::Conflict(format!(
        "job {name:?} was moved, stopped or removed while this host was starting it: not started here"
    ))
}

/// Refuse a job whose host ports are taken on this host (by a container or
/// process viking does not count), so it is placed elsewhere.
async fn check_host_ports(sh: &Shared, job: &Job) -> Result<()> {
    for p in &job.ports {
        let Some(port) = p.host else { continue };
        if sh.runtime.host_port_in_use(port, p.proto).await? {
            return Err(ServerError::HostPortInUse {
                host: sh.config.name.clone(),
                port,
                proto: p.proto.as_str(),
            });
        }
    }
    Ok(())
}

/// A job's viking-ps record brought up to date with what Docker said of
/// its container (`None`: not there any more).
fn updated(sh: &Shared, mut ps: PsRecord, inspected: Option<ContainerInfo>) -> PsRecord {
    match inspected {
        Some(c) if c.id == ps.container_id => {
            let fresh = ps_from(sh, &c, ps.restarts);
            // Keep viking's own note (e.g. a failed health check) on a
            // container that stopped; a running one clears it.
            let error = match fresh.error.clone() {
                Some(e) => Some(e),
                None if c.status != "running" => ps.error.take(),
                None => None,
            };
            PsRecord {
                created_at: ps.created_at,
                crash_streak: ps.crash_streak,
                last_exit: ps.last_exit,
                error,
                ..fresh
            }
        }
        _ => {
            ps.status = Status::Missing;
            ps
        }
    }
}

/// [`refresh_ps`] for many containers of this host at once (the agent's
/// resync), from the records as `read` before: Docker is asked about every
/// container, then the records are read again in one request. A record
/// that did not change since `read` was as Docker's answer found it (and
/// is written only if that answer changes it, still on its revision); one
/// that changed meanwhile (moved, exited, Docker slow) is refreshed again on
/// its own, read first. Each job's outcome, as [`refresh_ps`]'s; an error
/// when the records cannot be read again.
pub async fn refresh_many(
    sh: &Shared,
    jobs: &[(String, String)],
    read: &BTreeMap<String, (PsRecord, Revision)>,
) -> Result<Vec<(String, Result<Option<PsRecord>>)>> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut seen = Vec::with_capacity(jobs.len());
    for (job, id) in jobs {
        match read.get(job) {
            Some((ps, rev)) if ps.node == sh.config.name && ps.container_id == *id => {
                match sh.runtime.inspect(id).await {
                    Ok(c) => seen.push((job, id, ps, *rev, c)),
                    Err(e) => out.push((job.clone(), Err(e.into()))),
                }
            }
            _ => out.push((job.clone(), refresh_ps(sh, job, id, None).await)),
        }
    }
    let wanted: Vec<String> = seen.iter().map(|(job, ..)| keys::ps(job)).collect();
    let again = sh.store.get_many(&wanted).await?;
    for ((job, id, ps, rev, inspected), now) in seen.into_iter().zip(again) {
        let outcome = if now.as_ref().map(|kv| kv.mod_revision) != Some(rev) {
            refresh_ps(sh, job, id, None).await
        } else {
            let fresh = updated(sh, ps.clone(), inspected);
            if fresh == *ps {
                Ok(Some(fresh))
            } else {
                match state::put_ps_if(sh.store.as_ref(), &fresh, rev).await {
                    Ok(Some(_)) => Ok(Some(fresh)),
                    Ok(None) => refresh_ps(sh, job, id, None).await,
                    Err(e) => Err(e),
                }
            }
        };
        out.push((job.clone(), outcome));
    }
    Ok(out)
}

/// Bring a job's viking-ps record up to date with its container `id` on
/// this host. Only while the record still names this host and that
/// container: whoever decided to refresh it read the record earlier, and
/// meanwhile the job may have moved (this host's Docker froze, it left
/// floki, the job was started elsewhere). The new host's record is not
/// this server's to write: marking it missing because its container is not
/// on this engine would make the reconciler replace a healthy copy. `None`
/// when the record is gone or names another container. `first`: the
/// record as just read, if the caller has it (a write still compares its
/// revision).
pub async fn refresh_ps(
    sh: &Shared,
    name: &str,
    id: &str,
    mut first: Option<(PsRecord, Revision)>,
) -> Result<Option<PsRecord>> {
    for _ in 0..16 {
        let read = match first.take() {
            Some(r) => Some(r),
            None => state::ps(sh.store.as_ref(), name).await?,
        };
        let Some((mut ps, rev)) = read else {
            return Ok(None);
        };
        if ps.node != sh.config.name || ps.container_id != id {
            return Ok(None);
        }
        let before = ps.clone();
        let inspected = sh.runtime.inspect(&ps.container_id).await?;
        ps = updated(sh, ps, inspected);
        // Nothing changed: nothing is written (every resync refreshes every
        // record of the host; an idle host must not rewrite them).
        if ps == before {
            return Ok(Some(ps));
        }
        if state::put_ps_if(sh.store.as_ref(), &ps, rev)
            .await?
            .is_some()
        {
            return Ok(Some(ps));
        }
    }
    Err(ServerError::Unavailable(format!(
        "could not update job {name:?}: its record kept changing"
    )))
}
