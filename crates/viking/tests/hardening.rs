//! A job cannot reach its host through viking (issue 14), end to end on a
//! real single server: volumes stay inside the job's own directory (C2),
//! containers get a pids limit and log rotation (M4), and nothing leaks:
//! anonymous volumes go with their containers, `rm --volumes` deletes a
//! job's data and history (M5). The last test does the same on a
//! two-node cluster, where the job's own host does the work.
//!
//! Needs the `viking-test/busybox` image (`scripts/test-images.sh`; the
//! cluster test `--node` too).

// `common` re-exports what single_host.rs uses too (free_port).
#[allow(unused_imports)]
mod common;

use std::path::Path;

use common::*;

/// The one container of job `name` in server `s`'s cluster, by label.
fn container_of(s: &LocalServer, name: &str) -> Option<String> {
    let out = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=viking.cluster={}", s.key),
        "--filter",
        &format!("label=viking.job={name}"),
    ]);
    stdout(&out).lines().next().map(str::to_string)
}

/// `docker inspect -f FORMAT ID`, trimmed.
fn inspect(id: &str, format: &str) -> String {
    let out = docker(&["inspect", "-f", format, id]);
    assert!(
        out.status.success(),
        "docker inspect {id}: {}",
        stderr(&out)
    );
    stdout(&out).trim().to_string()
}

/// Whether Docker has a volume of this name.
fn volume_exists(name: &str) -> bool {
    docker(&["volume", "inspect", name]).status.success()
}

/// Every entry of a directory, by name.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The review's sequence (C2) with a temporary directory for the host's
/// /etc: run 1 plants a symlink to it in its volume; removed and run again
/// with a volume at the link, the job would write into the host directory.
/// Nested volumes are refused when the job is parsed; a volume whose own
/// directory is the planted link is refused before the container is made.
#[test]
fn a_planted_symlink_cannot_take_a_volume_out_of_the_data_directory() {
    let s = start();
    let name = unique("esc");
    let host_etc = tempfile::tempdir().unwrap();
    let target = host_etc.path().to_str().unwrap().to_string();
    let plant = format!("ln -sfn {target} /data/hostetc; sleep 3600");
    let out = s.cli(&[
        "run", "-d", "--name", &name, "-v", "/data", BUSYBOX, "sh", "-c", &plant,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let link = s
        .data_dir()
        .join("volumes")
        .join(&name)
        .join("data/hostetc");
    eventually(
        "the job planted its link",
        Duration::from_secs(20),
        POLL,
        || std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
    );
    let out = s.cli(&["rm", "-f", &name]);
    assert!(out.status.success(), "{}", stderr(&out));

    let escape = "touch /data/hostetc/viking-escaped; sleep 3600";
    // The exact second run of the review: nested volumes, refused at parse.
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &name,
        "-v",
        "/data",
        "-v",
        "/data/hostetc",
        BUSYBOX,
        "sh",
        "-c",
        escape,
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("volumes") && err.contains("nested"), "{err}");

    // Past the parser: only the volume at the link.
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &name,
        "-v",
        "/data/hostetc",
        BUSYBOX,
        "sh",
        "-c",
        escape,
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"/data/hostetc\"") && err.contains("symbolic link"),
        "{err}"
    );
    // The same as an interactive job.
    let out = s.cli(&[
        "run",
        "--name",
        &name,
        "-v",
        "/data/hostetc",
        BUSYBOX,
        "touch",
        "/data/hostetc/viking-escaped",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));

    // The host directory is untouched, and the refused runs left nothing.
    assert_eq!(entries(host_etc.path()), Vec::<String>::new());
    assert_eq!(s.json(&["proc", "--json"]), serde_json::json!([]));
    assert_eq!(s.json(&["ps", "-a", "--json"]), serde_json::json!([]));
    eventually("no containers", Duration::from_secs(10), POLL, || {
        s.containers().is_empty()
    });
    // The link is still a link (viking changed nothing through it).
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A job that plants a link to another job's volume directory does not get
/// that job's data through a volume of its own.
#[test]
fn a_symlink_to_another_jobs_volumes_is_refused() {
    let s = start();
    let victim = unique("victim");
    let thief = unique("thief");
    let out = s.cli(&[
        "run",
        "--name",
        &victim,
        "-v",
        "/data",
        BUSYBOX,
        "sh",
        "-c",
        "echo secret > /data/f",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let victims = s.data_dir().join("volumes").join(&victim).join("data");
    assert_eq!(
        std::fs::read_to_string(victims.join("f")).unwrap(),
        "secret\n"
    );

    let plant = format!("ln -sfn {} /data/steal", victims.display());
    let out = s.cli(&[
        "run", "--name", &thief, "-v", "/data", BUSYBOX, "sh", "-c", &plant,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = s.cli(&[
        "run",
        "--name",
        &thief,
        "-v",
        "/data/steal",
        BUSYBOX,
        "sh",
        "-c",
        "cat /data/steal/f; echo owned > /data/steal/f",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!stdout(&out).contains("secret"), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"/data/steal\"") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(victims.join("f")).unwrap(),
        "secret\n"
    );
}

/// Issue 18: `-m/--memory` and `--cpus` reach Docker's limits on the real
/// engine; a job bigger than the host is refused with the host's reason
/// (what it has free) before any record or container, and the host's
/// reservation shows in `viking hosts`.
#[test]
fn memory_and_cpu_limits_reach_docker_and_a_job_too_big_is_refused() {
    let s = start();
    let capped = unique("capped");
    let out = s.cli(&[
        "run", "-d", "--name", &capped, "-m", "64m", "--cpus", "0.5", BUSYBOX, "sleep", "3600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = container_of(&s, &capped).expect("its container");
    assert_eq!(
        inspect(&id, "{{.HostConfig.Memory}}"),
        (64u64 << 20).to_string()
    );
    assert_eq!(inspect(&id, "{{.HostConfig.NanoCpus}}"), "500000000");

    let huge = unique("huge");
    let out = s.cli(&[
        "run", "-d", "--name", &huge, "--memory", "900t", BUSYBOX, "true",
    ]);
    assert!(!out.status.success(), "a 900 TiB job ran");
    let err = stderr(&out);
    assert!(
        err.contains("needs 943718400 MiB") && err.contains("MiB free"),
        "{err}"
    );
    assert!(container_of(&s, &huge).is_none());
    let ps = s.json(&["ps", "-a", "--json"]);
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|p| p["job"] != huge.as_str()),
        "{ps:#}"
    );
    // A field that is not a quantity: refused naming it.
    let out = s.cli(&[
        "run", "-d", "--name", &huge, "--cpus", "lots", BUSYBOX, "true",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cpus"), "{}", stderr(&out));

    // A job that spins: held to half a CPU by Docker, and floki reports
    // the CPU its containers used (over the last minute, from the cgroup).
    let spin = unique("spin");
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &spin,
        "--cpus",
        "0.5",
        BUSYBOX,
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The leader publishes the host's reservation; the agent measures use.
    viking_testkit::eventually(
        "the host shows its reservation and the CPU used",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(200),
        || {
            let hosts = s.json(&["hosts", "--json"]);
            let h = &hosts[0];
            let used = h["cpu_used"].as_u64().unwrap_or(0);
            if h["reserved_memory"] == serde_json::json!(2 * (64u64 << 20))
                && h["reserved_millicpus"] == 1000
                && (200..=700).contains(&used)
            {
                Ok(())
            } else {
                Err(format!("{hosts:#}"))
            }
        },
    );
    let table = stdout(&s.cli(&["hosts"])).to_string();
    assert!(table.contains("CPUS RESERVED / USED / ALL"), "{table}");
    assert!(table.contains("128MiB / "), "{table}");
}

/// M4: every container gets the server's json-file rotation and pids
/// limit; a job may ask for another limit up to the server's maximum, and
/// one above it is refused before anything is written.
#[test]
fn containers_get_log_rotation_and_a_pids_limit() {
    let s = start();
    let plain = unique("plain");
    let out = s.cli(&["run", "-d", "--name", &plain, BUSYBOX, "sleep", "3600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = container_of(&s, &plain).expect("its container");
    assert_eq!(inspect(&id, "{{.HostConfig.PidsLimit}}"), "1024");
    let log: serde_json::Value =
        serde_json::from_str(&inspect(&id, "{{json .HostConfig.LogConfig}}")).unwrap();
    assert_eq!(
        log,
        serde_json::json!({"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}})
    );
    let asks = unique("asks");
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &asks,
        "--pids-limit",
        "200",
        BUSYBOX,
        "sleep",
        "3600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = container_of(&s, &asks).expect("its container");
    assert_eq!(inspect(&id, "{{.HostConfig.PidsLimit}}"), "200");

    // Above the server's maximum (4096): refused naming the field, no
    // record, no container; daemonized or interactive.
    let greedy = unique("greedy");
    for detach in [true, false] {
        let mut args = vec!["run", "--name", greedy.as_str(), "--pids-limit", "5000"];
        if detach {
            args.push("-d");
        }
        args.extend([BUSYBOX, "true"]);
        let out = s.cli(&args);
        assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("pids_limit") && err.contains("4096"), "{err}");
    }
    let ps = s.json(&["ps", "-a", "--json"]);
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|p| p["job"] != greedy.as_str()),
        "{ps:#}"
    );
    assert_eq!(container_of(&s, &greedy), None);
}

/// The settings flow from `viking server`'s flags to every container.
#[test]
fn the_servers_container_settings_are_its_flags() {
    let s = start_with(&[
        "--log-max-size",
        "1m",
        "--log-max-file",
        "2",
        "--pids-limit",
        "100",
        "--pids-max",
        "300",
    ]);
    let name = unique("set");
    let out = s.cli(&["run", "-d", "--name", &name, BUSYBOX, "sleep", "3600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = container_of(&s, &name).expect("its container");
    assert_eq!(
        inspect(&id, "{{.HostConfig.PidsLimit}} {{index .HostConfig.LogConfig.Config \"max-size\"}} {{index .HostConfig.LogConfig.Config \"max-file\"}}"),
        "100 1m 2"
    );
    let out = s.cli(&["run", "--pids-limit", "301", BUSYBOX, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("300"), "{}", stderr(&out));
    // A job that forks without end stays inside its limit: its container
    // never has more than 40 processes (the inner shell dies when a fork
    // fails; the sleeps it started stay).
    let bomb = unique("bomb");
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &bomb,
        "--pids-limit",
        "40",
        BUSYBOX,
        "sh",
        "-c",
        "sh -c 'for i in $(seq 200); do sleep 3600 & done'; exec sleep 3600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = container_of(&s, &bomb).expect("its container");
    let pids = eventually(
        "the job to fill its pids limit",
        Duration::from_secs(20),
        POLL,
        || {
            let out = docker(&["top", &id]);
            let n = stdout(&out).lines().count().saturating_sub(1);
            if n >= 35 {
                Ok(n)
            } else {
                Err(format!("{n} processes"))
            }
        },
    );
    assert!(pids <= 40, "{pids} processes in a container limited to 40");
    // The server still answers.
    assert!(s.cli(&["ps"]).status.success());
}

/// An image with `VOLUME /v`, built from the test image (the same tag every
/// run: a build of the same Dockerfile only retags it, and nothing piles up).
fn volume_image() -> String {
    let tag = "viking-test/volimg:hardening".to_string();
    let mut child = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker build");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        write!(stdin, "FROM {BUSYBOX}\nVOLUME /v\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker build: {}", stderr(&out));
    tag
}

/// The anonymous volume of a container (its mount at /v).
fn anonymous_volume(id: &str) -> String {
    let v = inspect(
        id,
        "{{range .Mounts}}{{if eq .Destination \"/v\"}}{{.Name}}{{end}}{{end}}",
    );
    assert!(!v.is_empty(), "container {id} has no volume at /v");
    v
}

/// M5: interactive runs, restarts and `rm` remove a container's anonymous
/// volumes with it.
#[test]
fn anonymous_volumes_go_with_their_containers() {
    let s = start_with(&["--backoff", "1"]);
    let image = volume_image();
    let dangling_before = stdout(&docker(&["volume", "ls", "-qf", "dangling=true"]));
    // Each job waits for a file the test makes with `docker exec`.
    let wait_for_go = "until [ -e /v/go ]; do sleep 0.1; done";
    let mut gone = Vec::new();
    for _ in 0..3 {
        let name = unique("anon");
        let mut cli = s.spawn_cli(&["run", "--name", &name, &image, "sh", "-c", wait_for_go]);
        let id = eventually(
            "the interactive container",
            Duration::from_secs(20),
            POLL,
            || container_of(&s, &name),
        );
        let volume = anonymous_volume(&id);
        assert!(docker(&["exec", &id, "touch", "/v/go"]).status.success());
        let status = eventually("the run to end", Duration::from_secs(20), POLL, || {
            cli.try_wait().ok().flatten()
        });
        assert!(status.success());
        eventually("its volume removed", Duration::from_secs(10), POLL, || {
            !volume_exists(&volume)
        });
        gone.push(volume);
    }
    // A restart: the crashed container is replaced, its volume goes.
    let name = unique("crashy");
    let crash = format!("{wait_for_go}; exit 1");
    let out = s.cli(&["run", "-d", "--name", &name, &image, "sh", "-c", &crash]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = container_of(&s, &name).expect("its container");
    let volume = anonymous_volume(&first);
    assert!(docker(&["exec", &first, "touch", "/v/go"]).status.success());
    let second = eventually(
        "the restarted container",
        Duration::from_secs(30),
        POLL,
        || container_of(&s, &name).filter(|c| *c != first),
    );
    eventually(
        "the first one's volume removed",
        Duration::from_secs(10),
        POLL,
        || !volume_exists(&volume),
    );
    gone.push(volume);
    // rm: the last one's volume goes with it (once viking-ps names it: an
    // rm while the restart is still being recorded is another story).
    eventually(
        "viking-ps to name the restarted container",
        Duration::from_secs(20),
        POLL,
        || {
            let ps = s.json(&["inspect", &name])["ps"].clone();
            let id = ps["container_id"].as_str().unwrap_or_default();
            if !second.is_empty() && id.starts_with(second.as_str()) && ps["status"] == "running" {
                Ok(())
            } else {
                Err(format!("{ps}"))
            }
        },
    );
    let volume = anonymous_volume(&second);
    let out = s.cli(&["rm", "-f", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!volume_exists(&volume));
    gone.push(volume);

    // None of them is left dangling (other tests' volumes may come and go
    // meanwhile, so only these are looked for).
    let dangling_after = stdout(&docker(&["volume", "ls", "-qf", "dangling=true"]));
    for v in &gone {
        assert!(!dangling_after.contains(v.as_str()), "{v} is dangling");
        assert!(!dangling_before.contains(v.as_str()));
    }
}

/// M5: plain `rm` keeps a job's data and history; `rm --volumes` deletes
/// them, so the job run again starts empty, and works on a job whose
/// records are gone already.
#[test]
fn rm_volumes_deletes_the_data_and_the_history() {
    let s = start();
    let name = unique("data");
    let job =
        "if [ -e /data/f ]; then echo stale; else echo empty; fi; echo x > /data/f; sleep 3600";
    let run = || {
        let out = s.cli(&[
            "run", "-d", "--name", &name, "-v", "/data", BUSYBOX, "sh", "-c", job,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let logs_say = |word: &str| {
        eventually(
            &format!("the job to say {word}"),
            Duration::from_secs(20),
            POLL,
            || {
                let out = stdout(&s.cli(&["logs", &name]));
                if out.trim() == word {
                    Ok(())
                } else {
                    Err(out)
                }
            },
        )
    };
    let dir = s.data_dir().join("volumes").join(&name);
    run();
    logs_say("empty");
    eventually("its file", Duration::from_secs(10), POLL, || {
        dir.join("data/f").exists()
    });
    // Plain rm keeps the data: the job comes back to it.
    assert!(s.cli(&["rm", "-f", &name]).status.success());
    assert!(dir.join("data/f").exists());
    run();
    logs_say("stale");
    let placements = |s: &LocalServer| {
        s.json(&["inspect", &name])["history"]["placements"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(placements(&s), 2);

    let out = s.cli(&["rm", "-f", "--volumes", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(s.containers().is_empty());
    // Run again: empty data, a history of one placement.
    run();
    logs_say("empty");
    assert_eq!(placements(&s), 1);

    // After a plain rm, `rm --volumes` still finds the data by the history.
    assert!(s.cli(&["rm", "-f", &name]).status.success());
    assert!(dir.exists());
    let out = s.cli(&["rm", "--volumes", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.exists());
    // And then there is nothing left to remove.
    let out = s.cli(&["rm", "--volumes", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such job"), "{}", stderr(&out));
}

/// On a cluster, the job's own host applies its limits and holds its
/// volumes: `docker inspect` on that node shows the pids limit and the log
/// rotation, its volume directories are 0700, and `rm --volumes` asked of
/// another server deletes them there (with the job's records, and also
/// after a plain `rm`, found by the job's history).
#[test]
fn on_a_cluster_the_jobs_host_applies_the_limits_and_deletes_its_volumes() {
    use viking_testkit::{Cluster, ClusterOpts};
    let c = Cluster::start(
        2,
        ClusterOpts {
            viking_bin: Some(bin().into()),
            server_args: [
                "--host-ttl",
                "2",
                "--pids-limit",
                "77",
                "--log-max-size",
                "2m",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .expect("start a 2-node cluster");
    let (n1, n2) = (c.node(0), c.node(1));
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let run = || {
        ok(n1.cli([
            "run",
            "-d",
            "--name",
            "db",
            "--viking-host",
            n2.name(),
            "-v",
            "/data",
            BUSYBOX,
            "sh",
            "-c",
            "echo x > /data/f; sleep 1000",
        ]))
    };
    let dir = "/var/lib/viking/volumes/db";
    let has_data = || n2.sh(&format!("test -e {dir}/data/f")).status.success();
    run();
    eventually(
        "db's data on its host",
        Duration::from_secs(20),
        POLL,
        has_data,
    );
    let limits = ok(n2.docker([
        "inspect", "-f",
        "{{.HostConfig.PidsLimit}} {{.HostConfig.LogConfig.Type}} {{index .HostConfig.LogConfig.Config \"max-size\"}} {{index .HostConfig.LogConfig.Config \"max-file\"}}",
        "db",
    ]));
    assert_eq!(limits.trim(), "77 json-file 2m 3");
    let modes = ok(n2.sh(&format!(
        "stat -c %a /var/lib/viking/volumes {dir} {dir}/data"
    )));
    assert_eq!(modes, "700\n700\n700\n");

    // rm --volumes on the other server: done by the job's host.
    ok(n1.cli(["rm", "-f", "--volumes", "db"]));
    assert!(!n2.sh(&format!("test -e {dir}")).status.success());

    // After a plain rm the data stays; rm --volumes finds it by the history.
    run();
    eventually("db's data again", Duration::from_secs(20), POLL, has_data);
    ok(n1.cli(["rm", "-f", "db"]));
    assert!(has_data());
    ok(n1.cli(["rm", "--volumes", "db"]));
    assert!(!n2.sh(&format!("test -e {dir}")).status.success());
}
