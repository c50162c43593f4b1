//! Small helpers shared by the harness: running commands (with piped stdin
//! too), quoting, unique names and the "owner" tag that lets `cleanup_stale` tell leftovers of
//! dead test processes from resources of tests that are still running.

use anyhow::{bail, Context, Result};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Label put on everything the harness creates in Docker.
pub const LABEL: &str = "viking-test=1";
/// Label key holding the owning test process (`<pid>:<start time>`).
pub const OWNER_LABEL: &str = "viking-test.owner";

/// Runs a command and returns its output (whatever its exit status).
pub(crate) fn output(cmd: &mut Command) -> Result<Output> {
    run_bounded(cmd, None, command_deadline())
}

/// Runs a command, fails when it exits non-zero, returns its trimmed stdout.
pub(crate) fn check(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker ARGS...` on the host; fails on non-zero exit, returns trimmed stdout.
pub fn host_docker<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    check(Command::new("docker").args(args))
}

/// Quotes a string for `sh`.
pub(crate) fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A fresh pseudo-random number (not cryptographic; for names and tokens).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(d) = SystemTime::now().duration_since(UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: parse after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Identifies this test process: `<pid>:<start time>`.
pub(crate) fn owner_id() -> String {
    let pid = std::process::id();
    format!("{pid}:{}", start_time(pid).unwrap_or(0))
}

/// Whether the process named by an [`owner_id`] string is still running.
pub(crate) fn owner_alive(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once(':') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid) == Some(start)
}

/// Runs `cmd` with `stdin` fed to it and its stdout and stderr captured. The
/// input is written from a thread, so a child that does not read its stdin
/// (or fills its stdout first) cannot deadlock the caller. Bounded like
/// every command the harness runs (see [`run_bounded`]).
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Result<Output> {
    run_bounded(cmd, Some(stdin.to_vec()), command_deadline())
}

/// How long one command of the harness may take: 300 s, or
/// `VIKING_TEST_COMMAND_TIMEOUT` seconds. A command that hangs fails its
/// test with what it printed so far instead of hanging the suite (and CI).
pub fn command_deadline() -> Duration {
    std::env::var("VIKING_TEST_COMMAND_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs)
}

/// Runs `cmd` in a process group of its own, with `stdin` (or nothing)
/// as its input, its stdout and stderr captured. When it has not ended
/// within `limit`, the whole group is killed and the answer is an error
/// naming the command, with what it printed so far.
pub fn run_bounded(cmd: &mut Command, stdin: Option<Vec<u8>>, limit: Duration) -> Result<Output> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            // A child that exits without reading all of it closes the pipe: not an error.
            let _ = pipe.write_all(&data);
        });
    }
    // Readers of their own, so a full pipe never stops the child; what
    // they read so far is there for the error of a command that hangs.
    let read = |r: Option<Box<dyn Read + Send>>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        if let Some(mut r) = r {
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock().map(|mut v| v.extend_from_slice(&chunk[..n])).ok();
                }
                let _ = tx.send(());
            });
        }
        (buf, rx)
    };
    let (out, out_done) = read(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let (err, err_done) = read(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let taken = |b: &Arc<Mutex<Vec<u8>>>| b.lock().map(|v| v.clone()).unwrap_or_default();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {cmd:?}"))?
        {
            break status;
        }
        if start.elapsed() >= limit {
            // The whole group: a shell's children too.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{cmd:?} did not end within {limit:?} (killed); its stdout so far: {:?}; its stderr so far: {:?}",
                String::from_utf8_lossy(&taken(&out)),
                String::from_utf8_lossy(&taken(&err))
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The child ended; a grandchild that kept its pipes open gets a
    // little while, not forever.
    let _ = out_done.recv_timeout(Duration::from_secs(10));
    let _ = err_done.recv_timeout(Duration::from_secs(10));
    Ok(Output {
        status,
        stdout: taken(&out),
        stderr: taken(&err),
    })
}

/// A name that no other test (in this or a concurrent process) uses:
/// `prefix` followed by hex digits.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:012x}", random_u64() & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_hangs_is_killed_with_its_children() {
        let start = std::time::Instant::now();
        let e = run_bounded(
            Command::new("sh").args(["-c", "echo begun; sleep 60.0417 & sleep 60"]),
            None,
            Duration::from_millis(300),
        )
        .expect_err("it hangs");
        // The background sleep held stdout too: killed with the group.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(format!("{e:#}").contains("begun"), "{e:#}");
        // No orphan left behind.
        let orphan = || {
            Command::new("pgrep")
                .args(["-f", "sleep 60.0417"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let waited = std::time::Instant::now();
        while orphan() && waited.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!orphan(), "the shell's child outlived it");
        let o = run_bounded(
            Command::new("tr").args(["a-z", "A-Z"]),
            Some(b"piped".to_vec()),
            Duration::from_secs(30),
        )
        .expect("tr");
        assert_eq!(o.stdout, b"PIPED");
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("abc"), "abc");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn stdin_reaches_the_child_and_its_output_comes_back() {
        let out = run_with_stdin(Command::new("tr").args(["a-z", "A-Z"]), b"hello").unwrap();
        assert_eq!(out.stdout, b"HELLO");
        // A child that never reads its stdin does not block us.
        let big = vec![b'x'; 1 << 20];
        let out = run_with_stdin(&mut Command::new("true"), &big).unwrap();
        assert!(out.status.success());
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("t"), unique("t"));
        assert!(unique("job").starts_with("job"));
    }

    #[test]
    fn owner_of_self_is_alive() {
        assert!(owner_alive(&owner_id()));
        assert!(!owner_alive("garbage"));
        assert!(!owner_alive(&format!("{}:1", std::process::id())));
    }
}
