//! Swarm-start benchmark (no criterion): how long a 3-node cluster takes to
//! get 30 daemonized busybox jobs running, viking against Docker swarm mode on
//! the same three nodes, in the same run.
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
//! * baseline: 10 plain `docker run -d` inside n1, timed there: the engine's
//!   own cost of starting one container, which a viking request cannot beat.
//! * swarm: the same nodes form a swarm (n1 manager, n2 and n3 workers); from
//!   the first `docker service create --detach --no-resolve-image --name sN
//!   viking-test/busybox sleep 100000` (30 services, one replica each, issued
//!   sequentially by the docker CLI inside n1) until `docker service ls` shows
//!   30 services at 1/1 (polled every 100 ms). The commands run in one shell
//!   inside n1 and time themselves, so `docker exec` is not counted. The
//!   image is in every node's engine (the harness loads it).
//!
//! The services are removed and the swarm left before the cluster is torn
//! down (also when the bench fails half-way).
//!
//! Build the node image once (`sudo scripts/test-images.sh --node`), then run
//! `cargo bench -p viking --bench swarm_start`. `SWARM_START_JOBS` (30) and
//! `SWARM_START_CONCURRENCY` (3) change the number of jobs and of clients of
//! the second round; `VIKING_BIN` runs another viking binary.
//! Target: viking <= 0.5 x swarm (time until all run).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use viking_testkit::{Cluster, ClusterOpts, Node};

const IMAGE: &str = "viking-test/busybox";
const POLL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(300);
const TARGET_RATIO: f64 = 0.5;

struct Timing {
    /// From the first request until the last request was answered.
    accepted: Duration,
    /// From the first request until every job runs.
    running: Duration,
    /// Jobs per node once every job runs.
    spread: BTreeMap<String, usize>,
    /// Median time one request took to be answered, when known.
    request: Option<Duration>,
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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
    })
}

/// How long a node's engine takes to give up pulling the image (swarm tries to
/// pull before starting every task, and only logs the failure).
fn pull_attempt(n: &Node) -> (Duration, bool) {
    let t0 = Instant::now();
    let ok = n.docker(["pull", IMAGE]).status.success();
    (t0.elapsed(), ok)
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
    let jobs = env_usize("SWARM_START_JOBS", 30);
    let workers = env_usize("SWARM_START_CONCURRENCY", 3);
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

    eprintln!("swarm_start: viking, {jobs} jobs, sequentially");
    let v_seq = bench_viking(&c, jobs, 1)?;
    viking_rm(&c, jobs)?;
    eprintln!("swarm_start: viking, {jobs} jobs, {workers} clients");
    let v_par = bench_viking(&c, jobs, workers)?;
    viking_rm(&c, jobs)?;
    eprintln!("swarm_start: docker run -d in n1 (the engine's floor)");
    let floor = engine_run(c.node(0), 10)?;

    eprintln!("swarm_start: swarm init");
    let _guard = SwarmGuard(&c);
    swarm_init(&c)?;
    let (pull, pulled) = pull_attempt(c.node(0));
    eprintln!("swarm_start: swarm, {jobs} services");
    let s = bench_swarm(&c, jobs)?;

    let ratio = |v: &Timing| v.running.as_secs_f64() / s.running.as_secs_f64();
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3));
    let verdict = |r: f64| if r <= TARGET_RATIO { "met" } else { "MISSED" };
    println!();
    println!("{jobs} daemonized busybox jobs on 3 nodes (one harness cluster, same run)");
    println!();
    println!("| | all requests answered | all running | median request | spread | /swarm |");
    println!("|---|---:|---:|---:|---|---:|");
    let rows = [
        ("viking, 1 client (sequential), round robin n1..n3", &v_seq),
        ("viking, 3 clients (one per node), round robin", &v_par),
        (
            "swarm, `docker service create --detach` on n1, sequential",
            &s,
        ),
    ];
    for (what, t) in rows {
        println!(
            "| {what} | {:.2} s | {:.2} s | {} | {} | {:.2} |",
            t.accepted.as_secs_f64(),
            t.running.as_secs_f64(),
            ms(t.request),
            spread(t),
            ratio(t),
        );
    }
    println!();
    println!(
        "viking/swarm, sequential = {:.2}, {workers} clients = {:.2} (target <= {TARGET_RATIO}): {}, {}",
        ratio(&v_seq),
        ratio(&v_par),
        verdict(ratio(&v_seq)),
        verdict(ratio(&v_par)),
    );
    println!(
        "engine floor: `docker run -d` inside n1 takes {} (median of 10); a registry pull of {IMAGE} \
         in a node {} after {:.2} s (swarm attempts one per task)",
        ms(Some(floor)),
        if pulled { "succeeded" } else { "failed" },
        pull.as_secs_f64()
    );
    Ok(())
}
