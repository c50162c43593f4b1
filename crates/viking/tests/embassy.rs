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
    cluster_with(&[], &[])
}

/// Three nodes with a 2 s host TTL, `extra` server arguments and `tags`
/// per node.
fn cluster_with(extra: &[&str], tags: &[&str]) -> Cluster {
    let mut server_args = vec!["--host-ttl".to_string(), "2".to_string()];
    server_args.extend(extra.iter().map(|a| a.to_string()));
    Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            server_args,
            tags: tags.iter().map(|t| t.to_string()).collect(),
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
    // The default: the kernel path where the node allows it (it does).
    reached_wherever_they_run(cluster(), true);
}

#[test]
fn services_are_reached_through_the_proxy_wherever_they_run() {
    let c = cluster_with(&["--embassy-mode", "proxy"], &[]);
    for n in c.nodes() {
        assert_eq!(viking_rules(n), 0, "proxy mode wrote netfilter rules");
    }
    // The proxy's own capacity (1,000 and more connections held on one
    // port) is flood.rs's; two bursts of 1,000 at once on this machine
    // starve both clusters.
    reached_wherever_they_run(c, false);
}

fn reached_wherever_they_run(c: Cluster, burst: bool) {
    let n1 = c.node(0);
    // The service: httpd answers "pong", one process per connection, so
    // room for the 1,000 at once below.
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "srv",
        "-p",
        "8080",
        "--pids-limit",
        "2048",
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
    if burst {
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
    }

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

/// Lines of the node's netfilter rules that are viking's (chains, rules
/// and hooks).
fn viking_rules(n: &Node) -> usize {
    out(&n.sh("iptables -w -t nat -S; iptables -w -t filter -S"))
        .lines()
        .filter(|l| l.contains("VIKING-EMBASSY"))
        .count()
}

/// How many jumps to viking's chains each hooked chain has: PREROUTING,
/// OUTPUT, POSTROUTING (nat), FORWARD (filter).
fn hooks(n: &Node) -> Vec<usize> {
    [
        ("nat", "PREROUTING"),
        ("nat", "OUTPUT"),
        ("nat", "POSTROUTING"),
        ("filter", "FORWARD"),
    ]
    .iter()
    .map(|(t, c)| {
        out(&n.sh(&format!("iptables -w -t {t} -S {c}")))
            .lines()
            .filter(|l| l.contains("-j VIKING-EMBASSY"))
            .count()
    })
    .collect()
}

/// The DNAT rules of `port` on the node.
fn dnat(n: &Node, port: u64) -> Vec<String> {
    out(&n.sh("iptables -w -t nat -S VIKING-EMBASSY"))
        .lines()
        .filter(|l| l.contains(&format!("--dport {port} ")) && l.contains("-j DNAT"))
        .map(str::to_string)
        .collect()
}

/// What `rounds` connections from a container on `n` (made by the node's
/// own Docker, so no viking server is needed) to the ambassador port get.
fn fetch(n: &Node, port: u64, rounds: usize) -> Vec<String> {
    fetch_path(n, port, "/", rounds)
}

/// [`fetch`] of `path`.
fn fetch_path(n: &Node, port: u64, path: &str, rounds: usize) -> Vec<String> {
    let script = format!(
        "for i in $(seq {rounds}); do wget -q -O- http://172.17.0.1:{port}{path} 2>&1; done"
    );
    out(&n.docker(["run", "--rm", BUSYBOX, "sh", "-c", &script]))
        .lines()
        .map(str::to_string)
        .collect()
}

/// httpd answering its hostname at `/` and the client address it sees
/// (`[::ffff:A.B.C.D]`, as busybox's httpd says it) at `/cgi-bin/peer`.
const WEB_WITH_PEER: &str = r#"mkdir -p /www/cgi-bin && hostname > /www/index.html &&
printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n' > /www/cgi-bin/peer &&
chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www"#;

fn ambassador_port(n: &Node, job: &str) -> u64 {
    n.cli_json(["inspect", job]).unwrap()["services"][0]["ambassador_port"]
        .as_u64()
        .expect("an ambassador port")
}

/// embassy in the kernel (issue 19): ambassador ports are DNAT rules, so
/// connections are balanced over a service's instances by the kernel
/// (remote ones at their host's published port, a local one at its
/// container's own address), an open connection outlives a change of its
/// route, traffic flows while no server runs, a restart rebuilds the rules
/// without duplicates, a stop for good removes them, and a moved service
/// gets new connections at the same port.
#[test]
fn the_kernel_path_balances_follows_a_move_and_outlives_its_server() {
    let c = cluster_with(&[], &["", "svc", "svc"]);
    let (n1, n2) = (c.node(0), c.node(1));
    for n in c.nodes() {
        assert_eq!(hooks(n), [1, 1, 1, 1], "{}", n.name());
    }

    // Two instances on the two svc hosts, each answering its hostname, and
    // at /cgi-bin/peer the client address it sees.
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "web",
        "--replicas",
        "2",
        "--viking-filter",
        "svc",
        "-p",
        "8080",
        BUSYBOX,
        "sh",
        "-c",
        WEB_WITH_PEER,
    ])
    .unwrap();
    let amb = ambassador_port(n1, "web.1");
    let (ip2, ip3) = (c.node(1).ip().to_string(), c.node(2).ip().to_string());
    eventually(
        "n1 forwards web to both instances' hosts in the kernel",
        Duration::from_secs(20),
        POLL,
        || {
            let r = dnat(n1, amb);
            r.len() == 2
                && [&ip2, &ip3].iter().all(|ip| {
                    r.iter()
                        .any(|l| l.contains(&format!("--to-destination {ip}:")))
                })
        },
    );
    let distinct = |answers: Vec<String>| -> std::collections::BTreeSet<String> {
        answers.into_iter().filter(|a| a.len() == 12).collect()
    };
    eventually(
        "both instances answer a client on n1",
        Duration::from_secs(20),
        POLL,
        || distinct(fetch(n1, amb, 30)).len() == 2,
    );
    // What n1's kernel path counted for the port: those connections and
    // their bytes each way (its rules' counters, in /metrics).
    let metrics = n1.sh(&format!(
        "curl -sk -H 'Authorization: Bearer {}' https://{}:8791/metrics",
        c.token(),
        n1.ip()
    ));
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    let figure = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("port=\"8080\""))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for port 8080 in:\n{metrics}"))
    };
    assert!(figure("viking_embassy_connections") >= 30, "{metrics}");
    // An HTTP request, and an answer with a 12-character body.
    assert!(
        figure("viking_embassy_bytes_from_clients") >= 30 * 40,
        "{metrics}"
    );
    assert!(
        figure("viking_embassy_bytes_to_clients") >= 30 * 50,
        "{metrics}"
    );
    // On n2 one instance is local: reached at its container's address
    // (hairpin through the bridge), the other at n3.
    eventually(
        "n2 forwards to its own instance's container and to n3",
        Duration::from_secs(20),
        POLL,
        || {
            let r = dnat(n2, amb);
            r.len() == 2
                && r.iter().any(|l| l.contains("--to-destination 172.17."))
                && r.iter()
                    .any(|l| l.contains(&format!("--to-destination {ip3}:")))
        },
    );
    eventually(
        "both instances answer a client on n2",
        Duration::from_secs(20),
        POLL,
        || distinct(fetch(n2, amb, 30)).len() == 2,
    );
    // The client address a service sees (the README says it): the
    // calling host's for a connection from another host, the bridge's
    // gateway for one from its own host.
    let peers = |n: &Node| -> std::collections::BTreeSet<String> {
        fetch_path(n, amb, "/cgi-bin/peer", 30)
            .into_iter()
            .map(|a| {
                a.trim_start_matches("[::ffff:")
                    .trim_end_matches(']')
                    .to_string()
            })
            .collect()
    };
    assert_eq!(peers(n1), [c.node(0).ip().to_string()].into());
    assert_eq!(
        peers(n2),
        ["172.17.0.1".to_string(), ip2.clone()].into(),
        "a client on n2"
    );

    // An open connection outlives a change of its route.
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "echo",
        "--replicas",
        "1",
        "--viking-filter",
        "svc",
        "-p",
        "7000",
        BUSYBOX,
        "nc",
        "-ll",
        "-p",
        "7000",
        "-e",
        "cat",
    ])
    .unwrap();
    let eamb = ambassador_port(n1, "echo.1");
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "talker",
        "--viking-host",
        n1.name(),
        BUSYBOX,
        "sh",
        "-c",
        &format!(
            "i=0; while true; do i=$((i+1)); echo line$i; sleep 0.2; done | nc 172.17.0.1 {eamb}"
        ),
    ])
    .unwrap();
    let echoed = || {
        out(&n1.cli(["logs", "talker"]))
            .lines()
            .filter(|l| l.starts_with("line"))
            .count()
    };
    eventually(
        "the talker's lines come back",
        Duration::from_secs(20),
        POLL,
        || echoed() >= 3,
    );
    n1.cli_ok(["scale", "echo", "2"]).unwrap();
    eventually(
        "echo's route has two endpoints on n1",
        Duration::from_secs(20),
        POLL,
        || dnat(n1, eamb).len() == 2,
    );
    let before = echoed();
    eventually(
        "the open connection still echoes",
        Duration::from_secs(10),
        POLL,
        || echoed() >= before + 5,
    );
    assert_eq!(
        n1.cli_json(["inspect", "talker"]).unwrap()["ps"]["restarts"],
        0,
        "the talker's connection broke"
    );

    // No process in the data path: with n1's server killed, n1's
    // containers still reach the service; a restarted server rebuilds the
    // rules (here flushed, and a stale hook added, while it was down)
    // without duplicates.
    let count = viking_rules(n1);
    n1.kill_server().unwrap();
    assert_eq!(
        distinct(fetch(n1, amb, 10)).len(),
        2,
        "no server, no traffic"
    );
    assert_eq!(viking_rules(n1), count);
    n1.sh("iptables -w -t nat -F VIKING-EMBASSY; iptables -w -t nat -A PREROUTING -p tcp -j VIKING-EMBASSY");
    assert!(dnat(n1, amb).is_empty());
    n1.start_server().unwrap();
    eventually(
        "the restarted server rebuilds the rules",
        Duration::from_secs(20),
        POLL,
        || dnat(n1, amb).len() == 2,
    );
    assert_eq!(hooks(n1), [1, 1, 1, 1]);
    assert_eq!(viking_rules(n1), count, "duplicates after a restart");
    assert_eq!(distinct(fetch(n1, amb, 30)).len(), 2);

    // A stop to restart (SIGHUP) leaves the rules; a stop for good
    // (SIGTERM) removes them, and the next start writes them again.
    n1.hangup_server().unwrap();
    assert_eq!(viking_rules(n1), count);
    assert_eq!(distinct(fetch(n1, amb, 10)).len(), 2);
    n1.start_server().unwrap();
    n1.stop_server().unwrap();
    assert_eq!(viking_rules(n1), 0, "rules left after a stop");
    n1.start_server().unwrap();
    eventually("the rules are back", Duration::from_secs(20), POLL, || {
        viking_rules(n1) == count
    });

    // A moved service: its host dies, it runs on the other svc host, and
    // new connections at the same port reach it there.
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "srv",
        "--viking-filter",
        "svc",
        "-p",
        "8080",
        BUSYBOX,
        "sh",
        "-c",
        "mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www",
    ])
    .unwrap();
    let samb = ambassador_port(n1, "srv");
    let first = n1.cli_json(["inspect", "srv"]).unwrap()["ps"]["node"]
        .as_str()
        .unwrap()
        .to_string();
    let other = c
        .nodes()
        .iter()
        .find(|n| n.name() != first && n.name() != n1.name())
        .unwrap();
    eventually(
        "srv answers through n1",
        Duration::from_secs(20),
        POLL,
        || fetch(n1, samb, 1) == ["pong"],
    );
    c.node_named(&first).unwrap().kill().unwrap();
    let to_other = format!("--to-destination {}:", other.ip());
    eventually(
        "n1 forwards srv to its new host",
        Duration::from_secs(30),
        POLL,
        || dnat(n1, samb).iter().any(|l| l.contains(&to_other)),
    );
    eventually(
        "srv answers at the same port from its new host",
        Duration::from_secs(10),
        POLL,
        || fetch(n1, samb, 1) == ["pong"],
    );
}
