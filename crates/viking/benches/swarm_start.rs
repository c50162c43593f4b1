//! Swarm-start benchmark (no criterion): how long a 3-node cluster takes to
//! get 30 daemonized busybox jobs running, viking against the physical
//! baseline (plain `docker run -d` on the three nodes' own engines) and
//! against Docker swarm mode on the same three nodes, in the same run.
//!
//! One `viking-testkit` cluster (3 Docker-in-Docker nodes, each with a
//! `viking server`, one etcd):
//!
//! * viking: from the first request until `viking ps --json` (polled every
//!   100 ms) shows all 30 jobs `running`. Job `jN` is `viking run -d --name jN
//!   viking-test/busybox sleep 100000` sent from the host's CLI to node
//!   `N mod 3` (round robin). Two rounds: one client issuing the 30 requests
//!   sequentially, then 3 clients (one per node) each issuing its 10
//!   sequentially. The jobs are removed after each round.
//! * engine floor (measured first): 10 plain `docker run -d` inside n1, timed
//!   there: the engine's own cost of starting one container.
//! * physical baseline (measured next, before the viking rounds): the 30
//!   containers as plain `docker run -d --name base-N viking-test/busybox
//!   sleep 100000`, container `N` on node `N mod 3`'s own engine (10 per
//!   node), the three nodes in parallel, each running its share sequentially
//!   in one shell inside the node that times itself (so `docker exec` is not
//!   counted). Its time is the slowest node's share; `docker ps` in each node
//!   then checks that its share runs, and the containers are removed. The
//!   span from the first node's start to the last node's end (which also
//!   counts how far apart the three shells began) is printed beside it.
//! * swarm: the same nodes form a swarm (n1 manager, n2 and n3 workers); from
//!   the first `docker service create --detach --no-resolve-image --name sN
//!   viking-test/busybox sleep 100000` (30 services, one replica each, issued
//!   sequentially by the docker CLI inside n1) until `docker service ls` shows
//!   30 services at 1/1 (polled every 100 ms). The commands run in one shell
//!   inside n1 and time themselves, so `docker exec` is not counted. The
//!   image is in every node's engine (the harness loads it).
//!
//! Each round also records the CPU time it cost, per job and by part: the
//! node containers' cgroups (engines, viking servers, the docker CLI in n1),
//! the viking servers alone, the cluster's etcd, and the commands run on the
//! host (the viking CLIs; `docker exec` into n1 for swarm); and how busy the
//! machine was (the nodes share its CPUs).
//!
//! The services are removed and the swarm left before the cluster is torn
//! down (also when the bench fails half-way).
//!
//! Build the node image once (`sudo scripts/test-images.sh --node`), then run
//! `cargo bench -p viking --bench swarm_start`. `SWARM_START_JOBS` (30) and
//! `SWARM_START_CONCURRENCY` (3) change the number of jobs and of clients of
//! the second round; `VIKING_BIN` runs another viking binary.
//! Targets (time until all run): viking <= 1.15 x the physical baseline
//! (issue 17), and viking <= 0.5 x swarm (issue 5); the ratios are printed
//! for both viking rounds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use viking_testkit::{Cluster, ClusterOpts, Node};

const IMAGE: &str = "viking-test/busybox";
const POLL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(300);
const TARGET_RATIO: f64 = 0.5;
/// viking against the physical baseline (issue 17).
const TARGET_BASELINE: f64 = 1.15;

struct Timing {
    /// From the first request until the last request was answered.
    accepted: Duration,
    /// From the first request until every job runs.
    running: Duration,
    /// Jobs per node once every job runs.
    spread: BTreeMap<String, usize>,
    /// Median time one request took to be answered, when known.
    request: Option<Duration>,
    /// CPU used from the first request until every job ran.
    cpu: Cpu,
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// CPU time used so far, by part (seconds), and the machine's busy/total ticks.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// Everything in the three node containers' cgroups: dockerd,
    /// containerd, shims, runc, the viking servers, the docker CLI in a node.
    nodes: f64,
    /// Of which the viking servers.
    servers: f64,
    /// The cluster's etcd (on the host).
    etcd: f64,
    /// The commands this process ran and waited for on the host: the viking
    /// CLIs, and `docker exec` / `docker inspect` (swarm's CLI runs in n1).
    cli: f64,
    /// The machine: busy and total ticks of all CPUs.
    busy_ticks: u64,
    total_ticks: u64,
}

/// /proc/<pid>/stat counts in USER_HZ, which is 100 on every Linux.
const USER_HZ: f64 = 100.0;

impl Cpu {
    fn sample(c: &Cluster) -> Result<Cpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
        let f: Vec<u64> = stat
            .lines()
            .next()
            .context("empty /proc/stat")?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().context("/proc/stat field"))
            .collect::<Result<_>>()?;
        let total_ticks: u64 = f.iter().sum();
        let mut cpu = Cpu {
            busy_ticks: total_ticks - f[3] - f[4],
            total_ticks,
            ..Cpu::default()
        };
        for n in c.nodes() {
            cpu.nodes += node_cgroup_cpu(n)?;
            let out = n.sh("cat /proc/$(cat /run/viking.pid)/stat");
            cpu.servers += proc_stat_cpu(&stdout(&out), 13)?;
        }
        let me = std::fs::read_to_string("/proc/self/stat").context("/proc/self/stat")?;
        cpu.cli = proc_stat_cpu(&me, 15)?;
        cpu.etcd = etcd_cpu(&c.etcd_endpoint())?;
        Ok(cpu)
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            nodes: self.nodes - before.nodes,
            servers: self.servers - before.servers,
            etcd: self.etcd - before.etcd,
            cli: self.cli - before.cli,
            busy_ticks: self.busy_ticks - before.busy_ticks,
            total_ticks: self.total_ticks - before.total_ticks,
        }
    }

    /// How busy the machine's CPUs were (0..1).
    fn busy(&self) -> f64 {
        self.busy_ticks as f64 / self.total_ticks.max(1) as f64
    }
}

/// Two CPU-time fields of a /proc/<pid>/stat line, from 0-based field `i`
/// counted after the command name (13: utime + stime, 15: cutime + cstime).
fn proc_stat_cpu(stat: &str, i: usize) -> Result<f64> {
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("bad /proc stat line {stat:?}"))?
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field k (1-based) is f[k - 3].
    let get = |k: usize| -> Result<f64> {
        let v: u64 = f
            .get(k - 3)
            .context("short /proc stat line")?
            .parse()
            .context("/proc stat field")?;
        Ok(v as f64 / USER_HZ)
    };
    Ok(get(i + 1)? + get(i + 2)?)
}

/// CPU seconds used by everything in a node container's cgroup (v1 or v2).
fn node_cgroup_cpu(n: &Node) -> Result<f64> {
    let id = viking_testkit::host_docker(["inspect", "-f", "{{.Id}}", n.container()])?;
    let v1 = format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage");
    if let Ok(ns) = std::fs::read_to_string(&v1) {
        return Ok(ns.trim().parse::<f64>().context("cpuacct.usage")? / 1e9);
    }
    for v2 in [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/docker/{id}/cpu.stat"),
    ] {
        if let Ok(stat) = std::fs::read_to_string(&v2) {
            let us = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .context("cpu.stat without usage_usec")?;
            return Ok(us.trim().parse::<f64>().context("usage_usec")? / 1e6);
        }
    }
    bail!("no cgroup CPU accounting found for {}", n.container())
}

/// CPU seconds used by the etcd listening on `endpoint` (found by its command line).
fn etcd_cpu(endpoint: &str) -> Result<f64> {
    for e in std::fs::read_dir("/proc").context("/proc")? {
        let path = e?.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let listens = args
            .windows(2)
            .any(|w| w[0] == b"--listen-client-urls" && w[1] == endpoint.as_bytes());
        if listens {
            let stat = std::fs::read_to_string(path.join("stat")).context("etcd stat")?;
            return proc_stat_cpu(&stat, 13);
        }
    }
    bail!("no etcd process listening on {endpoint}")
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

/// viking: `viking run -d` for job `i` on node `i % 3`, by `workers` threads
/// (worker `w` issues jobs `w`, `w + workers`, ... one after another), then
/// poll `viking ps` until every job runs.
fn bench_viking(c: &Cluster, jobs: usize, workers: usize) -> Result<Timing> {
    let nodes = c.nodes().len();
    let t0 = Instant::now();
    let latencies: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let mut lat = Vec::new();
                    for i in (w..jobs).step_by(workers) {
                        let name = format!("j{i}");
                        let t = Instant::now();
                        c.node(i % nodes)
                            .cli_ok(["run", "-d", "--name", &name, IMAGE, "sleep", "100000"])
                            .with_context(|| format!("starting {name}"))?;
                        lat.push(t.elapsed());
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("viking client thread panicked"))
            .collect()
    });
    let accepted = t0.elapsed();
    let mut all = Vec::new();
    for l in latencies {
        all.extend(l?);
    }
    loop {
        let ps = c.node(0).cli_json(["ps", "--json"])?;
        let running: Vec<&serde_json::Value> = ps
            .as_array()
            .context("ps --json is not an array")?
            .iter()
            .filter(|p| p["status"] == "running")
            .collect();
        if running.len() >= jobs {
            let elapsed = t0.elapsed();
            let mut spread = BTreeMap::new();
            for p in running {
                let node = p["node"].as_str().unwrap_or("?").to_string();
                *spread.entry(node).or_default() += 1;
            }
            return Ok(Timing {
                accepted,
                running: elapsed,
                spread,
                request: median(all),
                cpu: Cpu::default(),
            });
        }
        if t0.elapsed() > TIMEOUT {
            bail!(
                "only {} of {jobs} viking jobs running after {TIMEOUT:?}",
                running.len()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Removes the viking jobs `j0..j{jobs}`.
fn viking_rm(c: &Cluster, jobs: usize) -> Result<()> {
    let names: Vec<String> = (0..jobs).map(|i| format!("j{i}")).collect();
    c.node(0)
        .cli_ok(
            ["rm", "-f"]
                .into_iter()
                .chain(names.iter().map(|s| s.as_str())),
        )
        .context("removing the viking jobs")?;
    Ok(())
}

/// The engine's own floor: the median of `n` plain `docker run -d` in a node,
/// timed inside the node (then the containers are removed).
fn engine_run(node: &Node, n: usize) -> Result<Duration> {
    let script = format!(
        r#"set -e
for i in $(seq 1 {n}); do
    t0=$(date +%s%N)
    docker run -d --name bench-floor-$i {IMAGE} sleep 100000 >/dev/null
    echo $(( ($(date +%s%N) - t0) / 1000 ))
done
docker rm -f $(seq -f bench-floor-%g 1 {n}) >/dev/null
"#
    );
    let out = node.sh(&script);
    if !out.status.success() {
        bail!("docker run in {}: {}", node.name(), stderr(&out));
    }
    let us: Vec<Duration> = stdout(&out)
        .split_whitespace()
        .map(|s| s.parse().map(Duration::from_micros))
        .collect::<Result<_, _>>()
        .context("engine timings")?;
    median(us).context("no engine timings")
}

/// The physical baseline: job `i` as a plain `docker run -d --name base-i` on
/// node `i % 3`'s own engine (10 per node for 30 jobs), the nodes in parallel.
/// Each node runs its share one after another in one shell that times itself
/// (µs: one line per run, then its own start and end on the wall clock, which
/// the nodes share with the host), so `docker exec` is not counted. "All
/// running" is the slowest node's share; `span` gets the time from the first
/// node's start to the last node's end, which also counts how far apart the
/// three `docker exec` began. Then `docker ps` in every node must show its
/// share running.
fn bench_physical(c: &Cluster, jobs: usize, span: &mut Duration) -> Result<Timing> {
    let nodes = c.nodes().len();
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = c
            .nodes()
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let share: Vec<String> = (k..jobs).step_by(nodes).map(|i| i.to_string()).collect();
                let script = format!(
                    r#"set -e
us() {{ echo $(( $(date +%s%N) / 1000 )); }}
t0=$(us)
for i in {share}; do
    t=$(us)
    docker run -d --name base-$i {IMAGE} sleep 100000 >/dev/null
    echo "run $(( $(us) - t ))"
done
echo "total $t0 $(us)"
"#,
                    share = share.join(" "),
                );
                s.spawn(move || n.sh(&script))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("baseline thread panicked"))
            .collect()
    });
    let mut runs = Vec::new();
    let mut slowest = Duration::ZERO;
    let (mut first, mut last) = (u64::MAX, 0u64);
    for (n, out) in c.nodes().iter().zip(&outs) {
        if !out.status.success() {
            bail!(
                "docker run -d in {}: {}{}",
                n.name(),
                stderr(out),
                stdout(out)
            );
        }
        let mut total = None;
        for l in stdout(out).lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let num = |s: &str| s.parse::<u64>().context("baseline timings");
            match f[..] {
                ["run", t] => runs.push(Duration::from_micros(num(t)?)),
                ["total", a, b] => total = Some((num(a)?, num(b)?)),
                _ => bail!("unexpected baseline output in {}: {l:?}", n.name()),
            }
        }
        let (a, b) = total.with_context(|| format!("no baseline total from {}", n.name()))?;
        slowest = slowest.max(Duration::from_micros(b.saturating_sub(a)));
        first = first.min(a);
        last = last.max(b);
    }
    *span = Duration::from_micros(last.saturating_sub(first));
    let mut spread = BTreeMap::new();
    for (k, n) in c.nodes().iter().enumerate() {
        let want = (k..jobs).step_by(nodes).count();
        let ps = n.docker_ok([
            "ps",
            "-q",
            "--filter",
            "name=base-",
            "--filter",
            "status=running",
        ])?;
        let got = ps.lines().filter(|l| !l.trim().is_empty()).count();
        if got != want {
            bail!(
                "{}: {got} of its {want} baseline containers running",
                n.name()
            );
        }
        spread.insert(n.name().to_string(), got);
    }
    Ok(Timing {
        accepted: slowest,
        running: slowest,
        spread,
        request: median(runs),
        cpu: Cpu::default(),
    })
}

/// Removes the baseline's containers from every node's engine.
fn physical_rm(c: &Cluster) -> Result<()> {
    for n in c.nodes() {
        let out = n.sh("ids=$(docker ps -aq --filter name=base-); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null");
        if !out.status.success() {
            bail!(
                "removing the baseline containers in {}: {}",
                n.name(),
                stderr(&out)
            );
        }
    }
    Ok(())
}

/// Makes n1 a swarm manager and joins the other nodes as workers.
fn swarm_init(c: &Cluster) -> Result<()> {
    let n1 = c.node(0);
    n1.docker_ok(["swarm", "init", "--advertise-addr", &n1.ip().to_string()])?;
    let token = n1.docker_ok(["swarm", "join-token", "-q", "worker"])?;
    let manager = format!("{}:2377", n1.ip());
    for n in &c.nodes()[1..] {
        n.docker_ok(["swarm", "join", "--token", token.trim(), &manager])?;
    }
    let t0 = Instant::now();
    loop {
        let ls = n1.docker_ok(["node", "ls", "--format", "{{.Status}} {{.Availability}}"])?;
        if ls.lines().filter(|l| *l == "Ready Active").count() == c.nodes().len() {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("swarm nodes not ready after 60 s:\n{ls}");
        }
        std::thread::sleep(POLL);
    }
}

/// Removes the services and takes every node out of the swarm; on drop, so it
/// also happens when the bench fails half-way, before the cluster goes.
struct SwarmGuard<'a>(&'a Cluster);

impl Drop for SwarmGuard<'_> {
    fn drop(&mut self) {
        let n1 = self.0.node(0);
        let _ = n1.sh(
            "ids=$(docker service ls -q); [ -z \"$ids\" ] || docker service rm $ids >/dev/null",
        );
        for n in &self.0.nodes()[1..] {
            let _ = n.docker(["swarm", "leave"]);
        }
        let _ = n1.docker(["swarm", "leave", "--force"]);
    }
}

/// swarm: `docker service create` in n1, then poll `docker service ls`, all
/// in one shell inside n1 that prints its own timings (µs): one line per
/// create, then the time to the last answer and the time until all run.
fn bench_swarm(c: &Cluster, jobs: usize) -> Result<Timing> {
    let n1 = c.node(0);
    let polls = TIMEOUT.as_millis() / POLL.as_millis();
    let script = format!(
        r#"set -e
us() {{ echo $(( $(date +%s%N) / 1000 )); }}
t0=$(us)
for i in $(seq 0 {last}); do
    t=$(us)
    docker service create --detach --no-resolve-image --name s$i {IMAGE} sleep 100000 >/dev/null
    echo "create $(( $(us) - t ))"
done
t1=$(us)
i=0
while [ "$(docker service ls --format '{{{{.Replicas}}}}' | grep -c '^1/1')" -lt {jobs} ]; do
    i=$((i + 1))
    [ $i -lt {polls} ] || {{ echo "timeout" >&2; docker service ls >&2; exit 1; }}
    sleep {poll}
done
t2=$(us)
echo "total $((t1 - t0)) $((t2 - t0))"
"#,
        last = jobs - 1,
        poll = POLL.as_secs_f64(),
    );
    let out = n1.sh(&script);
    if !out.status.success() {
        bail!("swarm run failed: {}{}", stderr(&out), stdout(&out));
    }
    let text = stdout(&out);
    let mut creates = Vec::new();
    let mut totals = None;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let us = |s: &str| {
            s.parse()
                .map(Duration::from_micros)
                .context("swarm timings")
        };
        match f[..] {
            ["create", t] => creates.push(us(t)?),
            ["total", a, r] => totals = Some((us(a)?, us(r)?)),
            _ => bail!("unexpected swarm output {l:?}"),
        }
    }
    let (accepted, running) = totals.context("no swarm totals")?;
    // Check with the tasks themselves, and see where they landed.
    let tasks = n1.sh("docker service ps --filter desired-state=running \
         --format '{{.Node}} {{.CurrentState}}' $(docker service ls -q)");
    let tasks = stdout(&tasks);
    let mut spread = BTreeMap::new();
    for l in tasks.lines().filter(|l| l.contains(" Running")) {
        let node = l.split_whitespace().next().unwrap_or("?").to_string();
        *spread.entry(node).or_default() += 1;
    }
    let total: usize = spread.values().sum();
    if total < jobs {
        bail!("swarm says 1/1 for {jobs} services but only {total} tasks are Running:\n{tasks}");
    }
    Ok(Timing {
        accepted,
        running,
        spread,
        request: median(creates),
        cpu: Cpu::default(),
    })
}

/// How long a node's engine takes to give up pulling the image (swarm tries to
/// pull before starting every task, and only logs the failure).
fn pull_attempt(n: &Node) -> (Duration, bool) {
    let t0 = Instant::now();
    let ok = n.docker(["pull", IMAGE]).status.success();
    (t0.elapsed(), ok)
}

/// Runs a benchmark phase and records the machine's CPU use during it.
fn measured(c: &Cluster, f: impl FnOnce() -> Result<Timing>) -> Result<Timing> {
    let before = Cpu::sample(c)?;
    let mut t = f()?;
    t.cpu = Cpu::sample(c)?.since(before);
    Ok(t)
}

fn spread(t: &Timing) -> String {
    t.spread
        .iter()
        .map(|(n, k)| format!("{n}:{k}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let jobs = env_usize("SWARM_START_JOBS", 30).max(1);
    let workers = env_usize("SWARM_START_CONCURRENCY", 3).max(1);
    let viking_bin = match std::env::var_os("VIKING_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_viking")),
    };
    eprintln!("swarm_start: viking binary {}", viking_bin.display());
    let c = Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(viking_bin),
            ..Default::default()
        },
    )?;

    eprintln!("swarm_start: docker run -d in n1 (the engine's floor)");
    let floor = engine_run(c.node(0), 10)?;
    eprintln!("swarm_start: physical baseline, {jobs} docker run -d across the nodes in parallel");
    let mut span = Duration::ZERO;
    let base = measured(&c, || bench_physical(&c, jobs, &mut span))?;
    physical_rm(&c)?;
    eprintln!("swarm_start: viking, {jobs} jobs, sequentially");
    let v_seq = measured(&c, || bench_viking(&c, jobs, 1))?;
    viking_rm(&c, jobs)?;
    eprintln!("swarm_start: viking, {jobs} jobs, {workers} clients");
    let v_par = measured(&c, || bench_viking(&c, jobs, workers))?;
    viking_rm(&c, jobs)?;

    eprintln!("swarm_start: swarm init");
    let _guard = SwarmGuard(&c);
    swarm_init(&c)?;
    let (pull, pulled) = pull_attempt(c.node(0));
    eprintln!("swarm_start: swarm, {jobs} services");
    let s = measured(&c, || bench_swarm(&c, jobs))?;

    let ratio = |v: &Timing| v.running.as_secs_f64() / s.running.as_secs_f64();
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3));
    let verdict = |r: f64| if r <= TARGET_RATIO { "met" } else { "MISSED" };
    let vs_base = |v: &Timing| v.running.as_secs_f64() / base.running.as_secs_f64();
    let verdict_base = |r: f64| {
        if r <= TARGET_BASELINE {
            "met"
        } else {
            "MISSED"
        }
    };
    println!();
    println!("{jobs} daemonized busybox jobs on 3 nodes (one harness cluster, same run)");
    println!();
    println!(
        "| | all requests answered | all running | median request | spread | /baseline | /swarm |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|");
    let clients = format!("viking, {workers} clients (one per node), round robin");
    let rows = [
        (
            "physical baseline, `docker run -d` on each node's engine, nodes in parallel",
            &base,
        ),
        ("viking, 1 client (sequential), round robin n1..n3", &v_seq),
        (clients.as_str(), &v_par),
        (
            "swarm, `docker service create --detach` on n1, sequential",
            &s,
        ),
    ];
    for (what, t) in rows {
        println!(
            "| {what} | {:.2} s | {:.2} s | {} | {} | {:.2} | {:.2} |",
            t.accepted.as_secs_f64(),
            t.running.as_secs_f64(),
            ms(t.request),
            spread(t),
            vs_base(t),
            ratio(t),
        );
    }
    println!();
    println!("CPU per job (ms) while the jobs started, by part:");
    println!();
    println!("| | machine busy | nodes | of which viking servers | etcd (host) | CLIs on the host | total |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (what, t) in rows {
        let per_job = |x: f64| format!("{:.0}", x * 1e3 / jobs as f64);
        let u = &t.cpu;
        println!(
            "| {what} | {:.0}% | {} | {} | {} | {} | {} |",
            u.busy() * 100.0,
            per_job(u.nodes),
            per_job(u.servers),
            per_job(u.etcd),
            per_job(u.cli),
            per_job(u.nodes + u.etcd + u.cli),
        );
    }
    println!();
    println!(
        "viking/physical baseline, sequential = {:.2}, {workers} clients = {:.2} (target <= {TARGET_BASELINE}): {}, {}",
        vs_base(&v_seq),
        vs_base(&v_par),
        verdict_base(vs_base(&v_seq)),
        verdict_base(vs_base(&v_par)),
    );
    println!(
        "physical baseline: slowest node's share {:.2} s; first node's start to last node's end {:.2} s",
        base.running.as_secs_f64(),
        span.as_secs_f64(),
    );
    println!(
        "viking/swarm, sequential = {:.2}, {workers} clients = {:.2} (target <= {TARGET_RATIO}): {}, {}",
        ratio(&v_seq),
        ratio(&v_par),
        verdict(ratio(&v_seq)),
        verdict(ratio(&v_par)),
    );
    println!(
        "engine floor: `docker run -d` inside n1 takes {} (median of 10, before the rounds); \
         a registry pull of {IMAGE} in a node {} after {:.2} s (swarm attempts one per task)",
        ms(Some(floor)),
        if pulled { "succeeded" } else { "failed" },
        pull.as_secs_f64()
    );
    Ok(())
}
