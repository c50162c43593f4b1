//! The reconciler on a real cluster: hosts die, get cut off, servers
//! restart, the leader dies; the cluster converges on viking-proc with no
//! job lost and none running twice.
//!
//! Needs `scripts/test-images.sh --node`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use viking_testkit::{eventually, Cluster, ClusterOpts, Node, POLL};

const BUSYBOX: &str = "viking-test/busybox";

fn cluster() -> Cluster {
    Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            server_args: ["--host-ttl", "2", "--resync", "2", "--backoff", "0.5"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    )
    .expect("start a 3-node cluster")
}

fn run_ok(n: &Node, args: &[&str]) {
    let o = n.cli(args);
    assert!(
        o.status.success(),
        "viking {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// job -> (node, status) from viking-ps.
fn ps(n: &Node) -> BTreeMap<String, (String, String)> {
    let v = n.cli_json(["ps", "-a", "--json"]).expect("ps");
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["job"].as_str().unwrap().to_string(),
                (
                    p["node"].as_str().unwrap().to_string(),
                    p["status"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// job -> how many running containers it has across every live engine.
fn copies(c: &Cluster) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for n in c.nodes().iter().filter(|n| n.is_running()) {
        let o = n.docker([
            "ps",
            "--filter",
            "label=viking.job",
            "--format",
            "{{.Label \"viking.job\"}}",
        ]);
        for job in String::from_utf8_lossy(&o.stdout).lines() {
            *out.entry(job.to_string()).or_default() += 1;
        }
    }
    out
}

fn start_jobs(n: &Node, names: &[String]) {
    for j in names {
        run_ok(n, &["run", "-d", "--name", j, BUSYBOX, "sleep", "100000"]);
    }
}

#[test]
fn a_dead_host_s_jobs_move_and_its_fixed_job_waits_and_returns() {
    let c = cluster();
    let n1 = c.node(0);
    run_ok(
        n1,
        &[
            "run",
            "-d",
            "--name",
            "db",
            "-v",
            "/data",
            BUSYBOX,
            "sh",
            "-c",
            "[ -f /data/x ] || hostname > /data/x; cat /data/x; sleep 100000",
        ],
    );
    let jobs: Vec<String> = (0..6).map(|i| format!("web{i}")).collect();
    start_jobs(n1, &jobs);
    let home = ps(n1)["db"].0.clone();
    let victim = c.node_named(&home).unwrap();
    let moved: Vec<String> = ps(n1)
        .into_iter()
        .filter(|(j, (node, _))| node == &home && j != "db")
        .map(|(j, _)| j)
        .collect();
    assert!(!moved.is_empty());
    let watcher = c.nodes().iter().find(|n| n.name() != home).unwrap();

    victim.kill().unwrap();
    let killed = Instant::now();
    eventually(
        "jobs of the dead host running elsewhere",
        Duration::from_secs(20),
        POLL,
        || {
            let p = ps(watcher);
            jobs.iter().all(|j| p[j].0 != home && p[j].1 == "running")
        },
    );
    let took = killed.elapsed();
    eprintln!(
        "failover of {} jobs took {took:?} after the kill",
        moved.len()
    );
    // The fixed job waits for its host, and says so.
    eventually("db waiting", Duration::from_secs(10), POLL, || {
        ps(watcher)["db"].1 == "waiting"
    });
    let db = watcher.cli_json(["inspect", "db"]).unwrap();
    assert_eq!(db["proc"]["waiting"], format!("waiting for host {home}"));
    assert_eq!(db["ps"]["node"], home.as_str());

    // The host returns: db runs there again, with its data.
    victim.restart().unwrap();
    eventually("db back on its host", Duration::from_secs(30), POLL, || {
        let p = ps(watcher);
        p["db"] == (home.clone(), "running".to_string())
    });
    // Nothing runs twice, nothing is lost.
    eventually(
        "one copy of each job",
        Duration::from_secs(15),
        POLL,
        || {
            let k = copies(&c);
            k.len() == 7 && k.values().all(|n| *n == 1)
        },
    );
}

#[test]
fn the_leader_s_host_dies_and_another_server_takes_over() {
    let c = cluster();
    let leader_of = |n: &Node| -> Option<String> {
        let v = n.cli_json(["hosts", "--json"]).ok()?;
        v.as_array()?
            .iter()
            .find(|h| h["leader"] == true)
            .map(|h| h["name"].as_str().unwrap_or("").to_string())
    };
    let leader = {
        let mut l = None;
        eventually("a leader", Duration::from_secs(10), POLL, || {
            l = leader_of(c.node(0));
            l.is_some()
        });
        l.unwrap()
    };
    let survivor = c.nodes().iter().find(|n| n.name() != leader).unwrap();
    let jobs: Vec<String> = (0..4).map(|i| format!("job{i}")).collect();
    start_jobs(survivor, &jobs);
    c.node_named(&leader).unwrap().kill().unwrap();
    eventually("a new leader", Duration::from_secs(15), POLL, || {
        leader_of(survivor).is_some_and(|l| l != leader)
    });
    // The new leader acts: a crashed container on a live host comes back.
    let p = ps(survivor);
    let (job, (node, _)) = p
        .iter()
        .find(|(_, (n, _))| *n != leader)
        .map(|(j, v)| (j.clone(), v.clone()))
        .unwrap();
    c.node_named(&node).unwrap().docker(["kill", &job]);
    eventually(
        "the crashed job restarted",
        Duration::from_secs(15),
        POLL,
        || {
            let j = survivor.cli_json(["inspect", &job]).unwrap();
            j["ps"]["status"] == "running" && j["ps"]["restarts"].as_u64().unwrap_or(0) >= 1
        },
    );
    // And the jobs of the dead leader's host move.
    eventually(
        "every job running on a live host",
        Duration::from_secs(20),
        POLL,
        || {
            let p = ps(survivor);
            jobs.iter().all(|j| p[j].0 != leader && p[j].1 == "running")
        },
    );
}

#[test]
fn a_partitioned_host_heals_without_running_a_job_twice() {
    let c = cluster();
    let n1 = c.node(0);
    let jobs: Vec<String> = (0..6).map(|i| format!("svc{i}")).collect();
    start_jobs(n1, &jobs);
    let cut = c.node(1);
    let on_cut: Vec<String> = ps(n1)
        .into_iter()
        .filter(|(_, (n, _))| n == cut.name())
        .map(|(j, _)| j)
        .collect();
    assert_eq!(on_cut.len(), 2);
    cut.partition().unwrap();
    eventually(
        "the cut host's jobs running elsewhere",
        Duration::from_secs(20),
        POLL,
        || {
            let p = ps(n1);
            on_cut
                .iter()
                .all(|j| p[j].0 != cut.name() && p[j].1 == "running")
        },
    );
    // During the partition the cut host still runs its old copies.
    let old = String::from_utf8_lossy(
        &cut.docker(["ps", "-q", "--filter", "label=viking.job"])
            .stdout,
    )
    .lines()
    .count();
    assert_eq!(old, 2);
    cut.heal().unwrap();
    eventually(
        "exactly one copy of each job",
        Duration::from_secs(30),
        POLL,
        || {
            let k = copies(&c);
            k.len() == 6 && k.values().all(|n| *n == 1)
        },
    );
    // The healed host may get jobs back by rebalancing (start-first): each
    // runs, wherever it is.
    eventually("every job running", Duration::from_secs(30), POLL, || {
        let p = ps(n1);
        jobs.iter().all(|j| p[j].1 == "running")
    });
}

#[test]
fn restarting_every_server_at_once_loses_and_doubles_nothing() {
    let c = cluster();
    let jobs: Vec<String> = (0..6).map(|i| format!("keep{i}")).collect();
    start_jobs(c.node(2), &jobs);
    // A job crashed on purpose after the restart, to see the cluster act.
    let canary = "canary".to_string();
    start_jobs(c.node(2), std::slice::from_ref(&canary));
    let watched = |n: &Node| {
        let mut p = ps(n);
        p.remove(&canary);
        p
    };
    let before = watched(c.node(0));
    std::thread::scope(|s| {
        for n in c.nodes() {
            s.spawn(move || n.stop_server().unwrap());
        }
    });
    std::thread::scope(|s| {
        for n in c.nodes() {
            s.spawn(move || n.start_server().unwrap());
        }
    });
    // First a sign that the restarted servers reconcile: a crashed job comes back.
    let host = ps(c.node(0))[&canary].0.clone();
    c.node_named(&host).unwrap().docker(["kill", &canary]);
    eventually(
        "the crashed canary restarted",
        Duration::from_secs(20),
        POLL,
        || {
            let j = c.node(1).cli_json(["inspect", &canary]).unwrap();
            if j["ps"]["status"] == "running" && j["ps"]["restarts"].as_u64().unwrap_or(0) >= 1 {
                Ok(())
            } else {
                Err(j["ps"].to_string())
            }
        },
    );
    // Then nothing changes for the other jobs over a few resync periods.
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        assert_eq!(watched(c.node(1)), before);
        let mut k = copies(&c);
        k.remove(&canary);
        assert_eq!(k.len(), 6, "{k:?}");
        assert!(k.values().all(|n| *n == 1), "{k:?}");
        std::thread::sleep(POLL);
    }
    let procs = c.node(0).cli_json(["proc", "--json"]).unwrap();
    assert_eq!(procs.as_array().unwrap().len(), 7);
    for j in &jobs {
        let v = c.node(0).cli_json(["inspect", j]).unwrap();
        assert_eq!(v["ps"]["restarts"], 0, "{j} was restarted");
    }
}

#[test]
fn a_host_whose_docker_stops_answering_is_treated_as_gone() {
    let c = cluster();
    let n1 = c.node(0);
    let jobs: Vec<String> = (0..3).map(|i| format!("d{i}")).collect();
    start_jobs(n1, &jobs);
    let sick = c.node(1);
    let moved: Vec<String> = ps(n1)
        .into_iter()
        .filter(|(_, (n, _))| n == sick.name())
        .map(|(j, _)| j)
        .collect();
    assert!(!moved.is_empty());
    // Freeze the node's Docker engine (the viking server keeps running). It
    // is PID 1 of the node, so it is signalled from the host's side.
    let pid = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", sick.container()])
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&pid.stdout).trim().parse().unwrap();
    let signal = |sig: i32| {
        // SAFETY: kill(2) with the pid of the node's Docker engine, which
        // this test started.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    };
    signal(libc::SIGSTOP);
    let alive = |n: &Node, name: &str| -> bool {
        let v = n.cli_json(["hosts", "--json"]).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == name && h["alive"] == true)
    };
    eventually(
        "the host with a frozen Docker gone from floki",
        Duration::from_secs(20),
        POLL,
        || !alive(n1, sick.name()),
    );
    eventually(
        "its jobs running elsewhere",
        Duration::from_secs(20),
        POLL,
        || {
            let p = ps(n1);
            moved
                .iter()
                .all(|j| p[j].0 != sick.name() && p[j].1 == "running")
        },
    );
    // Docker answers again: the host comes back, and the copies it still
    // runs are removed.
    signal(libc::SIGCONT);
    eventually(
        "the host back in floki",
        Duration::from_secs(20),
        POLL,
        || alive(n1, sick.name()),
    );
    eventually(
        "one copy of each job",
        Duration::from_secs(30),
        POLL,
        || {
            let k = copies(&c);
            k.len() == 3 && k.values().all(|n| *n == 1)
        },
    );
}

/// The ids of every running container of a viking job on every live engine.
fn container_ids(c: &Cluster) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for n in c.nodes().iter().filter(|n| n.is_running()) {
        let o = n.docker(["ps", "-q", "--no-trunc", "--filter", "label=viking.job"]);
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    out
}

#[test]
fn an_emptied_store_stops_nothing_and_recover_brings_the_fleet_back() {
    let c = cluster();
    let n1 = c.node(0);
    let jobs: Vec<String> = (0..10).map(|i| format!("job{i}")).collect();
    start_jobs(n1, &jobs);
    let before = container_ids(&c);
    assert_eq!(before.len(), 10);

    // Every key of the cluster goes, as an operator's mistake would do it.
    let o = c
        .etcdctl()
        .args(["del", "--prefix", "/viking"])
        .output()
        .expect("etcdctl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Every server notices (its agent, its reconciler or floki), holds and
    // says so in floki.
    eventually(
        "every server to hold",
        Duration::from_secs(20),
        POLL,
        || {
            let hosts = n1.cli_json(["hosts", "--json"]).unwrap_or_default();
            let held = hosts
                .as_array()
                .map(|hs| hs.iter().filter(|h| h["held"].is_string()).count())
                .unwrap_or(0);
            if held == 3 {
                Ok(())
            } else {
                Err(format!("{hosts}"))
            }
        },
    );
    assert_eq!(
        container_ids(&c),
        before,
        "not one container stopped or replaced"
    );

    let o = n1.cli(["recover"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("10 job(s) recovered"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let p = ps(n1);
    assert!(
        jobs.iter()
            .all(|j| p.get(j).is_some_and(|(_, s)| s == "running")),
        "{p:?}"
    );
    assert_eq!(container_ids(&c), before, "the same containers");

    // The fleet goes on as before: a host dies, its jobs move.
    let victim_name = p["job0"].0.clone();
    let victim = c.node_named(&victim_name).unwrap();
    let watcher = c.nodes().iter().find(|n| n.name() != victim_name).unwrap();
    victim.kill().unwrap();
    eventually(
        "the dead host's jobs running elsewhere",
        Duration::from_secs(30),
        POLL,
        || {
            let p = ps(watcher);
            jobs.iter()
                .all(|j| p[j].0 != victim_name && p[j].1 == "running")
        },
    );
}

/// The leader's name, as `viking hosts` on `n` says.
fn leader_of(n: &Node) -> Option<String> {
    let v = n.cli_json(["hosts", "--json"]).ok()?;
    v.as_array()?
        .iter()
        .find(|h| h["leader"] == true)
        .map(|h| h["name"].as_str().unwrap_or("").to_string())
}

/// One slow peer stalls nothing: a server frozen (SIGSTOP) while the
/// leader restarts a job there holds up no other work. Its kernel accepts
/// the leader's call and nothing answers; meanwhile another host dies, and
/// its jobs run on the leader's host within the usual failover time (a
/// TTL of 6 s, so the frozen server is still in floki when the restart is
/// due), long before the stalled call's deadline (`--peer-timeout 60`).
#[test]
fn a_stopped_server_holds_up_no_failover() {
    let c = Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            server_args: [
                "--host-ttl",
                "6",
                "--resync",
                "2",
                "--backoff",
                "2",
                "--peer-timeout",
                "60",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .expect("start a 3-node cluster");
    let mut leader = None;
    eventually("a leader", Duration::from_secs(10), POLL, || {
        leader = leader_of(c.node(0));
        leader.is_some()
    });
    let leader = c.node_named(&leader.unwrap()).unwrap();
    let others: Vec<&Node> = c
        .nodes()
        .iter()
        .filter(|n| n.name() != leader.name())
        .collect();
    let (stalled, victim) = (others[0], others[1]);
    // A job that exits every two seconds on the host to be stalled.
    run_ok(
        leader,
        &[
            "run",
            "-d",
            "--name",
            "loop",
            "--viking-host",
            stalled.name(),
            BUSYBOX,
            "sh",
            "-c",
            "sleep 2; exit 1",
        ],
    );
    let jobs: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    start_jobs(leader, &jobs);
    let on_victim: Vec<String> = ps(leader)
        .into_iter()
        .filter(|(j, (n, _))| n == victim.name() && j != "loop")
        .map(|(j, _)| j)
        .collect();
    assert!(!on_victim.is_empty(), "{:?}", ps(leader));
    // Once it has been restarted, each exit waits out a backoff of 2 s:
    // freeze the server right after an exit, before the leader restarts it
    // (and before its lease runs out).
    eventually(
        "loop exited after a restart",
        Duration::from_secs(30),
        POLL,
        || {
            let j = leader.cli_json(["inspect", "loop"]).unwrap();
            j["ps"]["status"] == "exited" && j["ps"]["restarts"].as_u64().unwrap_or(0) >= 1
        },
    );
    stalled.pause_server().unwrap();
    // The leader claims the restart and asks the frozen server, which
    // never answers.
    eventually(
        "the restart of loop in flight",
        Duration::from_secs(10),
        POLL,
        || {
            let j = leader.cli_json(["inspect", "loop"]).unwrap();
            if j["ps"]["status"] == "starting" && j["ps"]["node"] == stalled.name() {
                Ok(())
            } else {
                Err(j["ps"].to_string())
            }
        },
    );
    victim.kill().unwrap();
    let killed = Instant::now();
    eventually(
        "the dead host's jobs running on the leader's host",
        Duration::from_secs(20),
        POLL,
        || {
            let p = ps(leader);
            let moved = on_victim
                .iter()
                .all(|j| p[j].0 == leader.name() && p[j].1 == "running");
            if moved {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            }
        },
    );
    eprintln!(
        "failover of {} jobs took {:?} after the kill, with a start hanging on {}",
        on_victim.len(),
        killed.elapsed(),
        stalled.name()
    );
    // The frozen server resumes: the start it was asked for long ago is no
    // longer its claim, and the cluster settles with one copy of each job.
    stalled.resume_server().unwrap();
    eventually(
        "loop running again on its host",
        Duration::from_secs(60),
        POLL,
        || {
            let p = ps(leader);
            p["loop"].0 == stalled.name() && (p["loop"].1 == "running" || p["loop"].1 == "exited")
        },
    );
    eventually(
        "one copy of each job",
        Duration::from_secs(30),
        POLL,
        || {
            let k = copies(&c);
            let ok =
                jobs.iter().all(|j| k.get(j) == Some(&1)) && k.get("loop").is_none_or(|n| *n <= 1);
            if ok {
                Ok(())
            } else {
                Err(format!("{k:?}"))
            }
        },
    );
}
