//! What the dashboard's pages show, read from the store and the job's
//! host: the same reads as the API's (floki, viking-proc, viking-ps,
//! services, dowding's explanation, logs), shaped for `ui::pages`.

use std::collections::BTreeMap;

use viking_client::api::{HostView, InspectResponse};
use viking_client::frame::FrameReader;
use viking_client::wire::JobState;
use viking_core::keys;
use viking_core::records::{ProcRecord, PsRecord};

use super::pages::{Explained, JobRow, Totals};
use crate::error::ServerError;
use crate::{placement, state, Shared};

/// The fleet: every host, the job totals, and each host's jobs by name.
pub async fn fleet(sh: &Shared) -> Result<(Vec<HostView>, Totals, JobsByHost), ServerError> {
    let hosts = crate::floki::list(sh).await?;
    let rows = jobs(sh).await?;
    let totals = Totals {
        desired: rows.iter().filter(|r| r.desired).count(),
        running: rows.iter().filter(|r| r.status == "running").count(),
        drifting: rows.iter().filter(|r| r.drifting).count(),
    };
    let mut by_host = JobsByHost::new();
    for r in rows {
        by_host.entry(r.host.clone()).or_default().push(r);
    }
    Ok((hosts, totals, by_host))
}

/// Each host's jobs (the jobs page's rows), by host name.
pub type JobsByHost = BTreeMap<String, Vec<JobRow>>;

/// Every job viking keeps or runs: viking-proc against viking-ps, drift
/// (desired, not running) first, then by name.
pub async fn jobs(sh: &Shared) -> Result<Vec<JobRow>, ServerError> {
    let procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
    let ps: Vec<PsRecord> = state::list(sh.store.as_ref(), keys::PS).await?;
    let services = crate::services::list(sh).await?;
    let mut ps: BTreeMap<String, JobState> = ps
        .iter()
        .map(|p| (p.job.clone(), JobState::from(p)))
        .collect();
    let mut rows = Vec::new();
    let ambassador = |service: &str| -> Vec<String> {
        services
            .iter()
            .filter(|s| s.service == service)
            .map(|s| format!("{}->{}", s.container_port, s.ambassador_port))
            .collect()
    };
    for p in &procs {
        let running = ps.remove(&p.job.name);
        rows.push(row(
            &p.job.name,
            true,
            running.as_ref(),
            p.placed_on.as_deref(),
            &p.job.image,
            ambassador(p.job.service_name()),
        ));
    }
    // Running without a viking-proc record: attached jobs, or a stop in
    // progress.
    for (name, s) in &ps {
        rows.push(row(name, false, Some(s), None, &s.image, Vec::new()));
    }
    rows.sort_by(|a, b| b.drifting.cmp(&a.drifting).then(a.name.cmp(&b.name)));
    Ok(rows)
}

fn row(
    name: &str,
    desired: bool,
    ps: Option<&JobState>,
    placed_on: Option<&str>,
    image: &str,
    ambassador: Vec<String>,
) -> JobRow {
    let running = ps.is_some_and(JobState::is_running);
    JobRow {
        name: name.to_string(),
        desired,
        status: ps.map_or_else(|| "missing".to_string(), |s| s.status.clone()),
        drifting: desired && !running,
        host: ps
            .map(|s| s.node.as_str())
            .or(placed_on)
            .unwrap_or("-")
            .to_string(),
        restarts: ps.map_or(0, |s| s.restarts),
        image: image.to_string(),
        ports: ps.map_or_else(Vec::new, |s| {
            s.ports
                .iter()
                .map(|p| format!("{}->{}:{}", p.container, p.host_ip, p.host_port))
                .collect()
        }),
        ambassador,
    }
}

/// Everything a job's page shows but its events.
pub struct Job {
    pub inspect: InspectResponse,
    pub hosts: Vec<HostView>,
    pub explained: Option<Result<Explained, String>>,
    pub logs: Result<Vec<String>, String>,
}

/// How many lines of output a job's page shows.
pub const LOG_LINES: usize = 40;

/// One job: its record, the fleet, dowding's explanation of where it
/// would go now, the last lines of its output.
pub async fn job(sh: &Shared, name: &str) -> Result<Job, ServerError> {
    let inspect = crate::jobs::inspect(sh, name).await?;
    let hosts = crate::floki::list(sh).await?;
    let explained = match &inspect.proc {
        None => None,
        Some(p) => Some(
            placement::place(sh, &p.job, true)
                .await
                .map(|d| Explained {
                    chosen: d.host,
                    rejected: d.rejected,
                    waiting_for: d.waiting_for,
                })
                .map_err(|e| e.to_string()),
        ),
    };
    let logs = match &inspect.ps {
        Some(_) => log_tail(sh, name, LOG_LINES).await,
        None => Err("it has no container now".to_string()),
    };
    Ok(Job {
        inspect,
        hosts,
        explained,
        logs,
    })
}

/// How long reading a job's output may take on a page.
const LOG_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);

/// The last `n` lines of a job's output (stdout and stderr as they came),
/// read from its host; long lines cut at 4 KiB.
pub async fn log_tail(sh: &Shared, name: &str, n: usize) -> Result<Vec<String>, String> {
    const LINE: usize = 4096;
    let read = async {
        let raw = crate::jobs::logs(sh, name, false)
            .await
            .map_err(|e| e.to_string())?;
        let mut frames = FrameReader::new(tokio_util::io::StreamReader::new(raw));
        let mut lines = std::collections::VecDeque::with_capacity(n + 1);
        let mut partial: Vec<u8> = Vec::new();
        let push = |line: &[u8], lines: &mut std::collections::VecDeque<String>| {
            let cut = &line[..line.len().min(LINE)];
            lines.push_back(String::from_utf8_lossy(cut).into_owned());
            if lines.len() > n {
                lines.pop_front();
            }
        };
        while let Some(f) = frames.next().await.map_err(|e| e.to_string())? {
            if f.kind != viking_client::frame::STDOUT && f.kind != viking_client::frame::STDERR {
                continue;
            }
            for b in f.data.iter() {
                if *b == b'\n' {
                    push(&partial, &mut lines);
                    partial.clear();
                } else if partial.len() < LINE {
                    partial.push(*b);
                }
            }
        }
        if !partial.is_empty() {
            push(&partial, &mut lines);
        }
        Ok(lines.into_iter().collect())
    };
    tokio::time::timeout(LOG_BUDGET, read)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "its host did not send its output within {LOG_BUDGET:?}"
            ))
        })
}
