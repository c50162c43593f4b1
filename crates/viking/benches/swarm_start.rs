//! Swarm-start benchmark (no criterion): how long a 3-node cluster takes to
//! get 30 daemonized busybox jobs running, viking against Docker swarm mode on
//! the same three nodes, in the same run.
//!
//! One `viking-testkit` cluster (3 Docker-in-Docker nodes, each with a
//! `viking server`, one etcd):
//!
//! * viking: from the first request until `viking ps --json` shows all 30 jobs
//!   `running`. The 30 `viking run -d --name jN viking-test/busybox sleep
//!   100000` are issued sequentially from the host's CLI, round robin over
//!   the three nodes' servers; `ps` is polled every 100 ms.
//! * swarm: the same nodes form a swarm (n1 manager, n2 and n3 workers);
//!   from the first `docker service create --detach --no-resolve-image --name
//!   sN viking-test/busybox sleep 100000` (30 services, one replica each,
//!   issued sequentially by the docker CLI inside n1) until `docker service
//!   ls` shows 30 services at 1/1, polled every 100 ms. The commands run in
//!   one shell inside n1 and time themselves, so `docker exec` is not counted.
//!
//! The viking jobs are removed before swarm starts; the services are removed
//! and the swarm left before the cluster is torn down.
//!
//! Build the node image once (`sudo scripts/test-images.sh --node`), then run
//! `cargo bench -p viking --bench swarm_start` (`SWARM_START_JOBS` changes the
//! number of jobs; `VIKING_BIN` another viking binary). Target: viking <= 0.5 x swarm.

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
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// viking: `viking run -d` round robin over the nodes, then poll `viking ps`.
fn bench_viking(c: &Cluster, jobs: usize) -> Result<Timing> {
    let t0 = Instant::now();
    for i in 0..jobs {
        let node = c.node(i % c.nodes().len());
        let name = format!("j{i}");
        node.cli_ok(["run", "-d", "--name", &name, IMAGE, "sleep", "100000"])
            .with_context(|| format!("starting {name}"))?;
    }
    let accepted = t0.elapsed();
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
/// in one shell inside n1 that prints its own timings (ms).
fn bench_swarm(c: &Cluster, jobs: usize) -> Result<Timing> {
    let n1 = c.node(0);
    let polls = TIMEOUT.as_millis() / POLL.as_millis();
    let script = format!(
        r#"set -e
ms() {{ echo $(( $(date +%s%N) / 1000000 )); }}
t0=$(ms)
for i in $(seq 0 {last}); do
    docker service create --detach --no-resolve-image --name s$i {IMAGE} sleep 100000 >/dev/null
done
t1=$(ms)
i=0
while [ "$(docker service ls --format '{{{{.Replicas}}}}' | grep -c '^1/1')" -lt {jobs} ]; do
    i=$((i + 1))
    [ $i -lt {polls} ] || {{ echo "timeout" >&2; docker service ls >&2; exit 1; }}
    sleep {poll}
done
t2=$(ms)
echo "$((t1 - t0)) $((t2 - t0))"
"#,
        last = jobs - 1,
        poll = POLL.as_secs_f64(),
    );
    let out = n1.sh(&script);
    if !out.status.success() {
        bail!("swarm run failed: {}{}", stderr(&out), stdout(&out));
    }
    let text = stdout(&out);
    let ms: Vec<u64> = text
        .split_whitespace()
        .map(|s| s.parse().context("swarm timings"))
        .collect::<Result<_>>()?;
    let [accepted, running] = ms[..] else {
        bail!("unexpected swarm output {text:?}");
    };
    // Check with the tasks themselves, and see where they landed.
    let tasks = n1.docker_ok([
        "node",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.CurrentState}}",
        "n1",
        "n2",
        "n3",
    ])?;
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
        accepted: Duration::from_millis(accepted),
        running: Duration::from_millis(running),
        spread,
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

fn main() -> Result<()> {
    let jobs: usize = std::env::var("SWARM_START_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
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

    eprintln!("swarm_start: viking, {jobs} jobs");
    let v = bench_viking(&c, jobs)?;
    let names: Vec<String> = (0..jobs).map(|i| format!("j{i}")).collect();
    c.node(0)
        .cli_ok(
            ["rm", "-f"]
                .into_iter()
                .chain(names.iter().map(|s| s.as_str())),
        )
        .context("removing the viking jobs")?;

    eprintln!("swarm_start: swarm init");
    let _guard = SwarmGuard(&c);
    swarm_init(&c)?;
    let (pull, pulled) = pull_attempt(c.node(0));
    eprintln!("swarm_start: swarm, {jobs} services");
    let s = bench_swarm(&c, jobs)?;

    let ratio = v.running.as_secs_f64() / s.running.as_secs_f64();
    println!();
    println!("{jobs} daemonized busybox jobs on 3 nodes, requests issued sequentially");
    println!();
    println!("| | all requests answered | all running | spread |");
    println!("|---|---:|---:|---|");
    println!(
        "| viking (`viking run -d`, round robin over n1..n3) | {:.2} s | {:.2} s | {} |",
        v.accepted.as_secs_f64(),
        v.running.as_secs_f64(),
        spread(&v)
    );
    println!(
        "| swarm (`docker service create --detach` on n1) | {:.2} s | {:.2} s | {} |",
        s.accepted.as_secs_f64(),
        s.running.as_secs_f64(),
        spread(&s)
    );
    println!();
    println!(
        "viking/swarm = {ratio:.2} (target <= {TARGET_RATIO}): {}",
        if ratio <= TARGET_RATIO {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "(a registry pull of {IMAGE} in a node {} after {:.2} s; swarm attempts one per task)",
        if pulled { "succeeded" } else { "failed" },
        pull.as_secs_f64()
    );
    Ok(())
}
