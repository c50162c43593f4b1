//! Running, stopping and removing jobs, as designed:
//!
//! - a daemonized job is written to viking-proc first, as the statement of
//!   intent, with its ambassador ports, in the name claim's transaction
//!   ([`crate::state::claim_daemon`]); then its container is created and
//!   started; if Docker fails the job is taken out of viking-proc again and
//!   nothing is left behind; when it runs, viking-ps gets its record and its
//!   history the placement;
//! - `stop` takes the job out of viking-proc before it stops the container,
//!   so nothing brings it back; `remove` also drops its viking-ps record and
//!   frees its ambassador ports.
//!
//! Placement is [`crate::placement`], containers [`crate::container`],
//! calls to other servers [`crate::peer`], records [`crate::state`].
//!
//! Architecture invariant: every change of viking-proc, viking-ps and
//! history is a store transaction; a rejected job leaves no trace in proc,
//! ps, ports or Docker.

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::BTreeSet;
use viking_client::api::{InspectResponse, RunResponse};
use viking_client::frame::{Frame, STDERR, STDOUT};
use viking_client::wire::{JobIntent, JobState, Placements};

use viking_core::records::{encode, ProcRecord, PsRecord};
use viking_core::signal::Signal;
use viking_core::{keys, scheduler, Job};
use viking_docker::Output;
use viking_store::{Compare, Op, Revision, StoreExt};

use crate::container::start_container;
use crate::error::{Result, ServerError};
use crate::peer::{forward_start, owner, Owner};
use crate::placement::{self, Target};
use crate::{now_ms, state, Shared};

/// Start a job on a target, here or through the target's server, while
/// its `starting` record written at `claim` holds.
pub async fn start_on(
    sh: &Shared,
    job: &Job,
    target: &Target,
    claim: Revision,
    progress: &(dyn Fn(String) + Sync),
) -> Result<PsRecord> {
    match target {
        Target::Here => start_container(sh, job, Some(claim), progress).await,
        Target::There(h) => forward_start(sh, h, job, claim, progress).await,
        Target::Waiting(h) => Err(ServerError::Unavailable(format!("host {h} is not alive"))),
    }
}

/// Proof that this server wrote a daemonized job to viking-proc, with where
/// it goes.
pub struct Claim {
    pub target: Target,
    /// The revision of the claim's `starting` record in viking-ps (of
    /// proc alone, for a job that waits for its host).
    pub rev: Revision,
}

impl Claim {
    /// The host the claim placed the job on (`None` while it waits).
    pub fn host(&self, sh: &Shared) -> Option<String> {
        match &self.target {
            Target::Here => Some(sh.config.name.clone()),
            Target::There(h) => Some(h.name.clone()),
            Target::Waiting(_) => None,
        }
    }
}

/// Place the job and claim its name: viking-proc, the start in flight and
/// its ambassador ports, in one transaction that holds only if neither proc
/// nor ps has the name. Links must name existing services, and the job
/// must ask no more than this server allows.
pub async fn claim_daemon(sh: &Shared, job: &Job) -> Result<Claim> {
    claim_daemon_apart(sh, job, &[]).await
}

/// [`claim_daemon`] for an instance, with the hosts its siblings were just
/// placed on (ranked last).
pub async fn claim_daemon_apart(sh: &Shared, job: &Job, siblings: &[String]) -> Result<Claim> {
    let began = std::time::Instant::now();
    let claimed = placed_and_claimed(sh, job, siblings).await;
    sh.metrics
        .placed(began.elapsed(), claimed.as_ref().map(|_| ()));
    claimed
}

async fn placed_and_claimed(sh: &Shared, job: &Job, siblings: &[String]) -> Result<Claim> {
    crate::container::check_limits(sh, job)?;
    crate::services::check_links(sh, job).await?;
    // The leader places it in memory; a job that publishes a fixed host
    // port needs every host's ports in use, which only the store has.
    if !placement::needs_host_ports(job) {
        if let Some((target, rev)) = crate::placer::at_leader(sh, job, siblings).await? {
            return Ok(Claim { target, rev });
        }
    }
    for _ in 0..placement::TRIES {
        let (target, guard) = placement::choose(sh, job).await?;
        let (placed_on, waiting) = match &target {
            Target::Here => (Some(sh.config.name.clone()), None),
            Target::There(h) => (Some(h.name.clone()), None),
            Target::Waiting(h) => (None, Some(format!("waiting for host {h}"))),
        };
        let claimed = state::claim_daemon(
            sh.store.as_ref(),
            state::DaemonClaim {
                job,
                placed_on,
                claimant: &sh.config.name,
                waiting,
                guard,
                service_ports: crate::services::tcp_ports(job),
                ports: sh.config.embassy_ports,
                now: now_ms(),
                cluster: sh.cluster_id(),
            },
        )
        .await?;
        match claimed {
            state::Claimed::Yes(rev) => return Ok(Claim { target, rev }),
            // Another job was placed on the same host since the snapshot:
            // decide again over one that counts it.
            state::Claimed::HostChanged => continue,
            state::Claimed::NotMember => return Err(crate::standing::refusal(sh).await),
        }
    }
    Err(ServerError::Unavailable(format!(
        "placing {:?} kept racing with other placements; try again",
        job.name
    )))
}

/// Run a daemonized job: claim, then start.
pub async fn run_daemon(
    sh: &Shared,
    job: Job,
    progress: &(dyn Fn(String) + Sync),
) -> Result<RunResponse> {
    let claim = claim_daemon(sh, &job).await?;
    run_claimed(sh, job, claim, progress).await
}

/// Start a claimed daemonized job where it was placed; on failure take it
/// out of proc again, unless the claim has moved on meanwhile (the
/// reconciler started the job again because this start outlived
/// `--start-timeout`, or this server left floki while it waited on a slow
/// host): a job that runs is never taken out by a start that failed.
pub async fn run_claimed(
    sh: &Shared,
    job: Job,
    claim: Claim,
    progress: &(dyn Fn(String) + Sync),
) -> Result<RunResponse> {
    if let Target::Waiting(_) = &claim.target {
        return Ok(accepted(sh, &job, &claim));
    }
    let mut claim_rev = claim.rev;
    let started = start_placed_or_elsewhere(sh, &job, claim.target, &mut claim_rev, progress).await;
    match started {
        Ok(ps) => Ok(RunResponse {
            job,
            ps: Some(JobState::from(&ps)),
            waiting: None,
            instances: Vec::new(),
        }),
        Err(e) => {
            // Leave no trace: the container is gone already; drop the intent
            // and the start claim, if viking-ps is still our claim.
            let undo = sh
                .store
                .txn(
                    vec![Compare::ModRevision(keys::ps(&job.name), claim_rev)],
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
            match undo {
                Ok(r) if r.succeeded => {}
                Ok(_) => {
                    tracing::warn!(job = %job.name, "the start failed ({e}), but the job has moved on since its claim: left as it is");
                    return Err(ServerError::Conflict(format!(
                        "{e}; job {:?} was started again since (see `viking ps -a`)",
                        job.name
                    )));
                }
                Err(de) => {
                    tracing::error!(job = %job.name, "could not take the failed job out of viking-proc: {de}");
                }
            }
            Err(e)
        }
    }
}

/// The answer to a job accepted without waiting: its `starting` record,
/// or why it waits for its host.
pub fn accepted(sh: &Shared, job: &Job, claim: &Claim) -> RunResponse {
    let node = match &claim.target {
        Target::Here => sh.config.name.clone(),
        Target::There(h) => h.name.clone(),
        Target::Waiting(h) => {
            return RunResponse {
                job: job.clone(),
                ps: None,
                waiting: Some(format!(
                    "waiting for host {h}: the job is fixed to it and it is not alive"
                )),
                instances: Vec::new(),
            }
        }
    };
    let starting = state::starting_record(job, &node, Some(&sh.config.name), now_ms());
    RunResponse {
        job: job.clone(),
        ps: Some(JobState::from(&starting)),
        waiting: None,
        instances: Vec::new(),
    }
}

/// Start a job accepted without waiting (`POST /v1/jobs?no_wait=true`),
/// after the answer. A start that fails leaves the job in viking-proc and
/// records the failure in viking-ps (if the claim still holds): the
/// reconciler starts it again after its backoff, and `viking ps` says
/// why, as for a job that crashed.
pub async fn start_accepted(sh: &Shared, job: Job, claim: Claim) {
    if let Target::Waiting(_) = &claim.target {
        return;
    }
    let mut rev = claim.rev;
    let started = start_placed_or_elsewhere(sh, &job, claim.target, &mut rev, &|_| {}).await;
    if let Err(e) = started {
        tracing::warn!(job = %job.name, "the start of an accepted job failed: {e}");
        if let Err(e) =
            state::fail_start(sh.store.as_ref(), &job.name, rev, None, &e.to_string()).await
        {
            tracing::warn!(job = %job.name, "recording the failed start: {e}");
        }
    }
}

/// Start the job on its target; if the target's server cannot be reached at
/// all (a host that died within its lease), or a host port the job
/// publishes is taken there, place the job again without it, moving the
/// claim (`claim`: the revision of its `starting` record, updated with
/// each move), up to three times. A server that accepts and does not
/// answer within the deadline (stopped, cut off) counts as unreachable.
async fn start_placed_or_elsewhere(
    sh: &Shared,
    job: &Job,
    mut target: Target,
    claim: &mut Revision,
    progress: &(dyn Fn(String) + Sync),
) -> Result<PsRecord> {
    let mut excluded: Vec<String> = Vec::new();
    loop {
        let err = match start_on(sh, job, &target, *claim, progress).await {
            Ok(ps) => return Ok(ps),
            Err(e) => e,
        };
        let gone = match &target {
            Target::Here => sh.config.name.clone(),
            Target::There(h) => h.name.clone(),
            Target::Waiting(_) => return Err(err),
        };
        if !err.places_again() || excluded.len() >= 3 {
            return Err(err);
        }
        tracing::warn!(job = %job.name, host = %gone, "{err}; placing the job again without it");
        excluded.push(gone.clone());
        let mut hosts = placement::snapshot(sh).await?;
        for host in hosts.iter_mut().filter(|x| excluded.contains(&x.name)) {
            host.alive = false;
        }
        let (hist, _) = state::history(sh.store.as_ref(), &job.name).await?;
        let d = scheduler::place(
            job,
            viking_core::job::Reservation::of(job, sh.config.policy.reserve),
            &hosts,
            Some(&hist),
        );
        let Some(next) = d.host else {
            return Err(err);
        };
        target = match placement::target(sh, &next).await? {
            Some(t) => t,
            None => return Err(err),
        };
        // Move the claim: proc's placement and the start in flight, if
        // the claim is still ours.
        let mut proc = state::proc(sh.store.as_ref(), &job.name)
            .await?
            .ok_or_else(|| ServerError::Conflict(format!("job {:?} left viking-proc", job.name)))?;
        proc.placed_on = Some(next.clone());
        let starting = state::starting_record(job, &next, Some(&sh.config.name), now_ms());
        let moved = sh
            .store
            .txn(
                vec![
                    Compare::Exists(keys::proc(&job.name)),
                    Compare::ModRevision(keys::ps(&job.name), *claim),
                ],
                vec![
                    Op::Put {
                        key: keys::proc(&job.name),
                        value: encode(&proc)?,
                        lease: None,
                    },
                    Op::Put {
                        key: keys::ps(&job.name),
                        value: encode(&starting)?,
                        lease: None,
                    },
                ],
                vec![],
            )
            .await?;
        if !moved.succeeded {
            return Err(ServerError::Conflict(format!(
                "job {:?} was moved, stopped or removed while it was being started",
                job.name
            )));
        }
        *claim = moved.revision;
        let why = if err.is_unreachable() {
            format!("host {gone} is unreachable")
        } else {
            err.to_string()
        };
        progress(format!("{why}; running on {next} instead"));
    }
}

/// Start a job that another server placed here and wrote to viking-proc,
/// while its claim (the revision of the `starting` record naming this
/// host) holds; without one (a server from before claims travelled) only
/// proc's placement is checked.
pub async fn start_placed(
    sh: &Shared,
    job: &Job,
    claim: Option<Revision>,
    progress: &(dyn Fn(String) + Sync),
) -> Result<RunResponse> {
    let ps = crate::container::start_placed_here(sh, job, claim, progress).await?;
    Ok(RunResponse {
        job: job.clone(),
        ps: Some(JobState::from(&ps)),
        waiting: None,
        instances: Vec::new(),
    })
}

/// proc, ps and history of one job.
pub async fn inspect(sh: &Shared, name: &str) -> Result<InspectResponse> {
    let proc = state::proc(sh.store.as_ref(), name).await?;
    let ps = state::ps(sh.store.as_ref(), name).await?.map(|(p, _)| p);
    let (history, _) = state::history(sh.store.as_ref(), name).await?;
    if proc.is_none() && ps.is_none() {
        return Err(state::no_such_job(name));
    }
    // An instance of a service shows its service's ports.
    let service = proc
        .as_ref()
        .map_or(name, |p| p.job.service_name())
        .to_string();
    let services = crate::services::list(sh)
        .await?
        .into_iter()
        .filter(|s| s.service == service)
        .collect();
    Ok(InspectResponse {
        name: name.to_string(),
        proc: proc.as_ref().map(JobIntent::from),
        ps: ps.as_ref().map(JobState::from),
        history: Placements::from(&history),
        services,
    })
}

/// Stop a job: out of viking-proc first, then stop its container (on
/// whichever host runs it).
pub async fn stop(sh: &Shared, name: &str, timeout: i64) -> Result<InspectResponse> {
    let max = viking_client::api::MAX_WAIT_SECONDS;
    if !(0..=max as i64).contains(&timeout) {
        return Err(ServerError::Invalid(format!(
            "t: the stop timeout must be 0 to {max} seconds, not {timeout}"
        )));
    }
    let had_proc = sh.store.delete(&keys::proc(name)).await?;
    let ps = state::ps(sh.store.as_ref(), name).await?;
    match &ps {
        None if !had_proc => return Err(state::no_such_job(name)),
        None => {}
        Some((p, _)) => match owner(sh, p).await? {
            Owner::Here => {
                if !p.container_id.is_empty() {
                    sh.runtime.stop(&p.container_id, timeout).await?;
                    crate::container::refresh_ps(sh, name, &p.container_id, None).await?;
                }
            }
            Owner::Peer(c, host) => {
                c.stop(name, timeout)
                    .await
                    .map_err(|e| ServerError::from_peer(&host, e))?;
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

/// Send `signal` to a job's process where it runs. `KILL` stops the job
/// for good, as a stop with no grace period does (out of viking-proc, never
/// started again), which is what `docker kill` does to a container with a
/// restart policy. Any other signal leaves the job as it is desired: a
/// process that the signal ends is restarted like any other that exits
/// (a daemonized job), or ends its attached run with its exit code.
pub async fn kill(sh: &Shared, name: &str, signal: Signal) -> Result<InspectResponse> {
    if signal == viking_core::signal::KILL {
        return stop(sh, name, 0).await;
    }
    let ps = state::ps(sh.store.as_ref(), name).await?;
    let p = match ps {
        Some((p, _)) if p.status.is_live() && !p.container_id.is_empty() => p,
        Some(_) => return Err(not_running(name)),
        None if state::proc(sh.store.as_ref(), name).await?.is_some() => {
            return Err(not_running(name))
        }
        None => return Err(state::no_such_job(name)),
    };
    match owner(sh, &p).await? {
        Owner::Here => {
            sh.runtime
                .kill(&p.container_id, &signal.to_string())
                .await?
        }
        Owner::Peer(c, host) => {
            c.kill(name, &signal)
                .await
                .map_err(|e| ServerError::from_peer(&host, e))?;
        }
        Owner::Gone(host) => {
            return Err(ServerError::Unavailable(format!(
                "job {name:?} runs on host {host:?}, which is gone: no signal can reach it"
            )))
        }
    }
    inspect_after(sh, name).await
}

fn not_running(name: &str) -> ServerError {
    ServerError::Conflict(format!("job {name:?} is not running"))
}

async fn inspect_after(sh: &Shared, name: &str) -> Result<InspectResponse> {
    let ps = state::ps(sh.store.as_ref(), name).await?.map(|(p, _)| p);
    let (history, _) = state::history(sh.store.as_ref(), name).await?;
    let proc = state::proc(sh.store.as_ref(), name).await?;
    Ok(InspectResponse {
        name: name.to_string(),
        proc: proc.as_ref().map(JobIntent::from),
        ps: ps.as_ref().map(JobState::from),
        history: Placements::from(&history),
        services: vec![],
    })
}

/// Remove a job: out of viking-proc, its container (with its anonymous
/// volumes) and its viking-ps record. A running job needs `force`. Without
/// `volumes` the history and the data directory are kept, so a fixed job
/// run again under the same name returns to its host and its data; with
/// `volumes` both go too ([`remove_data`]), also for a job whose records
/// are gone already.
pub async fn remove(sh: &Shared, name: &str, force: bool, volumes: bool) -> Result<()> {
    if volumes {
        // Refused before anything changes when the data cannot be reached.
        let (hist, _) = state::history(sh.store.as_ref(), name).await?;
        if let Some(node) = hist.last_node() {
            if let Owner::Gone(host) = crate::peer::owner_of(sh, node).await? {
                return Err(data_host_gone(name, &host));
            }
        }
    }
    let ps = state::ps(sh.store.as_ref(), name).await?;
    let proc = state::proc(sh.store.as_ref(), name).await?;
    if ps.is_none() && proc.is_none() {
        if volumes && remove_data(sh, name).await? {
            return Ok(());
        }
        return Err(state::no_such_job(name));
    }
    if let Some((p, _)) = &ps {
        if p.is_running() && !force {
            return Err(ServerError::Conflict(format!(
                "job {name:?} is running: stop it first with `viking stop {name}`, or use `viking rm -f {name}`"
            )));
        }
        match owner(sh, p).await? {
            Owner::Here => {}
            Owner::Peer(c, host) => {
                return c
                    .rm_with(name, force, volumes)
                    .await
                    .map_err(|e| ServerError::from_peer(&host, e));
            }
            Owner::Gone(host) if volumes => return Err(data_host_gone(name, &host)),
            Owner::Gone(host) => {
                // The records go now, with a mark naming the container:
                // when the host returns, its agent removes exactly that one
                // (a container is never removed for a missing record).
                tracing::warn!(job = %name, %host, "removing a job whose host is gone");
                let mut ops = vec![
                    Op::Delete {
                        key: keys::proc(name),
                    },
                    Op::Delete {
                        key: keys::ps(name),
                    },
                ];
                if !p.container_id.is_empty() {
                    ops.push(Op::Put {
                        key: keys::removed(name, &p.container_id),
                        value: host.clone().into_bytes(),
                        lease: None,
                    });
                }
                sh.store.txn(vec![], ops, vec![]).await?;
                release_ports(sh, name, proc.as_ref()).await?;
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
    release_ports(sh, name, proc.as_ref()).await?;
    if volumes {
        remove_data(sh, name).await?;
    }
    Ok(())
}

/// Free the ambassador ports of a removed job's service: its own, or, for
/// an instance, the service's once no other instance is left.
async fn release_ports(sh: &Shared, name: &str, proc: Option<&ProcRecord>) -> Result<()> {
    // An instance that was stopped has no proc record left: its name says
    // its service, if that service is one.
    let by_name = match name.rsplit_once('.') {
        Some((s, k)) if k.parse::<u32>().is_ok() => {
            sh.store.get(&keys::service(s)).await?.map(|_| s)
        }
        _ => None,
    };
    let service = proc.map_or(by_name.unwrap_or(name), |p| p.job.service_name());
    if service != name {
        if !instances_of(sh, service).await?.is_empty() {
            return Ok(());
        }
        // The last instance: the name is free again.
        sh.store.delete(&keys::service(service)).await?;
    }
    state::release_ports(sh.store.as_ref(), service).await
}

/// The instances of `service` in viking-proc, by name (`NAME.1` first).
pub async fn instances_of(sh: &Shared, service: &str) -> Result<Vec<ProcRecord>> {
    let mut found: Vec<ProcRecord> =
        state::list(sh.store.as_ref(), &keys::proc(&format!("{service}."))).await?;
    found.retain(|p| p.job.service.as_deref() == Some(service));
    found.sort_by_key(|p| instance_number(&p.job.name));
    Ok(found)
}

/// The jobs `name` stands for: a service's instances, or the one job of
/// that name (which may not exist: the action on it says so).
pub async fn jobs_named(sh: &Shared, name: &str) -> Result<Vec<String>> {
    let instances = instances_named(sh, name).await?;
    if instances.is_empty() {
        return Ok(vec![name.to_string()]);
    }
    Ok(instances)
}

/// The instances a name stands for: the instances of the service of that
/// name when no job has the name itself; none otherwise.
async fn instances_named(sh: &Shared, name: &str) -> Result<Vec<String>> {
    // Only a service with replicas holds its name; no job has it then.
    if sh.store.get(&keys::service(name)).await?.is_none() {
        return Ok(Vec::new());
    }
    let mut names: BTreeSet<String> = instances_of(sh, name)
        .await?
        .into_iter()
        .map(|p| p.job.name)
        .collect();
    // Stopped instances: out of viking-proc, still in viking-ps.
    let prefix = format!("{name}.");
    let (kvs, _) = sh.store.list(&keys::ps(&prefix)).await?;
    names.extend(
        kvs.iter()
            .filter_map(|kv| keys::name_of(keys::PS, &kv.key))
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .is_some_and(|k| k.parse::<u32>().is_ok())
            })
            .map(str::to_string),
    );
    Ok(names.into_iter().collect())
}

/// `k` of instance `NAME.k`.
fn instance_number(name: &str) -> u32 {
    name.rsplit_once('.')
        .and_then(|(_, k)| k.parse().ok())
        .unwrap_or(0)
}

/// Run a job with replicas: its instances claimed one after the other
/// (each placed apart from the ones before), then started together. The
/// answer names the service, with every instance's record.
pub async fn run_replicas(
    sh: &Shared,
    service: Job,
    instances: Vec<Job>,
    wait: bool,
    progress: &(dyn Fn(String) + Sync),
) -> Result<RunResponse> {
    // A job of the service's name is refused by each claim's transaction;
    // a service of that name holds its name.
    if sh.store.get(&keys::service(&service.name)).await?.is_some() {
        return Err(state::taken(&service.name));
    }
    let states = start_instances(sh, instances, Vec::new(), wait, progress).await?;
    Ok(RunResponse {
        job: service,
        ps: states.first().cloned(),
        waiting: None,
        instances: states,
    })
}

/// Claim `instances` one after the other, each placed apart from `hosts`
/// (where its siblings are) and from the ones claimed before it, then
/// start them together (or, without `wait`, accept them and start them
/// after); their records.
async fn start_instances(
    sh: &Shared,
    instances: Vec<Job>,
    mut hosts: Vec<String>,
    wait: bool,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Vec<JobState>> {
    let mut claimed = Vec::with_capacity(instances.len());
    for job in instances {
        let claim = claim_daemon_apart(sh, &job, &hosts).await?;
        if let Some(h) = claim.host(sh) {
            hosts.push(h);
        }
        progress(format!("{}: placed", job.name));
        claimed.push((job, claim));
    }
    let started = futures::future::join_all(claimed.into_iter().map(|(job, claim)| async move {
        if wait {
            run_claimed(sh, job, claim, &|_| {}).await
        } else {
            let r = accepted(sh, &job, &claim);
            start_accepted(sh, job, claim).await;
            Ok(r)
        }
    }))
    .await;
    let mut states = Vec::new();
    for r in started {
        states.extend(r?.ps);
    }
    Ok(states)
}

/// Scale `service` to `replicas` instances: new ones placed apart from the
/// others and started; the highest-numbered ones removed.
pub async fn scale(sh: &Shared, service: &str, replicas: u32) -> Result<RunResponse> {
    if !(1..=viking_core::job::MAX_REPLICAS).contains(&replicas) {
        return Err(ServerError::Invalid(format!(
            "invalid job: replicas: {replicas} must be from 1 to {}",
            viking_core::job::MAX_REPLICAS
        )));
    }
    let now = instances_of(sh, service).await?;
    let Some(first) = now.first() else {
        return Err(match state::proc(sh.store.as_ref(), service).await? {
            Some(_) => ServerError::Invalid(format!(
                "job {service:?} was run without --replicas, so it has no instances to scale; run it again with --replicas N"
            )),
            None => state::no_such_job(service),
        });
    };
    let template = first.job.clone();
    let (kept, gone): (Vec<&ProcRecord>, Vec<&ProcRecord>) = now
        .iter()
        .partition(|p| instance_number(&p.job.name) <= replicas);
    for p in gone {
        remove(sh, &p.job.name, true, false).await?;
    }
    let have: BTreeSet<u32> = kept.iter().map(|p| instance_number(&p.job.name)).collect();
    let hosts = kept.iter().filter_map(|p| p.placed_on.clone()).collect();
    let new = (1..=replicas)
        .filter(|k| !have.contains(k))
        .map(|k| template.instance(k, replicas))
        .collect();
    let mut states = start_instances(sh, new, hosts, true, &|_| {}).await?;
    // The kept instances' records, in one read.
    let kept: BTreeSet<&str> = kept.iter().map(|p| p.job.name.as_str()).collect();
    let records: Vec<PsRecord> =
        state::list(sh.store.as_ref(), &keys::ps(&format!("{service}."))).await?;
    states.extend(
        records
            .iter()
            .filter(|r| kept.contains(r.job.as_str()))
            .map(JobState::from),
    );
    states.sort_by_key(|s| instance_number(&s.job));
    Ok(RunResponse {
        job: template.instance(1, replicas),
        ps: states.first().cloned(),
        waiting: None,
        instances: states,
    })
}

/// Delete a job's data directory and its history, for `rm --volumes` of a
/// job that has no proc or ps record (any more). The data is on the host
/// the job last ran on (its history says which): deleted here, or by that
/// host's server; without a history, this host's directory of the name is
/// deleted if there is one (an interactive job's). Whether there was
/// anything to delete.
///
/// Only the last host's directory goes: a job that moved (not fixed) may
/// have left data on earlier hosts of its history.
async fn remove_data(sh: &Shared, name: &str) -> Result<bool> {
    let (hist, _) = state::history(sh.store.as_ref(), name).await?;
    let Some(node) = hist.last_node() else {
        return crate::volume::remove_job(&sh.config.data_dir, name);
    };
    match crate::peer::owner_of(sh, node).await? {
        Owner::Here => {
            crate::volume::remove_job(&sh.config.data_dir, name)?;
            state::forget_history(sh.store.as_ref(), name).await?;
            Ok(true)
        }
        // Its records are gone, so that server comes here too, and finds
        // itself as the last host.
        Owner::Peer(c, host) => {
            c.rm_with(name, true, true)
                .await
                .map_err(|e| ServerError::from_peer(&host, e))?;
            Ok(true)
        }
        Owner::Gone(host) => Err(data_host_gone(name, &host)),
    }
}

/// `rm --volumes` of a job whose data is on a host that is gone.
fn data_host_gone(name: &str, host: &str) -> ServerError {
    ServerError::Unavailable(format!(
        "job {name:?} ran on host {host}, which is gone: its volumes are there and cannot be deleted now; `viking rm {name}` without --volumes removes the job and keeps them"
    ))
}

/// The job's output as a stream of frames.
pub async fn logs(
    sh: &Shared,
    name: &str,
    follow: bool,
) -> Result<BoxStream<'static, Result<Bytes, std::io::Error>>> {
    let Some((ps, _)) = state::ps(sh.store.as_ref(), name).await? else {
        return Err(state::no_such_job(name));
    };
    match owner(sh, &ps).await? {
        Owner::Here => {}
        Owner::Peer(c, host) => {
            let body = c
                .logs(name, follow)
                .await
                .map_err(|e| ServerError::from_peer(&host, e))?;
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
            return Err(ServerError::Upstream(format!(
                "job {name:?} ran on host {host}, which is gone; its logs are there"
            )))
        }
    }
    if ps.container_id.is_empty() {
        return Err(ServerError::Conflict(format!(
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
