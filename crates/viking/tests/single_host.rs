//! viking on one machine, end to end: a real `viking server` process with
//! the embedded store, the real Docker engine, and the `viking` CLI.
//!
//! Needs the `viking-test/busybox` image (`scripts/test-images.sh`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn jobs_pipe_into_each_other() {
    let s = Server::start();
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
    wait_until(
        "interactive containers removed",
        Duration::from_secs(10),
        || s.containers().is_empty(),
    );
    assert_eq!(s.json(&["ps", "-a", "--json"]), serde_json::json!([]));
}

#[test]
fn exit_codes_and_stderr_come_back() {
    let s = Server::start();
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
    wait_until("no containers", Duration::from_secs(10), || {
        s.containers().is_empty()
    });
    assert_eq!(s.json(&["ps", "-a", "--json"]), serde_json::json!([]));
}

#[test]
fn hundred_megabytes_arrive_byte_for_byte() {
    let s = Server::start();
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
    let s = Server::start();
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
    wait_until("load in floki", Duration::from_secs(10), || {
        let h = s.json(&["hosts", "--json"]);
        h[0]["running"] == 1 && h[0]["memory_used"].as_u64().unwrap_or(0) > 0
    });

    // rm without -f refuses a running job.
    let out = s.cli(&["rm", &name]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is running"), "{}", stderr(&out));

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
    let s = Server::start();
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
    std::thread::sleep(Duration::from_millis(2500));
    let out = s.cli(&["logs", &name]);
    assert_eq!(stdout(&out), "one\nthree\n");
    assert_eq!(stderr(&out), "two\n");
    let out = s.cli(&["rm", "-f", &name]);
    assert!(out.status.success());
    // The follower ends when the container goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while follow.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "logs -f did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut followed = String::new();
    follow
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut followed)
        .unwrap();
    assert_eq!(followed, "one\nthree\n");
}

#[test]
fn a_taken_name_is_refused_and_changes_nothing() {
    let s = Server::start();
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
    let s = Server::start();
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
    wait_until("no containers", Duration::from_secs(5), || {
        s.containers().is_empty()
    });
}

#[test]
fn a_job_file_runs() {
    let s = Server::start();
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
    let s = Server::start();
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
    wait_until("log output", Duration::from_secs(5), || {
        stdout(&s.cli(&["logs", &name])) == "kept\n"
    });
}

#[test]
fn server_restart_keeps_proc_and_ps_true() {
    let mut s = Server::start();
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
    wait_until("the killed job restarted", Duration::from_secs(15), || {
        let d = s.json(&["inspect", &die]);
        d["ps"]["status"] == "running" && d["ps"]["restarts"] == 1 && d["ps"]["last_exit"] == 137
    });
    let k = s.json(&["inspect", &keep]);
    assert_eq!(k["ps"]["status"], "running");
    assert_eq!(k["ps"]["restarts"], 0);
    assert_eq!(s.json(&["proc", "--json"]).as_array().unwrap().len(), 2);
    assert_eq!(s.containers().len(), 2);
    // Events keep it true after the restart too.
    docker(&["kill", &keep]);
    wait_until("the other job restarted", Duration::from_secs(15), || {
        let k = s.json(&["inspect", &keep]);
        k["ps"]["status"] == "running" && k["ps"]["restarts"] == 1
    });
    assert_eq!(s.containers().len(), 2);
    let table = stdout(&s.cli(&["ps"]));
    assert!(table.contains("(restarts 1, last exit 137)"), "{table}");
}

#[test]
fn a_crash_loop_backs_off_while_other_jobs_start() {
    let mut s = Server::start_with(&["--backoff", "1", "--backoff-max", "8"]);
    let crash = unique("crash");
    let out = s.cli(&["run", "-d", "--name", &crash, BUSYBOX, "sh", "-c", "exit 3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let started = Instant::now();
    // Other work is not starved meanwhile.
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
    std::thread::sleep(Duration::from_secs(8).saturating_sub(started.elapsed()));
    let c = s.json(&["inspect", &crash]);
    let restarts = c["ps"]["restarts"].as_u64().unwrap();
    // Backoff 1, 2, 4 s: about 3 restarts in 8 s; without backoff there would
    // be dozens.
    assert!(
        (2..=5).contains(&restarts),
        "restarts after 8 s: {restarts}"
    );
    assert_eq!(
        c["ps"]["exit_code"]
            .as_i64()
            .or(c["ps"]["last_exit"].as_i64()),
        Some(3)
    );
    let ps = s.json(&["ps", "--json"]);
    assert_eq!(
        ps.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "running")
            .count(),
        3
    );
    s.stop();
}

#[test]
fn a_failing_health_check_restarts_a_job() {
    let s = Server::start_with(&["--health-interval", "0.3"]);
    let name = unique("sick");
    // httpd without an index page: TCP works, GET / is a 404.
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
    wait_until(
        "restarted after failed health checks",
        Duration::from_secs(20),
        || {
            let j = s.json(&["inspect", &name]);
            j["ps"]["restarts"].as_u64().unwrap_or(0) >= 1
        },
    );
    // A tcp check on the same job passes: it keeps running.
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
    std::thread::sleep(Duration::from_secs(4));
    let j = s.json(&["inspect", &ok]);
    assert_eq!(j["ps"]["restarts"], 0);
    assert_eq!(j["ps"]["status"], "running");
    assert!(s.log().contains("health check failed"), "{}", s.log());
}

#[test]
fn requests_without_the_token_get_401() {
    let s = Server::start();
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
    let s = Server::start();
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
    let s = Server::start();
    let name = unique("sleepy");
    let child = s.spawn_cli(&["run", "--name", &name, BUSYBOX, "sleep", "300"]);
    wait_until("job running", Duration::from_secs(10), || {
        s.cli(&["inspect", &name]).status.success()
            && stdout(&docker(&["inspect", "-f", "{{.State.Running}}", &name])).trim() == "true"
    });
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_ne!(out.status.code(), Some(0));
    wait_until("container removed", Duration::from_secs(10), || {
        s.containers().is_empty()
    });
    assert!(!s.cli(&["inspect", &name]).status.success());
}

#[test]
fn an_interactive_tty_job_takes_keystrokes() {
    let s = Server::start();
    // `script` gives the CLI a real terminal; the shell in the container reads
    // what is typed there and its exit code comes back.
    let cmd = format!(
        "(sleep 1.5; printf 'echo typed-$((6*7))\\nexit 4\\n') | script -qec '{} --server {} --token {} run -it {} sh' /dev/null",
        bin(),
        s.url(),
        s.token(),
        BUSYBOX
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .output()
        .unwrap();
    let text = stdout(&out).replace('\r', "");
    assert!(text.contains("typed-42"), "{text}");
    assert_eq!(out.status.code(), Some(4), "{text}");
}

/// Issue 13: an attached job's output sometimes arrived twice, when Docker
/// replayed the container's log after the job had already started writing
/// to the attached stream. Many short jobs, a few at a time so that the
/// engine is busy, must each print exactly what they wrote, once, in order.
#[test]
fn attached_output_arrives_exactly_once() {
    let s = Server::start();
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
