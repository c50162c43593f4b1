//! etcd stays small and quiet: the harness's cluster on an etcd with an
//! 8 MiB backend quota carries a churning workload and a host that leaves
//! and rejoins, and etcd never raises NOSPACE; the leader compacts the
//! history (`--compact-window`), and idle hosts write (almost) nothing.
//! `scripts/etcd-soak.sh` is the long version.
//!
//! Needs `scripts/test-images.sh --node` and `etcdctl`.

use std::time::{Duration, Instant};

use viking_testkit::{eventually, Cluster, ClusterOpts, Node, POLL};

const BUSYBOX: &str = "viking-test/busybox";
const QUOTA: u64 = 8 << 20;

fn run_ok(n: &Node, args: &[&str]) {
    let o = n.cli(args);
    assert!(
        o.status.success(),
        "viking {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// etcdctl against the cluster's etcd (with the harness's certificate).
fn etcdctl(c: &Cluster, args: &[&str]) -> std::process::Output {
    c.etcdctl()
        .args(args)
        .output()
        .expect("etcdctl (install etcd-client)")
}

/// (database size in bytes, revision) from `etcdctl endpoint status`.
fn status(c: &Cluster) -> (u64, i64) {
    let o = etcdctl(c, &["endpoint", "status", "-w", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let s = &v[0]["Status"];
    (
        s["dbSize"].as_u64().expect("dbSize"),
        s["header"]["revision"].as_i64().expect("revision"),
    )
}

fn alarms(c: &Cluster) -> String {
    let o = etcdctl(c, &["alarm", "list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn host_alive(n: &Node, name: &str) -> bool {
    n.cli_json(["hosts", "--json"]).is_ok_and(|v| {
        v.as_array()
            .is_some_and(|hs| hs.iter().any(|h| h["name"] == name && h["alive"] == true))
    })
}

/// The harness's cluster on an etcd with an 8 MiB quota; the leader keeps
/// 10 s of history.
fn cluster() -> Cluster {
    Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            server_args: [
                "--host-ttl",
                "2",
                "--resync",
                "2",
                "--backoff",
                "0.5",
                // Every job is killed every few seconds: its restart delay
                // must not outgrow the final check.
                "--backoff-max",
                "5",
                "--compact-window",
                "10",
            ]
            .map(String::from)
            .to_vec(),
            etcd_args: vec!["--quota-backend-bytes".into(), QUOTA.to_string()],
            ..Default::default()
        },
    )
    .expect("start a 3-node cluster")
}

/// Six jobs, then for `run_for`: a job run and removed and a container
/// killed every round, and n3 killed and brought back whenever
/// `rejoin_every` has passed since the last time. After each round etcd
/// has no alarm and its database is below the quota. Prints (and
/// returns) etcd's database size over time.
fn workload(c: &Cluster, run_for: Duration, rejoin_every: Duration) -> Vec<(f64, u64, i64)> {
    let n1 = c.node(0);
    let jobs: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    for j in &jobs {
        run_ok(n1, &["run", "-d", "--name", j, BUSYBOX, "sleep", "100000"]);
    }
    let t0 = Instant::now();
    let mut last_rejoin = Instant::now();
    let mut samples = Vec::new();
    let mut round = 0;
    while t0.elapsed() < run_for {
        round += 1;
        // Churn: a job comes and goes, a container crashes and restarts.
        let t = format!("t{round}");
        run_ok(n1, &["run", "-d", "--name", &t, BUSYBOX, "sleep", "100000"]);
        run_ok(n1, &["rm", "-f", &t]);
        for n in c.nodes().iter().filter(|n| n.is_running()) {
            n.docker(["kill", &jobs[round % jobs.len()]]);
        }
        // A host leaves and rejoins.
        if last_rejoin.elapsed() >= rejoin_every {
            last_rejoin = Instant::now();
            let n3 = c.node(2);
            n3.kill().expect("kill n3");
            eventually("n3 gone", Duration::from_secs(20), POLL, || {
                !host_alive(n1, "n3")
            });
            n3.restart().expect("restart n3");
            eventually("n3 back", Duration::from_secs(60), POLL, || {
                host_alive(n1, "n3")
            });
            eprintln!("soak: {:>6.1}s n3 rejoined", t0.elapsed().as_secs_f64());
        }
        let (db, rev) = status(c);
        let at = t0.elapsed().as_secs_f64();
        eprintln!("soak: {at:>6.1}s etcd database {db} bytes, revision {rev}");
        samples.push((at, db, rev));
        assert_eq!(alarms(c), "", "etcd raised an alarm");
        assert!(db < QUOTA, "database {db} bytes, quota {QUOTA}");
    }
    // Every job still runs, and a new one can be placed.
    eventually("every job running", Duration::from_secs(60), POLL, || {
        let v = n1.cli_json(["ps", "--json"]).expect("ps");
        jobs.iter().all(|j| {
            v.as_array().is_some_and(|a| {
                a.iter()
                    .any(|p| p["job"] == j.as_str() && p["status"] == "running")
            })
        })
    });
    run_ok(
        n1,
        &["run", "-d", "--name", "after", BUSYBOX, "sleep", "100000"],
    );
    samples
}

/// Writes per second per host while the cluster is idle, measured over
/// `window` (the lowest of a few tries within a minute, once the workload
/// has settled).
fn idle_writes_per_host(c: &Cluster, window: Duration) -> f64 {
    let hosts = c.nodes().len() as f64;
    let settle = Instant::now();
    let mut best = f64::MAX;
    while settle.elapsed() < Duration::from_secs(90) {
        let (_, a) = status(c);
        std::thread::sleep(window);
        let (db, b) = status(c);
        let per_host = (b - a) as f64 / hosts / window.as_secs_f64();
        eprintln!(
            "soak: idle {} writes in {window:?}: {per_host:.4} writes/s per host; etcd database {db} bytes",
            b - a
        );
        best = best.min(per_host);
        if best <= 0.02 {
            break;
        }
    }
    best
}

#[test]
fn an_8_mib_etcd_carries_the_workload_and_a_rejoining_host_without_nospace() {
    let c = cluster();
    let (_, first_rev) = status(&c);
    workload(&c, Duration::from_secs(60), Duration::from_secs(20));
    // The leader compacted the history older than its window.
    eventually(
        "the early history is compacted",
        Duration::from_secs(30),
        POLL,
        || {
            let o = etcdctl(
                &c,
                &[
                    "get",
                    "--rev",
                    &(first_rev + 1).to_string(),
                    "/viking/proc/w0",
                ],
            );
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("compacted")
        },
    );
    // Idle: the three hosts write (almost) nothing.
    let idle = idle_writes_per_host(&c, Duration::from_secs(10));
    assert!(idle <= 0.1, "{idle} writes/s per idle host");
    assert_eq!(alarms(&c), "");
}

/// The long version, for `scripts/etcd-soak.sh`: `VIKING_SOAK_MINUTES`
/// (default 10) of the workload with n3 rejoining every minute, then a
/// minute of idle.
#[test]
#[ignore = "long: run by scripts/etcd-soak.sh"]
fn soak() {
    let minutes: u64 = std::env::var("VIKING_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let c = cluster();
    let samples = workload(
        &c,
        Duration::from_secs(minutes * 60),
        Duration::from_secs(60),
    );
    let idle = idle_writes_per_host(&c, Duration::from_secs(60));
    let max_db = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let (db, rev) = status(&c);
    eprintln!(
        "soak: result minutes={minutes} quota={QUOTA} max_db={max_db} final_db={db} final_revision={rev} idle_writes_per_s_per_host={idle:.4} alarms={:?}",
        alarms(&c)
    );
}
