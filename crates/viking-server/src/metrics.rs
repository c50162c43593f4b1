//! Prometheus metrics (`GET /metrics` behind the token, or without it on
//! `--metrics-listen ADDR`), in the text format of the `prometheus-client`
//! crate: counters and histograms that the server's parts bump as they
//! work (API requests, placements, reconcile rounds), and gauges read from
//! the store at each scrape (jobs desired, running and drifting by host,
//! hosts alive, whether this server leads).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use viking_core::keys;
use viking_core::records::{HostRecord, ProcRecord, PsRecord};

use crate::error::ServerError;
use crate::{state, Shared};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpErrorLabels {
    pub op: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
    pub port: String,
}

fn store_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    /// Serialises scrapes (each sets the store gauges, then encodes).
    scrape: tokio::sync::Mutex<()>,
    pub api_requests: Family<RouteLabels, Counter>,
    pub placements: Counter,
    pub placement_seconds: Histogram,
    pub placement_failures: Family<ReasonLabels, Counter>,
    pub reconcile_rounds: Counter,
    pub reconcile_seconds: Histogram,
    /// A host's death to its jobs running elsewhere, seen by the leader.
    pub failover_seconds: Histogram,
    pub leader: Gauge,
    jobs_desired: Family<HostLabels, Gauge>,
    jobs_running: Family<HostLabels, Gauge>,
    jobs_drifting: Family<HostLabels, Gauge>,
    restarts: Family<HostLabels, Gauge>,
    hosts_alive: Gauge,
    hosts_gone: Gauge,
    /// Store requests' latency and failures (`metered::MeteredStore`).
    pub store_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    pub store_errors: Family<OpErrorLabels, Counter>,
    /// embassy, per service port, since the server started (the proxy's
    /// own counts, or the kernel path's rule counters).
    embassy_connections: Family<ServiceLabels, Gauge>,
    embassy_active: Family<ServiceLabels, Gauge>,
    embassy_bytes_in: Family<ServiceLabels, Gauge>,
    embassy_bytes_out: Family<ServiceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("viking");
        let api_requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests answered, by route, method and status",
            api_requests.clone(),
        );
        let placements = Counter::default();
        registry.register(
            "placements",
            "Daemonized jobs placed and claimed by this server",
            placements.clone(),
        );
        let placement_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "placement_seconds",
            "Time to place and claim a daemonized job",
            placement_seconds.clone(),
        );
        let placement_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "placement_failures",
            "Placements refused, by reason",
            placement_failures.clone(),
        );
        let reconcile_rounds = Counter::default();
        registry.register(
            "reconcile_rounds",
            "Reconcile rounds planned while this server leads",
            reconcile_rounds.clone(),
        );
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "reconcile_round_seconds",
            "Time a reconcile round takes to plan and launch its actions",
            reconcile_seconds.clone(),
        );
        let failover_seconds = Histogram::new(exponential_buckets(0.5, 2.0, 10));
        registry.register(
            "failover_seconds",
            "From a host's death to every job it ran running elsewhere (the leader's view)",
            failover_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this server leads the cluster",
            leader.clone(),
        );
        let jobs_desired = Family::<HostLabels, Gauge>::default();
        registry.register(
            "jobs_desired",
            "Daemonized jobs in viking-proc, by the host they are placed on",
            jobs_desired.clone(),
        );
        let jobs_running = Family::<HostLabels, Gauge>::default();
        registry.register(
            "jobs_running",
            "Jobs whose container runs, by host",
            jobs_running.clone(),
        );
        let jobs_drifting = Family::<HostLabels, Gauge>::default();
        registry.register(
            "jobs_drifting",
            "Daemonized jobs desired but not running, by the host they are placed on",
            jobs_drifting.clone(),
        );
        let restarts = Family::<HostLabels, Gauge>::default();
        registry.register(
            "job_restarts",
            "Restarts of the jobs now on each host, summed",
            restarts.clone(),
        );
        let hosts_alive = Gauge::default();
        registry.register(
            "hosts_alive",
            "Hosts registered in floki",
            hosts_alive.clone(),
        );
        let hosts_gone = Gauge::default();
        registry.register(
            "hosts_gone",
            "Hosts seen once (fleet/) that are not registered now",
            hosts_gone.clone(),
        );
        let store_seconds =
            Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(store_histogram);
        registry.register(
            "store_request_seconds",
            "Latency of this server's store requests, by operation",
            store_seconds.clone(),
        );
        let store_errors = Family::<OpErrorLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Store requests that failed, by operation and kind",
            store_errors.clone(),
        );
        let embassy_connections = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "embassy_connections",
            "Connections embassy forwarded on a service port since the server started",
            embassy_connections.clone(),
        );
        let embassy_active = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "embassy_connections_open",
            "Connections open now through embassy's proxy",
            embassy_active.clone(),
        );
        let embassy_bytes_in = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "embassy_bytes_from_clients",
            "Bytes embassy carried from clients to a service since the server started (the kernel path: of clients in containers)",
            embassy_bytes_in.clone(),
        );
        let embassy_bytes_out = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "embassy_bytes_to_clients",
            "Bytes embassy carried from a service to clients since the server started (the kernel path: to clients in containers)",
            embassy_bytes_out.clone(),
        );
        Metrics {
            registry,
            hosts_gone,
            store_seconds,
            store_errors,
            embassy_connections,
            embassy_active,
            embassy_bytes_in,
            embassy_bytes_out,
            scrape: tokio::sync::Mutex::new(()),
            api_requests,
            placements,
            placement_seconds,
            placement_failures,
            reconcile_rounds,
            reconcile_seconds,
            failover_seconds,
            leader,
            jobs_desired,
            jobs_running,
            jobs_drifting,
            restarts,
            hosts_alive,
        }
    }

    /// A placement that ended after `took`: counted, or its failure by
    /// the kind of error.
    pub fn placed(&self, took: Duration, outcome: Result<(), &ServerError>) {
        match outcome {
            Ok(()) => {
                self.placements.inc();
                self.placement_seconds.observe(took.as_secs_f64());
            }
            Err(e) => {
                self.placement_failures
                    .get_or_create(&ReasonLabels {
                        reason: reason(e).to_string(),
                    })
                    .inc();
            }
        }
    }

    /// The text exposition, with the store's gauges read now.
    pub async fn scrape(&self, sh: &Shared) -> Result<String, ServerError> {
        let _one = self.scrape.lock().await;
        let procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
        let ps: Vec<PsRecord> = state::list(sh.store.as_ref(), keys::PS).await?;
        let hosts: Vec<HostRecord> = state::list(sh.store.as_ref(), keys::HOSTS).await?;
        let ps_by: std::collections::HashMap<&str, &PsRecord> =
            ps.iter().map(|p| (p.job.as_str(), p)).collect();
        for f in [
            &self.jobs_desired,
            &self.jobs_running,
            &self.jobs_drifting,
            &self.restarts,
        ] {
            f.clear();
        }
        for h in &hosts {
            let l = HostLabels {
                host: h.name.clone(),
            };
            // Every live host has its series, at 0 when it has no job.
            self.jobs_desired.get_or_create(&l).set(0);
            self.jobs_running.get_or_create(&l).set(0);
            self.jobs_drifting.get_or_create(&l).set(0);
            self.restarts.get_or_create(&l).set(0);
        }
        for p in &procs {
            let record = ps_by.get(p.job.name.as_str());
            let host = record
                .map(|r| r.node.clone())
                .or_else(|| p.placed_on.clone())
                .unwrap_or_else(|| "none".to_string());
            let l = HostLabels { host };
            self.jobs_desired.get_or_create(&l).inc();
            if !record.is_some_and(|r| r.is_running()) {
                self.jobs_drifting.get_or_create(&l).inc();
            }
        }
        for p in &ps {
            let l = HostLabels {
                host: p.node.clone(),
            };
            if p.is_running() {
                self.jobs_running.get_or_create(&l).inc();
            }
            self.restarts
                .get_or_create(&l)
                .inc_by(i64::from(p.restarts));
        }
        self.hosts_alive.set(hosts.len() as i64);
        let (fleet, _) = sh.store.list(keys::FLEET).await?;
        let alive: std::collections::HashSet<&str> =
            hosts.iter().map(|h| h.name.as_str()).collect();
        let gone = fleet
            .iter()
            .filter_map(|kv| keys::name_of(keys::FLEET, &kv.key))
            .filter(|n| !alive.contains(n))
            .count();
        self.hosts_gone.set(gone as i64);
        for f in [
            &self.embassy_connections,
            &self.embassy_active,
            &self.embassy_bytes_in,
            &self.embassy_bytes_out,
        ] {
            f.clear();
        }
        let proxy = sh
            .embassy_proxy
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|e| e.stats()));
        // The kernel path counts with its rules' counters (no open
        // connections: it does not hold them).
        let (routes, open_known) = match (proxy, &sh.embassy_kernel) {
            (Some(p), _) => (p, true),
            (None, Some(k)) => match k.stats().await {
                Ok(s) => (s, false),
                Err(e) => {
                    tracing::debug!("metrics: embassy's kernel counters: {e}");
                    (Vec::new(), false)
                }
            },
            (None, None) => (Vec::new(), false),
        };
        for r in routes {
            let l = ServiceLabels {
                service: r.service.clone(),
                port: r.container_port.to_string(),
            };
            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.embassy_connections
                .get_or_create(&l)
                .set(clamp(r.connections_total));
            if open_known {
                self.embassy_active
                    .get_or_create(&l)
                    .set(clamp(r.connections_active));
            }
            self.embassy_bytes_in
                .get_or_create(&l)
                .set(clamp(r.bytes_in));
            self.embassy_bytes_out
                .get_or_create(&l)
                .set(clamp(r.bytes_out));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| ServerError::Internal(format!("encoding the metrics: {e}")))?;
        Ok(prometheus_text(&out))
    }
}

/// OpenMetrics text (what the crate writes) as Prometheus's text format
/// 0.0.4: a counter's `# HELP` and `# TYPE` name its samples' `_total`
/// name, and no `# EOF`. Pure.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// A placement failure's reason label: the kind of error.
fn reason(e: &ServerError) -> &'static str {
    match e {
        ServerError::Invalid(_) => "invalid",
        ServerError::Conflict(_) => "conflict",
        ServerError::Unavailable(_) => "no_host",
        ServerError::Exhausted(_) => "exhausted",
        ServerError::NotLeader(_) => "not_leader",
        // The leader's refusal, by its status.
        ServerError::Peer { status: 400, .. } => "invalid",
        ServerError::Peer { status: 409, .. } => "conflict",
        ServerError::Peer { status: 503, .. } => "no_host",
        ServerError::Peer { status: 507, .. } => "exhausted",
        ServerError::PeerUnreachable { .. } | ServerError::Peer { .. } => "peer",
        ServerError::HostPortInUse { .. } => "host_port_in_use",
        ServerError::Store(_) => "store",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples() {
        let om = "# HELP a Things.\n# TYPE a counter\na_total 1\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total 1\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n"
        );
    }
}
