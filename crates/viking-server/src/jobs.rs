//! Running, stopping and removing jobs, as designed:
//!
//! - a daemonized job is written to viking-proc first, as the statement of
//!   intent; then its container is created and started; if Docker fails the
//!   job is taken out of viking-proc again and nothing is left behind; when
//!   it runs, viking-ps gets its record and its history the placement;
//! - a name is claimed with one store transaction (neither viking-proc nor
//!   viking-ps may hold it), so two requests for one name give one job;
//! - `stop` takes the job out of viking-proc before it stops the container,
//!   so nothing brings it back; `remove` also drops its viking-ps record.
//!
//! Architecture invariant: every change of viking-proc, viking-ps and
//! history is a store transaction; a rejected job leaves no trace in proc,
//! ps or Docker.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use hyper::Method;
use viking_client::api::{DryRunResponse, InspectResponse, RunResponse};
use viking_client::frame::{Frame, STDERR, STDOUT};
use viking_client::{Client, ClientError};
use viking_core::records::HostRecord;
use viking_core::records::{decode, encode, History, ProcRecord, PsRecord};
use viking_core::scheduler::{self, HostSnapshot};
use viking_core::{keys, Job};
use viking_docker::{ContainerInfo, ContainerSpec, Output, RuntimeError};
use viking_store::{Compare, Op, StoreExt};

use crate::api::{list_records, ApiError};
use crate::{now_ms, Shared};

type ApiResult<T> = Result<T, ApiError>;

/// A Docker-style name for a job that was not given one.
pub fn generate_name() -> String {
    viking_core::names::generate(rand::random())
}

/// The snapshot dowding needs: floki's hosts and the host ports in use.
pub async fn snapshot(sh: &Shared) -> ApiResult<Vec<HostSnapshot>> {
    let hosts = crate::floki::list(sh).await?;
    let ps: Vec<PsRecord> = list_records(sh.store.as_ref(), keys::PS).await?;
    let procs: Vec<ProcRecord> = list_records(sh.store.as_ref(), keys::PROC).await?;
    // The load of a host: jobs running there, plus jobs placed there that
    // have not started yet (so concurrent runs spread too).
    let mut load: std::collections::HashMap<&str, BTreeSet<&str>> = Default::default();
    for p in ps
        .iter()
        .filter(|p| p.is_running() || p.status == "created")
    {
        load.entry(p.node.as_str())
            .or_default()
            .insert(p.job.as_str());
    }
    for p in &procs {
        if let Some(n) = &p.placed_on {
            load.entry(n.as_str())
                .or_default()
                .insert(p.job.name.as_str());
        }
    }
    // Host ports in use, per host, in one pass over viking-ps.
    let mut ports: std::collections::HashMap<&str, BTreeSet<(u16, viking_core::Proto)>> =
        Default::default();
    for p in ps.iter().filter(|p| p.is_running()) {
        let set = ports.entry(p.node.as_str()).or_default();
        set.extend(p.ports.iter().map(|pp| (pp.host_port, pp.proto())));
    }
    Ok(hosts
        .into_iter()
        .map(|h| {
            let used_ports = ports.remove(h.host.name.as_str()).unwrap_or_default();
            HostSnapshot {
                name: h.host.name.clone(),
                alive: h.alive,
                tags: h.host.tags.iter().cloned().collect(),
                running: load.get(h.host.name.as_str()).map_or(0, |s| s.len() as u64),
                memory: h.host.memory,
                memory_used: h.host.memory_used,
                used_ports,
            }
        })
        .collect())
}

async fn history(sh: &Shared, name: &str) -> ApiResult<(History, i64)> {
    match sh.store.get(&keys::history(name)).await? {
        Some(kv) => Ok((decode(&kv.value)?, kv.mod_revision)),
        None => Ok((History::default(), 0)),
    }
}

/// Ask dowding where `job` goes; with `explain`, why every other host
/// would not take it.
pub async fn place(sh: &Shared, job: &Job, explain: bool) -> ApiResult<scheduler::Decision> {
    let hosts = snapshot(sh).await?;
    let (hist, _) = history(sh, &job.name).await?;
    Ok(if explain {
        scheduler::explain(job, &hosts, Some(&hist))
    } else {
        scheduler::place(job, &hosts, Some(&hist))
    })
}

/// Where the job would run, without running it.
pub async fn dry_run(sh: &Shared, job: Job) -> ApiResult<DryRunResponse> {
    let d = place(sh, &job, true).await?;
    Ok(DryRunResponse {
        job,
        host: d.host,
        rejected: d.rejected,
    })
}

/// Where a job goes now.
pub enum Target {
    /// This server.
    Here,
    /// Another server of the fleet.
    There(HostRecord),
    /// A fixed job whose host is not alive: it waits for it.
    Waiting(String),
}

/// Ask dowding, and turn its answer into a [`Target`] or the reasons no
/// host can take the job.
pub async fn choose(sh: &Shared, job: &Job) -> ApiResult<Target> {
    let d = place(sh, job, false).await?;
    match (d.host.clone(), d.waiting_for.clone()) {
        (Some(h), _) if h == sh.config.name => Ok(Target::Here),
        (Some(h), _) => match crate::floki::host(sh, &h).await? {
            Some(rec) => Ok(Target::There(rec)),
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("host {h:?} left floki"),
            )),
        },
        (None, Some(w)) => Ok(Target::Waiting(w)),
        (None, None) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, d.explain())),
    }
}

fn taken(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "the name {name:?} is already in use by a job; remove it with `viking rm {name}` or choose another --name"
    ))
}

/// Proof that this server wrote a daemonized job to viking-proc, with where
/// it goes.
pub struct Claim {
    pub target: Target,
}

/// Place the job and write it to viking-proc, if neither proc nor ps holds
/// its name.
pub async fn claim_daemon(sh: &Shared, job: &Job) -> ApiResult<Claim> {
    crate::services::prepare_job(sh, job).await?;
    let target = choose(sh, job).await?;
    let (placed_on, waiting) = match &target {
        Target::Here => (Some(sh.config.name.clone()), None),
        Target::There(h) => (Some(h.name.clone()), None),
        Target::Waiting(h) => (None, Some(format!("waiting for host {h}"))),
    };
    let mut ops = Vec::with_capacity(2);
    if let Some(node) = &placed_on {
        // The start in flight, so the reconciler does not start it too.
        ops.push(Op::Put {
            key: keys::ps(&job.name),
            value: encode(&starting_record(job, node)),
            lease: None,
        });
    }
    let rec = ProcRecord {
        job: job.clone(),
        created_at: now_ms(),
        placed_on,
        waiting,
    };
    ops.push(Op::Put {
        key: keys::proc(&job.name),
        value: encode(&rec),
        lease: None,
    });
    let r = sh
        .store
        .txn(
            vec![
                Compare::Absent(keys::proc(&job.name)),
                Compare::Absent(keys::ps(&job.name)),
            ],
            ops,
            vec![],
        )
        .await?;
    if r.succeeded {
        Ok(Claim { target })
    } else {
        Err(taken(&job.name))
    }
}

/// The viking-ps record of a job being started on `node`.
pub fn starting_record(job: &Job, node: &str) -> PsRecord {
    PsRecord {
        job: job.name.clone(),
        node: node.to_string(),
        container_id: String::new(),
        image: job.image.clone(),
        image_id: String::new(),
        command: job.command.clone(),
        daemonize: job.daemonize,
        status: "starting".to_string(),
        exit_code: None,
        error: None,
        ports: vec![],
        created_at: now_ms(),
        started_at: None,
        finished_at: None,
        restarts: 0,
        crash_streak: 0,
        last_exit: None,
    }
}

/// Start a job on a target: here, or through the target's server.
pub async fn start_on(
    sh: &Shared,
    job: &Job,
    target: &Target,
    progress: &(dyn Fn(String) + Sync),
) -> ApiResult<PsRecord> {
    match target {
        Target::Here => start_container(sh, job, progress).await,
        Target::There(h) => forward_start(sh, h, job, progress).await,
        Target::Waiting(h) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("host {h} is not alive"),
        )),
    }
}

/// Run a daemonized job: claim, then start.
pub async fn run_daemon(
    sh: &Shared,
    job: Job,
    progress: &(dyn Fn(String) + Sync),
) -> ApiResult<RunResponse> {
    let claim = claim_daemon(sh, &job).await?;
    run_claimed(sh, job, claim, progress).await
}

/// Start a claimed daemonized job where it was placed; on failure take it
/// out of proc again.
pub async fn run_claimed(
    sh: &Shared,
    job: Job,
    claim: Claim,
    progress: &(dyn Fn(String) + Sync),
) -> ApiResult<RunResponse> {
    if let Target::Waiting(h) = &claim.target {
        return Ok(RunResponse {
            job,
            ps: None,
            waiting: Some(format!(
                "waiting for host {h}: the job is fixed to it and it is not alive"
            )),
        });
    }
    let started = start_placed_or_elsewhere(sh, &job, claim.target, progress).await;
    match started {
        Ok(ps) => Ok(RunResponse {
            job,
            ps: Some(ps),
            waiting: None,
        }),
        Err(e) => {
            // Leave no trace: the container is gone already; drop the intent
            // and the start claim.
            let undo = sh
                .store
                .txn(
                    vec![],
                    vec![
                        Op::Delete {
                            key: keys::proc(&job.name),
                        },
                        Op::Delete {
                            key: keys::ps(&job.name),
                        },
                    ],
                    vec![],
                )
                .await;
            if let Err(de) = undo {
                tracing::error!(job = %job.name, "could not take the failed job out of viking-proc: {de}");
            }
            Err(e)
        }
    }
}

/// Start the job on its target; if the target's server cannot be reached at
/// all (a host that died within its lease), place the job again without it,
/// moving the claim, up to three times.
async fn start_placed_or_elsewhere(
    sh: &Shared,
    job: &Job,
    mut target: Target,
    progress: &(dyn Fn(String) + Sync),
) -> ApiResult<PsRecord> {
    let mut excluded: Vec<String> = Vec::new();
    loop {
        let err = match start_on(sh, job, &target, progress).await {
            Ok(ps) => return Ok(ps),
            Err(e) => e,
        };
        let Target::There(h) = &target else {
            return Err(err);
        };
        if !err.unreachable || excluded.len() >= 3 {
            return Err(err);
        }
        let gone = h.name.clone();
        tracing::warn!(job = %job.name, host = %gone, "host unreachable; placing the job again without it");
        excluded.push(gone.clone());
        let mut hosts = snapshot(sh).await?;
        for host in hosts.iter_mut().filter(|x| excluded.contains(&x.name)) {
            host.alive = false;
        }
        let (hist, _) = history(sh, &job.name).await?;
        let d = scheduler::place(job, &hosts, Some(&hist));
        let Some(next) = d.host else {
            return Err(err);
        };
        target = if next == sh.config.name {
            Target::Here
        } else {
            match crate::floki::host(sh, &next).await? {
                Some(rec) => Target::There(rec),
                None => return Err(err),
            }
        };
        // Move the claim: proc's placement and the start in flight.
        let mut proc = get_proc(sh, &job.name)
            .await?
            .ok_or_else(|| ApiError::conflict(format!("job {:?} left viking-proc", job.name)))?;
        proc.placed_on = Some(next.clone());
        sh.store
            .txn(
                vec![Compare::Exists(keys::proc(&job.name))],
                vec![
                    Op::Put {
                        key: keys::proc(&job.name),
                        value: encode(&proc),
                        lease: None,
                    },
                    Op::Put {
                        key: keys::ps(&job.name),
                        value: encode(&starting_record(job, &next)),
                        lease: None,
                    },
                ],
                vec![],
            )
            .await?;
        progress(format!(
            "host {gone} is unreachable; running on {next} instead"
        ));
    }
}

/// A client of another server of the fleet, with the cluster token.
pub fn peer(sh: &Shared, host: &HostRecord) -> ApiResult<Client> {
    Client::new(&host.api, Some(sh.token.clone()))
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("host {}: {e}", host.name)))
}

/// An error from a peer, kept as the peer said it.
pub fn peer_error(host: &str, e: ClientError) -> ApiError {
    match e {
        ClientError::Api { status, message } => ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            message,
        ),
        ClientError::Connect { .. } => ApiError {
            unreachable: true,
            ..ApiError::new(StatusCode::BAD_GATEWAY, format!("host {host}: {e}"))
        },
        other => ApiError::new(StatusCode::BAD_GATEWAY, format!("host {host}: {other}")),
    }
}

/// Ask the chosen host's server to start a job this server claimed.
async fn forward_start(
    sh: &Shared,
    host: &HostRecord,
    job: &Job,
    progress: &(dyn Fn(String) + Sync),
) -> ApiResult<PsRecord> {
    let doc = serde_json::to_vec(job)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let r = peer(sh, host)?
        .run_with_progress("/v1/internal/start", doc, progress)
        .await
        .map_err(|e| peer_error(&host.name, e))?;
    r.ps.ok_or_else(|| {
        ApiError::docker(format!(
            "host {} did not start job {:?}",
            host.name, job.name
        ))
    })
}

/// Start a job that another server placed here and wrote to viking-proc.
pub async fn start_placed(
    sh: &Shared,
    job: &Job,
    progress: &(dyn Fn(String) + Sync),
) -> ApiResult<RunResponse> {
    let Some(p) = get_proc(sh, &job.name).await? else {
        return Err(ApiError::conflict(format!(
            "job {:?} is not in viking-proc",
            job.name
        )));
    };
    if p.placed_on.as_deref() != Some(sh.config.name.as_str()) {
        return Err(ApiError::conflict(format!(
            "job {:?} is placed on {:?}, not on this host",
            job.name, p.placed_on
        )));
    }
    let ps = start_container(sh, &p.job, progress).await?;
    Ok(RunResponse {
        job: p.job,
        ps: Some(ps),
        waiting: None,
    })
}

/// Make sure the engine has `image`, pulling it with progress if not.
pub async fn ensure_image(
    sh: &Shared,
    image: &str,
    progress: &(dyn Fn(String) + Sync),
) -> ApiResult<String> {
    if let Some(id) = sh.runtime.image_id(image).await? {
        return Ok(id);
    }
    progress(format!("Unable to find image '{image}' locally; pulling"));
    let mut pull = sh.runtime.pull(image);
    while let Some(line) = pull.next().await {
        match line {
            Ok(l) => progress(l),
            Err(e) => {
                return Err(ApiError::docker(format!(
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
        ApiError::docker(format!(
            "image {image:?} was pulled but the engine does not list it"
        ))
    })
}

/// The container of `job` on this host: its spec with the link variables
/// pointing at this host's embassy, and its volume directories made.
pub async fn container_spec(sh: &Shared, job: &Job) -> ApiResult<ContainerSpec> {
    let mut spec =
        ContainerSpec::for_job(job, &sh.config.name, &sh.config.key, &sh.config.data_dir);
    spec.env.extend(crate::services::link_env(sh, job).await?);
    for (host, _) in &spec.binds {
        std::fs::create_dir_all(host).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("creating volume directory {}: {e}", host.display()),
            )
        })?;
    }
    Ok(spec)
}

/// Create a container, replacing a leftover container of this same job
/// that viking made earlier (e.g. before a crash) but no record claims.
pub async fn create_container(sh: &Shared, spec: &ContainerSpec) -> ApiResult<String> {
    match sh.runtime.create(spec).await {
        Ok(id) => Ok(id),
        Err(RuntimeError::Docker(m)) if m.contains("Conflict") || m.contains("already in use") => {
            let existing = sh.runtime.inspect(&spec.name).await?;
            match existing {
                Some(c) if c.job == spec.name && c.cluster == sh.config.key && c.node == sh.config.name => {
                    tracing::info!(job = %spec.name, "removing a leftover container of this job");
                    sh.runtime.remove(&c.id, true).await?;
                    Ok(sh.runtime.create(spec).await?)
                }
                _ => Err(ApiError::conflict(format!(
                    "a container named {:?} that viking did not create exists on this host; remove or rename it",
                    spec.name
                ))),
            }
        }
        Err(e) => Err(e.into()),
    }
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
        status: c.status.clone(),
        exit_code: c.exit_code,
        error: c.error.clone(),
        ports: c.ports.clone(),
        created_at: now_ms(),
        started_at: c.started_at,
        finished_at: c.finished_at,
        restarts,
        crash_streak: 0,
        last_exit: None,
    }
}

async fn start_container(
    sh: &Shared,
    job: &Job,
    progress: &(dyn Fn(String) + Sync),
) -> ApiResult<PsRecord> {
    ensure_image(sh, &job.image, progress).await?;
    let spec = container_spec(sh, job).await?;
    let id = create_container(sh, &spec).await?;
    let started = async {
        sh.runtime.start(&id).await?;
        sh.runtime.inspect(&id).await?.ok_or_else(|| {
            ApiError::docker(format!(
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
    // Keep the restart counters of the start claim.
    let (restarts, streak, last_exit) = match get_ps(sh, &job.name).await? {
        Some((p, _)) if p.node == sh.config.name => (p.restarts, p.crash_streak, p.last_exit),
        _ => (0, 0, None),
    };
    let mut ps = ps_from(sh, &info, restarts);
    ps.crash_streak = streak;
    ps.last_exit = last_exit;
    record_started(sh, &ps).await?;
    Ok(ps)
}

/// Write viking-ps and append the placement to the job's history, in one
/// transaction (retried if the history changed meanwhile).
pub async fn record_started(sh: &Shared, ps: &PsRecord) -> ApiResult<()> {
    for _ in 0..16 {
        let (mut hist, rev) = history(sh, &ps.job).await?;
        hist.push(&ps.node, now_ms());
        let hist_cmp = if rev == 0 {
            Compare::Absent(keys::history(&ps.job))
        } else {
            Compare::ModRevision(keys::history(&ps.job), rev)
        };
        let r = sh
            .store
            .txn(
                vec![hist_cmp],
                vec![
                    Op::Put {
                        key: keys::ps(&ps.job),
                        value: encode(ps),
                        lease: None,
                    },
                    Op::Put {
                        key: keys::history(&ps.job),
                        value: encode(&hist),
                        lease: None,
                    },
                ],
                vec![],
            )
            .await?;
        if r.succeeded {
            return Ok(());
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "could not record job {:?}: its history kept changing",
            ps.job
        ),
    ))
}

async fn get_ps(sh: &Shared, name: &str) -> ApiResult<Option<(PsRecord, i64)>> {
    match sh.store.get(&keys::ps(name)).await? {
        Some(kv) => Ok(Some((decode(&kv.value)?, kv.mod_revision))),
        None => Ok(None),
    }
}

async fn get_proc(sh: &Shared, name: &str) -> ApiResult<Option<ProcRecord>> {
    match sh.store.get(&keys::proc(name)).await? {
        Some(kv) => Ok(Some(decode(&kv.value)?)),
        None => Ok(None),
    }
}

/// proc, ps and history of one job.
pub async fn inspect(sh: &Shared, name: &str) -> ApiResult<InspectResponse> {
    let proc = get_proc(sh, name).await?;
    let ps = get_ps(sh, name).await?.map(|(p, _)| p);
    let (history, _) = history(sh, name).await?;
    if proc.is_none() && ps.is_none() {
        return Err(no_such_job(name));
    }
    let services = crate::services::list(sh)
        .await?
        .into_iter()
        .filter(|s| s.service == name)
        .collect();
    Ok(InspectResponse {
        name: name.to_string(),
        proc,
        ps,
        history,
        services,
    })
}

fn no_such_job(name: &str) -> ApiError {
    ApiError::not_found(format!("no such job: {name:?} (see `viking ps -a`)"))
}

/// Where a job's container lives, seen from this server.
enum Owner {
    Here,
    /// Another server, alive in floki.
    Peer(Client, String),
    /// Another server that is not alive: its container cannot be reached.
    Gone(String),
}

async fn owner(sh: &Shared, ps: &PsRecord) -> ApiResult<Owner> {
    if ps.node == sh.config.name {
        return Ok(Owner::Here);
    }
    match sh.store.get(&keys::host(&ps.node)).await? {
        Some(kv) => {
            let h: HostRecord = decode(&kv.value)?;
            Ok(Owner::Peer(peer(sh, &h)?, h.name))
        }
        None => Ok(Owner::Gone(ps.node.clone())),
    }
}

/// Bring a job's viking-ps record up to date with its container.
pub async fn refresh_ps(sh: &Shared, name: &str) -> ApiResult<Option<PsRecord>> {
    for _ in 0..16 {
        let Some((mut ps, rev)) = get_ps(sh, name).await? else {
            return Ok(None);
        };
        match sh.runtime.inspect(&ps.container_id).await? {
            Some(c) if c.id == ps.container_id => {
                let fresh = ps_from(sh, &c, ps.restarts);
                // Keep viking's own note (e.g. a failed health check) on a
                // container that stopped; a running one clears it.
                let error = match fresh.error.clone() {
                    Some(e) => Some(e),
                    None if c.status != "running" => ps.error.take(),
                    None => None,
                };
                ps = PsRecord {
                    created_at: ps.created_at,
                    crash_streak: ps.crash_streak,
                    last_exit: ps.last_exit,
                    error,
                    ..fresh
                };
            }
            _ => {
                ps.status = "missing".to_string();
            }
        }
        if sh.store.cas(&keys::ps(name), rev, encode(&ps)).await? {
            return Ok(Some(ps));
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("could not update job {name:?}: its record kept changing"),
    ))
}

/// Stop a job: out of viking-proc first, then stop its container (on
/// whichever host runs it).
pub async fn stop(sh: &Shared, name: &str, timeout: i64) -> ApiResult<InspectResponse> {
    let had_proc = sh.store.delete(&keys::proc(name)).await?;
    let ps = get_ps(sh, name).await?;
    match &ps {
        None if !had_proc => return Err(no_such_job(name)),
        None => {}
        Some((p, _)) => match owner(sh, p).await? {
            Owner::Here => {
                if !p.container_id.is_empty() {
                    sh.runtime.stop(&p.container_id, timeout).await?;
                    refresh_ps(sh, name).await?;
                }
            }
            Owner::Peer(c, host) => {
                let path = format!("/v1/jobs/{name}/stop?t={timeout}");
                c.json::<InspectResponse>(Method::POST, &path, None)
                    .await
                    .map_err(|e| peer_error(&host, e))?;
            }
            Owner::Gone(host) => {
                // Out of proc is what matters: the host's agent stops
                // nothing by itself, but the job is never started again.
                tracing::warn!(job = %name, %host, "stopping a job whose host is gone");
            }
        },
    }
    inspect_after(sh, name).await
}

async fn inspect_after(sh: &Shared, name: &str) -> ApiResult<InspectResponse> {
    let ps = get_ps(sh, name).await?.map(|(p, _)| p);
    let (history, _) = history(sh, name).await?;
    Ok(InspectResponse {
        name: name.to_string(),
        proc: get_proc(sh, name).await?,
        ps,
        history,
        services: vec![],
    })
}

/// Remove a job: out of viking-proc, its container and its viking-ps
/// record. A running job needs `force`. The history is kept, so a fixed job
/// run again under the same name returns to its host and its data.
pub async fn remove(sh: &Shared, name: &str, force: bool) -> ApiResult<()> {
    let ps = get_ps(sh, name).await?;
    let proc = get_proc(sh, name).await?;
    if ps.is_none() && proc.is_none() {
        return Err(no_such_job(name));
    }
    if let Some((p, _)) = &ps {
        if p.is_running() && !force {
            return Err(ApiError::conflict(format!(
                "job {name:?} is running: stop it first with `viking stop {name}`, or use `viking rm -f {name}`"
            )));
        }
        match owner(sh, p).await? {
            Owner::Here => {}
            Owner::Peer(c, host) => {
                let path = format!("/v1/jobs/{name}?force={force}");
                return c
                    .call(Method::DELETE, &path, None)
                    .await
                    .map_err(|e| peer_error(&host, e));
            }
            Owner::Gone(host) => {
                // The records go now; when the host returns, its agent
                // removes the container that no job claims any more.
                tracing::warn!(job = %name, %host, "removing a job whose host is gone");
                sh.store.delete(&keys::proc(name)).await?;
                sh.store.delete(&keys::ps(name)).await?;
                return Ok(());
            }
        }
    }
    sh.store.delete(&keys::proc(name)).await?;
    if let Some((p, _)) = &ps {
        if !p.container_id.is_empty() {
            sh.runtime.remove(&p.container_id, true).await?;
        }
    }
    sh.store.delete(&keys::ps(name)).await?;
    Ok(())
}

/// The job's output as a stream of frames.
pub async fn logs(
    sh: &Shared,
    name: &str,
    follow: bool,
) -> ApiResult<BoxStream<'static, Result<Bytes, std::io::Error>>> {
    let Some((ps, _)) = get_ps(sh, name).await? else {
        return Err(no_such_job(name));
    };
    match owner(sh, &ps).await? {
        Owner::Here => {}
        Owner::Peer(c, host) => {
            let path = format!("/v1/jobs/{name}/logs?follow={follow}");
            let body = c
                .stream(Method::GET, &path, None)
                .await
                .map_err(|e| peer_error(&host, e))?;
            let stream = http_body_util::BodyStream::new(body)
                .filter_map(|f| async move {
                    match f {
                        Ok(frame) => frame.into_data().ok().map(Ok),
                        Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
                    }
                })
                .boxed();
            return Ok(stream);
        }
        Owner::Gone(host) => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("job {name:?} ran on host {host}, which is gone; its logs are there"),
            ))
        }
    }
    if ps.container_id.is_empty() {
        return Err(ApiError::conflict(format!(
            "job {name:?} has no container yet"
        )));
    }
    let mut shutdown = sh.shutdown.clone();
    let stream = sh
        .runtime
        .logs(&ps.container_id, follow)
        .map(|o| {
            let mut buf = BytesMut::new();
            match o {
                Ok(Output::Stdout(b)) => Frame::new(STDOUT, b).encode(&mut buf),
                Ok(Output::Stderr(b)) => Frame::new(STDERR, b).encode(&mut buf),
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            Ok(buf.freeze())
        })
        .take_until(async move { crate::stopped(&mut shutdown).await })
        .boxed();
    Ok(stream)
}
