//! embassy on a real cluster: a client job reaches a service on another
//! host through its link variables, keeps reaching it when the service's
//! host dies and the service moves, 1,000 concurrent connections pass
//! through one node's embassy, and a removed service stops being served.
//!
//! Needs `scripts/test-images.sh --node`.

use std::time::Duration;

use viking_testkit::{eventually, Cluster, ClusterOpts, Node, POLL};

const BUSYBOX: &str = "viking-test/busybox";

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn cluster() -> Cluster {
    Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            server_args: ["--host-ttl", "2"].map(String::from).to_vec(),
            ..Default::default()
        },
    )
    .expect("cluster")
}

fn pongs(n: &Node, job: &str) -> usize {
    out(&n.cli(["logs", job]))
        .lines()
        .filter(|l| l.contains("got pong"))
        .count()
}

#[test]
fn services_are_reached_through_embassy_wherever_they_run() {
    let c = cluster();
    let n1 = c.node(0);
    // The service: two replicas of nothing but itself; httpd answers "pong".
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "srv",
        "-p",
        "8080",
        BUSYBOX,
        "sh",
        "-c",
        "mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www",
    ])
    .unwrap();
    let srv = n1.cli_json(["inspect", "srv"]).unwrap();
    let b = srv["ps"]["node"].as_str().unwrap().to_string();
    let amb = srv["services"][0]["ambassador_port"].as_u64().unwrap();
    assert_eq!(srv["services"][0]["container_port"], 8080);
    // The client on another host, linked to it.
    let a = c.nodes().iter().find(|n| n.name() != b).unwrap();
    a.cli_ok(["run", "-d", "--name", "cli", "--viking-host", a.name(), "--link", "srv", BUSYBOX, "sh", "-c",
        "while true; do wget -q -O- http://$SRV_PORT_8080_TCP_ADDR:$SRV_PORT_8080_TCP_PORT/ 2>&1 | sed 's/^/got /'; sleep 0.3; done"]).unwrap();
    let env = a.docker_ok(["exec", "cli", "env"]).unwrap();
    assert!(
        env.contains(&format!("SRV_PORT=tcp://172.17.0.1:{amb}")),
        "{env}"
    );
    assert!(
        env.contains(&format!("SRV_PORT_8080_TCP_PORT={amb}")),
        "{env}"
    );
    assert!(env.contains("SRV_PORT_8080_TCP_PROTO=tcp"), "{env}");
    eventually(
        "the client reaches the service",
        Duration::from_secs(15),
        POLL,
        || pongs(a, "cli") >= 2,
    );
    let services = a.cli_json(["services", "--json"]).unwrap();
    assert_eq!(services[0]["service"], "srv");
    assert_eq!(services[0]["endpoints"].as_array().unwrap().len(), 1);

    // 1,000 concurrent connections through this node's embassy.
    // Each wget runs in its own subshell; the results are counted when
    // every one has finished.
    let script = format!(
        "for i in $(seq 1000); do (wget -q -O- http://172.17.0.1:{amb}/ > /tmp/r$i 2>&1; echo $? > /tmp/e$i) & done; wait; \
         echo ok=$(cat /tmp/r* | grep -c pong); for f in /tmp/e*; do [ \"$(cat $f)\" = 0 ] || cat ${{f/e/r}}; done | sort | uniq -c | head"
    );
    // Two processes per connection: above the default pids limit (1024),
    // within the server's maximum.
    let o = a.cli([
        "run",
        "--viking-host",
        a.name(),
        "--pids-limit",
        "4000",
        BUSYBOX,
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        out(&o).starts_with("ok=1000"),
        "{}{}",
        out(&o),
        String::from_utf8_lossy(&o.stderr)
    );

    // The service's host dies; the reconciler moves it; the client's next
    // connections succeed at the same address and port, without a restart.
    c.node_named(&b).unwrap().kill().unwrap();
    eventually(
        "srv running elsewhere",
        Duration::from_secs(20),
        POLL,
        || {
            let s = a.cli_json(["inspect", "srv"]).unwrap();
            s["ps"]["status"] == "running" && s["ps"]["node"] != b.as_str()
        },
    );
    let before = pongs(a, "cli");
    eventually(
        "the client reaches the moved service",
        Duration::from_secs(15),
        POLL,
        || pongs(a, "cli") >= before + 2,
    );
    let cli = a.cli_json(["inspect", "cli"]).unwrap();
    assert_eq!(cli["ps"]["restarts"], 0);
    assert_eq!(
        a.cli_json(["inspect", "srv"]).unwrap()["services"][0]["ambassador_port"],
        amb
    );

    // A removed service stops being served.
    a.cli_ok(["rm", "-f", "srv"]).unwrap();
    eventually(
        "the ambassador port refuses",
        Duration::from_secs(10),
        POLL,
        || {
            let o = a.cli([
                "run",
                "--viking-host",
                a.name(),
                BUSYBOX,
                "sh",
                "-c",
                &format!("nc -z -w 1 172.17.0.1 {amb} && echo open || echo refused"),
            ]);
            out(&o).trim() == "refused"
        },
    );

    // A link to a job that does not exist, or has no ports, is refused.
    let o = a.cli(["run", "--link", "nope", BUSYBOX, "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no daemonized job named \"nope\""));
    a.cli_ok(["run", "-d", "--name", "portless", BUSYBOX, "sleep", "1000"])
        .unwrap();
    let o = a.cli([
        "run", "-d", "--name", "x", "--link", "portless", BUSYBOX, "sleep", "1",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no TCP ports"));
    assert!(a.cli(["inspect", "x"]).status.code() == Some(1));
}

/// Replicas and rebalancing (issue 18) on a real cluster: three instances
/// on three hosts and six single jobs; a client through embassy reaches
/// every instance; a host dies and its jobs run on the other two; it comes
/// back and within a minute the spread is even again, with no failed
/// request from the client after the first failover.
#[test]
fn a_service_with_replicas_is_balanced_by_embassy_and_survives_a_host() {
    let c = cluster();
    let n1 = c.node(0);
    // Each instance answers with its container's hostname.
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        "-p",
        "8080",
        BUSYBOX,
        "sh",
        "-c",
        "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www",
    ])
    .unwrap();
    let where_ = |n: &Node| -> std::collections::BTreeMap<String, String> {
        let ps = n.cli_json(["ps", "--json"]).unwrap();
        ps.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["job"].as_str().unwrap().starts_with("web.") && p["status"] == "running")
            .map(|p| {
                (
                    p["job"].as_str().unwrap().to_string(),
                    p["node"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    for i in 0..6 {
        n1.cli_ok([
            "run",
            "-d",
            "--name",
            &format!("single{i}"),
            BUSYBOX,
            "sleep",
            "3600",
        ])
        .unwrap();
    }
    let placed = where_(n1);
    let hosts: std::collections::BTreeSet<&String> = placed.values().collect();
    assert_eq!((placed.len(), hosts.len()), (3, 3), "{placed:?}");
    let proc = out(&n1.cli(["proc"]));
    assert!(
        proc.lines()
            .any(|l| l.starts_with("web ") && l.contains("3/3")),
        "{proc}"
    );

    // A client on n1, through its embassy, many times: every instance answers.
    n1.cli_ok(["run", "-d", "--name", "cli", "--viking-host", n1.name(), "--link", "web", BUSYBOX, "sh", "-c",
        "while true; do wget -q -O- http://$WEB_PORT_8080_TCP_ADDR:$WEB_PORT_8080_TCP_PORT/ 2>&1 | sed 's/^/got /'; sleep 0.1; done"]).unwrap();
    let answers = |n: &Node| -> Vec<String> {
        out(&n.cli(["logs", "cli"]))
            .lines()
            .filter_map(|l| l.strip_prefix("got ").map(str::to_string))
            .collect()
    };
    eventually(
        "all three instances answer",
        Duration::from_secs(20),
        POLL,
        || {
            let got = answers(n1);
            let distinct: std::collections::BTreeSet<&String> =
                got.iter().filter(|a| a.len() == 12).collect();
            distinct.len() == 3
        },
    );

    // Kill a host with an instance but not the client: the instance runs
    // elsewhere, three run again, and the client is answered.
    let victim = c
        .nodes()
        .iter()
        .find(|n| n.name() != n1.name())
        .expect("another node");
    victim.kill().unwrap();
    eventually(
        "three instances run on the two hosts left",
        Duration::from_secs(60),
        POLL,
        || {
            let now = where_(n1);
            now.len() == 3 && now.values().all(|h| h != victim.name())
        },
    );
    let per_host = |n: &Node| -> std::collections::BTreeMap<String, usize> {
        let ps = n.cli_json(["ps", "--json"]).unwrap();
        let mut m = std::collections::BTreeMap::new();
        for p in ps.as_array().unwrap() {
            if p["status"] == "running" {
                *m.entry(p["node"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        m
    };
    eventually(
        "every job runs on the two hosts left",
        Duration::from_secs(60),
        POLL,
        || {
            let m = per_host(n1);
            m.values().sum::<usize>() == 10 && !m.contains_key(victim.name())
        },
    );
    let after_failover = answers(n1).len();
    eventually(
        "the client is still answered",
        Duration::from_secs(15),
        POLL,
        || {
            answers(n1)[after_failover..]
                .iter()
                .filter(|a| a.len() == 12)
                .count()
                >= 5
        },
    );

    // The host comes back: rebalancing gives it its share within a minute.
    victim.restart().unwrap();
    eventually(
        "the spread is even again",
        Duration::from_secs(90),
        POLL,
        || {
            let m = per_host(n1);
            let lo = m.values().min().copied().unwrap_or(0);
            let hi = m.values().max().copied().unwrap_or(0);
            m.len() == 3 && m.values().sum::<usize>() == 10 && hi - lo <= 1
        },
    );
    let failed: Vec<String> = answers(n1)[after_failover..]
        .iter()
        .filter(|a| a.len() != 12)
        .cloned()
        .collect();
    assert!(
        failed.is_empty(),
        "failed requests after the failover: {failed:?}"
    );
}
