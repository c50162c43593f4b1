//! A throwaway single-member etcd (Debian's `etcd` binary, 3.4) for tests:
//! free ports, a temporary data dir, killed on drop.

use crate::http::http_get;
use crate::wait::wait_until;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::net::{IpAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// A running etcd process; killed (and its data removed) on drop.
///
/// The process is also killed when the thread that started it ends
/// (`PR_SET_PDEATHSIG`), so a crashed test leaves no etcd behind: create it in
/// the test's own thread.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    dir: TempDir,
    ip: IpAddr,
    client_port: u16,
}

impl Etcd {
    /// Starts etcd with its client URL on `listen_ip` (e.g. `127.0.0.1`, or a
    /// test network's gateway address so containers can reach it) and a free
    /// port; waits until `/health` says it is healthy.
    pub fn start(listen_ip: &str) -> Result<Etcd> {
        let ip: IpAddr = listen_ip
            .parse()
            .with_context(|| format!("bad etcd listen address {listen_ip:?}"))?;
        let mut last = None;
        // Free ports can be taken between probing and etcd binding them: retry.
        for _ in 0..3 {
            match Self::try_start(ip) {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// Starts etcd on loopback (`127.0.0.1`).
    pub fn start_local() -> Result<Etcd> {
        Self::start("127.0.0.1")
    }

    fn try_start(ip: IpAddr) -> Result<Etcd> {
        let client_port = free_port(ip)?;
        let peer_port = free_port("127.0.0.1".parse()?)?;
        let dir = tempfile::Builder::new()
            .prefix("viking-test-etcd-")
            .tempdir()
            .context("etcd temp dir")?;
        let data = dir.path().join("data");
        let log = File::create(dir.path().join("etcd.log")).context("etcd log file")?;
        let client = format!("http://{}", sock(ip, client_port));
        let peer = format!("http://127.0.0.1:{peer_port}");
        let bin = std::env::var("VIKING_TEST_ETCD").unwrap_or_else(|_| "etcd".into());
        let mut cmd = Command::new(&bin);
        cmd.arg("--name")
            .arg("viking-test")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("viking-test={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args([
                "--initial-cluster-token",
                &format!("viking-test-{client_port}"),
            ])
            .args(["--snapshot-count", "10000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        set_parent_death_signal(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {bin} (install etcd-server?)"))?;
        let mut etcd = Etcd {
            child,
            dir,
            ip,
            client_port,
        };
        let addr = sock(ip, client_port);
        let waited = wait_until(
            "etcd health",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || -> Result<()> {
                if let Some(status) = etcd.child.try_wait()? {
                    bail!("etcd exited with {status}");
                }
                let r = http_get(&addr, "/health", None, Duration::from_secs(2))?;
                if r.is_success() && r.body.contains("true") {
                    Ok(())
                } else {
                    bail!("GET /health: {r:?}")
                }
            },
        );
        if let Err(e) = waited {
            bail!("{e:#}\n--- etcd log ---\n{}", etcd.log());
        }
        Ok(etcd)
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.host_port())
    }

    /// The client address without scheme, e.g. `127.0.0.1:40123`.
    pub fn host_port(&self) -> String {
        sock(self.ip, self.client_port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// etcd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sock(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// A port that was free on `ip` a moment ago.
pub(crate) fn free_port(ip: IpAddr) -> Result<u16> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("cannot bind {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// Has the child killed when the thread that spawned it ends.
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // The crate denies unsafe code; this is its one exception. `pre_exec` is
    // unsafe because the closure runs in the forked child before exec, where
    // only async-signal-safe calls are allowed.
    // SAFETY: the closure calls prctl (a plain syscall, async-signal-safe) and
    // reads errno; it allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                // The spawn fails with this error instead of leaving an etcd
                // that would outlive a crashed test.
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
