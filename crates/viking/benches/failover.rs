//! Failover benchmark (no criterion): a node that runs 10 daemonized jobs is
//! killed; how long until all 10 run on the other nodes, viking against
//! Docker swarm mode on the same three nodes, in the same run.
//!
//! One `viking-testkit` cluster (3 Docker-in-Docker nodes, each with a
//! `viking server` with default settings, one etcd):
//!
//! * viking: the servers of n1 and n2 are stopped until their floki leases
//!   expire, 10 jobs (`viking run -d`, no pin, no tags) are started through
//!   n3 so all land there, n1 and n2 come back; then `docker kill` of n3's
//!   node container, and the clock runs until `viking ps --json` (polled
//!   every 100 ms on n1) shows all 10 jobs `running` on n1 or n2.
//! * swarm: n3 is restarted, the nodes form a swarm (n1 manager), n1 and n2
//!   are drained while 10 one-replica services start (so all land on n3),
//!   then made active again; `docker kill` of n3, and the clock runs until
//!   every service has a running task on n1 or n2 (polled every 100 ms).
//!
//! Run: `cargo bench -p viking --bench failover` (needs
//! `scripts/test-images.sh --node`). Target: viking <= 1/3 of swarm.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use viking_testkit::{Cluster, ClusterOpts, Node};

const JOBS: usize = 10;
const POLL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(180);

fn wait(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        if f()? {
            return Ok(start.elapsed());
        }
        std::thread::sleep(POLL);
    }
    bail!("timed out waiting for {what}")
}

fn viking_running_off(n: &Node, dead: &str) -> Result<usize> {
    let v = n.cli_json(["ps", "--json"])?;
    Ok(v.as_array()
        .context("ps is not a list")?
        .iter()
        .filter(|p| p["status"] == "running" && p["node"] != dead)
        .count())
}

fn viking(c: &Cluster) -> Result<Duration> {
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    n1.stop_server()?;
    n2.stop_server()?;
    wait("n1 and n2 gone from floki", || {
        let v = n3.cli_json(["hosts", "--json"])?;
        Ok(v.as_array()
            .context("hosts")?
            .iter()
            .filter(|h| h["alive"] == true)
            .count()
            == 1)
    })?;
    for i in 0..JOBS {
        n3.cli_ok([
            "run",
            "-d",
            "--name",
            &format!("fo{i}"),
            "viking-test/busybox",
            "sleep",
            "100000",
        ])?;
    }
    n1.start_server()?;
    n2.start_server()?;
    wait("all on n3", || {
        Ok(viking_running_off(n1, "n1")? == JOBS && viking_running_off(n1, "n3")? == 0)
    })?;
    let t0 = Instant::now();
    n3.kill()?;
    wait("viking failover", || {
        Ok(viking_running_off(n1, "n3")? == JOBS)
    })?;
    let took = t0.elapsed();
    for i in 0..JOBS {
        n1.cli_ok(["rm", "-f", &format!("fo{i}")])?;
    }
    Ok(took)
}

fn swarm_running_off(n1: &Node, dead: &str) -> Result<usize> {
    let out = n1.docker_ok(
        [
            "service",
            "ps",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Name}} {{.Node}} {{.CurrentState}}",
        ]
        .into_iter()
        .chain(
            (0..JOBS)
                .map(|i| format!("sw{i}"))
                .collect::<Vec<_>>()
                .iter()
                .map(|s| s.as_str()),
        )
        .collect::<Vec<_>>(),
    )?;
    let mut ok = std::collections::BTreeSet::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && f[1] != dead && f[2] == "Running" {
            ok.insert(f[0].split('.').next().unwrap_or("").to_string());
        }
    }
    Ok(ok.len())
}

fn swarm(c: &Cluster) -> Result<Duration> {
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    n3.restart()?;
    n1.docker_ok(["swarm", "init", "--advertise-addr", &n1.ip().to_string()])?;
    let token = n1.docker_ok(["swarm", "join-token", "-q", "worker"])?;
    let manager = format!("{}:2377", n1.ip());
    for n in [n2, n3] {
        n.docker_ok(["swarm", "join", "--token", token.trim(), &manager])?;
    }
    for n in ["n1", "n2"] {
        n1.docker_ok(["node", "update", "--availability", "drain", n])?;
    }
    for i in 0..JOBS {
        n1.docker_ok([
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            &format!("sw{i}"),
            "viking-test/busybox",
            "sleep",
            "100000",
        ])?;
    }
    wait("all services on n3", || {
        Ok(swarm_running_off(n1, "n1")? == JOBS && swarm_running_off(n1, "n3")? == 0)
    })?;
    for n in ["n1", "n2"] {
        n1.docker_ok(["node", "update", "--availability", "active", n])?;
    }
    let t0 = Instant::now();
    n3.kill()?;
    wait(
        "swarm failover",
        || Ok(swarm_running_off(n1, "n3")? == JOBS),
    )?;
    let took = t0.elapsed();
    for n in [n2, n1] {
        let _ = n.docker(["swarm", "leave", "--force"]);
    }
    Ok(took)
}

fn main() -> Result<()> {
    let c = Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            ..Default::default()
        },
    )?;
    let v = viking(&c)?;
    let s = swarm(&c)?;
    let ratio = v.as_secs_f64() / s.as_secs_f64();
    println!("| system | settings | time until {JOBS} jobs run elsewhere |");
    println!("|---|---|---:|");
    println!(
        "| viking | --host-ttl 3 (default), --resync 10 | {:.2} s |",
        v.as_secs_f64()
    );
    println!(
        "| swarm | defaults (dispatcher heartbeat 5 s) | {:.2} s |",
        s.as_secs_f64()
    );
    println!(
        "\nratio viking/swarm = {ratio:.3} (target <= 0.333) {}",
        if ratio <= 1.0 / 3.0 { "MET" } else { "MISSED" }
    );
    Ok(())
}
