//! `viking push` on a real cluster: rolling restarts onto a new image,
//! static jobs left alone, and a broken image rolled back.
//!
//! Needs `scripts/test-images.sh --node`.

use std::collections::BTreeMap;

use serde_json::Value;
use viking_testkit::{Cluster, ClusterOpts, Node};

const APP: &str = "viking-test/app:latest";

fn cluster() -> Cluster {
    Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            server_args: ["--host-ttl", "2"].map(String::from).to_vec(),
            ..Default::default()
        },
    )
    .expect("start a 3-node cluster")
}

/// The app image, version 0: busybox under the app's tag on every node.
fn tag_app(c: &Cluster) {
    for n in c.nodes() {
        n.docker_ok(["tag", "viking-test/busybox", APP]).unwrap();
    }
}

/// Build a new version of the app image on every node: `script` runs in a
/// container of the current version, which is committed under the same tag.
fn new_version(c: &Cluster, script: &str) {
    for n in c.nodes() {
        n.docker_ok(["run", "--name", "mk", APP, "sh", "-c", script])
            .unwrap();
        n.docker_ok(["commit", "mk", APP]).unwrap();
        n.docker_ok(["rm", "mk"]).unwrap();
    }
}

fn image_id(n: &Node) -> String {
    n.docker_ok(["image", "inspect", "-f", "{{.Id}}", APP])
        .unwrap()
        .trim()
        .to_string()
}

fn records(n: &Node) -> BTreeMap<String, Value> {
    let v = n.cli_json(["ps", "-a", "--json"]).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p["job"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

#[test]
fn push_rolls_new_code_leaves_static_jobs_and_rolls_back_a_broken_image() {
    let c = cluster();
    tag_app(&c);
    let n1 = c.node(0);
    for (name, extra) in [("a1", None), ("a2", None), ("db", Some("--static"))] {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(extra);
        args.extend([APP, "sleep", "100000"]);
        n1.cli_ok(args).unwrap();
    }
    let before = records(n1);

    // New code on every node, same tag.
    new_version(&c, "echo v2 > /version");
    let o = n1.cli(["push", "--settle", "1"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("2 restarted") && text.contains("1 static"),
        "{text}"
    );
    let after = records(n1);
    for job in ["a1", "a2"] {
        let host = c.node_named(after[job]["node"].as_str().unwrap()).unwrap();
        assert_eq!(
            after[job]["image_id"],
            image_id(host).as_str(),
            "{job} runs the new image"
        );
        assert_ne!(after[job]["container_id"], before[job]["container_id"]);
        assert_eq!(after[job]["status"], "running");
        let v = host.docker_ok(["exec", job, "cat", "/version"]).unwrap();
        assert_eq!(v.trim(), "v2");
    }
    // One at a time: the second started after the first had settled (1 s).
    let (s1, s2) = (
        after["a1"]["started_at"].as_u64().unwrap(),
        after["a2"]["started_at"].as_u64().unwrap(),
    );
    assert!(s1.abs_diff(s2) >= 1000, "started {s1} and {s2}");
    // The static job keeps its container and its uptime.
    assert_eq!(after["db"]["container_id"], before["db"]["container_id"]);
    assert_eq!(after["db"]["started_at"], before["db"]["started_at"]);

    // Nothing new: nothing restarts.
    let o = n1.cli(["push", "--settle", "1"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        text.contains("0 restarted") && text.contains("2 unchanged"),
        "{text}"
    );
    assert_eq!(records(n1), after);

    // A broken image: `sleep` is gone, so the new version cannot start.
    new_version(&c, "rm /bin/sleep");
    let o = n1.cli(["push", "--settle", "1"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("job a1 failed") && err.contains("1 job(s) not pushed"),
        "{err}"
    );
    let broken = records(n1);
    // a1 is back on its previous image, running; a2 and db are untouched.
    assert_eq!(broken["a1"]["image_id"], after["a1"]["image_id"]);
    assert_eq!(broken["a1"]["status"], "running");
    assert_eq!(broken["a1"]["container_id"], after["a1"]["container_id"]);
    assert_eq!(broken["a2"], after["a2"]);
    assert_eq!(broken["db"], after["db"]);
    let host = c
        .node_named(broken["a1"]["node"].as_str().unwrap())
        .unwrap();
    let running = host
        .docker_ok(["inspect", "-f", "{{.State.Running}}", "a1"])
        .unwrap();
    assert_eq!(running.trim(), "true");
    // No leftover containers of the failed attempt.
    let all = host
        .docker_ok(["ps", "-a", "--filter", "label=viking.job=a1", "-q"])
        .unwrap();
    assert_eq!(all.lines().count(), 1, "{all}");
}

/// A push of a service with replicas (issue 18): one instance at a time,
/// start-first, while a client loops on the service through embassy: not
/// one request fails, and every instance ends on the new image.
#[test]
fn a_push_of_a_service_with_replicas_never_stops_answering() {
    let c = cluster();
    tag_app(&c);
    let n1 = c.node(0);
    new_version(&c, "mkdir -p /www && echo v1 > /www/index.html");
    n1.cli_ok([
        "run",
        "-d",
        "--name",
        "web",
        "--replicas",
        "2",
        "-p",
        "8080",
        APP,
        "sh",
        "-c",
        "exec httpd -f -p 8080 -h /www",
    ])
    .unwrap();
    n1.cli_ok([
        "run", "-d", "--name", "cli", "--viking-host", n1.name(), "--link", "web",
        "viking-test/busybox", "sh", "-c",
        "while true; do wget -q -O- http://$WEB_PORT_8080_TCP_ADDR:$WEB_PORT_8080_TCP_PORT/ 2>&1 | sed 's/^/got /'; sleep 0.1; done",
    ])
    .unwrap();
    let answers = |n: &Node| -> Vec<String> {
        String::from_utf8_lossy(&n.cli(["logs", "cli"]).stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("got ").map(str::to_string))
            .collect()
    };
    viking_testkit::eventually(
        "the client is answered",
        std::time::Duration::from_secs(20),
        viking_testkit::POLL,
        || {
            let got = answers(n1);
            if got.iter().filter(|a| *a == "v1").count() >= 5 {
                Ok(())
            } else {
                Err(format!(
                    "{got:?} {}",
                    String::from_utf8_lossy(&n1.cli(["ps", "-a"]).stdout)
                ))
            }
        },
    );
    let from = answers(n1).len();

    new_version(&c, "echo v2 > /www/index.html");
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let o = n1.cli(["push", "--settle", "1"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("2 restarted"), "{text}");
    viking_testkit::eventually(
        "the new version answers",
        std::time::Duration::from_secs(20),
        viking_testkit::POLL,
        || answers(n1).iter().rev().take(5).all(|a| a == "v2"),
    );
    // Start-first, on each instance's host: the previous container (renamed
    // aside) died only after the new one started.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let mut replaced = 0;
    for n in c.nodes() {
        let ev = n
            .docker_ok([
                "events",
                "--since",
                &since.to_string(),
                "--until",
                &until.to_string(),
                "--filter",
                "event=start",
                "--filter",
                "event=die",
                "--format",
                "{{.TimeNano}} {{.Status}} {{.Actor.Attributes.name}}",
            ])
            .unwrap();
        let mut started = None;
        for line in ev.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(t), Some(what), Some(name)) = (f.first(), f.get(1), f.get(2)) else {
                continue;
            };
            let t: u128 = t.parse().unwrap();
            match (*what, name.contains(".prev-")) {
                ("start", false) if name.starts_with("web.") => started = Some(t),
                ("die", true) => {
                    let s = started
                        .unwrap_or_else(|| panic!("{}: the old one died first: {ev}", n.name()));
                    assert!(s <= t, "{}: {ev}", n.name());
                    replaced += 1;
                }
                _ => {}
            }
        }
    }
    assert_eq!(replaced, 2, "both instances replaced start-first");
    let seen = answers(n1);
    let failed: Vec<&String> = seen[from..]
        .iter()
        .filter(|a| *a != "v1" && *a != "v2")
        .collect();
    assert!(
        failed.is_empty(),
        "failed requests during the push: {failed:?}"
    );
    assert!(
        seen[from..].len() >= 20,
        "the client kept asking: {}",
        seen.len() - from
    );
}
