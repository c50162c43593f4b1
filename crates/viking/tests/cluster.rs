//! A real cluster: three nodes, each a container with its own Docker engine
//! and a `viking server`, sharing one etcd (see `viking-testkit`).
//!
//! Needs `scripts/test-images.sh --node`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use viking_testkit::{eventually, Cluster, ClusterOpts, Node, POLL};

const BUSYBOX: &str = "viking-test/busybox";

fn cluster(tags: &[&str]) -> Cluster {
    Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            server_args: vec!["--host-ttl".into(), "2".into()],
            ..Default::default()
        },
    )
    .expect("start a 3-node cluster")
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run_ok(n: &Node, args: &[&str]) -> String {
    let o = n.cli(args);
    assert!(
        o.status.success(),
        "viking {args:?} on {}: {}",
        n.name(),
        err(&o)
    );
    out(&o)
}

/// The host each job's container runs on, from viking-ps.
fn placements(n: &Node) -> BTreeMap<String, String> {
    let ps = n.cli_json(["ps", "--json"]).expect("ps");
    ps.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["job"].as_str().unwrap().to_string(),
                p["node"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Which node engines have a container named `job`, running.
fn running_on(c: &Cluster, job: &str) -> Vec<String> {
    c.nodes()
        .iter()
        .filter(|n| {
            let o = n.docker(["inspect", "-f", "{{.State.Running}}", job]);
            out(&o).trim() == "true"
        })
        .map(|n| n.name().to_string())
        .collect()
}

#[test]
fn jobs_land_by_tags_and_pins_and_spread() {
    let c = cluster(&["ssd", "gpu", "ssd,gpu"]);
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));

    // Pinned: asked on n1, runs on n2.
    run_ok(
        n1,
        &[
            "run",
            "-d",
            "--name",
            "pinned",
            "--viking-host",
            "n2",
            BUSYBOX,
            "sleep",
            "1000",
        ],
    );
    assert_eq!(placements(n3)["pinned"], "n2");
    assert_eq!(running_on(&c, "pinned"), vec!["n2"]);
    // Tags: only n3 has both.
    run_ok(
        n2,
        &[
            "run",
            "-d",
            "--name",
            "both",
            "--viking-filter",
            "ssd,gpu",
            BUSYBOX,
            "sleep",
            "1000",
        ],
    );
    assert_eq!(placements(n1)["both"], "n3");
    // The same through the job's env.
    run_ok(
        n1,
        &[
            "run",
            "-d",
            "--name",
            "envtag",
            "-e",
            "VIKING_TAG=gpu",
            "-e",
            "VIKING_HOST=n3",
            BUSYBOX,
            "sleep",
            "1000",
        ],
    );
    assert_eq!(placements(n1)["envtag"], "n3");

    // Dry run explains itself.
    let o = n1.cli([
        "run",
        "--dry-run",
        "-d",
        "--name",
        "x",
        "--viking-filter",
        "gpu",
        BUSYBOX,
    ]);
    let text = out(&o);
    assert!(text.contains("would run on host n2"), "{text}");
    assert!(
        text.contains("n1") && text.contains("missing tag \"gpu\""),
        "{text}"
    );

    // A job no host can take is refused with every host's reason, and leaves no trace.
    let o = n2.cli([
        "run",
        "-d",
        "--name",
        "nowhere",
        "--viking-filter",
        "tpu",
        BUSYBOX,
        "sleep",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(125));
    for h in ["n1", "n2", "n3"] {
        assert!(
            err(&o).contains(&format!("{h}: missing tag \"tpu\"")),
            "{}",
            err(&o)
        );
    }
    assert!(n1.cli(["inspect", "nowhere"]).status.code() == Some(1));

    // Clean slate, then 9 daemonized jobs on 3 idle hosts spread 3/3/3.
    for j in ["pinned", "both", "envtag"] {
        run_ok(n1, &["rm", "-f", j]);
    }
    for i in 0..9 {
        let node = c.node(i % 3);
        run_ok(
            node,
            &[
                "run",
                "-d",
                "--name",
                &format!("spread{i}"),
                BUSYBOX,
                "sleep",
                "1000",
            ],
        );
    }
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for (job, host) in placements(n1) {
        assert!(job.starts_with("spread"));
        *per_host.entry(host).or_default() += 1;
    }
    assert_eq!(
        per_host.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3],
        "{per_host:?}"
    );
    // And the engines agree with viking-ps.
    let engines: usize = c
        .nodes()
        .iter()
        .map(|n| {
            out(&n.docker(["ps", "-q", "--filter", "label=viking.job"]))
                .lines()
                .count()
        })
        .sum();
    assert_eq!(engines, 9);
    // floki's load: three jobs on every host, and the memory they use.
    eventually(
        "the load of every host in floki",
        Duration::from_secs(20),
        POLL,
        || {
            let hosts = n1.cli_json(["hosts", "--json"]).unwrap();
            let ok = hosts
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["running"] == 3 && h["memory_used"].as_u64().unwrap_or(0) > 0);
            if ok {
                Ok(())
            } else {
                Err(hosts.to_string())
            }
        },
    );
}

#[test]
fn a_fixed_job_comes_back_to_its_host_and_its_data() {
    let c = cluster(&[]);
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
            "-e",
            "VIKING_NODE=first",
            BUSYBOX,
            "sh",
            "-c",
            "echo kept-on-$VIKING_NODE > /data/first; sleep 1000",
        ],
    );
    let home = placements(n1)["db"].clone();
    // Make its host the busiest, so only history can bring it back there.
    for i in 0..2 {
        run_ok(
            n1,
            &[
                "run",
                "-d",
                "--name",
                &format!("load{i}"),
                "--viking-host",
                &home,
                BUSYBOX,
                "sleep",
                "1000",
            ],
        );
    }
    run_ok(n1, &["rm", "-f", "db"]);
    // Asked for on another server, it returns to its host and finds its data.
    let other = c.nodes().iter().find(|n| n.name() != home).unwrap();
    run_ok(
        other,
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
            "cat /data/first; sleep 1000",
        ],
    );
    assert_eq!(placements(n1)["db"], home);
    eventually(
        "db's output on its host",
        Duration::from_secs(10),
        POLL,
        || {
            let logs = other.cli(["logs", "db"]);
            if out(&logs).trim() == "kept-on-first" {
                Ok(())
            } else {
                Err(format!("logs: {:?} {}", out(&logs), err(&logs)))
            }
        },
    );
    let hist = n1.cli_json(["inspect", "db"]).unwrap();
    let placed: Vec<&str> = hist["history"]["placements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    assert_eq!(placed, vec![home.as_str(), home.as_str()]);
    // An interactive run of a fixed job whose host is gone says so and fails.
    c.node_named(&home).unwrap().kill().unwrap();
    eventually(
        "the killed host gone from floki",
        Duration::from_secs(15),
        POLL,
        || {
            let hosts = other.cli_json(["hosts", "--json"]).unwrap();
            let alive = hosts
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == home.as_str() && h["alive"] == true);
            if alive {
                Err(hosts.to_string())
            } else {
                Ok(())
            }
        },
    );
    let o = other.cli(["run", "--name", "db", "-v", "/data", BUSYBOX, "true"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err(&o).contains(&format!("is fixed to host {home:?}, which is not alive")),
        "{}",
        err(&o)
    );
}

#[test]
fn racing_servers_make_one_job_and_pipes_cross_hosts() {
    let c = cluster(&[]);
    // Two servers accept the same name at the same moment.
    for round in 0..3 {
        let name = format!("race{round}");
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let mut cmd = c.node(i).cli_command();
                cmd.args(["run", "-d", "--name", &name, BUSYBOX, "sleep", "1000"]);
                std::thread::spawn(move || cmd.output().unwrap())
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wins = results.iter().filter(|o| o.status.success()).count();
        assert_eq!(wins, 1, "{:?}", results.iter().map(err).collect::<Vec<_>>());
        for o in results.iter().filter(|o| !o.status.success()) {
            assert!(err(o).contains("already in use"), "{}", err(o));
        }
        assert_eq!(running_on(&c, &name).len(), 1);
    }

    // Concurrent runs count each other's host ports and load: three
    // `-p 8080:80` through three servers land one per host, and a burst of
    // 30 from three clients spreads evenly.
    let concurrently = |jobs: Vec<(usize, Vec<String>)>| -> Vec<std::process::Output> {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(i, args)| {
                let mut cmd = c.node(i).cli_command();
                cmd.args(args);
                std::thread::spawn(move || cmd.output().unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    let web = |name: String| -> Vec<String> {
        [
            "run", "-d", "--name", &name, "-p", "8080:80", BUSYBOX, "httpd", "-f", "-p", "80",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let results = concurrently((0..3).map(|i| (i, web(format!("web{i}")))).collect());
    for o in &results {
        assert!(o.status.success(), "{}", err(o));
    }
    let at = placements(c.node(0));
    let mut hosts: Vec<&str> = (0..3).map(|i| at[&format!("web{i}")].as_str()).collect();
    hosts.sort();
    assert_eq!(hosts, ["n1", "n2", "n3"], "one -p 8080 per host");
    let results = concurrently(
        (0..30)
            .map(|i| {
                let args = [
                    "run",
                    "-d",
                    "--name",
                    &format!("burst{i}"),
                    BUSYBOX,
                    "sleep",
                    "1000",
                ]
                .iter()
                .map(|a| a.to_string())
                .collect();
                (i % 3, args)
            })
            .collect(),
    );
    for o in &results {
        assert!(o.status.success(), "{}", err(o));
    }
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for (_, host) in placements(c.node(0)) {
        *per_host.entry(host).or_default() += 1;
    }
    let (lo, hi) = (
        per_host.values().min().copied().unwrap_or(0),
        per_host.values().max().copied().unwrap_or(0),
    );
    assert!(per_host.len() == 3 && hi - lo <= 1, "uneven: {per_host:?}");

    // A pipe whose two jobs run on two other hosts than the one asked.
    let n1 = c.node(0);
    let o = n1.cli_stdin(
        ["run", "--viking-host", "n2", BUSYBOX, "tr", "a-z", "A-Z"],
        b"hello\n",
    );
    assert!(o.status.success(), "{}", err(&o));
    let o2 = n1.cli_stdin(["run", "--viking-host", "n3", BUSYBOX, "rev"], &o.stdout);
    assert_eq!(out(&o2), "OLLEH\n", "{}", err(&o2));
    // Exit codes and stderr cross hosts too, and a megabyte-scale stream.
    let o = n1.cli([
        "run",
        "--viking-host",
        "n3",
        BUSYBOX,
        "sh",
        "-c",
        "echo oops >&2; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(err(&o), "oops\n");
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let o = n1.cli_stdin(["run", "--viking-host", "n2", BUSYBOX, "cat"], &data);
    assert!(o.stdout == data, "stream through two servers was corrupted");
    // Logs, stop and rm of a job on another host, asked anywhere.
    run_ok(
        n1,
        &[
            "run",
            "-d",
            "--name",
            "far",
            "--viking-host",
            "n3",
            BUSYBOX,
            "sh",
            "-c",
            "echo far away; sleep 1000",
        ],
    );
    eventually(
        "the far job's output",
        Duration::from_secs(10),
        POLL,
        || {
            let o = n1.cli(["logs", "far"]);
            if o.status.success() && out(&o) == "far away\n" {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", out(&o), err(&o)))
            }
        },
    );
    run_ok(c.node(1), &["stop", "-t", "1", "far"]);
    assert!(running_on(&c, "far").is_empty());
    run_ok(n1, &["rm", "far"]);
    assert!(
        out(&c.node(2).docker(["ps", "-aq", "--filter", "name=far"]))
            .trim()
            .is_empty()
    );
}

#[test]
fn a_killed_host_shows_as_gone_within_its_ttl() {
    let c = cluster(&[]);
    let hosts = c.node(0).cli_json(["hosts", "--json"]).unwrap();
    assert_eq!(hosts.as_array().unwrap().len(), 3);
    assert!(hosts.as_array().unwrap().iter().all(|h| h["alive"] == true));
    // Make n3 the least busy, so it is dowding's choice while its lease lives.
    run_ok(
        c.node(0),
        &[
            "run",
            "-d",
            "--name",
            "busy1",
            "--viking-host",
            "n1",
            BUSYBOX,
            "sleep",
            "100",
        ],
    );
    run_ok(
        c.node(0),
        &[
            "run",
            "-d",
            "--name",
            "busy2",
            "--viking-host",
            "n2",
            BUSYBOX,
            "sleep",
            "100",
        ],
    );
    c.node(2).kill().unwrap();
    let killed = Instant::now();
    // A run right after the kill (alongside the polling below): n3 (which
    // may lead) cannot be reached, so the job is placed without it instead
    // of failing: placed here when the leader does not answer, or placed
    // again when the chosen host does not.
    let mut early = c.node(0).cli_command();
    early.args(["run", "-d", "--name", "early", BUSYBOX, "sleep", "100"]);
    let early = std::thread::spawn(move || early.output().unwrap());
    loop {
        let hosts = c.node(0).cli_json(["hosts", "--json"]).unwrap();
        let n3 = hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == "n3")
            .cloned()
            .unwrap();
        if n3["alive"] == false {
            break;
        }
        // TTL 2 s, plus the store's expiry check.
        assert!(
            killed.elapsed() < Duration::from_secs(4),
            "n3 still alive after {:?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = out(&c.node(1).cli(["hosts"]));
    assert!(table.contains("gone since"), "{table}");
    let o = early.join().unwrap();
    assert!(o.status.success(), "{}", err(&o));
    assert_ne!(placements(c.node(0))["early"], "n3");
    // New jobs avoid it.
    for i in 0..3 {
        run_ok(
            c.node(0),
            &[
                "run",
                "-d",
                "--name",
                &format!("after{i}"),
                BUSYBOX,
                "sleep",
                "100",
            ],
        );
    }
    assert!(placements(c.node(0)).values().all(|h| h != "n3"));
}
