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
//! embassy forwards in one of two ways (`--embassy-mode`): netfilter rules
//! written from the same table (`viking_embassy::Kernel`, the default where
//! the host allows it; endpoints on this host are its containers' own
//! addresses), or its proxy (`viking_embassy::Embassy`).
//!
//! A job that links to a service (`--link NAME`) gets Docker-link-style
//! variables pointing at its own host's embassy.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use viking_client::api::ServicePort;
use viking_core::job::Proto;
use viking_core::records::{decode, HostRecord, ProcRecord, PsRecord, RoutePort, RouteRecord};
use viking_core::{keys, Job};
use viking_embassy::{Embassy, Kernel, Route, RoutingTable};
use viking_store::EventKind;

use crate::config::{EmbassyMode, RuntimeChoice, ServerConfig};
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
    // The service's own job, or its first instance.
    let proc = match state::proc(sh.store.as_ref(), service).await? {
        Some(p) => Some(p),
        None => state::proc(sh.store.as_ref(), &format!("{service}.1"))
            .await?
            .filter(|p| p.job.service.as_deref() == Some(service)),
    };
    let Some(proc) = proc else {
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

/// Every service port with its ambassador port and live endpoints, read
/// from the store now (the API's `GET /v1/services`).
pub async fn list(sh: &Shared) -> Result<Vec<ServicePort>> {
    let procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
    let ps: Vec<PsRecord> = state::list(sh.store.as_ref(), keys::PS).await?;
    let ps: BTreeMap<String, PsRecord> = ps.into_iter().map(|p| (p.job.clone(), p)).collect();
    let routes = routes_now(sh, &procs, &ps).await?;
    Ok(routes
        .into_values()
        .flat_map(|r| {
            let service = r.service;
            r.ports.into_iter().map(move |p| ServicePort {
                service: service.clone(),
                container_port: p.container_port,
                ambassador_port: p.ambassador_port,
                host: p.host,
                endpoints: p.endpoints,
            })
        })
        .collect())
}

/// The routes of every service, from viking-proc and viking-ps as given
/// and floki and the ambassador ports as they are now.
async fn routes_now(
    sh: &Shared,
    procs: &[ProcRecord],
    ps: &BTreeMap<String, PsRecord>,
) -> Result<BTreeMap<String, RouteRecord>> {
    let hosts: Vec<HostRecord> = state::list(sh.store.as_ref(), keys::HOSTS).await?;
    let (port_kvs, _) = sh.store.list(keys::PORTS).await?;
    let allocated: BTreeMap<String, u16> = port_kvs
        .iter()
        .filter_map(|kv| {
            Some((
                kv.key.clone(),
                std::str::from_utf8(&kv.value).ok()?.parse().ok()?,
            ))
        })
        .collect();
    Ok(routes(procs, ps, &hosts, &allocated))
}

/// The routes of every service (a job in proc with TCP ports and an
/// ambassador port): its running copy's published ports on its host's
/// address; no endpoint while it does not run on a live host. Pure.
pub fn routes(
    procs: &[ProcRecord],
    ps: &BTreeMap<String, PsRecord>,
    hosts: &[HostRecord],
    allocated: &BTreeMap<String, u16>,
) -> BTreeMap<String, RouteRecord> {
    let mut out: BTreeMap<String, RouteRecord> = BTreeMap::new();
    for proc in procs {
        let name = &proc.job.name;
        // A service's instances share its routes: their endpoints together.
        let service = proc.job.service_name();
        let rec = ps.get(name).filter(|p| p.is_running());
        let host = rec.and_then(|r| hosts.iter().find(|h| h.name == r.node));
        let mut ports = Vec::new();
        for cport in tcp_ports(&proc.job) {
            let Some(amb) = allocated.get(&keys::ambassador_port(service, cport)) else {
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
            ports.push(RoutePort {
                container_port: cport,
                ambassador_port: *amb,
                host: rec.map(|r| r.node.clone()),
                endpoints,
            });
        }
        if ports.is_empty() {
            continue;
        }
        match out.get_mut(service) {
            None => {
                out.insert(
                    service.to_string(),
                    RouteRecord {
                        service: service.to_string(),
                        ports,
                    },
                );
            }
            Some(r) => {
                for p in ports {
                    match r
                        .ports
                        .iter_mut()
                        .find(|q| q.container_port == p.container_port)
                    {
                        Some(q) => {
                            q.endpoints.extend(p.endpoints);
                            q.endpoints.sort();
                            if q.host.is_none() {
                                q.host = p.host;
                            }
                        }
                        None => r.ports.push(p),
                    }
                }
            }
        }
    }
    out
}

/// The leader's part: write `routes/<service>` for every service whose
/// routes changed since `published` (what this leader wrote last; read
/// from the store when `None`), and delete the routes of services that are
/// gone. Idempotent: a new leader, or a round after a crash, writes only
/// what differs.
pub async fn publish(
    sh: &Shared,
    procs: &[ProcRecord],
    ps: &BTreeMap<String, PsRecord>,
    published: &mut Option<BTreeMap<String, RouteRecord>>,
) -> Result<()> {
    let want = routes_now(sh, procs, ps).await?;
    state::publish_index(sh.store.as_ref(), keys::ROUTES, want, published).await
}

fn table(routes: &BTreeMap<String, RouteRecord>) -> RoutingTable {
    let mut t = RoutingTable::new();
    for r in routes.values() {
        for p in &r.ports {
            let endpoints = p
                .endpoints
                .iter()
                .filter_map(|e| e.parse::<SocketAddr>().ok());
            t.insert(
                p.ambassador_port,
                Route::new(r.service.clone(), p.container_port, endpoints),
            );
        }
    }
    t
}

/// One change of `routes/` into the table's source. An unreadable route is
/// left out (and said), never stops the others.
fn note_route(
    routes: &mut BTreeMap<String, RouteRecord>,
    kind: EventKind,
    key: &str,
    value: &[u8],
) {
    let Some(name) = keys::name_of(keys::ROUTES, key) else {
        return;
    };
    match kind {
        EventKind::Delete => {
            routes.remove(name);
        }
        EventKind::Put => match decode::<RouteRecord>(value) {
            Ok(r) => {
                routes.insert(name.to_string(), r);
            }
            Err(e) => {
                tracing::warn!(service = name, "embassy: an unreadable route: {e}");
                routes.remove(name);
            }
        },
    }
}

/// How this node forwards its ambassador ports.
enum Forwarder {
    /// embassy's proxy, listening on every ambassador port.
    Proxy(Arc<Embassy>),
    /// Netfilter rules; no process in the data path.
    Kernel(Arc<Kernel>),
    /// A hollow server keeps the table but serves no port.
    None,
}

/// How often the kernel path is written again though no route changed:
/// rules someone flushed come back, and a local container's address is
/// looked up again.
const KERNEL_REFRESH: Duration = Duration::from_secs(30);

impl Forwarder {
    async fn apply(&self, sh: &Shared, routes: &BTreeMap<String, RouteRecord>) {
        match self {
            Forwarder::Proxy(embassy) => match embassy.apply(table(routes)).await {
                Ok(report) => {
                    for f in &report.failed {
                        tracing::warn!(port = f.port, "embassy cannot serve: {}", f.error);
                    }
                }
                Err(e) => tracing::warn!("embassy: {e}"),
            },
            Forwarder::Kernel(kernel) => {
                let t = kernel_table(sh, table(routes)).await;
                match kernel.apply(&t).await {
                    Ok(rules) => tracing::debug!(rules, "embassy: kernel rules written"),
                    Err(e) => tracing::warn!("embassy: writing the kernel rules: {e}"),
                }
            }
            Forwarder::None => {}
        }
    }

    /// Stops forwarding: the proxy closes its ports and connections; the
    /// kernel rules are removed only when the server stops for good (a
    /// server that stops to restart, or fails, leaves them, so traffic
    /// keeps flowing until the next one rewrites them).
    async fn stop(self, sh: &Shared) {
        match self {
            Forwarder::Proxy(embassy) => {
                if let Ok(mut p) = sh.embassy_proxy.lock() {
                    *p = None;
                }
                embassy.shutdown().await
            }
            Forwarder::Kernel(kernel) => {
                if sh
                    .remove_rules_on_stop
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    match kernel.remove().await {
                        Ok(()) => tracing::info!("embassy: kernel rules removed"),
                        Err(e) => tracing::warn!("embassy: removing the kernel rules: {e}"),
                    }
                } else {
                    tracing::info!("embassy: kernel rules left in place for the next server");
                }
            }
            Forwarder::None => {}
        }
    }
}

/// The kernel path this server writes, if `--embassy-mode` and the host
/// allow one (`None`: the proxy). An explicit `kernel` that this host
/// cannot have is an error; in the default mode the reason is logged and
/// the proxy serves.
pub async fn choose_kernel(config: &ServerConfig, bind: IpAddr) -> Result<Option<Arc<Kernel>>> {
    let why_not = match (config.embassy_mode, &config.runtime) {
        (EmbassyMode::Proxy, _) | (_, RuntimeChoice::Hollow(_)) => return Ok(None),
        (EmbassyMode::Auto, _) if bind.is_loopback() => {
            Some(format!("embassy's address {bind} is loopback"))
        }
        _ => None,
    };
    let probed = match why_not {
        Some(why) => Err(why),
        None => Kernel::probe(bind, config.embassy_ports)
            .await
            .map_err(|e| e.to_string()),
    };
    match (probed, config.embassy_mode) {
        (Ok(kernel), _) => {
            tracing::info!(addr = %bind, "embassy: kernel mode (netfilter rules)");
            Ok(Some(Arc::new(kernel)))
        }
        (Err(why), EmbassyMode::Kernel) => Err(ServerError::Invalid(format!(
            "--embassy-mode kernel: {why}"
        ))),
        (Err(why), _) => {
            tracing::info!(addr = %bind, "embassy: proxy mode, since {why}");
            Ok(None)
        }
    }
}

/// `table` with each endpoint on this host replaced by its container's own
/// address and port, so the kernel forwards to the container directly (a
/// DNAT to this host's published port would be delivered to Docker's
/// userland proxy: netfilter translates a connection once).
async fn kernel_table(sh: &Shared, table: RoutingTable) -> RoutingTable {
    let Ok(own) = sh.config.ip.parse::<IpAddr>() else {
        return table;
    };
    if !table
        .iter()
        .any(|(_, r)| r.endpoints.iter().any(|e| e.ip() == own))
    {
        return table;
    }
    match sh.runtime.list(&sh.config.key).await {
        Ok(containers) => local_endpoints(table, own, &containers),
        Err(e) => {
            tracing::warn!("embassy: listing this host's containers: {e}");
            table
        }
    }
}

/// The pure part of `kernel_table`: an endpoint `own:port` becomes the
/// address and container port of the running container that publishes
/// `port` over TCP; one no container publishes is kept as it is.
pub fn local_endpoints(
    table: RoutingTable,
    own: IpAddr,
    containers: &[viking_docker::ContainerInfo],
) -> RoutingTable {
    let inside = |ep: SocketAddr| -> Option<SocketAddr> {
        containers
            .iter()
            .filter(|c| c.status == "running")
            .find_map(|c| {
                let ip: IpAddr = c.ip.as_deref()?.parse().ok()?;
                let p = c
                    .ports
                    .iter()
                    .find(|p| p.host_port == ep.port() && p.proto() == Proto::Tcp)?;
                Some(SocketAddr::new(ip, p.container))
            })
    };
    table
        .into_iter()
        .map(|(port, mut route)| {
            for ep in route.endpoints.iter_mut() {
                if ep.ip() == own {
                    if let Some(c) = inside(*ep) {
                        *ep = c;
                    }
                }
            }
            (port, route)
        })
        .collect()
}

/// Run embassy on this node and keep its forwarding equal to the routes
/// the leader publishes (`routes/`), until shutdown.
pub async fn run(sh: Arc<Shared>) {
    let forwarder = match (&sh.config.runtime, sh.embassy_kernel.clone()) {
        (RuntimeChoice::Hollow(_), _) => Forwarder::None,
        (_, Some(kernel)) => Forwarder::Kernel(kernel),
        (_, None) => {
            // A service has one endpoint per instance, and a dead host's
            // endpoint leaves the table when its lease expires: so wait out
            // SYN retransmits of a busy endpoint instead of resetting the
            // client.
            let mut config = viking_embassy::Config::new(sh.embassy_addr);
            config.connect_timeout = Duration::from_secs(5);
            config.max_connections = sh.config.embassy_max_connections;
            config.idle_timeout = sh.config.embassy_idle_timeout;
            let embassy = Arc::new(Embassy::with_config(config));
            if let Ok(mut p) = sh.embassy_proxy.lock() {
                *p = Some(embassy.clone());
            }
            Forwarder::Proxy(embassy)
        }
    };
    let mut shutdown = sh.shutdown.clone();
    tracing::info!(addr = %sh.embassy_addr, "embassy serving");
    let mut refresh = tokio::time::interval(KERNEL_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh.reset();
    'outer: loop {
        // The routes the leader publishes, then every change to them: this
        // server reads nothing else, and nothing when no service changes.
        let start = async {
            let (kvs, rev) = sh.store.list(keys::ROUTES).await?;
            let w = sh.store.watch(keys::ROUTES, rev + 1).await?;
            Ok::<_, viking_store::StoreError>((kvs, w))
        };
        let (kvs, mut watch) = tokio::select! {
            _ = crate::stopped(&mut shutdown) => break 'outer,
            r = start => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("embassy: following the routes: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue 'outer;
                }
            },
        };
        let mut routes: BTreeMap<String, RouteRecord> = BTreeMap::new();
        for kv in &kvs {
            note_route(&mut routes, EventKind::Put, &kv.key, &kv.value);
        }
        loop {
            forwarder.apply(&sh, &routes).await;
            tokio::select! {
                _ = crate::stopped(&mut shutdown) => break 'outer,
                // Level-triggered: the kernel rules are written again now
                // and then, as they should be.
                _ = refresh.tick(), if matches!(forwarder, Forwarder::Kernel(_)) => {}
                ev = watch.next() => match ev {
                    Some(Ok(ev)) => {
                        note_route(&mut routes, ev.kind, &ev.kv.key, &ev.kv.value);
                        // A burst of changes makes one table.
                        while let Ok(Some(Ok(ev))) =
                            tokio::time::timeout(Duration::from_millis(5), watch.next()).await
                        {
                            note_route(&mut routes, ev.kind, &ev.kv.key, &ev.kv.value);
                        }
                    }
                    // The watch ended (compacted, store lost): read again.
                    _ => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue 'outer;
                    }
                },
            }
        }
    }
    forwarder.stop(&sh).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use viking_core::records::PublishedPort;
    use viking_docker::ContainerInfo;

    fn container(ip: &str, status: &str, ports: &[(u16, u16, &str)]) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{ip}"),
            job: "web.1".into(),
            node: "n1".into(),
            cluster: "k".into(),
            daemonize: true,
            image: "busybox".into(),
            image_id: "sha256:x".into(),
            command: vec![],
            status: status.into(),
            exit_code: None,
            error: None,
            started_at: None,
            finished_at: None,
            ports: ports
                .iter()
                .map(|(container, host_port, proto)| PublishedPort {
                    container: *container,
                    proto: proto.to_string(),
                    host_ip: "0.0.0.0".into(),
                    host_port: *host_port,
                })
                .collect(),
            ip: Some(ip.into()),
            spec: None,
        }
    }

    #[test]
    fn local_endpoints_become_their_containers_and_remote_ones_stay() {
        let own: IpAddr = "10.0.0.1".parse().unwrap();
        let t = RoutingTable::new().with(
            20001,
            Route::new(
                "web",
                8080,
                [
                    "10.0.0.1:31000".parse().unwrap(),
                    "10.0.0.2:31000".parse().unwrap(),
                    // Published by no running container: kept.
                    "10.0.0.1:31009".parse().unwrap(),
                ],
            ),
        );
        let containers = [
            container("172.17.0.9", "exited", &[(8080, 31009, "tcp")]),
            container(
                "172.17.0.5",
                "running",
                &[(8080, 31001, "udp"), (8080, 31000, "tcp")],
            ),
        ];
        let got = local_endpoints(t, own, &containers);
        let eps: Vec<String> = got
            .get(20001)
            .unwrap()
            .endpoints
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(eps, ["172.17.0.5:8080", "10.0.0.2:31000", "10.0.0.1:31009"]);
    }
}
