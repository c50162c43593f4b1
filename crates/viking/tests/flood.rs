//! A flood of idle connections cannot stop a server (issue 14, H4), end to
//! end on one real server: 3,000 idle TCP connections to the API port (no
//! token), then 3,000 idle connections from a container to an ambassador
//! port, each after sending one byte. Through both, an authenticated
//! `viking ps` answers within a second, a new connection to the service is
//! served or closed cleanly (never left hanging), and the server's memory
//! and descriptors stay bounded. The figures are printed
//! (`cargo test -p viking --test flood -- --nocapture`).
//!
//! The server starts with a soft open-files limit of 1024, as under a shell
//! or systemd; it must raise it to the hard limit itself.
//!
//! `VIKING_FLOOD_BIN=/path/to/viking` runs the same flood against another
//! build (e.g. one from before these limits, for a before/after figure).
//!
//! Needs the `viking-test/busybox` image (`scripts/test-images.sh`).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use viking_testkit::local::LocalServer;
use viking_testkit::{eventually, wait_until, BUSYBOX_IMAGE};

const FLOOD: usize = 3000;

/// Sets this process's soft open-files limit (children inherit it); returns
/// the hard limit.
#[allow(unsafe_code)]
fn set_nofile(soft: Option<u64>) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, exclusively borrowed struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft.unwrap_or(lim.rlim_max).min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_max
}

/// The pid of the server whose data directory is `dir`.
fn server_pid(dir: &std::path::Path) -> u32 {
    let dir = dir.to_string_lossy().into_owned();
    let found = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.get(1) == Some(&&b"server"[..]) && args.contains(&dir.as_bytes())
        });
    found.unwrap_or_else(|| panic!("no server process for {dir}"))
}

/// A field of /proc/PID/status, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn rss_mib(pid: u32) -> f64 {
    status_kb(pid, "VmRSS:") as f64 / 1024.0
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Soft and hard "Max open files" of a process.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

/// Runs `viking ps` with the token; how long it took to answer. Fails the
/// test if it does not succeed within 10 s.
fn timed_ps(s: &LocalServer) -> Duration {
    let start = Instant::now();
    let mut child = s.spawn_cli(&["ps"]);
    let status = wait_until(
        "`viking ps` to answer",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || child.try_wait().ok().flatten(),
    );
    let took = start.elapsed();
    let status = status.unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e:#}")
    });
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "viking ps failed: {err}");
    took
}

/// The slowest of five `viking ps`.
fn worst_ps(s: &LocalServer) -> Duration {
    (0..5).map(|_| timed_ps(s)).max().unwrap()
}

/// Docker's bridge gateway: where embassy listens (172.17.0.1 when Docker
/// does not say, as the server assumes).
fn gateway() -> IpAddr {
    let out = Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(IpAddr::from([172, 17, 0, 1]))
}

/// Established TCP connections whose local port is `port` (this network
/// namespace: the server's side of embassy's client connections).
fn established_on(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "01"
                && f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

#[test]
fn a_flood_of_idle_connections_does_not_stop_the_server() {
    // The ambassador port: one free on the bridge gateway.
    let gw = gateway();
    let amb = std::net::TcpListener::bind((gw, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hard = set_nofile(Some(1024));
    let bin = std::env::var("VIKING_FLOOD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_viking").to_string());
    let s = LocalServer::start_with(bin, &["--embassy-ports", &format!("{amb}-{amb}")]);
    // The test itself holds the API flood.
    set_nofile(None);
    assert!(hard >= 2 * FLOOD as u64 + 1024, "hard limit {hard} too low");
    let pid = server_pid(s.data_dir());
    let (soft_limit, hard_limit) = nofile(pid);
    assert_eq!(
        soft_limit, hard_limit,
        "the server did not raise its open-files limit"
    );

    // A service whose endpoint keeps every connection open (one `cat` each).
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        "srv",
        "-p",
        "8080",
        // One `cat` per connection held (embassy holds up to 1,024).
        "--pids-limit",
        "2048",
        BUSYBOX_IMAGE,
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "cat",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the service to answer through embassy",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || -> Result<(), String> {
            let mut c = TcpStream::connect((gw, amb)).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            c.write_all(b"ping\n").map_err(|e| e.to_string())?;
            let mut back = [0u8; 5];
            c.read_exact(&mut back).map_err(|e| e.to_string())?;
            Ok(())
        },
    );
    let ps_before = worst_ps(&s);
    let (rss0, fds0) = (rss_mib(pid), open_fds(pid));

    // 1. 3,000 idle connections to the API port, no token, nothing sent.
    let started = Instant::now();
    let api_flood: Vec<TcpStream> = (0..FLOOD)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", s.port))
                .unwrap_or_else(|e| panic!("API connection {i}: {e}"))
        })
        .collect();
    let opened_in = started.elapsed();
    let ps_api = worst_ps(&s);
    let (rss1, fds1) = (rss_mib(pid), open_fds(pid));

    // 2. 3,000 idle connections from a container to the ambassador port,
    // one byte each: every `nc` becomes a `sleep` holding its socket.
    let script = format!(
        "i=0; while [ $i -lt {FLOOD} ]; do nc {gw} {amb} -e sh -c 'echo x; exec sleep 86400' & i=$((i+1)); done; echo started; exec sleep 86400"
    );
    let out = s.cli(&[
        "run",
        "-d",
        "--name",
        "flood",
        // One `sleep` per connection, and the shell.
        "--pids-limit",
        "4096",
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the flood job to open its connections",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let logs = s.cli(&["logs", "flood"]);
            let held = established_on(amb);
            if String::from_utf8_lossy(&logs.stdout).contains("started") && held >= 1000 {
                Ok(held)
            } else {
                Err(format!("{held} held"))
            }
        },
    );
    let held = established_on(amb);
    // A new connection to the service is served or closed, not left hanging.
    let mut c = TcpStream::connect((gw, amb)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.write_all(b"new\n");
    let mut back = [0u8; 4];
    let new_conn = match c.read(&mut back) {
        Ok(0) => "closed at once (the port is at its cap)".to_string(),
        Ok(_) => "served".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            "reset (the port is at its cap)".to_string()
        }
        Err(e) => panic!("a new connection to the service hangs or fails: {e}"),
    };
    let ps_embassy = worst_ps(&s);
    let (rss2, fds2) = (rss_mib(pid), open_fds(pid));

    println!("open-files limit of the server: {soft_limit} (soft) / {hard_limit} (hard)");
    println!("viking ps, slowest of 5: {ps_before:?} before, {ps_api:?} with {FLOOD} idle API connections (opened in {opened_in:?}), {ps_embassy:?} with the embassy flood too");
    println!("server RSS: {rss0:.1} MiB before, {rss1:.1} MiB after the API flood, {rss2:.1} MiB after the embassy flood (+{:.1} MiB)", rss2 - rss0);
    println!("server descriptors: {fds0} before, {fds1} after the API flood, {fds2} after the embassy flood");
    println!("embassy: {held} connections held on the ambassador port; a new one: {new_conn}");

    let second = Duration::from_secs(1);
    assert!(
        ps_api < second,
        "viking ps took {ps_api:?} under the API flood"
    );
    assert!(
        ps_embassy < second,
        "viking ps took {ps_embassy:?} under both floods"
    );
    // Two 256 KiB buffers held per idle connection came to +114 MiB here.
    assert!(rss2 - rss0 < 64.0, "RSS grew by {:.1} MiB", rss2 - rss0);
    // Pending API connections take at most a quarter of the cap (256).
    assert!(
        fds1 < fds0 + 400,
        "{} descriptors more under the API flood",
        fds1 - fds0
    );
    // Embassy holds at most its cap (1024) per port: two sockets each.
    assert!(
        held <= 1024 + 16,
        "{held} connections on one ambassador port"
    );
    drop(api_flood);
}
