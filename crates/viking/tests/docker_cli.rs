//! The Docker Engine API (issue 20) driven by the stock docker CLI of this
//! machine against a real three-host cluster over TLS: the CLI trusts the
//! cluster's CA and sends the token from its `config.json`'s
//! `HttpHeaders`, both written by `viking context export --docker DIR`. Every docker command runs under `timeout`, so a server
//! that holds `/wait`'s headers back (the trap that deadlocks `docker run`)
//! fails the test instead of hanging it.
//!
//! Needs `scripts/test-images.sh --node` and the docker CLI.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use viking_testkit::{eventually, run_bounded, Cluster, ClusterOpts, Node, POLL};

const BUSYBOX: &str = "viking-test/busybox";

struct Docker {
    /// What `viking context export --docker` wrote: config.json (the
    /// token) and ca.pem.
    dir: tempfile::TempDir,
}

impl Docker {
    /// The docker CLI's files, from `viking context export --docker DIR`
    /// on `n`'s context.
    fn exported(n: &Node) -> Docker {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("docker");
        let lines = n
            .cli_ok(["context", "export", "--docker", target.to_str().unwrap()])
            .expect("context export --docker");
        assert!(
            lines.contains(&format!("export DOCKER_HOST=tcp://{}:8791\n", n.ip())),
            "{lines}"
        );
        assert!(lines.contains("export DOCKER_TLS_VERIFY=1\n"), "{lines}");
        Docker { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    /// `docker` aimed at `n`'s server, as shell words: `$DOCKER`, and
    /// `$D` bounded by `timeout`.
    fn prefix(&self, n: &Node) -> String {
        format!(
            "DOCKER=\"docker -H tcp://{}:8791\"; D=\"timeout -k 5 60 $DOCKER\"",
            n.ip()
        )
    }

    /// Runs a shell script where `$D` (bounded) and `$DOCKER` are the
    /// docker command for `n`.
    fn sh(&self, n: &Node, script: &str, stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{}; {script}", self.prefix(n)))
            .env("DOCKER_CONFIG", self.path())
            .env("DOCKER_CERT_PATH", self.path())
            .env("DOCKER_TLS_VERIFY", "1")
            // As CI runs it: no $SHELL, so `script` uses /bin/sh.
            .env_remove("SHELL")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        // Bounded as a whole too (the group killed), so nothing a script
        // starts can hang the suite.
        run_bounded(
            &mut cmd,
            stdin.map(<[u8]>::to_vec),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn run(&self, n: &Node, args: &str) -> Output {
        self.sh(n, &format!("$D {args}"), None)
    }

    fn ok(&self, n: &Node, args: &str) -> String {
        let o = self.run(n, args);
        assert!(
            o.status.success(),
            "docker {args}: {:?}\n{}{}",
            o.status.code(),
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_docker_cli_drives_the_fleet() {
    assert!(
        Command::new("docker").arg("--version").output().is_ok(),
        "the docker CLI is needed"
    );
    let c = Cluster::start(
        3,
        ClusterOpts {
            viking_bin: Some(env!("CARGO_BIN_EXE_viking").into()),
            ..Default::default()
        },
    )
    .expect("cluster");
    let (n1, n2, n3) = (c.node(0), c.node(1), c.node(2));
    // The CA in the store, as in a mesh: the export gets a client
    // certificate too.
    c.put_ca_in_store().expect("the CA in the store");
    let d = Docker::exported(n1);
    assert!(d.path().join("cert.pem").exists() && d.path().join("key.pem").exists());
    // The client certificate alone is a credential (no token sent)...
    let bare = tempfile::tempdir().expect("tempdir");
    let only_cert = |cert_path: &std::path::Path| {
        let mut cmd = Command::new("docker");
        cmd.args(["-H", &format!("tcp://{}:8791", n2.ip()), "ps"])
            .env("DOCKER_CONFIG", bare.path())
            .env("DOCKER_CERT_PATH", cert_path)
            .env("DOCKER_TLS_VERIFY", "1")
            .env_remove("DOCKER_HOST");
        run_bounded(&mut cmd, None, Duration::from_secs(60)).expect("docker")
    };
    let o = only_cert(&d.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    // ...and without it or the token, nothing is answered.
    let ca_only = tempfile::tempdir().expect("tempdir");
    std::fs::copy(d.path().join("ca.pem"), ca_only.path().join("ca.pem")).expect("ca.pem");
    let o = only_cert(ca_only.path());
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("missing or wrong token"),
        "{}",
        text(&o.stderr)
    );

    // version and info: the fleet.
    let v = d.ok(n1, "version --format '{{.Server.APIVersion}}'");
    assert_eq!(v.trim(), "1.44");
    let info = d.ok(n1, "info");
    assert!(info.contains("Hosts: 3"), "{info}");
    for n in c.nodes() {
        assert!(
            info.contains(&format!(" {}: {}", n.name(), n.ip())),
            "{info}"
        );
    }

    // run -d: a daemonized viking job placed by dowding.
    let id = d.ok(
        n1,
        &format!("run -d --name web -p 8080 -v /data -e K=V {BUSYBOX} sh -c 'echo started; exec httpd -f -p 8080'"),
    );
    assert_eq!(id.trim().len(), 64, "{id}");
    let host = n1.cli_json(["inspect", "web"]).unwrap()["ps"]["node"]
        .as_str()
        .expect("placed")
        .to_string();
    let names = d.ok(n2, "ps --format '{{.Names}} {{.Ports}}'");
    assert!(names.contains(&format!("{host}/web ")), "{names}");
    assert_eq!(
        d.ok(
            n3,
            "inspect -f '{{.Node.Name}} {{.Config.Env}} {{.State.Running}}' web"
        )
        .trim(),
        format!("{host} [K=V] true")
    );
    assert_eq!(d.ok(n2, "ps -q --filter name=web").trim(), &id.trim()[..12]);
    assert!(d.ok(n1, "logs web").contains("started"));

    // A name taken anywhere: 409; an unknown container: 404.
    let o = d.run(n2, &format!("run -d --name web {BUSYBOX} true"));
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o.stderr).contains("Conflict. The container name \"/web\" is already in use"),
        "{}",
        text(&o.stderr)
    );
    let o = d.run(n1, "stop nope");
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("No such container: nope"),
        "{}",
        text(&o.stderr)
    );

    // Attached runs: stdin, stdout and stderr, the exit code, and a pipe
    // between two jobs on two other hosts, both through n1.
    let o = d.sh(
        n1,
        &format!("$D run --rm {BUSYBOX} sh -c 'echo out; echo err >&2; exit 3'"),
        None,
    );
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(text(&o.stdout), "out\n");
    assert_eq!(text(&o.stderr), "err\n");
    let o = d.sh(
        n1,
        &format!(
            "$D run -i --rm -e VIKING_HOST={} {BUSYBOX} tr a-z A-Z | $D run -i --rm -e VIKING_HOST={} {BUSYBOX} rev",
            n2.name(),
            n3.name()
        ),
        Some(b"hello\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "OLLEH\n");

    // exec: through n1 into the job on its host, with stdin, stderr and
    // the exit code; viking's own `viking exec` the same way.
    let o = d.sh(
        n1,
        "$D exec -i web sh -c 'tr a-z A-Z; echo err >&2; exit 4'",
        Some(b"piped\n"),
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "PIPED\n");
    assert_eq!(text(&o.stderr), "err\n");
    let o = n2.cli(["exec", "web", "sh", "-c", "echo $K; exit 5"]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(text(&o.stdout), "V\n");
    let o = d.run(n1, "exec --privileged web true");
    assert!(
        text(&o.stderr).contains("Privileged: "),
        "{}",
        text(&o.stderr)
    );

    // run -it: a TTY (one raw stream), under a pseudo-terminal. The
    // timeout goes around `script`, not inside it: under the shell that
    // script starts (the caller's $SHELL, dash when it has none, as in CI)
    // a `timeout` inside is a forked child in a process group of its own,
    // the background of the pty, and docker's raw mode (tcsetattr) stops
    // it with SIGTTOU until it is killed.
    let o = d.sh(
        n3,
        &format!("timeout -k 5 60 script -qec \"$DOCKER run -it --rm {BUSYBOX} sh -c 'tty >/dev/null && echo a-tty; exit 2'\" /dev/null"),
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(
        text(&o.stdout).contains("a-tty\r\n"),
        "{:?}",
        text(&o.stdout)
    );

    // logs -f follows until the container ends; --tail keeps the last lines.
    d.ok(
        n1,
        &format!("run -d --name ticker {BUSYBOX} sh -c 'echo one; sleep 2; echo two; sleep 1000'"),
    );
    let o = d.sh(
        n2,
        "( $D logs -f ticker > /tmp/viking-docker-follow.$$ & p=$!; i=0; \
           while ! grep -q two /tmp/viking-docker-follow.$$; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done; \
           kill $p; cat /tmp/viking-docker-follow.$$; rm -f /tmp/viking-docker-follow.$$ )",
        None,
    );
    assert_eq!(text(&o.stdout), "one\ntwo\n", "{}", text(&o.stderr));
    assert_eq!(d.ok(n3, "logs --tail 1 ticker"), "two\n");

    // kill: a signal reaches the job's process where it runs, through any
    // server; the job stays desired. KILL (the default) stops it for good.
    d.ok(
        n1,
        &format!("run -d --name trapper {BUSYBOX} sh -c 'trap \"echo got-hup\" HUP; echo ready; while :; do sleep 0.1; done'"),
    );
    eventually("trapper ready", Duration::from_secs(20), POLL, || {
        d.run(n1, "logs trapper").stdout.starts_with(b"ready")
    });
    assert_eq!(d.ok(n2, "kill -s HUP trapper"), "trapper\n");
    eventually("trapper got the HUP", Duration::from_secs(20), POLL, || {
        text(&d.run(n3, "logs trapper").stdout) == "ready\ngot-hup\n"
    });
    let o = d.run(n1, "kill -s NOPE trapper");
    assert!(
        text(&o.stderr).contains("signal: \"NOPE\" is not a signal"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(d.ok(n3, "kill trapper"), "trapper\n");
    let state = d.ok(n1, "inspect -f '{{.State.Status}}' trapper");
    assert_eq!(state.trim(), "exited", "{state}");
    assert!(
        !n1.cli_ok(["proc"]).expect("proc").contains("trapper"),
        "a killed job left in viking-proc"
    );
    let o = d.run(n2, "kill nope");
    assert!(
        text(&o.stderr).contains("No such container: nope"),
        "{}",
        text(&o.stderr)
    );
    // docker run passes the signals of its terminal on (its sig-proxy):
    // ^C reaches the attached job, whose exit code is docker run's.
    let o = d.sh(
        n2,
        &format!("( $DOCKER run --rm --name sigjob {BUSYBOX} sh -c 'trap \"echo got-int; exit 7\" INT; echo ready; while :; do sleep 0.1; done' > /tmp/viking-docker-int.$$ & p=$!; i=0; \
           until $D ps --filter name=sigjob --format '{{{{.State}}}}' | grep -q running && grep -q ready /tmp/viking-docker-int.$$; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.1; done; \
           kill -INT $p; wait $p; echo rc=$?; cat /tmp/viking-docker-int.$$; rm -f /tmp/viking-docker-int.$$ )"),
        None,
    );
    assert_eq!(
        text(&o.stdout),
        "rc=7\nready\ngot-int\n",
        "{}",
        text(&o.stderr)
    );

    // Refused options: Docker's error naming what viking refuses, and no
    // trace (no record, no container).
    for (flag, field) in [
        ("--privileged", "HostConfig.Privileged"),
        ("-v /etc:/host-etc", "HostConfig.Binds"),
        ("--network host", "HostConfig.NetworkMode"),
        ("--pid host", "HostConfig.PidMode"),
        ("--cap-add SYS_ADMIN", "HostConfig.CapAdd"),
        ("--device /dev/null", "HostConfig.Devices"),
    ] {
        let o = d.run(n1, &format!("run -d --name bad {flag} {BUSYBOX} true"));
        assert_eq!(o.status.code(), Some(125), "{flag}");
        assert!(
            text(&o.stderr).contains(&format!("Error response from daemon: {field}: ")),
            "{flag}: {}",
            text(&o.stderr)
        );
        assert!(
            !n1.cli(["inspect", "bad"]).status.success(),
            "{flag} left a record"
        );
        for n in c.nodes() {
            assert_eq!(
                n.docker_ok(["ps", "-aq", "--filter", "name=bad"])
                    .unwrap()
                    .trim(),
                "",
                "{flag} left a container on {}",
                n.name()
            );
        }
    }

    // pull on every live host; images lists every host's.
    let o = d.run(n2, &format!("pull {BUSYBOX}"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    for n in c.nodes() {
        assert!(
            text(&o.stdout).contains(&format!(
                "{}: docker.io/{BUSYBOX}:latest is sha256:",
                n.name()
            )),
            "{}",
            text(&o.stdout)
        );
    }
    let o = d.run(n2, "pull nope/nothing:1");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("docker.io/nope/nothing:1 is not on"),
        "{}",
        text(&o.stderr)
    );
    let images = d.ok(n1, "images --format '{{.Repository}}:{{.Tag}}'");
    for n in c.nodes() {
        assert!(
            images.contains(&format!("{}/{BUSYBOX}:latest", n.name())),
            "{images}"
        );
    }

    // restart: a new container of the same job on its host.
    let before = n1.cli_json(["inspect", "web"]).unwrap()["ps"]["container_id"].clone();
    d.ok(n3, "restart web");
    let after = n1.cli_json(["inspect", "web"]).unwrap()["ps"].clone();
    assert_ne!(after["container_id"], before);
    assert_eq!(after["status"], "running");
    assert_eq!(after["node"], host.as_str());

    // What viking does not do: Docker's JSON error, at once.
    let o = d.run(n1, "network ls");
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("does not do GET /networks"),
        "{}",
        text(&o.stderr)
    );

    // stop and rm: the job leaves viking too.
    d.ok(n2, "stop -t 1 web");
    eventually("web stopped", Duration::from_secs(20), POLL, || {
        !n1.cli_json(["proc", "--json"])
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["job"]["name"] == "web")
    });
    d.ok(n3, "rm -f web ticker");
    let left = d.ok(n1, "ps -a --format '{{.Names}}'");
    assert!(!left.contains("web") && !left.contains("ticker"), "{left}");
}
