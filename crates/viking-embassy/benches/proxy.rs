//! Benchmark of embassy against a direct connection, socat and HAProxy on
//! loopback: (a) throughput of one large transfer, (b) request/response
//! round trips of small messages on one connection (p50, p99).
//!
//! Run with `scripts/bench-embassy.sh` (installs socat and haproxy if
//! missing), or `cargo bench -p viking-embassy --bench proxy`. Environment:
//! `EMBASSY_BENCH_BYTES` (default 1 GiB), `EMBASSY_BENCH_ROUNDS` (default
//! 20000), `EMBASSY_BENCH_MSG` (default 64), `EMBASSY_BENCH_RUNS` (throughput
//! runs per path, median reported; default 3), `EMBASSY_BENCH_BUFFER`
//! (embassy buffer/pipe size, default 256 KiB), `EMBASSY_BENCH_PATHS`
//! (comma-separated prefixes of the paths to run, e.g. `direct,embassy`).
//!
//! The kernel path (`embassy (kernel ...)`, issue 19) writes embassy's
//! netfilter rules on this host for 127.0.0.2 and removes them at the end:
//! it needs root and iptables, and is left out (with a line) otherwise.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use viking_embassy::{Config, CopyMode, Embassy, Kernel, Route, RoutingTable};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((LOCALHOST, 0))?.local_addr()?.port())
}

/// The test server. First byte of a connection: `T` = sink (read to EOF,
/// answer the byte count), `L` = echo.
fn start_server() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                if let Err(e) = serve(conn) {
                    eprintln!("server: {e}");
                }
            });
        }
    });
    Ok(addr)
}

fn serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if mode[0] == b'L' {
            s.write_all(&buf[..n])?;
        }
    }
    if mode[0] == b'T' {
        s.write_all(&total.to_le_bytes())?;
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Seconds to push `bytes` through `addr` and hear that all arrived.
fn throughput(addr: SocketAddr, bytes: u64) -> io::Result<f64> {
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut s = connect(addr)?;
    s.write_all(b"T")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut got = [0u8; 8];
    s.read_exact(&mut got)?;
    let secs = start.elapsed().as_secs_f64();
    if u64::from_le_bytes(got) != bytes {
        return Err(io::Error::other("server received a different byte count"));
    }
    Ok(secs)
}

/// Round-trip times (µs), sorted, of `rounds` `msg`-byte echoes.
fn latency(addr: SocketAddr, rounds: u64, msg: usize) -> io::Result<Vec<f64>> {
    let mut s = connect(addr)?;
    s.write_all(b"L")?;
    let out = vec![0x42u8; msg];
    let mut back = vec![0u8; msg];
    for _ in 0..100 {
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
    }
    let mut rtts = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&out)?;
        s.read_exact(&mut back)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtts.sort_by(f64::total_cmp);
    Ok(rtts)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    path: String,
    gib_s: f64,
    p50: f64,
    p99: f64,
}

/// Measures every path, interleaving them (run 1 of each path, then run 2...)
/// so that drift of this (virtual) machine affects all paths alike.
fn measure_all(
    paths: &[(String, SocketAddr)],
    bytes: u64,
    runs: u64,
    rounds: u64,
    msg: usize,
) -> io::Result<Vec<Row>> {
    let runs = runs.max(1) as usize;
    let mut secs = vec![Vec::new(); paths.len()];
    for _ in 0..runs {
        for (i, (_, addr)) in paths.iter().enumerate() {
            secs[i].push(throughput(*addr, bytes)?);
        }
    }
    // Round trips in slices of 1,000 per path and turn.
    let slice = 1000.min(rounds.max(1));
    let mut rtts = vec![Vec::new(); paths.len()];
    let mut done = 0;
    while done < rounds {
        let n = slice.min(rounds - done);
        for (i, (_, addr)) in paths.iter().enumerate() {
            rtts[i].extend(latency(*addr, n, msg)?);
        }
        done += n;
    }
    let mut rows = Vec::new();
    for (i, (path, _)) in paths.iter().enumerate() {
        secs[i].sort_by(f64::total_cmp);
        rtts[i].sort_by(f64::total_cmp);
        let row = Row {
            path: path.clone(),
            gib_s: bytes as f64 / secs[i][runs / 2] / (1u64 << 30) as f64,
            p50: percentile(&rtts[i], 0.50),
            p99: percentile(&rtts[i], 0.99),
        };
        eprintln!(
            "{}: {:.2} GiB/s, p50 {:.1} µs, p99 {:.1} µs",
            row.path, row.gib_s, row.p50, row.p99
        );
        rows.push(row);
    }
    Ok(rows)
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &str, args: &[&str]) -> io::Result<Proc> {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map(Proc)
}

fn start_socat(server: SocketAddr) -> io::Result<(Proc, SocketAddr)> {
    let port = free_port()?;
    let child = spawn(
        "socat",
        &[
            &format!("TCP-LISTEN:{port},fork,reuseaddr"),
            &format!("TCP:127.0.0.1:{}", server.port()),
        ],
    )?;
    Ok((child, SocketAddr::new(LOCALHOST, port)))
}

fn start_haproxy(server: SocketAddr) -> io::Result<(Proc, SocketAddr, std::path::PathBuf)> {
    let port = free_port()?;
    let cfg =
        std::env::temp_dir().join(format!("embassy-bench-haproxy-{}.cfg", std::process::id()));
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 1024\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  server s1 127.0.0.1:{}\n",
            server.port()
        ),
    )?;
    let cfg_str = cfg.to_string_lossy().into_owned();
    let child = spawn("haproxy", &["-db", "-f", &cfg_str])?;
    Ok((child, SocketAddr::new(LOCALHOST, port), cfg))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bytes = env_or("EMBASSY_BENCH_BYTES", 1 << 30);
    let rounds = env_or("EMBASSY_BENCH_ROUNDS", 20_000);
    let msg = env_or("EMBASSY_BENCH_MSG", 64) as usize;
    let runs = env_or("EMBASSY_BENCH_RUNS", 3);
    let buffer = env_or("EMBASSY_BENCH_BUFFER", 256 * 1024) as usize;
    let only = std::env::var("EMBASSY_BENCH_PATHS").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|w| name.starts_with(w));
    let server = start_server()?;
    let mut paths = Vec::new();
    if wanted("direct") {
        paths.push(("direct".to_owned(), server));
    }

    // Embassy runs in its own runtime, as in the server (one worker per core).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("EMBASSY_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder.worker_threads(n);
    }
    let rt = builder.enable_all().build()?;
    let mut embassies = Vec::new();
    for copy in [CopyMode::Adaptive, CopyMode::Splice, CopyMode::Buffered] {
        let name = format!(
            "embassy ({}, {} KiB)",
            format!("{copy:?}").to_lowercase(),
            buffer / 1024
        );
        if !wanted(&name) {
            continue;
        }
        let port = free_port()?;
        let mut config = Config::new(LOCALHOST);
        config.copy = copy;
        config.buffer_size = buffer;
        let embassy = Embassy::with_config(config);
        let table = RoutingTable::new().with(port, Route::new("bench", 80, [server]));
        let report = rt.block_on(embassy.apply(table))?;
        if !report.is_complete() {
            return Err(format!("embassy did not open its port: {report:?}").into());
        }
        paths.push((name, SocketAddr::new(LOCALHOST, port)));
        embassies.push(embassy);
    }
    // The kernel path: netfilter rules on this host (root only), for
    // connections to 127.0.0.2:port, translated to the server on
    // 127.0.0.1. Removed again at the end.
    let mut kernel = None;
    let kernel_path = "embassy (kernel: netfilter DNAT)";
    if wanted(kernel_path) {
        let port = free_port()?;
        let bind = Ipv4Addr::new(127, 0, 0, 2);
        match rt.block_on(Kernel::probe(IpAddr::V4(bind), (port, port))) {
            Ok(k) => {
                let table = RoutingTable::new().with(port, Route::new("bench", 80, [server]));
                rt.block_on(k.apply(&table))?;
                paths.push((
                    kernel_path.to_owned(),
                    SocketAddr::new(IpAddr::V4(bind), port),
                ));
                kernel = Some(k);
            }
            Err(e) => eprintln!("the kernel path not run: {e}"),
        }
    }
    let mut children = Vec::new();
    if wanted("socat") {
        match start_socat(server) {
            Ok((child, addr)) => {
                children.push(child);
                paths.push(("socat".to_owned(), addr));
            }
            Err(e) => eprintln!("socat not run ({e}); install it: apt-get install -y socat"),
        }
    }
    let mut haproxy_cfg = None;
    if wanted("haproxy") {
        match start_haproxy(server) {
            Ok((child, addr, cfg)) => {
                children.push(child);
                haproxy_cfg = Some(cfg);
                paths.push(("haproxy".to_owned(), addr));
            }
            Err(e) => eprintln!("haproxy not run ({e}); install it: apt-get install -y haproxy"),
        }
    }
    let rows = measure_all(&paths, bytes, runs, rounds, msg);
    drop(children);
    if let Some(cfg) = haproxy_cfg {
        let _ = std::fs::remove_file(cfg);
    }
    for embassy in embassies {
        rt.block_on(embassy.shutdown());
    }
    if let Some(k) = kernel {
        rt.block_on(k.remove())?;
    }
    let rows = rows?;

    let (direct_p50, direct_tp) = rows.first().map_or((0.0, 0.0), |r| (r.p50, r.gib_s));
    println!();
    println!(
        "Loopback; throughput: median of {runs} transfers of {:.2} GiB; latency: {rounds} round trips of {msg} B; paths interleaved",
        bytes as f64 / (1u64 << 30) as f64
    );
    println!();
    println!(
        "| path | throughput (GiB/s) | vs direct | p50 RTT (µs) | p99 RTT (µs) | added p50 (µs) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.2}× | {:.1} | {:.1} | {:+.1} |",
            r.path,
            r.gib_s,
            r.gib_s / direct_tp,
            r.p50,
            r.p99,
            r.p50 - direct_p50
        );
    }
    Ok(())
}
