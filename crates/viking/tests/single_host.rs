//! viking on one machine, end to end: a real `viking server` process with
//! the embedded store, the real Docker engine, and the `viking` CLI.
//!
//! Needs the `viking-test/busybox` image (`scripts/test-images.sh`).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;

#[test]
fn jobs_pipe_into_each_other() {
    let s = start();
    let out = s.cli_stdin(&["run", BUSYBOX, "tr", "a-z", "A-Z"], b"hello\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out2 = s.cli_stdin(&["run", BUSYBOX, "rev"], &out.stdout);
    assert_eq!(stdout(&out2), "OLLEH\n", "{}", stderr(&out2));

    // The same through a real shell pipe, as a user types it.
    let cmd = format!(
        "echo hello | {v} --server {u} --token {t} run {b} tr a-z A-Z | {v} --server {u} --token {t} run {b} rev",
        v = bin(),
        u = s.url(),
        t = s.token(),
        b = BUSYBOX
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "OLLEH\n", "{}", stderr(&out));
    // Interactive containers are removed when they exit, and so are their records.
    eventually(
        "interactive containers removed",
        Duration::from_secs(10),
        POLL,
        || s.containers().is_empty(),
    );
    assert_eq!(s.json(&["ps", "-a", "--json"]), serde_json::json!([]));
}

#[test]
fn exit_codes_and_stderr_come_back() {
    let s = start();
    let out = s.cli(&["run", BUSYBOX, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    let out = s.cli(&["run", BUSYBOX, "true"]);
    assert_eq!(out.status.code(), Some(0));
    // A command that does not exist: docker's 127, and no trace.
    let out = s.cli(&["run", BUSYBOX, "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-command"), "{}", stderr(&out));
    eventually("no containers", Duration::from_secs(10), POLL, || {
        s.containers().is_empty()
    });
    assert_eq!(s.json(&["ps", "-a", "--json"]), serde_json::json!([]));
}

#[test]
fn hundred_megabytes_arrive_byte_for_byte() {
    let s = start();
    let mut data = vec![0u8; 100 * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let out = s.cli_stdin(&["run", BUSYBOX, "cat"], &data);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "the stream was corrupted");
}

#[test]
fn daemonized_job_lifecycle() {
    let s = start();
    let name = unique("web");
    let out = s.cli(&[
        "run", "-d", "--name", &name, "-p", "8080", BUSYBOX, "httpd", "-f", "-p", "8080",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), name);

    let proc = s.json(&["proc", "--json"]);
    assert_eq!(proc[0]["job"]["name"], name.as_str());
    assert_eq!(proc[0]["job"]["daemonize"], true);
    let ps = s.json(&["ps", "--json"]);
    assert_eq!(ps[0]["status"], "running");
    assert_eq!(ps[0]["node"], s.name.as_str());
    assert!(ps[0]["image_id"].as_str().unwrap().starts_with("sha256:"));
    let port = ps[0]["ports"][0]["host_port"].as_u64().unwrap();
    assert_eq!(ps[0]["ports"][0]["container"], 8080);
    // The published port answers.
    let mut c = TcpStream::connect(("127.0.0.1", port as u16)).expect("published port answers");
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = c.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1."), "{resp}");
    // The table looks like docker ps.
    let table = stdout(&s.cli(&["ps"]));
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&name) && table.contains("Up "), "{table}");

    let inspect = s.json(&["inspect", &name]);
    assert_eq!(inspect["history"]["placements"][0]["node"], s.name.as_str());
    // floki shows the load: the running job and the memory it uses.
    eventually("load in floki", Duration::from_secs(10), POLL, || {
        let h = s.json(&["hosts", "--json"]);
        h[0]["running"] == 1 && h[0]["memory_used"].as_u64().unwrap_or(0) > 0
    });

    // rm without -f refuses a running job.
    let out = s.cli(&["rm", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is running"), "{}", stderr(&out));

    // kill: a bad signal is refused before anything is sent; an unknown
    // job is not found.
    let out = s.cli(&["kill", "-s", "NOPE", &name]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("\"NOPE\" is not a signal"),
        "{}",
        stderr(&out)
    );
    let out = s.cli(&["kill", "-s", "HUP", "nobody-here"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such job"), "{}", stderr(&out));
    assert_eq!(s.json(&["ps", "--json"])[0]["status"], "running");

    // stop: out of proc, container stopped, record kept with the exit.
    let out = s.cli(&["stop", "-t", "1", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.json(&["proc", "--json"]), serde_json::json!([]));
    let ps = s.json(&["ps", "-a", "--json"]);
    assert_eq!(ps[0]["status"], "exited");
    assert!(ps[0]["exit_code"].is_i64());
    assert_eq!(s.json(&["ps", "--json"]), serde_json::json!([]));

    // rm: record and container gone.
    let out = s.cli(&["rm", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.json(&["ps", "-a", "--json"]), serde_json::json!([]));
    assert!(s.containers().is_empty());
    let out = s.cli(&["inspect", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such job"));
}

#[test]
fn logs_and_follow() {
    let s = start();
    let name = unique("talker");
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &name,
        BUSYBOX,
        "sh",
        "-c",
        "echo one; echo two >&2; sleep 1; echo three; sleep 1000",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut follow = s.spawn_cli(&["logs", "-f", &name]);
    // The follower's output, as it arrives.
    let followed = Arc::new(Mutex::new(String::new()));
    let reader = {
        let mut pipe = follow.stdout.take().unwrap();
        let followed = Arc::clone(&followed);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                followed
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let out = eventually(
        "\"three\" in the logs",
        Duration::from_secs(15),
        POLL,
        || {
            let out = s.cli(&["logs", &name]);
            if stdout(&out) == "one\nthree\n" {
                Ok(out)
            } else {
                Err(format!(
                    "stdout {:?} stderr {:?}",
                    stdout(&out),
                    stderr(&out)
                ))
            }
        },
    );
    assert_eq!(stderr(&out), "two\n");
    eventually(
        "\"three\" from logs -f",
        Duration::from_secs(10),
        POLL,
        || {
            let seen = followed.lock().unwrap().clone();
            if seen == "one\nthree\n" {
                Ok(())
            } else {
                Err(seen)
            }
        },
    );
    let out = s.cli(&["rm", "-f", &name]);
    assert!(out.status.success());
    // The follower ends when the container goes.
    eventually("logs -f to end", Duration::from_secs(10), POLL, || {
        follow.try_wait().unwrap()
    });
    reader.join().unwrap();
    assert_eq!(*followed.lock().unwrap(), "one\nthree\n");
}

#[test]
fn a_taken_name_is_refused_and_changes_nothing() {
    let s = start();
    let name = unique("only");
    let out = s.cli(&["run", "-d", "--name", &name, BUSYBOX, "sleep", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = s.json(&["inspect", &name]);
    let out = s.cli(&["run", "-d", "--name", &name, BUSYBOX, "sleep", "5"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("already in use"), "{}", stderr(&out));
    // An interactive job cannot take it either.
    let out = s.cli(&["run", "--name", &name, BUSYBOX, "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(s.json(&["inspect", &name]), before);
    assert_eq!(s.containers().len(), 1);
}

#[test]
fn rejected_jobs_leave_no_trace() {
    let s = start();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "-d", "--name", "bad1", "-p", "70000", BUSYBOX],
            "ports",
        ),
        (vec!["run", "-d", "--name", "-bad", BUSYBOX, "true"], "name"),
        (
            vec!["run", "-v", "relative/path", BUSYBOX, "true"],
            "volumes",
        ),
        (vec!["run", "-v", "/a/../etc", BUSYBOX, "true"], "volumes"),
        (vec!["run", "-d", BUSYBOX, "true"], "name"),
        // An image that cannot be pulled (no registry answers there).
        (
            vec!["run", "-d", "--name", "bad2", "127.0.0.1:1/nope:latest"],
            "could not be pulled",
        ),
        (
            vec!["run", "127.0.0.1:1/nope:latest"],
            "could not be pulled",
        ),
        // A command that cannot start.
        (
            vec!["run", "-d", "--name", "bad3", BUSYBOX, "/no/such/binary"],
            "no such file",
        ),
    ];
    for (args, expect) in cases {
        let out = s.cli(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("job.json");
    std::fs::write(&f, r#"{"name":"bad4","image":"x","bogus":true}"#).unwrap();
    let out = s.cli(&["run", "-f", f.to_str().unwrap()]);
    assert!(stderr(&out).contains("bogus"), "{}", stderr(&out));

    assert_eq!(s.json(&["proc", "--json"]), serde_json::json!([]));
    assert_eq!(s.json(&["ps", "-a", "--json"]), serde_json::json!([]));
    eventually("no containers", Duration::from_secs(5), POLL, || {
        s.containers().is_empty()
    });

    // A refused service (its name is taken) allocates no ambassador port:
    // no `ports/<name>/<port>` key, no bump of the port counter. The next
    // service gets the port right after the first one's.
    let first = unique("svc");
    let second = unique("svc");
    let run_service = |name: &str, port: &str| {
        s.cli(&[
            "run", "-d", "--name", name, "-p", port, BUSYBOX, "httpd", "-f", "-p", port,
        ])
    };
    let out = run_service(&first, "8080");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_service(&first, "9090");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("already in use"), "{}", stderr(&out));
    let out = run_service(&second, "8080");
    assert!(out.status.success(), "{}", stderr(&out));
    let services = s.json(&["services", "--json"]);
    let port_of = |name: &str| {
        services
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["service"] == name)
            .and_then(|p| p["ambassador_port"].as_u64())
            .unwrap_or_else(|| panic!("no ambassador port for {name}: {services:#}"))
    };
    assert_eq!(
        port_of(&second),
        port_of(&first) + 1,
        "the refused run of {first} allocated an ambassador port: {services:#}"
    );
}

#[test]
fn a_job_file_runs() {
    let s = start();
    let name = unique("filejob");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("job.json");
    let doc = serde_json::json!({"name": name, "image": BUSYBOX, "command": "sh -c 'echo $GREETING'", "env": {"GREETING": "hej"}});
    std::fs::write(&f, doc.to_string()).unwrap();
    let out = s.cli(&["run", "-f", f.to_str().unwrap()]);
    assert_eq!(stdout(&out), "hej\n", "{}", stderr(&out));
    let out = s.cli(&["run", "--dry-run", "-d", "--name", &name, BUSYBOX]);
    assert!(
        stdout(&out).contains(&format!("would run on host {}", s.name)),
        "{}",
        stdout(&out)
    );
}

#[test]
fn volumes_persist_in_the_data_directory() {
    let s = start();
    let name = unique("vol");
    let out = s.cli(&[
        "run",
        "--name",
        &name,
        "-v",
        "/data",
        BUSYBOX,
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let host_file = s.data_dir().join("volumes").join(&name).join("data/f");
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "kept\n");
    let out = s.cli(&[
        "run", "--name", &name, "-v", "/data", BUSYBOX, "cat", "/data/f",
    ]);
    assert_eq!(stdout(&out), "kept\n", "{}", stderr(&out));
    // A daemonized job with a volume is fixed, and finds the data too.
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &name,
        "-v",
        "/data",
        BUSYBOX,
        "sh",
        "-c",
        "cat /data/f; sleep 1000",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let proc = s.json(&["proc", "--json"]);
    assert_eq!(proc[0]["job"]["fixed"], true);
    eventually("log output", Duration::from_secs(5), POLL, || {
        stdout(&s.cli(&["logs", &name])) == "kept\n"
    });
}

#[test]
fn server_restart_keeps_proc_and_ps_true() {
    let mut s = start();
    let keep = unique("keep");
    let die = unique("die");
    for n in [&keep, &die] {
        let out = s.cli(&["run", "-d", "--name", n, BUSYBOX, "sleep", "1000"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    s.stop();
    // Containers keep running without the server.
    let running = docker(&["inspect", "-f", "{{.State.Running}}", &keep]);
    assert_eq!(stdout(&running).trim(), "true");
    // While it is down, one container dies.
    let out = docker(&["kill", &die]);
    assert!(out.status.success());
    s.spawn();
    // viking-ps is true again, and the reconciler starts the dead job again:
    // nothing lost, nothing doubled.
    eventually(
        "the killed job restarted",
        Duration::from_secs(15),
        POLL,
        || {
            let d = s.json(&["inspect", &die]);
            d["ps"]["status"] == "running"
                && d["ps"]["restarts"] == 1
                && d["ps"]["last_exit"] == 137
        },
    );
    let k = s.json(&["inspect", &keep]);
    assert_eq!(k["ps"]["status"], "running");
    assert_eq!(k["ps"]["restarts"], 0);
    assert_eq!(s.json(&["proc", "--json"]).as_array().unwrap().len(), 2);
    assert_eq!(s.containers().len(), 2);
    // Events keep it true after the restart too.
    docker(&["kill", &keep]);
    eventually(
        "the other job restarted",
        Duration::from_secs(15),
        POLL,
        || {
            let k = s.json(&["inspect", &keep]);
            k["ps"]["status"] == "running" && k["ps"]["restarts"] == 1
        },
    );
    assert_eq!(s.containers().len(), 2);
    let table = stdout(&s.cli(&["ps"]));
    assert!(table.contains("(restarts 1, last exit 137)"), "{table}");
}

#[test]
fn a_crash_loop_backs_off_while_other_jobs_start() {
    let mut s = start_with(&["--backoff", "1", "--backoff-max", "8"]);
    let crash = unique("crash");
    let out = s.cli(&["run", "-d", "--name", &crash, BUSYBOX, "sh", "-c", "exit 3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // When the restart count was first seen at each value (polled every
    // 100 ms, so within about 0.2 s of the restart).
    let t0 = Instant::now();
    let mut seen: BTreeMap<u64, Duration> = BTreeMap::new();
    let last = eventually("three restarts", Duration::from_secs(60), POLL, || {
        let c = s.json(&["inspect", &crash]);
        let n = c["ps"]["restarts"].as_u64().unwrap_or(0);
        seen.entry(n).or_insert(t0.elapsed());
        if n >= 3 {
            Ok(c)
        } else {
            Err(format!("restarts seen at {seen:?}"))
        }
    });
    // Backoff 1 s, then 2 s, ... (the reconciler acts on its next round after
    // the backoff, so gaps come out longer; only lower bounds are checked).
    // Without backoff each restart would follow the exit within a round.
    let at = |n: u64| {
        *seen
            .get(&n)
            .unwrap_or_else(|| panic!("restart {n} not observed: {seen:?}"))
    };
    assert!(at(2) - at(1) >= Duration::from_millis(800), "{seen:?}");
    assert!(at(3) - at(2) >= Duration::from_millis(1_700), "{seen:?}");
    assert_eq!(
        last["ps"]["exit_code"]
            .as_i64()
            .or(last["ps"]["last_exit"].as_i64()),
        Some(3)
    );
    // Other work is not starved while the loop goes on.
    for i in 0..3 {
        let out = s.cli(&[
            "run",
            "-d",
            "--name",
            &format!("{crash}-ok{i}"),
            BUSYBOX,
            "sleep",
            "1000",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let ps = s.json(&["ps", "--json"]);
    assert_eq!(
        ps.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "running")
            .count(),
        3,
        "{ps:#}"
    );
    s.stop();
}

#[test]
fn a_failing_health_check_restarts_a_job() {
    let s = start_with(&["--health-interval", "0.3"]);
    // A tcp check on a listening job passes: it keeps running. Started
    // first, so that it is checked for the whole time the next job needs.
    let ok = unique("healthy");
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &ok,
        "-p",
        "8080",
        "-e",
        "VIKING_HEALTH=tcp",
        BUSYBOX,
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // httpd without an index page: TCP works, GET / is a 404.
    let name = unique("sick");
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &name,
        "-p",
        "8080",
        "-e",
        "VIKING_HEALTH=http",
        BUSYBOX,
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Twice, so that health rounds have run for a while (at least six
    // checks of the sick job, each round checking the healthy one too).
    eventually(
        "restarted twice after failed health checks",
        Duration::from_secs(40),
        POLL,
        || {
            let j = s.json(&["inspect", &name]);
            if j["ps"]["restarts"].as_u64().unwrap_or(0) >= 2 {
                Ok(())
            } else {
                Err(j["ps"].to_string())
            }
        },
    );
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&name) && l.contains("health check failed: http 8080")),
        "{log}"
    );
    let j = s.json(&["inspect", &ok]);
    assert_eq!(j["ps"]["restarts"], 0, "{j:#}");
    assert_eq!(j["ps"]["status"], "running", "{j:#}");
    assert!(
        !log.lines().any(|l| l.contains(&ok)),
        "the healthy job was touched: {log}"
    );
}

/// That tcp checks run at all: a job that stops listening (but keeps
/// running) is restarted. The check probes the container's own address: the
/// published port on 127.0.0.1 answers through docker-proxy whether or not
/// the container listens.
#[test]
fn a_job_whose_tcp_port_closes_is_restarted() {
    let s = start_with(&["--health-interval", "0.3"]);
    let closing = unique("closing");
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        &closing,
        "-p",
        "8080",
        "-e",
        "VIKING_HEALTH=tcp",
        BUSYBOX,
        "sh",
        "-c",
        "timeout 3 httpd -f -p 8080; exec sleep 1000",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(
        "the job whose port closed restarted by its tcp check",
        Duration::from_secs(30),
        POLL,
        || {
            let j = s.json(&["inspect", &closing]);
            if j["ps"]["restarts"].as_u64().unwrap_or(0) >= 1 {
                Ok(())
            } else {
                Err(j["ps"].to_string())
            }
        },
    );
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&closing) && l.contains("health check failed: tcp 8080")),
        "{log}"
    );
}

#[test]
fn requests_without_the_token_get_401() {
    let s = start();
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.write_all(b"GET /v1/ps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(resp.contains("\"error\""), "{resp}");
    let out = std::process::Command::new(bin())
        .args(["--server", &s.url(), "--token", "wrong-token-123456", "ps"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("token"), "{}", stderr(&out));
    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.data_dir().join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn bad_settings_and_a_second_server_are_refused() {
    let s = start();
    // A second server on the same data directory.
    let out = std::process::Command::new(bin())
        .args(["server", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--data-dir",
            s.data_dir().to_str().unwrap(),
            "--key",
            &s.key,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    // Bad settings are reported before anything starts.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("never");
    for (flag, value) in [
        ("--ip", "not-an-ip"),
        ("--key", "noslash"),
        ("--listen", "nowhere"),
        ("--etcd", "https://x:1"),
    ] {
        let out = std::process::Command::new(bin())
            .args(["server", "--data-dir", data.to_str().unwrap(), flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
        assert!(!data.exists(), "{flag}: the data directory was created");
    }
}

#[test]
fn ctrl_c_stops_an_attached_job() {
    let s = start();
    let name = unique("sleepy");
    let child = s.spawn_cli(&["run", "--name", &name, BUSYBOX, "sleep", "300"]);
    eventually("job running", Duration::from_secs(10), POLL, || {
        s.cli(&["inspect", &name]).status.success()
            && stdout(&docker(&["inspect", "-f", "{{.State.Running}}", &name])).trim() == "true"
    });
    // SAFETY: kill(2) with a pid this test spawned and still owns.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0, "kill(SIGINT)");
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    // The CLI does not die of the SIGINT: it asks the server to stop the job
    // (TERM, which `sleep` as PID 1 ignores, then KILL after 2 s) and exits
    // with the job's status.
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    eventually("container removed", Duration::from_secs(10), POLL, || {
        s.containers().is_empty()
    });
    assert!(!s.cli(&["inspect", &name]).status.success());
}

#[test]
fn an_interactive_tty_job_takes_keystrokes() {
    let s = start();
    // `script` gives the CLI a real terminal; the shell in the container reads
    // what is typed there and its exit code comes back.
    let cmd = format!(
        "{} --server {} --token {} run -it {} sh",
        bin(),
        s.url(),
        s.token(),
        BUSYBOX
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let mut pipe = child.stdout.take().unwrap();
        let screen = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                screen.lock().unwrap().push_str(&text);
            }
        })
    };
    // Type only once the shell in the container shows its prompt.
    eventually("the shell's prompt", Duration::from_secs(20), POLL, || {
        let seen = screen.lock().unwrap().clone();
        if seen.contains("# ") {
            Ok(())
        } else {
            Err(seen)
        }
    });
    let mut keys = child.stdin.take().unwrap();
    keys.write_all(b"echo typed-$((6*7))\nexit 4\n").unwrap();
    let status = eventually("the CLI to exit", Duration::from_secs(20), POLL, || {
        child.try_wait().unwrap()
    });
    drop(keys);
    reader.join().unwrap();
    let text = screen.lock().unwrap().clone();
    assert!(text.contains("typed-42"), "{text}");
    assert_eq!(status.code(), Some(4), "{text}");
}

/// Issue 13: an attached job's output sometimes arrived twice, when Docker
/// replayed the container's log after the job had already started writing
/// to the attached stream. Many short jobs, a few at a time so that the
/// engine is busy, must each print exactly what they wrote, once, in order.
#[test]
fn attached_output_arrives_exactly_once() {
    let s = start();
    const THREADS: usize = 4;
    const JOBS_PER_THREAD: usize = 30;
    let lines: String = (1..=300).map(|i| format!("{i}\n")).collect();
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (s, lines, failures) = (&s, &lines, &failures);
            scope.spawn(move || {
                for j in 0..JOBS_PER_THREAD {
                    // Alternately one short line and a few hundred lines.
                    let (out, want) = if j % 2 == 0 {
                        (s.cli(&["run", BUSYBOX, "sh", "-c", "echo hej"]), "hej\n")
                    } else {
                        (s.cli(&["run", BUSYBOX, "seq", "1", "300"]), lines.as_str())
                    };
                    if !out.status.success() || out.stdout != want.as_bytes() {
                        let got = stdout(&out);
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!(
                                "thread {t} job {j}: {:?}, {} bytes, {} lines (want {}): {:?}; stderr {:?}",
                                out.status.code(),
                                got.len(),
                                got.lines().count(),
                                want.len(),
                                got.chars().take(40).collect::<String>(),
                                stderr(&out)
                            ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(
        failures.is_empty(),
        "{} of {} attached jobs printed something else than their output, once:\n{}",
        failures.len(),
        THREADS * JOBS_PER_THREAD,
        failures.join("\n")
    );
}

#[test]
fn secrets_stay_private_and_waits_are_bounded() {
    use std::os::unix::fs::PermissionsExt;
    let s = start();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // The data directory and the store (every job's environment) are the
    // owner's only.
    assert_eq!(mode(s.data_dir()), 0o700);
    assert_eq!(mode(&s.data_dir().join("viking.redb")), 0o600);

    // A token on the command line works, with a warning; from a file,
    // without one.
    let out = std::process::Command::new(bin())
        .args(["--server", &s.url(), "--token", &s.token(), "ps"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("visible to every user"),
        "{}",
        stderr(&out)
    );
    let f = s.data_dir().join("cli-token");
    std::fs::write(&f, format!("{}\n", s.token())).unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "--server",
            &s.url(),
            "--token-file",
            f.to_str().unwrap(),
            "ps",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");

    // A stop that would wait forever, and a settle time beyond a day, are
    // refused by the CLI and by the API, naming what is wrong.
    let out = s.cli(&["run", "-d", "--name", "waits", BUSYBOX, "sleep", "3600"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = s.cli(&["stop", "-t", "-1", "waits"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = s.cli(&["push", "--settle", "90000"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("settle"), "{}", stderr(&out));
    let api = |method: &str, path: &str, body: &str| {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            s.token(),
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        resp
    };
    let resp = api("POST", "/v1/jobs/waits/stop?t=-1", "");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("t: the stop timeout"), "{resp}");
    let resp = api("POST", "/v1/push", r#"{"settle_ms": 100000000}"#);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("settle_ms"), "{resp}");
    // Nothing was stopped.
    let v = s.json(&["inspect", "waits"]);
    assert_eq!(v["ps"]["status"], "running", "{v}");
}

#[test]
fn a_host_port_taken_outside_viking_is_refused_cleanly() {
    let s = start();
    // A process holds one port, a container viking does not own another.
    let held = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let held_port = held.local_addr().unwrap().port();
    let other_port = free_port();
    let other = format!("viking-test-outsider-{other_port}");
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--rm",
            "--label",
            "viking-test=1",
            "--name",
            &other,
        ])
        .args(["-p", &format!("{other_port}:80"), BUSYBOX, "sleep", "600"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for (name, port) in [("held", held_port), ("outsider", other_port)] {
        let out = s.cli(&[
            "run",
            "-d",
            "--name",
            name,
            "-p",
            &format!("{port}:80"),
            BUSYBOX,
            "sleep",
            "60",
        ]);
        assert_ne!(out.status.code(), Some(0), "{name}");
        assert!(
            stderr(&out).contains(&format!("port {port}/tcp is already in use")),
            "{name}: {}",
            stderr(&out)
        );
        // Nothing is left: no record, no container.
        let out = s.cli(&["inspect", name]);
        assert_ne!(out.status.code(), Some(0), "{name} left a record");
    }
    assert!(s.containers().is_empty(), "{:?}", s.containers());
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &other])
        .output();
}

#[test]
fn a_server_on_an_empty_store_holds_and_recover_brings_its_jobs_back() {
    let mut s = start();
    let mut ids = BTreeMap::new();
    for (name, extra) in [
        ("svc", vec!["-p", "80"]),
        ("data", vec!["-v", "/data"]),
        ("plain", vec![]),
    ] {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(extra);
        args.extend([BUSYBOX, "sleep", "3600"]);
        let out = s.cli(&args);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let v = s.json(&["inspect", name]);
        ids.insert(
            name.to_string(),
            v["ps"]["container_id"].as_str().unwrap().to_string(),
        );
    }
    let running = |id: &str| {
        let o = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim() == "true"
    };

    // The store file is lost; the server comes back on an empty one.
    s.stop();
    std::fs::remove_file(s.data_dir().join("viking.redb")).unwrap();
    s.spawn();
    let hosts = s.json(&["hosts", "--json"]);
    assert!(
        hosts[0]["held"]
            .as_str()
            .is_some_and(|w| w.contains("no cluster id")),
        "{hosts}"
    );
    let table = stdout(&s.cli(&["hosts"]));
    assert!(table.contains("held: run viking recover"), "{table}");
    let out = s.cli(&["run", "-d", "--name", "late", BUSYBOX, "sleep", "5"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("holds"), "{}", stderr(&out));
    // The first resync ran at start, on the empty store: every container is
    // still there.
    for (name, id) in &ids {
        assert!(running(id), "{name}'s container stopped");
    }

    let out = s.cli(&["recover"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("3 job(s) recovered"),
        "{}",
        stdout(&out)
    );
    for (name, id) in &ids {
        let v = s.json(&["inspect", name]);
        assert_eq!(v["ps"]["container_id"].as_str(), Some(id.as_str()), "{v}");
        assert_eq!(
            v["proc"]["job"]["name"].as_str(),
            Some(name.as_str()),
            "{v}"
        );
        assert!(running(id));
    }
    eventually(
        "floki to stop showing the server holding",
        Duration::from_secs(10),
        POLL,
        || s.json(&["hosts", "--json"])[0]["held"].is_null(),
    );
    // It acts again: a stop stops.
    let out = s.cli(&["stop", "-t", "1", "plain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!running(&ids["plain"]));
}
