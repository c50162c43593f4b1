//! One node of a test cluster: a container with its own dockerd and,
//! optionally, `viking server`. Runs the CLI and Docker against it, kills,
//! restarts, partitions and heals it, and starts and stops its server.

use crate::http::{http_get, https_get};
use crate::opts::{ClusterOpts, BUSYBOX_IMAGE};
use crate::pki::{ClusterPki, NODE_TLS_DIR};
use crate::util::{check, host_docker, output, run_with_stdin, sh_quote, LABEL, OWNER_LABEL};
use crate::wait::wait_until;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

/// Where the viking server's output goes inside a node.
pub const SERVER_LOG_PATH: &str = "/var/log/viking.log";
/// The environment variable `viking server` reads its log filter from; the
/// test's own value is forwarded to the servers.
pub const LOG_FILTER_VAR: &str = "VIKING_LOG";
const PID_FILE: &str = "/run/viking.pid";

/// What the nodes of one cluster share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) network: String,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) token: String,
    pub(crate) etcd_endpoint: String,
    pub(crate) viking_bin: Option<PathBuf>,
    pub(crate) busybox_tar: PathBuf,
    pub(crate) opts: ClusterOpts,
    /// The cluster's CA and the harness's certificate; `None` in plain
    /// mode ([`ClusterOpts::insecure_http`]).
    pub(crate) pki: Option<ClusterPki>,
}

/// One node: a container with its own dockerd (and viking server).
#[derive(Debug)]
pub struct Node {
    index: usize,
    name: String,
    container: String,
    ip: Ipv4Addr,
    volume: Option<String>,
    /// The host directory with this node's certificate, key and CA.
    tls_dir: Option<PathBuf>,
    shared: Arc<Shared>,
}

impl Node {
    pub(crate) fn new(
        index: usize,
        cluster: &str,
        ip: Ipv4Addr,
        shared: Arc<Shared>,
    ) -> Result<Node> {
        let name = format!("n{}", index + 1);
        let tls_dir = match &shared.pki {
            Some(pki) => Some(pki.node_dir(&name, ip)?),
            None => None,
        };
        Ok(Node {
            index,
            container: format!("{cluster}-{name}"),
            volume: shared
                .opts
                .docker_volume
                .then(|| format!("{cluster}-{name}-docker")),
            name,
            ip,
            tls_dir,
            shared,
        })
    }

    /// The node's volume for `/var/lib/docker`, if it has one.
    pub(crate) fn volume(&self) -> Option<&str> {
        self.volume.as_deref()
    }

    /// The node's name (`n1`…), also its hostname and `viking server --name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 0-based index in the cluster.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host-side container name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The node's address on the test network.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `https://<ip>:<port>` of the node's viking server
    /// (`http://` in plain mode).
    pub fn url(&self) -> String {
        let scheme = if self.shared.pki.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}:{}", self.ip, self.shared.opts.port)
    }

    /// The host's viking CLI set up for this node, arguments still to add:
    /// `viking --server <url>` with the token (`VIKING_TOKEN`) and the
    /// cluster's CA (`--ca`; in plain mode `VIKING_INSECURE_HTTP=1`, which
    /// quiets the CLI's warning).
    pub fn cli_command(&self) -> Command {
        let bin = self
            .shared
            .viking_bin
            .as_ref()
            .expect("no viking binary: set ClusterOpts::viking_bin or build viking");
        let mut cmd = Command::new(bin);
        cmd.arg("--server")
            .arg(self.url())
            .env("VIKING_TOKEN", &self.shared.token);
        match &self.shared.pki {
            Some(pki) => {
                cmd.arg("--ca").arg(pki.ca_file());
            }
            None => {
                cmd.env("VIKING_INSECURE_HTTP", "1");
            }
        }
        cmd
    }

    /// Runs the host's viking CLI against this node
    /// ([`Node::cli_command`] with ARGS).
    pub fn cli<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cli_stdin(args, &[])
    }

    /// Like [`Node::cli`] with `stdin` fed to the process.
    pub fn cli_stdin<I, S>(&self, args: I, stdin: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cli_command();
        cmd.args(args);
        run_with_stdin(&mut cmd, stdin)
            .unwrap_or_else(|e| panic!("cannot run viking CLI {cmd:?}: {e:#}"))
    }

    /// Like [`Node::cli`] but fails unless the exit status is 0; returns stdout.
    pub fn cli_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.cli(&args);
        ok_stdout(&format!("viking {args:?} on {}", self.name), out)
    }

    /// Like [`Node::cli_ok`] and parses stdout as JSON.
    pub fn cli_json<I, S>(&self, args: I) -> Result<serde_json::Value>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.cli_ok(args)?;
        serde_json::from_str(&out).with_context(|| format!("CLI output is not JSON: {out}"))
    }

    /// `docker exec <node> docker ARGS...`: the node's inner Docker engine.
    pub fn docker<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", &self.container, "docker"]).args(args);
        output(&mut cmd).expect("harness bug: cannot run the docker CLI")
    }

    /// Like [`Node::docker`] but fails unless the exit status is 0; returns stdout.
    pub fn docker_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.docker(&args);
        ok_stdout(&format!("docker {args:?} in {}", self.name), out)
    }

    /// `docker exec <node> ARGS...`: any command in the node itself.
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", &self.container]).args(args);
        output(&mut cmd).expect("harness bug: cannot run the docker CLI")
    }

    /// `sh -c SCRIPT` in the node.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(["sh", "-c", script])
    }

    /// Whether the node container is running.
    pub fn is_running(&self) -> bool {
        host_docker(["inspect", "-f", "{{.State.Running}}", &self.container])
            .map(|s| s == "true")
            .unwrap_or(false)
    }

    /// Ends the node abruptly (`docker kill`): its dockerd, jobs and viking die.
    pub fn kill(&self) -> Result<()> {
        host_docker(["kill", &self.container]).map(|_| ())
    }

    /// Starts a killed/stopped node again: waits for its dockerd, reloads the
    /// busybox image when it is gone (tmpfs engine state) and, when the cluster
    /// runs servers, restarts `viking server` and waits for ping.
    pub fn restart(&self) -> Result<()> {
        host_docker(["start", &self.container])?;
        self.wait_dockerd()?;
        if self
            .docker(["image", "inspect", "--format", "{{.Id}}", BUSYBOX_IMAGE])
            .status
            .success()
        {
            // still there (volume-backed engine state)
        } else {
            self.load_busybox()?;
        }
        if self.shared.opts.start_servers {
            self.start_server()?;
        }
        Ok(())
    }

    /// Cuts the node off the test network (from the other nodes, etcd and the host).
    pub fn partition(&self) -> Result<()> {
        host_docker([
            "network",
            "disconnect",
            &self.shared.network,
            &self.container,
        ])
        .map(|_| ())
    }

    /// Reconnects the node to the test network with its address.
    pub fn heal(&self) -> Result<()> {
        host_docker([
            "network",
            "connect",
            "--ip",
            &self.ip.to_string(),
            &self.shared.network,
            &self.container,
        ])
        .map(|_| ())
    }

    /// Starts `viking server` in the node (in the background, logging to
    /// [`SERVER_LOG_PATH`]) and waits until it answers ping. Fails if one is running.
    pub fn start_server(&self) -> Result<()> {
        if self.server_running()? {
            bail!("viking server already running in {}", self.name);
        }
        let o = &self.shared.opts;
        let mut args: Vec<String> = vec![
            "viking".into(),
            "server".into(),
            "--name".into(),
            self.name.clone(),
            "--ip".into(),
            self.ip.to_string(),
            "--listen".into(),
            format!("0.0.0.0:{}", o.port),
            "--etcd".into(),
            self.shared.etcd_endpoint.clone(),
            "--data-dir".into(),
            "/var/lib/viking".into(),
        ];
        if self.shared.pki.is_some() {
            for (flag, file) in [
                ("--tls-cert", "cert.pem"),
                ("--tls-key", "key.pem"),
                ("--ca", "ca.pem"),
                ("--etcd-cert", "etcd.pem"),
                ("--etcd-key", "etcd-key.pem"),
            ] {
                args.push(flag.into());
                args.push(format!("{NODE_TLS_DIR}/{file}"));
            }
        } else {
            // The plain baseline: the test's own network.
            args.push("--insecure-http".into());
        }
        if let Some(tags) = o.tags.get(self.index).filter(|t| !t.is_empty()) {
            args.push("--tags".into());
            args.push(tags.clone());
        }
        args.extend(o.server_args.iter().cloned());
        let cmdline: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
        let script = format!(
            "echo \"=== viking server start $(date -Is) ===\" >>{SERVER_LOG_PATH}; \
             echo $$ >{PID_FILE}; exec {} >>{SERVER_LOG_PATH} 2>&1",
            cmdline.join(" ")
        );
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-d"]);
        let mut env = o.server_env.clone();
        // The token in the environment, not in the server's arguments.
        env.push(("VIKING_TOKEN".into(), self.shared.token.clone()));
        if !env.iter().any(|(k, _)| k == "NO_COLOR") {
            env.push(("NO_COLOR".into(), "1".into()));
        }
        // The server reads its log filter from VIKING_LOG (crates/viking/src/main.rs).
        if let Ok(v) = std::env::var(LOG_FILTER_VAR) {
            if !env.iter().any(|(k, _)| k == LOG_FILTER_VAR) {
                env.push((LOG_FILTER_VAR.into(), v));
            }
        }
        for (k, v) in &env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.args([&self.container, "sh", "-c", &script]);
        check(&mut cmd)?;
        self.wait_ping(o.server_timeout)
    }

    /// Stops the node's viking server (SIGTERM, SIGKILL after 10 s), leaving the
    /// node and its dockerd running.
    pub fn stop_server(&self) -> Result<()> {
        self.signal_server("TERM", 50)
    }

    /// Kills the node's viking server (SIGKILL): it cleans up nothing, as
    /// in a crash.
    pub fn kill_server(&self) -> Result<()> {
        self.signal_server("KILL", 50)
    }

    /// Stops the node's viking server to restart (SIGHUP): it stops
    /// gracefully but leaves what a restart takes over (embassy's kernel
    /// rules). Waits until it has exited.
    pub fn hangup_server(&self) -> Result<()> {
        self.signal_server("HUP", 50)
    }

    fn signal_server(&self, sig: &str, tries: u32) -> Result<()> {
        // Waits (0.2 s per try) for the process to end; SIGKILL after `tries`.
        let script = format!(
            "p=$(cat {PID_FILE} 2>/dev/null) || exit 0; kill -{sig} $p 2>/dev/null || \
             {{ rm -f {PID_FILE}; exit 0; }}; i=0; while kill -0 $p 2>/dev/null; do \
             i=$((i+1)); [ $i -gt {tries} ] && kill -KILL $p; sleep 0.2; done; rm -f {PID_FILE}"
        );
        ok_stdout(&format!("stop viking in {}", self.name), self.sh(&script)).map(|_| ())
    }

    /// Freezes the node's viking server (SIGSTOP): the process stays and
    /// its kernel still accepts connections, but it answers nothing and
    /// renews no lease, until [`Node::resume_server`].
    pub fn pause_server(&self) -> Result<()> {
        self.signal_once("STOP")
    }

    /// Lets a server frozen by [`Node::pause_server`] run again (SIGCONT).
    pub fn resume_server(&self) -> Result<()> {
        self.signal_once("CONT")
    }

    fn signal_once(&self, sig: &str) -> Result<()> {
        let script = format!("kill -{sig} $(cat {PID_FILE})");
        ok_stdout(
            &format!("SIG{sig} viking in {}", self.name),
            self.sh(&script),
        )
        .map(|_| ())
    }

    /// Whether a viking server process is alive in the node.
    pub fn server_running(&self) -> Result<bool> {
        let out = self.sh(&format!(
            "p=$(cat {PID_FILE} 2>/dev/null) || exit 1; kill -0 $p 2>/dev/null"
        ));
        Ok(out.status.success())
    }

    /// `GET /v1/ping` on the node's server with the cluster token.
    pub fn ping(&self) -> Result<bool> {
        let addr = format!("{}:{}", self.ip, self.shared.opts.port);
        let token = Some(self.shared.token.as_str());
        let timeout = Duration::from_secs(2);
        let r = match &self.shared.pki {
            Some(pki) => https_get(
                &addr,
                "/v1/ping",
                token,
                timeout,
                Arc::clone(&pki.client_config),
            )?,
            None => http_get(&addr, "/v1/ping", token, timeout)?,
        };
        Ok(r.is_success())
    }

    /// Waits until the server answers ping; fails early (with the log) if it died.
    pub fn wait_ping(&self, timeout: Duration) -> Result<()> {
        let r = wait_until(
            &format!("viking server on {}", self.name),
            timeout,
            Duration::from_millis(200),
            || {
                let pinged = match self.ping() {
                    Ok(true) => return Ok(()),
                    Ok(false) => "ping answered with an error".to_string(),
                    Err(e) => format!("ping: {e:#}"),
                };
                // The pid file appears right after `docker exec -d`; no file yet = starting.
                let out = self.sh(&format!(
                    "test -f {PID_FILE} || exit 0; kill -0 $(cat {PID_FILE}) 2>/dev/null"
                ));
                if !out.status.success() {
                    return Err("viking server exited".to_string());
                }
                Err(pinged)
            },
        );
        r.map_err(|e| anyhow!("{e:#}\n--- {} ---\n{}", SERVER_LOG_PATH, self.log_tail(40)))
    }

    /// The node's viking log (works on stopped nodes too).
    pub fn logs(&self) -> Result<String> {
        let out = self.exec(["cat", SERVER_LOG_PATH]);
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        // Not running: copy it out of the container's filesystem as a tar stream.
        let out = output(Command::new("docker").args([
            "cp",
            &format!("{}:{SERVER_LOG_PATH}", self.container),
            "-",
        ]))?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(untar_first(&out.stdout)).into_owned())
    }

    /// The node's dockerd output (`docker logs`).
    pub fn dockerd_logs(&self) -> Result<String> {
        let out = output(Command::new("docker").args(["logs", &self.container]))?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn log_tail(&self, n: usize) -> String {
        let log = self.logs().unwrap_or_else(|e| format!("<no log: {e:#}>"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Creates and starts the node container, then dockerd, busybox and viking.
    pub(crate) fn create(&self, owner: &str) -> Result<()> {
        let s = &self.shared;
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", &self.container])
            .args(["--hostname", &self.name])
            .args(["--network", &s.network, "--ip", &self.ip.to_string()])
            .args(["--label", LABEL])
            .arg("--label")
            .arg(format!("{OWNER_LABEL}={owner}"))
            .arg("--label")
            .arg(format!("viking-test.cluster={}", s.network))
            .args(["--cap-add=ALL", "--cap-drop=SYS_RESOURCE"])
            .args(["--security-opt", "seccomp=unconfined"])
            .args(["--security-opt", "apparmor=unconfined"])
            .arg("--device-cgroup-rule=a *:* rwm")
            .args(["--tmpfs", "/run"])
            .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup"]);
        match &self.volume {
            Some(vol) => {
                host_docker([
                    "volume",
                    "create",
                    "--label",
                    LABEL,
                    "--label",
                    &format!("{OWNER_LABEL}={owner}"),
                    vol,
                ])?;
                cmd.args(["-v", &format!("{vol}:/var/lib/docker")]);
            }
            None => {
                cmd.args(["--tmpfs", "/var/lib/docker:exec"]);
            }
        }
        if let Some(bin) = &s.viking_bin {
            cmd.arg("-v")
                .arg(format!("{}:/usr/local/bin/viking:ro", path_str(bin)?));
        }
        if let Some(dir) = &self.tls_dir {
            cmd.arg("-v")
                .arg(format!("{}:{NODE_TLS_DIR}:ro", path_str(dir)?));
        }
        cmd.arg(&s.opts.node_image)
            .args(["dockerd", "--host", "unix:///var/run/docker.sock"]);
        check(&mut cmd)?;
        self.wait_dockerd()?;
        self.load_busybox()?;
        if s.opts.start_servers {
            self.start_server()?;
        }
        Ok(())
    }

    fn wait_dockerd(&self) -> Result<()> {
        let r = wait_until(
            &format!("dockerd in {}", self.name),
            self.shared.opts.dockerd_timeout,
            Duration::from_millis(250),
            || {
                if !self.is_running() {
                    return Err("node container is not running".to_string());
                }
                let out = self.docker(["info", "--format", "{{.ID}}"]);
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "docker info: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            },
        );
        r.map_err(|e| {
            let logs = self.dockerd_logs().unwrap_or_default();
            let lines: Vec<&str> = logs.lines().collect();
            anyhow!(
                "{e:#}\n--- dockerd output ---\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            )
        })
    }

    fn load_busybox(&self) -> Result<()> {
        let tar = File::open(&self.shared.busybox_tar).context("busybox tar")?;
        let mut cmd = Command::new("docker");
        cmd.args(["exec", "-i", &self.container, "docker", "load", "-q"])
            .stdin(tar);
        let out = cmd.output().context("docker load")?;
        ok_stdout(&format!("loading busybox into {}", self.name), out).map(|_| ())
    }
}

fn ok_stdout(what: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): stderr: {} stdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))
}

/// The content of the first file in a tar stream (as produced by `docker cp - `).
fn untar_first(tar: &[u8]) -> &[u8] {
    if tar.len() < 512 {
        return &[];
    }
    let size_field = String::from_utf8_lossy(&tar[124..136]);
    let size = usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
        .unwrap_or(0);
    &tar[512..(512 + size).min(tar.len())]
}
