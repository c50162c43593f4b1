//! Scale on hollow servers (issue 17): one real etcd and N hollow servers
//! (`--runtime hollow`: the whole server over an engine in memory), all in
//! this process but each with its own store client, lease and watches, as
//! a real one. Then:
//!
//! 1. idle: etcd writes/s and reads/s per host, watch events sent per
//!    second per server;
//! 2. M daemonized jobs through the API of random servers, 32 clients at
//!    once, each `POST /v1/jobs?no_wait=true` (answered once the job is
//!    placed and claimed): its p50/p99, and jobs/s from the first POST until
//!    every job runs in viking-ps (followed by a watch, so the waiting costs
//!    etcd nothing);
//! 3. idle again, with the jobs;
//! 4. 10 % of the hosts killed at once: seconds until all their jobs run
//!    elsewhere;
//! 5. the leader killed: seconds until another server leads, and until
//!    its jobs run elsewhere;
//! 6. one real `viking server --runtime hollow` process: its RSS idle and
//!    with 20 jobs.
//!
//! A kill aborts the server's tasks and drops its store client: its leases
//! expire after the TTL, as when a machine dies. The last line is JSON.
//!
//!   scripts/scale.sh --hosts N --jobs M [--ttl S]
//!
//! Every server's store requests are counted by method and key kind
//! ([`counting`]); the placements and the failover print what each cost
//! per job, largest first.
//!
//! A benchmark, not a test: figures go to docs/benchmarks.md.

mod counting;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rand::Rng;
use viking_client::Client;
use viking_core::keys;
use viking_core::records::PsRecord;
use viking_docker::hollow::{self, HollowSpec};
use viking_server::config::RuntimeChoice;
use viking_server::ServerConfig;
use viking_store::etcd::EtcdStore;
use viking_store::testing::EtcdCluster;
use viking_store::{Election, Store};

const TOKEN: &str = "scale-token-0123456789abcdef";
const KEY: &str = "/viking";
const CLIENTS: usize = 32;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// One hollow server running in this process.
struct Hollow {
    name: String,
    url: String,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn config(
    name: &str,
    listen: SocketAddr,
    etcd: &str,
    dir: &std::path::Path,
    ttl: f64,
) -> ServerConfig {
    let secs = Duration::from_secs_f64;
    ServerConfig {
        name: name.to_string(),
        ip: "127.0.0.1".into(),
        listen,
        etcd: vec![etcd.to_string()],
        key: KEY.into(),
        tags: vec![],
        data_dir: dir.to_path_buf(),
        docker: String::new(),
        token: Some(TOKEN.into()),
        host_ttl: secs(ttl),
        resync: Duration::from_secs(10),
        policy: Default::default(),
        peer_timeout: Duration::from_secs(10),
        health_interval: Duration::from_secs(2),
        embassy_ports: (20000, 29999),
        embassy_bind: None,
        embassy_mode: viking_server::config::EmbassyMode::Proxy,
        metrics_listen: None,
        api_limits: Default::default(),
        embassy_max_connections: 1024,
        embassy_idle_timeout: Duration::from_secs(600),
        containers: Default::default(),
        docker_ping_failures: viking_server::config::DEFAULT_DOCKER_PING_FAILURES,
        compact_window: viking_server::config::DEFAULT_COMPACT_WINDOW,
        tls: Default::default(),
        runtime: RuntimeChoice::Hollow(HollowSpec::default()),
    }
}

async fn start_hollow(
    name: String,
    etcd: String,
    ttl: f64,
    counts: Arc<counting::Counts>,
) -> Result<Hollow> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cfg = config(&name, addr, &etcd, dir.path(), ttl);
    let store: Arc<dyn Store> = Arc::new(counting::Counting {
        inner: Arc::new(EtcdStore::connect(&[etcd], KEY).await?),
        counts,
    });
    let RuntimeChoice::Hollow(spec) = cfg.runtime else {
        return Err(anyhow!("a hollow server's config names another runtime"));
    };
    let runtime = Arc::new(hollow::engine(spec));
    let prepared = viking_server::prepare_with(cfg, store, runtime).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = viking_server::serve(prepared, listener, std::future::pending()).await {
            eprintln!("scale: a hollow server ended: {e:#}");
        }
    });
    Ok(Hollow {
        name,
        url: format!("http://{addr}"),
        task,
        _dir: dir,
    })
}

/// etcd's counters from `/metrics`: (range requests, watch events sent).
async fn etcd_counters(endpoint: &str) -> Result<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .context("etcd /metrics")?;
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    let sum = |metric: &str, label: Option<&str>| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(metric))
            .filter(|l| label.is_none_or(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((
        sum("grpc_server_handled_total", Some("grpc_method=\"Range\"")),
        sum("etcd_debugging_mvcc_events_total", None),
    ))
}

/// Per-host rates over `window` of idle: (writes/s, reads/s, watch events/s) per host.
async fn idle_rates(
    store: &Arc<dyn Store>,
    etcd: &str,
    hosts: usize,
    window: Duration,
) -> Result<(f64, f64, f64)> {
    let r0 = store.revision().await?;
    let (reads0, events0) = etcd_counters(etcd).await?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let r1 = store.revision().await?;
    let (reads1, events1) = etcd_counters(etcd).await?;
    let secs = t0.elapsed().as_secs_f64();
    let per = |d: f64| d / secs / hosts as f64;
    Ok((
        per((r1 - r0) as f64),
        per(reads1 - reads0),
        per(events1 - events0),
    ))
}

/// viking-ps as the benchmark sees it: read once, then kept by a watch,
/// so waiting on it costs etcd nothing while the figures are taken.
#[derive(Clone)]
struct PsView(Arc<std::sync::Mutex<std::collections::HashMap<String, PsRecord>>>);

impl PsView {
    async fn start(store: &Arc<dyn Store>) -> Result<PsView> {
        let view = PsView(Default::default());
        let (kvs, rev) = store.list(keys::PS).await?;
        if let Ok(mut m) = view.0.lock() {
            for kv in kvs {
                if let Ok(r) = viking_core::records::decode::<PsRecord>(&kv.value) {
                    m.insert(r.job.clone(), r);
                }
            }
        }
        let mut w = store.watch(keys::PS, rev + 1).await?;
        let map = view.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(ev)) = w.next().await {
                let Some(name) = keys::name_of(keys::PS, &ev.kv.key) else {
                    continue;
                };
                let Ok(mut m) = map.lock() else { return };
                match ev.kind {
                    viking_store::EventKind::Delete => {
                        m.remove(name);
                    }
                    viking_store::EventKind::Put => {
                        if let Ok(r) = viking_core::records::decode::<PsRecord>(&ev.kv.value) {
                            m.insert(name.to_string(), r);
                        }
                    }
                }
            }
            eprintln!("scale: the watch of viking-ps ended");
        });
        Ok(view)
    }

    /// Wait until `ok` holds of viking-ps; the seconds it took.
    async fn until(
        &self,
        limit: Duration,
        ok: impl Fn(&mut dyn Iterator<Item = &PsRecord>) -> bool,
    ) -> Result<f64> {
        let t0 = Instant::now();
        loop {
            let done = self
                .0
                .lock()
                .map_err(|_| anyhow!("the ps view's lock is poisoned"))
                .map(|m| ok(&mut m.values()))?;
            if done {
                return Ok(t0.elapsed().as_secs_f64());
            }
            if t0.elapsed() > limit {
                return Err(anyhow!("viking-ps did not get there in {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One real `viking server --runtime hollow` process: its RSS idle and
/// with 20 jobs pinned to it, in KiB.
async fn one_process_rss(etcd: &str, ttl: f64, view: &PsView) -> Result<(u64, u64)> {
    let bin = viking_testkit::viking_bin()?;
    let dir = tempfile::tempdir()?;
    let port = viking_testkit::local::free_port();
    let mut child = std::process::Command::new(bin)
        .args([
            "server",
            "--runtime",
            "hollow",
            "--name",
            "rss1",
            "--etcd",
            etcd,
            "--key",
            KEY,
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--host-ttl")
        .arg(ttl.to_string())
        .env("VIKING_TOKEN", TOKEN)
        .env("VIKING_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::new(&url, Some(TOKEN.into()))?;
    let result = async {
        let t0 = Instant::now();
        while client.ping().await.is_err() {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(anyhow!("the RSS server did not answer"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Idle: a few resync and floki rounds.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle = rss_kib(child.id()).ok_or_else(|| anyhow!("no RSS"))?;
        for i in 0..20 {
            let doc = format!(
                r#"{{"name":"rss-{i}","image":"busybox","command":["sleep","1d"],"daemonize":true,"host":"rss1"}}"#
            );
            client.run(doc.into_bytes(), &|_| {}).await?;
        }
        view.until(Duration::from_secs(60), |ps| {
            ps.filter(|p| p.node == "rss1" && p.is_running()).count() >= 20
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let busy = rss_kib(child.id()).ok_or_else(|| anyhow!("no RSS"))?;
        for i in 0..20 {
            let _ = client.rm(&format!("rss-{i}"), true).await;
        }
        Ok((idle, busy))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let hosts: usize = arg(&args, "--hosts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let jobs: usize = arg(&args, "--jobs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let ttl: f64 = arg(&args, "--ttl")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("VIKING_LOG").unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let etcd = EtcdCluster::start_with(
        1,
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        &["--quota-backend-bytes".into(), (4u64 << 30).to_string()],
    )
    .map_err(|e| anyhow!(e))?;
    let endpoint = etcd.endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(hosts, jobs, ttl, endpoint))
}

async fn run(hosts: usize, jobs: usize, ttl: f64, endpoint: String) -> Result<()> {
    eprintln!("scale: {hosts} hollow hosts, {jobs} jobs, etcd {endpoint}");
    let store: Arc<dyn Store> =
        Arc::new(EtcdStore::connect(std::slice::from_ref(&endpoint), KEY).await?);
    let t0 = Instant::now();
    let mut servers: Vec<Hollow> = Vec::new();
    let counts = Arc::new(counting::Counts::default());
    for chunk in (0..hosts).collect::<Vec<_>>().chunks(50) {
        let started = futures::future::join_all(
            chunk
                .iter()
                .map(|i| start_hollow(format!("h{i:04}"), endpoint.clone(), ttl, counts.clone())),
        )
        .await;
        for s in started {
            servers.push(s?);
        }
    }
    wait_hosts(&store, hosts).await?;
    let start_s = t0.elapsed().as_secs_f64();
    eprintln!("scale: {hosts} hosts in floki after {start_s:.1}s");
    let (idle_w, idle_r, idle_e) =
        idle_rates(&store, &endpoint, hosts, Duration::from_secs(15)).await?;
    eprintln!("scale: idle: {idle_w:.3} writes/s, {idle_r:.3} reads/s, {idle_e:.3} watch events/s per host");

    // Placements: 32 clients, each POST to a random server, answered once
    // the job is accepted (placed and claimed); until every job runs.
    let view = PsView::start(&store).await?;
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.url.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let counted = counts.snapshot();
    let t_run = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let urls = urls.clone();
        let next = next.clone();
        clients.spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return (lat, failed);
                }
                let url = &urls[rand::thread_rng().gen_range(0..urls.len())];
                let Ok(c) = Client::new(url, Some(TOKEN.into())) else {
                    failed += 1;
                    continue;
                };
                let doc = format!(
                    r#"{{"name":"j{i}","image":"busybox","command":["sleep","1d"],"daemonize":true}}"#
                );
                let t = Instant::now();
                match c.run_no_wait(doc.into_bytes()).await {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => {
                        failed += 1;
                        eprintln!("scale: j{i}: {e}");
                    }
                }
            }
        });
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    while let Some(r) = clients.join_next().await {
        let (l, f) = r?;
        lat.extend(l);
        failed += f;
    }
    let posted_s = t_run.elapsed().as_secs_f64();
    let limit = Duration::from_secs(600);
    view.until(limit, |ps| {
        ps.filter(|p| p.is_running()).count() >= jobs - failed
    })
    .await?;
    let placed_s = t_run.elapsed().as_secs_f64();
    let rate = (jobs - failed) as f64 / placed_s;
    report("placements", &counted, &counts, jobs - failed);
    let post_p50 = percentile(&mut lat, 0.5);
    let post_p99 = percentile(&mut lat, 0.99);
    eprintln!(
        "scale: {jobs} jobs ({failed} refused) posted in {posted_s:.1}s, all running after {placed_s:.1}s: {rate:.0} jobs/s; POST p50 {post_p50:.0} ms, p99 {post_p99:.0} ms"
    );
    let (busy_w, busy_r, busy_e) =
        idle_rates(&store, &endpoint, hosts, Duration::from_secs(15)).await?;
    eprintln!("scale: idle with jobs: {busy_w:.3} writes/s, {busy_r:.3} reads/s, {busy_e:.3} watch events/s per host");

    // 10 % of the hosts at once. Never the leader (that is the next step).
    let leader = Election::new(store.clone(), "reconciler")
        .leader()
        .await?
        .unwrap_or_default();
    let kill_n = (hosts / 10).max(1);
    let mut killed = BTreeSet::new();
    for s in servers
        .iter()
        .filter(|s| s.name != leader)
        .rev()
        .take(kill_n)
    {
        s.task.abort();
        killed.insert(s.name.clone());
    }
    let gone = killed.clone();
    let counted = counts.snapshot();
    let moved_s = view
        .until(limit, move |ps| {
            ps.filter(|p| p.daemonize)
                .all(|p| p.is_running() && !gone.contains(&p.node))
        })
        .await?;
    eprintln!("scale: {kill_n} hosts killed: their jobs run elsewhere after {moved_s:.1}s");
    report("failover", &counted, &counts, jobs * kill_n / hosts);

    // The leader.
    let leader_srv = servers
        .iter()
        .find(|s| s.name == leader)
        .ok_or_else(|| anyhow!("no leader among the hollow servers"))?;
    leader_srv.task.abort();
    let t_leader = Instant::now();
    let election = Election::new(store.clone(), "reconciler");
    let new_leader_s = loop {
        if let Some(l) = election.leader().await? {
            if l != leader {
                break t_leader.elapsed().as_secs_f64();
            }
        }
        if t_leader.elapsed() > limit {
            return Err(anyhow!("no new leader"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut gone = killed.clone();
    gone.insert(leader.clone());
    let leader_jobs_s = view
        .until(limit, move |ps| {
            ps.filter(|p| p.daemonize)
                .all(|p| p.is_running() && !gone.contains(&p.node))
        })
        .await?
        + new_leader_s;
    eprintln!("scale: leader {leader} killed: a new leader after {new_leader_s:.1}s, its jobs elsewhere after {leader_jobs_s:.1}s");

    let (rss_idle, rss_busy) = one_process_rss(&endpoint, ttl, &view).await?;
    eprintln!("scale: one server process: RSS {rss_idle} KiB idle, {rss_busy} KiB with 20 jobs");
    let rss_all = rss_kib(std::process::id()).unwrap_or(0);

    println!(
        "{}",
        serde_json::json!({
            "hosts": hosts,
            "jobs": jobs,
            "refused": failed,
            "hosts_up_s": round(start_s),
            "idle_writes_per_host_s": round3(idle_w),
            "idle_reads_per_host_s": round3(idle_r),
            "idle_watch_events_per_host_s": round3(idle_e),
            "idle_with_jobs_writes_per_host_s": round3(busy_w),
            "idle_with_jobs_reads_per_host_s": round3(busy_r),
            "idle_with_jobs_watch_events_per_host_s": round3(busy_e),
            "placements_per_s": round(rate),
            "post_p50_ms": round(post_p50),
            "post_p99_ms": round(post_p99),
            "hosts_killed": kill_n,
            "failover_s": round(moved_s),
            "new_leader_s": round(new_leader_s),
            "leader_jobs_moved_s": round(leader_jobs_s),
            "server_rss_idle_mib": round(rss_idle as f64 / 1024.0),
            "server_rss_20_jobs_mib": round(rss_busy as f64 / 1024.0),
            "process_rss_per_hollow_server_mib": round(rss_all as f64 / 1024.0 / hosts as f64),
        })
    );
    for s in &servers {
        s.task.abort();
    }
    Ok(())
}

/// The store requests of a phase per job, largest first.
fn report(
    phase: &str,
    before: &std::collections::BTreeMap<String, u64>,
    counts: &counting::Counts,
    jobs: usize,
) {
    let per = |n: u64| n as f64 / jobs.max(1) as f64;
    let all = counting::since(before, &counts.snapshot());
    let total: u64 = all.iter().map(|(_, n)| n).sum();
    eprintln!(
        "scale: {phase}: {:.1} store requests per job ({total} for {jobs} jobs):",
        per(total)
    );
    for (what, n) in all.iter().take(15) {
        eprintln!("scale:   {:>8.2}  {what}", per(*n));
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

async fn wait_hosts(store: &Arc<dyn Store>, n: usize) -> Result<()> {
    let t = Instant::now();
    loop {
        let (kvs, _) = store.list(keys::HOSTS).await?;
        if kvs.len() >= n {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(600) {
            return Err(anyhow!("only {} of {n} hosts in floki", kvs.len()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
