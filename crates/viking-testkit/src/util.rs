//! Small helpers shared by the harness: running commands (with piped stdin
//! too), quoting, unique names and the "owner" tag that lets `cleanup_stale` tell leftovers of
//! dead test processes from resources of tests that are still running.

use anyhow::{bail, Context, Result};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Label put on everything the harness creates in Docker.
pub const LABEL: &str = "viking-test=1";
/// Label key holding the owning test process (`<pid>:<start time>`).
pub const OWNER_LABEL: &str = "viking-test.owner";

/// Runs a command and returns its output (whatever its exit status).
pub(crate) fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))
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
/// (or fills its stdout first) cannot deadlock the caller.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Result<Output> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let mut pipe = child.stdin.take().context("stdin pipe")?;
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that exits without reading all of it closes the pipe: not an error.
        let _ = pipe.write_all(&data);
    });
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    let _ = writer.join();
    Ok(out)
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
