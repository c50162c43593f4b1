//! Smoke test of the harness itself (needs root, Docker and the images from
//! `scripts/test-images.sh --node`). It does not depend on viking's own
//! features: nodes are started without viking servers.

use std::process::Command;
use std::time::{Duration, Instant};
use viking_testkit::{
    eventually, http_get, Cluster, ClusterOpts, EtcdCluster, Node, BUSYBOX_IMAGE, NODE_TLS_DIR,
    POLL,
};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn local_etcd_starts_serves_and_dies_on_drop() {
    let etcd = EtcdCluster::start(1).expect("etcd");
    let health =
        http_get(&etcd.host_port(), "/health", None, Duration::from_secs(2)).expect("GET /health");
    assert!(health.is_success(), "{health:?}");
    let ctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint()])
            .args(args)
            .output()
            .expect("etcdctl")
    };
    assert!(ctl(&["put", "/viking/x", "1"]).status.success());
    assert_eq!(
        stdout(&ctl(&["get", "--print-value-only", "/viking/x"])),
        "1\n"
    );
    let addr = etcd.host_port();
    drop(etcd);
    assert!(http_get(&addr, "/health", None, Duration::from_secs(1)).is_err());
}

/// `curl` of etcd's `/health` from inside a node, with the node's
/// certificate (etcd asks every client for one).
fn etcd_health(c: &Cluster, timeout: u32) -> String {
    let tls = format!(
        "--cacert {NODE_TLS_DIR}/ca.pem --cert {NODE_TLS_DIR}/cert.pem --key {NODE_TLS_DIR}/key.pem"
    );
    assert!(c.tls());
    format!("curl -sf -m {timeout} {tls} {}/health", c.etcd_endpoint())
}

/// Whether a job container in `from` gets the page served by n2's web container.
fn reaches(from: &Node, to: &Node) -> bool {
    let url = format!("http://{}:8080/", to.ip());
    // busybox 1.35's `wget -T` segfaults, so bound it with `timeout`; not as
    // PID 1 (which ignores SIGTERM), hence the `sh -c '...; exit'`.
    let script = format!("timeout 3 wget -q -O- {url}; exit $?");
    let out = from.docker(["run", "--rm", BUSYBOX_IMAGE, "sh", "-c", &script]);
    out.status.success() && stdout(&out).contains("hello-from-n2")
}

#[test]
fn cluster_nodes_network_partition_kill_restart() {
    let t0 = Instant::now();
    let c = Cluster::start(3, ClusterOpts::without_servers()).expect("cluster");
    eprintln!("cluster of 3 up in {:.1?}", t0.elapsed());
    let (n1, n2) = (c.node(0), c.node(1));
    assert_eq!(c.nodes().len(), 3);
    assert_eq!(n2.name(), "n2");

    eprintln!("[{:.1?}] busybox in every engine", t0.elapsed());
    // Every inner engine runs the job image.
    std::thread::scope(|s| {
        for n in c.nodes() {
            s.spawn(move || {
                let out = n
                    .docker_ok(["run", "--rm", BUSYBOX_IMAGE, "echo", "ok"])
                    .expect("busybox echo");
                assert_eq!(out, "ok\n", "on {}", n.name());
                assert_eq!(
                    n.sh("hostname").stdout,
                    format!("{}\n", n.name()).into_bytes()
                );
            });
        }
    });

    eprintln!("[{:.1?}] etcd from the nodes", t0.elapsed());
    // The nodes reach etcd on the gateway.
    let health = n1.sh(&etcd_health(&c, 3));
    assert!(stdout(&health).contains("true"), "etcd from n1: {health:?}");

    eprintln!("[{:.1?}] n1 -> n2 published port", t0.elapsed());
    // A job in n1 reaches a port published by a job in n2, at n2's address.
    n2.docker_ok([
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-n2 >/www/index.html && exec httpd -f -p 80 -h /www",
    ])
    .expect("web on n2");
    eventually("n1 reaches n2", Duration::from_secs(10), POLL, || {
        reaches(n1, n2)
    });

    eprintln!("[{:.1?}] partition", t0.elapsed());
    // Partition and heal.
    n2.partition().expect("partition");
    assert!(!reaches(n1, n2), "n2 still reachable while partitioned");
    assert!(!n2.sh(&etcd_health(&c, 2)).status.success());
    eprintln!("[{:.1?}] heal", t0.elapsed());
    n2.heal().expect("heal");
    eventually(
        "n1 reaches n2 after heal",
        Duration::from_secs(10),
        POLL,
        || reaches(n1, n2),
    );

    eprintln!("[{:.1?}] kill + restart", t0.elapsed());
    // Node loss and restart.
    n2.kill().expect("kill");
    assert!(!n2.is_running());
    assert!(!reaches(n1, n2), "n2 reachable after kill");
    let t = Instant::now();
    n2.restart().expect("restart");
    eprintln!("n2 restarted in {:.1?}", t.elapsed());
    assert!(n2.is_running());
    let out = n2
        .docker_ok(["run", "--rm", BUSYBOX_IMAGE, "echo", "back"])
        .expect("busybox after restart");
    assert_eq!(out, "back\n");
    // tmpfs engine state: the old web container is gone.
    assert_eq!(n2.docker_ok(["ps", "-aq"]).expect("ps"), "");

    eprintln!("[{:.1?}] teardown", t0.elapsed());
    // Teardown removes everything.
    let name = c.name().to_string();
    drop(c);
    let left = viking_testkit::host_docker([
        "ps",
        "-aq",
        "--filter",
        &format!("label=viking-test.cluster={name}"),
    ])
    .expect("docker ps");
    assert_eq!(left, "", "containers left behind");
    assert!(viking_testkit::host_docker(["network", "inspect", &name]).is_err());
    eprintln!("smoke test took {:.1?}", t0.elapsed());
}

#[test]
fn docker_volume_keeps_engine_state_across_restart() {
    let opts = ClusterOpts {
        docker_volume: true,
        ..ClusterOpts::without_servers()
    };
    let c = Cluster::start(1, opts).expect("cluster");
    let n1 = c.node(0);
    n1.docker_ok(["create", "--name", "keep", BUSYBOX_IMAGE, "true"])
        .expect("create");
    n1.kill().expect("kill");
    n1.restart().expect("restart");
    let names = n1
        .docker_ok(["ps", "-a", "--format", "{{.Names}}"])
        .expect("ps");
    assert_eq!(names, "keep\n");
}

/// Needs the `viking` binary built first (`scripts/test.sh` builds every
/// target before it tests).
#[test]
fn cluster_with_servers_answers_ping() {
    let t0 = Instant::now();
    let c = Cluster::start(3, ClusterOpts::default()).expect("cluster with servers");
    eprintln!("cluster of 3 with servers up in {:.1?}", t0.elapsed());
    for n in c.nodes() {
        assert!(n.ping().expect("ping"), "{} ping", n.name());
    }
    let n1 = c.node(0);
    n1.stop_server().expect("stop");
    assert!(!n1.server_running().expect("running?"));
    n1.start_server().expect("start");
    assert!(n1.ping().expect("ping"));
    let hosts = n1.cli(["hosts"]);
    assert!(hosts.status.success(), "viking hosts: {hosts:?}");
    let n3 = c.node(2);
    n3.kill().expect("kill n3");
    n3.restart().expect("restart n3 with its server");
    assert!(n3.ping().expect("ping n3"));
    assert!(n3.logs().expect("log").contains("viking server start"));
}
