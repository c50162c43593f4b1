//! smesh on the multi-host harness: bare nodes (their own Docker engine and
//! the `viking` binary, nothing running) become a cluster with
//! `viking mesh init` and `viking mesh join`, run inside the nodes exactly
//! as a user would.
//!
//! Needs `scripts/test-images.sh --node` (the node image has Debian's etcd).

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use viking_testkit::{Cluster, ClusterOpts, Node};

const BUSYBOX: &str = "viking-test/busybox";
/// Faster failover than the defaults, passed to every `viking server`.
const SERVER_ARGS: &str = "-- --host-ttl 2 --resync 2 --backoff 0.5";
/// etcd as a supervised process from Debian's package (the default, etcd's
/// official image, cannot be pulled here).
const ETCD: &str = "--etcd-binary /usr/bin/etcd";
/// etcdctl on a machine of the mesh, with that machine's certificate.
const ETCDCTL: &str = "ETCDCTL_API=3 etcdctl --endpoints https://127.0.0.1:2379 \
     --cacert /var/lib/viking/pki/ca.pem --cert /var/lib/viking/pki/cert.pem \
     --key /var/lib/viking/pki/key.pem";

fn bare(n: usize) -> Cluster {
    Cluster::start(
        n,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            ..ClusterOpts::without_servers()
        },
    )
    .expect("start bare nodes")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A shell command in the node; must succeed; its stdout.
fn sh_ok(n: &Node, script: &str) -> String {
    let t = Instant::now();
    let o = n.sh(script);
    assert!(
        o.status.success(),
        "on {}: {script}\n{}\n{}",
        n.name(),
        text(&o),
        mesh_logs(n)
    );
    eprintln!("[{}] {script}: {:.1?}", n.name(), t.elapsed());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A shell command in the node that must fail; its stderr.
fn sh_fails(n: &Node, script: &str) -> String {
    let o = n.sh(script);
    assert!(
        !o.status.success(),
        "on {}: {script} should have failed\n{}",
        n.name(),
        text(&o)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mesh_logs(n: &Node) -> String {
    let o = n.sh(
        "cd /var/lib/viking 2>/dev/null && for f in mesh.log etcd.log server.log; do \
         echo \"--- $f\"; tail -n 25 $f 2>/dev/null; done",
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn status(n: &Node) -> Value {
    let out = sh_ok(n, "viking mesh status --json");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
}

/// (healthy voting member names, learners, leaders) from `mesh status`.
fn member_names(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn all_healthy(v: &Value) -> bool {
    let ms = v["members"].as_array().unwrap();
    ms.iter()
        .all(|m| m["healthy"] == true && m["learner"] == false)
        && ms.iter().filter(|m| m["leader"] == true).count() == 1
}

fn alive_servers(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = v["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["alive"] == true)
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            eprintln!("{what}: {:.1?}", start.elapsed());
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// job -> node from `viking ps --json`, asked inside `n`.
fn placements(n: &Node) -> std::collections::BTreeMap<String, String> {
    let o = n.sh("viking ps --json");
    if !o.status.success() {
        return Default::default();
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"] == "running")
        .map(|p| {
            (
                p["job"].as_str().unwrap_or("").to_string(),
                p["node"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `viking mesh init` on n1; the join command it printed.
fn init(n1: &Node) -> String {
    init_with(n1, "")
}

/// `viking mesh init` with `extra` flags on n1; the join command it printed.
fn init_with(n1: &Node, extra: &str) -> String {
    let out = sh_ok(
        n1,
        &format!(
            "viking mesh init --ip {} {extra} {ETCD} {SERVER_ARGS}",
            n1.ip()
        ),
    );
    let join = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("viking mesh join "))
        .unwrap_or_else(|| panic!("no join command in:\n{out}"))
        .to_string();
    assert!(join.contains(&format!("{}:8791", n1.ip())), "{join}");
    join
}

#[test]
fn mesh_forms_survives_a_node_loss_and_shrinks() {
    let t0 = Instant::now();
    let c = bare(4);
    let (n1, n2, n3, n4) = (c.node(0), c.node(1), c.node(2), c.node(3));

    // Three machines: init, then the printed command on the other two.
    let join = init(n1);
    let t = Instant::now();
    let out = sh_ok(n2, &format!("{join} {ETCD} {SERVER_ARGS}"));
    assert!(out.contains("as an etcd member"), "{out}");
    let out = sh_ok(n3, &format!("{join} {ETCD} {SERVER_ARGS}"));
    assert!(out.contains("as an etcd member"), "{out}");
    eprintln!("n2 and n3 joined: {:.1?}", t.elapsed());

    let v = status(n1);
    assert_eq!(member_names(&v), ["n1", "n2", "n3"], "{v:#}");
    assert!(all_healthy(&v), "{v:#}");
    wait("three servers alive", Duration::from_secs(20), || {
        alive_servers(&status(n2)) == ["n1", "n2", "n3"]
    });
    let table = sh_ok(n3, "viking mesh status");
    assert!(
        table.contains("ETCD MEMBER") && table.contains("leader"),
        "{table}"
    );
    eprintln!("{table}");
    // etcd itself agrees.
    let list = sh_ok(n2, &format!("{ETCDCTL} member list"));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains("true"), "no learners left: {list}");

    // Jobs on all three, asked from any machine with the local CLI.
    for (i, n) in [n1, n2, n3].iter().enumerate() {
        let asker = [n2, n3, n1][i];
        sh_ok(
            asker,
            &format!(
                "viking run -d --name j{} --viking-host {} {BUSYBOX} sleep 1000",
                i + 1,
                n.name()
            ),
        );
    }
    // And unpinned ones, spread over the hosts.
    for i in 1..=4 {
        sh_ok(
            n1,
            &format!("viking run -d --name w{i} {BUSYBOX} sleep 1000"),
        );
    }
    let p = placements(n1);
    assert_eq!(p["j1"], "n1");
    assert_eq!(p["j2"], "n2");
    assert_eq!(p["j3"], "n3");

    // n3 dies: two of three etcd members remain, the cluster goes on.
    let moving: Vec<String> = p
        .iter()
        .filter(|(j, h)| j.starts_with('w') && *h == "n3")
        .map(|(j, _)| j.clone())
        .collect();
    eprintln!("unpinned jobs on n3: {moving:?}");
    c.node(2).kill().expect("kill n3");
    let t = Instant::now();
    sh_ok(
        n1,
        &format!("viking run -d --name after {BUSYBOX} sleep 1000"),
    );
    eprintln!("a job taken with n3 dead: {:.1?}", t.elapsed());
    wait(
        "the unpinned jobs of n3 running elsewhere",
        Duration::from_secs(60),
        || {
            let p = placements(n2);
            moving
                .iter()
                .all(|j| p.get(j).is_some_and(|h| h == "n1" || h == "n2"))
                && p.contains_key("after")
        },
    );
    let v = status(n2);
    let down: Vec<&Value> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["healthy"] == false)
        .collect();
    assert_eq!(down.len(), 1, "{v:#}");
    assert_eq!(down[0]["name"], "n3");

    // n3 comes back (a reboot): `viking mesh start` resumes from its data dir.
    n3.restart().expect("restart n3");
    let t = Instant::now();
    sh_ok(n3, "viking mesh start");
    eprintln!("n3 back after restart: {:.1?}", t.elapsed());
    wait(
        "n3 healthy and alive again",
        Duration::from_secs(30),
        || {
            let v = status(n1);
            all_healthy(&v) && alive_servers(&v) == ["n1", "n2", "n3"]
        },
    );
    // Its pinned job waited for it and runs there again.
    wait("j3 back on n3", Duration::from_secs(30), || {
        placements(n1).get("j3").map(String::as_str) == Some("n3")
    });
    // It takes jobs again.
    sh_ok(
        n3,
        &format!("viking run -d --name back --viking-host n3 {BUSYBOX} sleep 1000"),
    );
    wait(
        "the job `back` running on n3",
        Duration::from_secs(20),
        || placements(n1).get("back").map(String::as_str) == Some("n3"),
    );

    // A fourth machine joins as a server only: etcd stays at three.
    let out = sh_ok(n4, &format!("{join} {ETCD} {SERVER_ARGS}"));
    assert!(out.contains("as a viking server"), "{out}");
    assert!(
        !n4.sh("pgrep -x etcd").status.success(),
        "no etcd on a server-only machine"
    );
    let v = status(n4);
    assert_eq!(member_names(&v), ["n1", "n2", "n3"], "{v:#}");
    sh_ok(
        n1,
        &format!("viking run -d --name on4 --viking-host n4 {BUSYBOX} sleep 1000"),
    );
    wait(
        "the job `on4` running on n4",
        Duration::from_secs(20),
        || placements(n1).get("on4").map(String::as_str) == Some("n4"),
    );

    // n2 leaves: two members, n2's server gone from floki, nothing left on n2.
    let t = Instant::now();
    let out = sh_ok(n2, "viking mesh leave");
    assert!(out.contains("has left the mesh"), "{out}");
    eprintln!("n2 left: {:.1?}", t.elapsed());
    let v = status(n1);
    assert_eq!(member_names(&v), ["n1", "n3"], "{v:#}");
    assert!(all_healthy(&v), "{v:#}");
    assert!(
        !v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "n2"),
        "{v:#}"
    );
    assert!(!n2.sh("pgrep -x etcd").status.success());
    assert!(!n2.sh("test -e /var/lib/viking/mesh.json").status.success());
    sh_fails(n2, "viking mesh status");
    // The cluster still works with two members.
    sh_ok(
        n3,
        &format!("viking run -d --name late {BUSYBOX} sleep 1000"),
    );
    eprintln!("whole test: {:.1?}", t0.elapsed());
}

/// Alive host names from `viking hosts --json`, asked inside `n`.
fn alive_hosts(n: &Node) -> Vec<String> {
    let o = n.sh("viking hosts --json");
    if !o.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let mut names: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["alive"] == true)
        .filter_map(|h| h["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// A mesh made with a store prefix other than the default: the machine
/// that joins learns it, so its server shares the cluster's hosts and jobs.
#[test]
fn a_joining_machine_uses_the_mesh_store_prefix() {
    const KEY: &str = "/elsewhere";
    let c = bare(2);
    let (n1, n2) = (c.node(0), c.node(1));
    let join = init_with(n1, &format!("--key {KEY}"));
    sh_ok(
        n1,
        &format!("viking run -d --name before {BUSYBOX} sleep 1000"),
    );
    let out = sh_ok(n2, &format!("{join} {ETCD} {SERVER_ARGS}"));
    assert!(out.contains("as an etcd member"), "{out}");

    // n2's server sees n1 and the job started before it joined ...
    wait(
        "n2's server sees both hosts",
        Duration::from_secs(20),
        || alive_hosts(n2) == ["n1", "n2"],
    );
    assert_eq!(placements(n2).get("before").map(String::as_str), Some("n1"));
    // ... and n1's server sees n2: a job pinned to n2 runs there.
    sh_ok(
        n1,
        &format!("viking run -d --name on2 --viking-host n2 {BUSYBOX} sleep 1000"),
    );
    wait(
        "the job `on2` running on n2",
        Duration::from_secs(20),
        || placements(n1).get("on2").map(String::as_str) == Some("n2"),
    );
    assert_eq!(alive_servers(&status(n2)), ["n1", "n2"]);
    // Everything is under the mesh's prefix, nothing under the default.
    let keys = sh_ok(
        n2,
        &format!("{ETCDCTL} get --prefix --keys-only {KEY}/hosts/"),
    );
    assert!(keys.contains(&format!("{KEY}/hosts/n2")), "{keys}");
    let stray = sh_ok(n2, &format!("{ETCDCTL} get --prefix --keys-only /viking/"));
    assert!(stray.trim().is_empty(), "keys under /viking/: {stray}");
}

/// The join token `init` printed: `VKJ-1-<fingerprint>-<secret>`.
fn join_token(join: &str) -> String {
    join.split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap_or_else(|| panic!("no --token in {join}"))
        .to_string()
}

/// Nothing of a mesh on `n` (no files, no etcd, no server), and the
/// mesh's etcd (asked on `member`) still has only `members`.
fn nothing_left(n: &Node, member: &Node, members: &[&str]) {
    assert!(
        !n.sh("test -e /var/lib/viking/mesh.json || test -e /var/lib/viking/etcd || test -e /var/lib/viking/token || test -e /var/lib/viking/pki")
            .status
            .success(),
        "files left on {}",
        n.name()
    );
    assert!(!n.sh("pgrep -x etcd").status.success(), "etcd left running");
    assert!(
        !n.sh("pgrep -f '^/usr/local/bin/viking (server|mesh up)'")
            .status
            .success(),
        "a server left running"
    );
    let list = sh_ok(member, &format!("{ETCDCTL} member list"));
    assert_eq!(list.lines().count(), members.len(), "{list}");
    for m in members {
        assert!(list.contains(&format!(", {m}, ")), "{m} in {list}");
    }
}

#[test]
fn mesh_refuses_bad_joins_and_leaves_nothing_behind() {
    let c = bare(2);
    let (n1, n2) = (c.node(0), c.node(1));
    let join = init(n1);
    let token = join_token(&join);
    assert!(token.starts_with("VKJ-1-"), "{token}");
    // The join token is not the operator's token.
    let operator = sh_ok(n1, "cat /var/lib/viking/token").trim().to_string();
    assert!(!token.contains(&operator));

    // A second init on an initialised machine.
    let err = sh_fails(n1, &format!("viking mesh init --ip {} {ETCD}", n1.ip()));
    assert!(err.contains("already part of a mesh"), "{err}");
    assert!(all_healthy(&status(n1)));

    // A wrong secret: the cluster refuses it, etcd's members unchanged.
    let secret = token.rsplit('-').next().unwrap().to_string();
    let wrong = join.replace(&secret, "0123456789abcdef0123456789abcdef");
    let err = sh_fails(n2, &format!("{wrong} {ETCD}"));
    assert!(err.contains("refused by the cluster"), "{err}");
    nothing_left(n2, n1, &["n1"]);
    let log = sh_ok(n1, "cat /var/lib/viking/server.log");
    assert!(
        log.contains("a join with a wrong secret was refused"),
        "{log}"
    );

    // Another CA's fingerprint with the right secret: the joiner stops
    // before it sends the secret (had it sent it, the join would have
    // worked).
    let fp = token.split('-').nth(2).unwrap().to_string();
    let other_fp: String = fp
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let err = sh_fails(n2, &format!("{} {ETCD}", join.replace(&fp, &other_fp)));
    assert!(
        err.contains("fingerprint") && err.contains("nothing was sent"),
        "{err}"
    );
    nothing_left(n2, n1, &["n1"]);

    // The operator's token is not a join token.
    let err = sh_fails(
        n2,
        &format!(
            "viking mesh join {}:8791 --token {operator} {ETCD}",
            n1.ip()
        ),
    );
    assert!(err.contains("not a viking join token"), "{err}");
    nothing_left(n2, n1, &["n1"]);

    // An unreachable address (nothing listens on that port).
    let t = Instant::now();
    let err = sh_fails(
        n2,
        &format!("viking mesh join {}:9 --token {token} {ETCD}", n1.ip()),
    );
    assert!(err.contains("cannot reach"), "{err}");
    eprintln!("unreachable address refused in {:.1?}", t.elapsed());
    nothing_left(n2, n1, &["n1"]);

    // A name already in the mesh.
    let err = sh_fails(n2, &format!("{join} --name n1 {ETCD}"));
    assert!(err.contains("already in the mesh"), "{err}");
    nothing_left(n2, n1, &["n1"]);

    // And the right command still works after all that.
    let out = sh_ok(n2, &format!("{join} {ETCD}"));
    assert!(out.contains("as an etcd member"), "{out}");
    let v = status(n1);
    assert_eq!(member_names(&v), ["n1", "n2"], "{v:#}");
    assert!(all_healthy(&v), "{v:#}");
    // A second join on a joined machine.
    let err = sh_fails(n2, &format!("{join} {ETCD}"));
    assert!(err.contains("already part of a mesh"), "{err}");
}

/// Only the mesh's members get answers: etcd wants a certificate from the
/// cluster's CA, the API is TLS only and wants the token, a workload
/// container reaches neither, the CLI works without flags on every machine,
/// and a rotated join token replaces the old one without a restart.
#[test]
fn mesh_answers_only_its_members() {
    let c = bare(3);
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    let join = init(n1);
    let out = sh_ok(n2, &format!("{join} {ETCD} {SERVER_ARGS}"));
    assert!(out.contains("as an etcd member"), "{out}");
    let ip1 = n1.ip();

    // etcd: nothing without a certificate from the cluster's CA.
    for (what, cmd) in [
        (
            "plain HTTP",
            format!("ETCDCTL_API=3 etcdctl --dial-timeout 3s --command-timeout 5s --endpoints http://{ip1}:2379 get --prefix /"),
        ),
        (
            "TLS without a client certificate",
            format!("ETCDCTL_API=3 etcdctl --dial-timeout 3s --command-timeout 5s --endpoints https://{ip1}:2379 --cacert /tmp/ca.pem get --prefix /"),
        ),
        (
            "a certificate from another CA",
            format!("ETCDCTL_API=3 etcdctl --dial-timeout 3s --command-timeout 5s --endpoints https://{ip1}:2379 --cacert /tmp/ca.pem --cert /tmp/other/other.pem --key /tmp/other/other-key.pem get --prefix /"),
        ),
    ] {
        // From n3, which is not in the mesh, with the mesh's public CA
        // certificate and a certificate of its own CA.
        sh_ok(n3, &format!("test -e /tmp/ca.pem || echo '{}' > /tmp/ca.pem", sh_ok(n1, "cat /var/lib/viking/pki/ca.pem").trim()));
        sh_ok(n3, "test -e /tmp/other/other.pem || (viking ca init --dir /tmp/other && viking ca issue other --ip 127.0.0.1 --dir /tmp/other) >/dev/null");
        let o = n3.sh(&cmd);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            !o.status.success() && !out.contains("/viking/"),
            "{what}: etcd answered\n{}",
            text(&o)
        );
    }
    let keys = sh_ok(
        n2,
        &format!("{ETCDCTL} get --prefix --keys-only /viking/hosts/"),
    );
    assert!(keys.contains("/viking/hosts/n1"), "{keys}");

    // The API: plain HTTP gets nothing, TLS without the token is refused,
    // TLS with the CA and the token works.
    let o = n3.sh(&format!("curl -sS -m 5 http://{ip1}:8791/v1/ps"));
    assert!(
        !o.status.success() || !String::from_utf8_lossy(&o.stdout).contains("\"job\""),
        "plain HTTP answered: {}",
        text(&o)
    );
    let code = sh_ok(
        n3,
        &format!("curl -s -o /dev/null -w '%{{http_code}}' -m 5 --cacert /tmp/ca.pem https://{ip1}:8791/v1/ps"),
    );
    assert_eq!(code.trim(), "401");
    let operator = sh_ok(n1, "cat /var/lib/viking/token").trim().to_string();
    let ps = sh_ok(
        n3,
        &format!("curl -sS -m 5 --cacert /tmp/ca.pem -H 'Authorization: Bearer {operator}' https://{ip1}:8791/v1/ps"),
    );
    assert!(ps.trim_start().starts_with('['), "{ps}");

    // The CLI on both machines, without flags.
    sh_ok(
        n2,
        &format!("viking run -d --name probe --viking-host n1 {BUSYBOX} sleep 1000"),
    );
    wait("probe running on n1", Duration::from_secs(30), || {
        placements(n1).get("probe").map(String::as_str) == Some("n1")
    });
    // From inside that workload container: neither etcd nor the API
    // answers with data.
    let id = sh_ok(n1, "docker ps -q --filter label=viking.job=probe")
        .trim()
        .to_string();
    assert!(!id.is_empty());
    for port in [2379, 8791] {
        let o = n1.sh(&format!(
            "docker exec {id} wget -q -T 5 -O - http://{ip1}:{port}/v3/kv/range"
        ));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            !o.status.success() && out.is_empty(),
            "port {port} answered: {}",
            text(&o)
        );
    }

    // Rotation: the old join token is refused, the new one works, no
    // server restarted.
    let old = join_token(&join);
    assert_eq!(sh_ok(n2, "viking mesh token").trim(), old);
    let pids = |n: &Node| {
        sh_ok(n, "cat /var/lib/viking/server.pid")
            .trim()
            .to_string()
    };
    let (p1, p2) = (pids(n1), pids(n2));
    let new = sh_ok(n1, "viking mesh token --rotate").trim().to_string();
    assert!(new.starts_with("VKJ-1-") && new != old, "{new}");
    assert_eq!(sh_ok(n2, "viking mesh token").trim(), new);
    let err = sh_fails(n3, &format!("{join} {ETCD}"));
    assert!(err.contains("refused by the cluster"), "{err}");
    nothing_left(n3, n1, &["n1", "n2"]);
    sh_ok(n3, "rm -rf /tmp/other /tmp/ca.pem");
    let out = sh_ok(n3, &format!("{} {ETCD}", join.replace(&old, &new)));
    assert!(out.contains("as an etcd member"), "{out}");
    assert_eq!((pids(n1), pids(n2)), (p1, p2), "a server restarted");
    wait("three servers alive", Duration::from_secs(20), || {
        alive_hosts(n3) == ["n1", "n2", "n3"]
    });
    assert_eq!(placements(n3).get("probe").map(String::as_str), Some("n1"));
}

/// An etcd image made in the node from Debian's etcd-server (no registry).
fn make_etcd_image(n: &Node) {
    sh_ok(
        n,
        "tar -chf - -C / usr/bin/etcd lib/x86_64-linux-gnu/libc.so.6 lib64/ld-linux-x86-64.so.2 \
         | docker import -c 'ENV PATH=/usr/bin' - viking-test/etcd:latest >/dev/null",
    );
}

#[test]
fn mesh_runs_etcd_as_a_container_with_a_restart_policy() {
    let c = bare(2);
    let (n1, n2) = (c.node(0), c.node(1));
    make_etcd_image(n1);
    make_etcd_image(n2);
    let out = sh_ok(
        n1,
        &format!(
            "viking mesh init --ip {} --etcd-image viking-test/etcd {SERVER_ARGS}",
            n1.ip()
        ),
    );
    let join = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("viking mesh join "))
        .expect("join command")
        .to_string();
    sh_ok(n2, &format!("{join} --etcd-image viking-test/etcd"));
    for n in [n1, n2] {
        let policy = sh_ok(
            n,
            "docker inspect -f '{{.HostConfig.RestartPolicy.Name}}' viking-etcd",
        );
        assert_eq!(policy.trim(), "unless-stopped");
    }
    let v = status(n1);
    assert_eq!(member_names(&v), ["n1", "n2"], "{v:#}");
    assert!(all_healthy(&v), "{v:#}");
    // The tables, docker-like (viking-cli's layout).
    let table = sh_ok(n1, "viking mesh status");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("ETCD MEMBER   ID   ")
            && l.contains("   ROLE   ")
            && l.ends_with("   DB SIZE")),
        "{table}"
    );
    assert!(lines.iter().any(|l| l.starts_with("SERVER   ")), "{table}");
    assert!(
        lines.iter().all(|l| l.trim_end() == *l),
        "trailing blanks: {table:?}"
    );
    // etcd runs with the mesh's quota and auto-compaction.
    let args = sh_ok(n1, "docker inspect -f '{{json .Args}}' viking-etcd");
    for flag in [
        "\"--quota-backend-bytes\",\"2147483648\"",
        "\"--auto-compaction-mode\",\"revision\"",
    ] {
        assert!(args.contains(flag), "{flag} in {args}");
    }
    // Both members defragmented, one after the other.
    let defrag = sh_ok(n1, "viking mesh defrag");
    assert!(
        defrag
            .lines()
            .any(|l| l.starts_with("ETCD MEMBER   BEFORE   AFTER")),
        "{defrag}"
    );
    assert_eq!(defrag.matches("defragmented").count(), 2, "{defrag}");

    // etcd dies inside its container: Docker starts it again.
    sh_ok(n2, "pkill -x etcd");
    wait(
        "etcd on n2 restarted by Docker",
        Duration::from_secs(30),
        || {
            let restarts = n2.sh("docker inspect -f '{{.RestartCount}}' viking-etcd");
            let restarts: u32 = String::from_utf8_lossy(&restarts.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            let v = status(n1);
            restarts >= 1 && all_healthy(&v) && member_names(&v) == ["n1", "n2"]
        },
    );
    sh_ok(
        n1,
        &format!("viking run -d --name c1 --viking-host n2 {BUSYBOX} sleep 1000"),
    );

    // Leaving removes the container.
    sh_ok(n2, "viking mesh leave");
    assert!(!n2.sh("docker inspect viking-etcd").status.success());
    assert_eq!(member_names(&status(n1)), ["n1"]);
}

/// Certificates of a mesh are renewed by their servers without a restart,
/// and etcd (which reads the same files) and the cluster go on with the new
/// ones after the first ones expired. Lifetimes of 40 s instead of 90 days
/// (`VIKING_CERT_LIFETIME`, which the supervisor passes to the server, so
/// the certificate it signs for a joining machine lasts as long).
#[test]
fn mesh_certificates_renew_without_a_restart() {
    let c = bare(2);
    let (n1, n2) = (c.node(0), c.node(1));
    let out = sh_ok(
        n1,
        &format!(
            "VIKING_CERT_LIFETIME=40 viking mesh init --ip {} {ETCD} {SERVER_ARGS}",
            n1.ip()
        ),
    );
    let join = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("viking mesh join "))
        .expect("join command")
        .to_string();
    sh_ok(n2, &format!("{join} {ETCD} {SERVER_ARGS}"));
    let cert = |n: &Node| sh_ok(n, "cat /var/lib/viking/pki/cert.pem");
    let pid = |n: &Node| {
        sh_ok(n, "cat /var/lib/viking/server.pid")
            .trim()
            .to_string()
    };
    let (first1, first2) = (cert(n1), cert(n2));
    let (pid1, pid2) = (pid(n1), pid(n2));
    sh_ok(
        n1,
        &format!("viking run -d --name r1 --viking-host n2 {BUSYBOX} sleep 1000"),
    );
    // Renewed twice on each machine: the first certificates have expired
    // by then (a renewal comes at 50-80 % of 40 s).
    let mut seen1 = vec![first1];
    let mut seen2 = vec![first2];
    wait(
        "two renewals on each machine",
        Duration::from_secs(120),
        || {
            for (n, seen) in [(n1, &mut seen1), (n2, &mut seen2)] {
                let now = cert(n);
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
            }
            seen1.len() >= 3 && seen2.len() >= 3
        },
    );
    assert_eq!((pid(n1), pid(n2)), (pid1, pid2), "a server restarted");
    // Everything still talks: etcd members healthy, the servers alive, the
    // CLI (with the context's CA), a new job placed across machines.
    let v = status(n1);
    assert!(all_healthy(&v), "{v:#}");
    assert_eq!(alive_servers(&v), ["n1", "n2"]);
    sh_ok(
        n2,
        &format!("viking run -d --name r2 --viking-host n1 {BUSYBOX} sleep 1000"),
    );
    wait("both jobs running", Duration::from_secs(30), || {
        let p = placements(n1);
        p.get("r1").map(String::as_str) == Some("n2")
            && p.get("r2").map(String::as_str) == Some("n1")
    });
}
