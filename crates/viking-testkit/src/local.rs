//! A single-host viking: a real `viking server` process on the machine's own
//! Docker engine, on a free loopback port, with its own data directory and
//! key prefix (so tests sharing one engine never see each other's
//! containers), and the CLI run against it. The server's log (filter
//! `VIKING_LOG=info`) is printed when a test panics.
//!
//! ```no_run
//! use viking_testkit::local::LocalServer;
//! // In a test of the `viking` crate: `env!("CARGO_BIN_EXE_viking")`.
//! let s = LocalServer::start("target/debug/viking");
//! let out = s.cli(&["ps"]);
//! assert!(out.status.success());
//! ```

use crate::util::{run_with_stdin, unique};
use crate::wait::wait_until;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// How long the server gets to come up and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A port that was free on loopback a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// A `viking server` process; stopped, and its containers removed, on drop.
#[derive(Debug)]
pub struct LocalServer {
    /// Extra arguments of `viking server`.
    pub extra: Vec<String>,
    /// The data directory (token, embedded store, volumes, `server.log`).
    pub dir: tempfile::TempDir,
    /// The loopback port it listens on.
    pub port: u16,
    /// Its `--key` prefix, unique to this server.
    pub key: String,
    /// Its `--name`, unique to this server.
    pub name: String,
    bin: PathBuf,
    child: Option<Child>,
}

impl LocalServer {
    /// Starts `bin server` and waits until it answers; panics if it does not.
    pub fn start(bin: impl Into<PathBuf>) -> LocalServer {
        Self::start_with(bin, &[])
    }

    /// Like [`LocalServer::start`] with extra `viking server` arguments.
    pub fn start_with(bin: impl Into<PathBuf>, extra: &[&str]) -> LocalServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut s = LocalServer {
            extra: extra.iter().map(|a| a.to_string()).collect(),
            dir,
            port: free_port(),
            key: format!("/{}", unique("t")),
            name: unique("node"),
            bin: bin.into(),
            child: None,
        };
        s.spawn();
        s
    }

    /// The `viking` binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `viking server ...` command line this server runs with.
    pub fn server_command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--key", &self.key, "--name", &self.name, "--resync", "2"])
            .args(&self.extra)
            // Many local servers share this machine's network namespace:
            // embassy's kernel rules are one host's, so they proxy
            // (the kernel path is tested on the harness's nodes).
            .env("VIKING_EMBASSY_MODE", "proxy")
            .env_remove("VIKING_TOKEN")
            .env("VIKING_LOG", "info");
        c
    }

    /// Starts the server process (again, after [`LocalServer::stop`]) and
    /// waits until it has written its token and answers `viking hosts`.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap_or_else(|e| panic!("server log file: {e}"));
        let child = self
            .server_command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let up = wait_until(
            "viking server to answer `viking hosts`",
            START_TIMEOUT,
            Duration::from_millis(50),
            || {
                if !self.dir.path().join("token").exists() {
                    return Err("no token file yet".to_string());
                }
                let out = self.cli(&["hosts"]);
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).into_owned())
                }
            },
        );
        if let Err(e) = up {
            panic!("{e:#}\n---- server log ----\n{}", self.log());
        }
    }

    /// Stops the server with SIGTERM (SIGKILL after 10 s); its containers
    /// keep running.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // The shell's `kill` builtin: no unsafe libc call, no kill binary needed.
        let _ = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &c.id().to_string()])
            .status();
        let ended = wait_until(
            "viking server to exit",
            STOP_TIMEOUT,
            Duration::from_millis(20),
            || c.try_wait().ok().flatten(),
        );
        if ended.is_err() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The cluster token (empty until the server wrote it).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// `viking --server <url> ARGS...` with the token in `VIKING_TOKEN`
    /// (not in the arguments, where `ps` shows it), not yet run.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--server", &self.url()])
            .env("VIKING_TOKEN", self.token())
            .args(args);
        c
    }

    /// Runs the CLI against this server with no stdin.
    pub fn cli(&self, args: &[&str]) -> Output {
        crate::util::run_bounded(
            &mut self.cli_command(args),
            None,
            crate::util::command_deadline(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs the CLI with `input` on its stdin.
    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        run_with_stdin(&mut self.cli_command(args), input).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts the CLI in the background, stdout and stderr piped.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        self.cli_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }

    /// Runs the CLI, which must succeed, and parses its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "viking {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("viking {args:?}: output is not JSON: {e}"))
    }

    /// Containers of this server's cluster on the local Docker engine.
    pub fn containers(&self) -> Vec<String> {
        self.try_containers()
            .unwrap_or_else(|e| panic!("cannot run docker: {e}"))
    }

    fn try_containers(&self) -> std::io::Result<Vec<String>> {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=viking.cluster={}", self.key))
            .stdin(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log());
        }
        self.stop();
        let ids = self.try_containers().unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdin(Stdio::null())
                .output();
        }
    }
}
