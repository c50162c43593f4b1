//! Health checks of this host's jobs, as designed: env
//! `VIKING_HEALTH=tcp|http` (every TCP port) or `VIKING_HEALTH_<port>=tcp|http`.
//! tcp is a connect; http is a 200 from `GET /`. A job that fails
//! [`FAILURES`] checks in a row (after a grace period from its start) is
//! stopped with the reason in viking-ps; the reconciler then starts it again
//! with its backoff, like any job that exited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use viking_core::job::HealthCheck;
use viking_core::records::PsRecord;

use crate::state;
use crate::{now_ms, Shared};

/// Failed checks in a row that restart a job.
pub const FAILURES: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Check this host's jobs every `--health-interval`, until shutdown.
pub async fn run(sh: Arc<Shared>) {
    let mut shutdown = sh.shutdown.clone();
    let mut failures: HashMap<String, u32> = HashMap::new();
    loop {
        tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            _ = tokio::time::sleep(sh.config.health_interval) => {}
        }
        if let Err(e) = round(&sh, &mut failures).await {
            tracing::warn!("health checks: {e}");
        }
    }
}

async fn round(sh: &Shared, failures: &mut HashMap<String, u32>) -> Result<(), String> {
    // This host's own running containers, with the job each carries in its
    // label: the store is read only for jobs that have checks, so a round
    // costs this host's work, not the fleet's.
    let containers = sh
        .runtime
        .list(&sh.config.key)
        .await
        .map_err(|e| e.to_string())?;
    let grace = (sh.config.health_interval * 3).as_millis() as u64;
    let now = now_ms();
    let mut checked = Vec::new();
    for c in containers {
        if c.node != sh.config.name || !c.daemonize || c.status != "running" {
            continue;
        }
        let Ok(Some(carried)) = crate::container::carried_job(&c) else {
            continue;
        };
        let checks = carried.job.health_checks();
        if checks.is_empty() {
            continue;
        }
        let rec = match state::ps(sh.store.as_ref(), &c.job).await {
            Ok(Some((rec, _))) => rec,
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        };
        // Only the container its record names, running, past its grace.
        if rec.node != sh.config.name
            || rec.container_id != c.id
            || !rec.is_running()
            || now.saturating_sub(rec.started_at.unwrap_or(now)) < grace
        {
            continue;
        }
        let rec = &rec;
        checked.push(rec.job.clone());
        // The container's own address, so a closed port is seen as closed.
        let ip = match sh.runtime.inspect(&rec.container_id).await {
            Ok(Some(info)) => info.ip,
            _ => None,
        };
        let mut failed = None;
        for c in checks {
            if let Err(e) = check(c, rec, ip.as_deref()).await {
                failed = Some(e);
                break;
            }
        }
        match failed {
            None => {
                failures.remove(&rec.job);
            }
            Some(reason) => {
                let n = failures.entry(rec.job.clone()).or_default();
                *n += 1;
                tracing::info!(job = %rec.job, failures = *n, "health check failed: {reason}");
                if *n >= FAILURES {
                    failures.remove(&rec.job);
                    stop_unhealthy(sh, rec, &reason).await;
                }
            }
        }
    }
    failures.retain(|job, _| checked.contains(job));
    Ok(())
}

/// Note the reason in viking-ps and stop the container; the reconciler
/// starts it again.
async fn stop_unhealthy(sh: &Shared, rec: &PsRecord, reason: &str) {
    tracing::warn!(job = %rec.job, "restarting after {FAILURES} failed health checks: {reason}");
    let mut r = rec.clone();
    r.error = Some(format!("health check failed: {reason}"));
    match state::ps(sh.store.as_ref(), &rec.job).await {
        // Only the record of this very container: the job may have moved on
        // since the round read it, and another host's record is not ours.
        Ok(Some((now, _))) if now.node != rec.node || now.container_id != rec.container_id => {}
        Ok(Some((_, rev))) => match state::put_ps_if(sh.store.as_ref(), &r, rev).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(job = %rec.job, "noting the failed health check: {e}"),
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(job = %rec.job, "reading the unhealthy job's record: {e}"),
    }
    if let Err(e) = sh.runtime.stop(&rec.container_id, 2).await {
        tracing::warn!(job = %rec.job, "stopping the unhealthy job: {e}");
    }
}

/// Run one check against a job's published port on this host.
/// Probe one check of a running job: at `ip` (the container's own address)
/// on the container port when given, else on the published host port.
pub async fn check(c: HealthCheck, rec: &PsRecord, ip: Option<&str>) -> Result<(), String> {
    let (port, http) = match c {
        HealthCheck::Tcp(p) => (p, false),
        HealthCheck::Http(p) => (p, true),
    };
    let Some(published) = rec
        .ports
        .iter()
        .find(|p| p.container == port && p.proto == "tcp")
    else {
        return Err(format!("port {port} is not published"));
    };
    let addr = match ip {
        Some(ip) => (ip.to_string(), port),
        None => ("127.0.0.1".to_string(), published.host_port),
    };
    let probe = async {
        let mut s = TcpStream::connect((addr.0.as_str(), addr.1))
            .await
            .map_err(|e| format!("tcp {port}: {e}"))?;
        if !http {
            return Ok(());
        }
        s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: viking-health\r\n\r\n")
            .await
            .map_err(|e| format!("http {port}: {e}"))?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("http {port}: {e}"))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status == "200" {
            Ok(())
        } else {
            Err(format!(
                "http {port}: GET / answered {:?}",
                head.lines().next().unwrap_or("")
            ))
        }
    };
    tokio::time::timeout(TIMEOUT, probe)
        .await
        .map_err(|_| format!("port {port}: no answer within {TIMEOUT:?}"))?
}
