//! Services and embassy on this node.
//!
//! A daemonized job with TCP ports is a service named after the job. Each
//! (service, container port) gets a cluster-wide ambassador port from an
//! atomic counter in the store (`--embassy-ports`, the same range on every
//! server), kept at `ports/<service>/<port>` for good, so a service keeps
//! its port across restarts and moves. Every server runs embassy
//! (`viking-embassy`) on an address its containers reach (Docker's bridge
//! gateway) and keeps its routing table equal to the store: each ambassador
//! port forwards to the live endpoints of its service (host address +
//! published host port), following changes through the store's watch.
//!
//! A job that links to a service (`--link NAME`) gets Docker-link-style
//! variables pointing at its own host's embassy.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use viking_client::api::ServicePort;
use viking_core::job::Proto;
use viking_core::records::{HostRecord, ProcRecord, PsRecord};
use viking_core::{keys, Job};
use viking_embassy::{Embassy, Route, RoutingTable};

use crate::error::{Result, ServerError};
use crate::state;
use crate::Shared;

/// The TCP container ports of a job, the ones embassy serves.
pub fn tcp_ports(job: &Job) -> Vec<u16> {
    job.ports
        .iter()
        .filter(|p| p.proto == Proto::Tcp)
        .map(|p| p.container)
        .collect()
}

/// Before an interactive job is accepted, or with a daemonized job's
/// claim: every service it links to exists and has ports.
pub async fn check_links(sh: &Shared, job: &Job) -> Result<()> {
    for l in &job.links {
        link_ports(sh, &l.service).await?;
    }
    Ok(())
}

/// (container port, ambassador port) of a service, or why it cannot be linked.
async fn link_ports(sh: &Shared, service: &str) -> Result<Vec<(u16, u16)>> {
    let Some(proc) = state::proc(sh.store.as_ref(), service).await? else {
        return Err(ServerError::Invalid(format!(
            "invalid job: links: no daemonized job named {service:?} to link to (see `viking proc`)"
        )));
    };
    let ports = tcp_ports(&proc.job);
    if ports.is_empty() {
        return Err(ServerError::Invalid(format!(
            "invalid job: links: job {service:?} has no TCP ports, so it is not a service"
        )));
    }
    // A service claimed before its ports were allocated with the claim
    // gets them now.
    state::allocate_ports(sh.store.as_ref(), service, &ports, sh.config.embassy_ports).await?;
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        match state::ambassador_port(sh.store.as_ref(), service, p).await? {
            Some(amb) => out.push((p, amb)),
            None => {
                return Err(ServerError::Unavailable(format!(
                    "service {service:?} lost its ambassador port for {p} meanwhile; try again"
                )))
            }
        }
    }
    Ok(out)
}

/// The link variables of a job starting on this host.
pub async fn link_env(sh: &Shared, job: &Job) -> Result<Vec<String>> {
    let mut env = Vec::new();
    for l in &job.links {
        let ports = link_ports(sh, &l.service).await?;
        for (k, v) in l.env(&sh.embassy_addr.to_string(), &ports) {
            env.push(format!("{k}={v}"));
        }
    }
    Ok(env)
}

/// Every service port with its ambassador port and live endpoints.
pub async fn list(sh: &Shared) -> Result<Vec<ServicePort>> {
    let procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
    let ps: Vec<PsRecord> = state::list(sh.store.as_ref(), keys::PS).await?;
    let hosts: Vec<HostRecord> = state::list(sh.store.as_ref(), keys::HOSTS).await?;
    let (port_kvs, _) = sh.store.list(keys::PORTS).await?;
    let allocated: BTreeMap<&str, u16> = port_kvs
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key.as_str(),
                std::str::from_utf8(&kv.value).ok()?.parse().ok()?,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for proc in &procs {
        let rec = ps.iter().find(|p| p.job == proc.job.name && p.is_running());
        let host = rec.and_then(|r| hosts.iter().find(|h| h.name == r.node));
        for cport in tcp_ports(&proc.job) {
            let Some(amb) = allocated.get(keys::ambassador_port(&proc.job.name, cport).as_str())
            else {
                continue;
            };
            let endpoints = match (rec, host) {
                (Some(r), Some(h)) => r
                    .ports
                    .iter()
                    .filter(|p| p.container == cport && p.proto == "tcp")
                    .map(|p| format!("{}:{}", h.ip, p.host_port))
                    .collect(),
                _ => vec![],
            };
            out.push(ServicePort {
                service: proc.job.name.clone(),
                container_port: cport,
                ambassador_port: *amb,
                host: rec.map(|r| r.node.clone()),
                endpoints,
            });
        }
    }
    Ok(out)
}

fn table(ports: &[ServicePort]) -> RoutingTable {
    let mut t = RoutingTable::new();
    for p in ports {
        let endpoints = p
            .endpoints
            .iter()
            .filter_map(|e| e.parse::<SocketAddr>().ok());
        t.insert(
            p.ambassador_port,
            Route::new(p.service.clone(), p.container_port, endpoints),
        );
    }
    t
}

/// Run embassy on this node and keep its routing table equal to the store,
/// until shutdown.
pub async fn run(sh: Arc<Shared>) {
    // A service has one endpoint (one copy of its job), and a dead host's
    // endpoint leaves the table when its lease expires: so wait out SYN
    // retransmits of a busy endpoint instead of resetting the client.
    let mut config = viking_embassy::Config::new(sh.embassy_addr);
    config.connect_timeout = Duration::from_secs(5);
    config.max_connections = sh.config.embassy_max_connections;
    config.idle_timeout = sh.config.embassy_idle_timeout;
    // A hollow server keeps the table but serves no port (no embassy thread).
    let hollow = matches!(sh.config.runtime, crate::config::RuntimeChoice::Hollow(_));
    let embassy = (!hollow).then(|| Embassy::with_config(config));
    let mut shutdown = sh.shutdown.clone();
    tracing::info!(addr = %sh.embassy_addr, "embassy serving");
    'outer: loop {
        // Follow the store from a fresh revision; rebuild on any change.
        let watches = async {
            let rev = sh.store.revision().await?;
            let mut set = Vec::new();
            for prefix in [keys::PROC, keys::PS, keys::HOSTS, keys::PORTS] {
                set.push(sh.store.watch(prefix, rev + 1).await?);
            }
            Ok::<_, viking_store::StoreError>(set)
        }
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut tasks = tokio::task::JoinSet::new();
        match watches {
            Ok(ws) => {
                for mut w in ws {
                    let tx = tx.clone();
                    tasks.spawn(async move {
                        while let Some(Ok(_)) = w.next().await {
                            let _ = tx.try_send(());
                        }
                    });
                }
            }
            Err(e) => tracing::warn!("embassy: watching the store: {e}"),
        }
        drop(tx);
        loop {
            match list(&sh).await {
                Ok(ports) => match embassy.as_ref() {
                    None => {
                        let _ = table(&ports);
                    }
                    Some(embassy) => match embassy.apply(table(&ports)).await {
                        Ok(report) => {
                            for f in &report.failed {
                                tracing::warn!(port = f.port, "embassy cannot serve: {}", f.error);
                            }
                        }
                        Err(e) => tracing::warn!("embassy: {e}"),
                    },
                },
                Err(e) => tracing::warn!("embassy: reading services: {e}"),
            }
            tokio::select! {
                _ = crate::stopped(&mut shutdown) => break 'outer,
                r = rx.recv() => {
                    if r.is_none() {
                        // A watch ended: start again from a fresh revision.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue 'outer;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
    if let Some(embassy) = embassy {
        embassy.shutdown().await;
    }
}

/// The address embassy listens on: `--embassy-bind`, else Docker's bridge
/// gateway, else 172.17.0.1.
pub async fn bind_address(
    sh_config_bind: Option<IpAddr>,
    runtime: &dyn viking_docker::Runtime,
) -> IpAddr {
    if let Some(a) = sh_config_bind {
        return a;
    }
    match runtime.bridge_gateway().await {
        Ok(Some(g)) => g.parse().unwrap_or(IpAddr::from([172, 17, 0, 1])),
        _ => IpAddr::from([172, 17, 0, 1]),
    }
}
