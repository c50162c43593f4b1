//! Test support: a real `viking server` process on a free port, with its
//! own data directory and key prefix (so tests sharing one Docker engine
//! never see each other's containers), and helpers to run the CLI.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BUSYBOX: &str = "viking-test/busybox";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_viking")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn unique(prefix: &str) -> String {
    let n: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!("{prefix}{:x}{:x}", std::process::id(), n & 0xffffff)
}

pub struct Server {
    pub extra: Vec<String>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub key: String,
    pub name: String,
    child: Option<Child>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Server {
            extra: extra.iter().map(|a| a.to_string()).collect(),
            dir,
            port: free_port(),
            key: format!("/{}", unique("t")),
            name: unique("node"),
            child: None,
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn server_command(&self) -> Command {
        let mut c = Command::new(bin());
        c.args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--data-dir", &self.dir.path().display().to_string()])
            .args(["--key", &self.key, "--name", &self.name, "--resync", "2"])
            .args(&self.extra)
            .env_remove("VIKING_TOKEN")
            .env("VIKING_LOG", "info");
        c
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let child = self
            .server_command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start viking server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.dir.path().join("token").exists() && self.cli(&["hosts"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("viking server did not come up:\n{}", self.log());
    }

    /// Stop the server with SIGTERM (its containers keep running).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(["--server", &self.url(), "--token", &self.token()])
            .args(args);
        c
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run viking")
    }

    pub fn cli_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cli_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run viking");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait viking");
        let _ = writer.join();
        out
    }

    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        self.cli_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run viking")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "viking {args:?} failed: {}",
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).expect("json output")
    }

    /// Containers of this test's cluster on the local Docker engine.
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=viking.cluster={}", self.key),
            ])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log());
        }
        self.stop();
        let ids = self.containers();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker")
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

pub fn path(p: &Path) -> PathBuf {
    p.to_path_buf()
}
