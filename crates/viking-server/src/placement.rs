//! Where a job goes: the snapshot dowding decides over (floki's hosts, the
//! load and host ports in viking-ps and viking-proc, the job's history), the
//! decision, and its explanation for `--dry-run`. The decision itself is
//! `viking_core::scheduler`'s pure function; this module only gathers its
//! input.

use std::collections::BTreeSet;

use viking_client::api::DryRunResponse;
use viking_core::records::{HostRecord, ProcRecord, PsRecord};
use viking_core::scheduler::{self, HostSnapshot};
use viking_core::{keys, Job, Status};

use crate::error::{Result, ServerError};
use crate::{state, Shared};

/// A Docker-style name for a job that was not given one.
pub fn generate_name() -> String {
    viking_core::names::generate(rand::random())
}

/// The snapshot dowding needs: floki's hosts and the host ports in use.
pub async fn snapshot(sh: &Shared) -> Result<Vec<HostSnapshot>> {
    let hosts = crate::floki::list(sh).await?;
    let ps: Vec<PsRecord> = state::list(sh.store.as_ref(), keys::PS).await?;
    let procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
    // The load of a host: jobs running there, plus jobs placed there that
    // have not started yet (so concurrent runs spread too).
    let mut load: std::collections::HashMap<&str, BTreeSet<&str>> = Default::default();
    for p in ps
        .iter()
        .filter(|p| p.is_running() || p.status == Status::Created)
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

/// Ask dowding where `job` goes; with `explain`, why every other host
/// would not take it.
pub async fn place(sh: &Shared, job: &Job, explain: bool) -> Result<scheduler::Decision> {
    let hosts = snapshot(sh).await?;
    let (hist, _) = state::history(sh.store.as_ref(), &job.name).await?;
    Ok(if explain {
        scheduler::explain(job, &hosts, Some(&hist))
    } else {
        scheduler::place(job, &hosts, Some(&hist))
    })
}

/// Where the job would run, without running it.
pub async fn dry_run(sh: &Shared, job: Job) -> Result<DryRunResponse> {
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
pub async fn choose(sh: &Shared, job: &Job) -> Result<Target> {
    let d = place(sh, job, false).await?;
    match (d.host.clone(), d.waiting_for.clone()) {
        (Some(h), _) => target(sh, &h)
            .await?
            .ok_or_else(|| ServerError::Unavailable(format!("host {h:?} left floki"))),
        (None, Some(w)) => Ok(Target::Waiting(w)),
        (None, None) => Err(ServerError::Unavailable(d.explain())),
    }
}

/// The [`Target`] of a host dowding chose: this server, or its record in
/// floki (`None` when it left floki meanwhile).
pub async fn target(sh: &Shared, host: &str) -> Result<Option<Target>> {
    if host == sh.config.name {
        return Ok(Some(Target::Here));
    }
    Ok(crate::floki::host(sh, host).await?.map(Target::There))
}
