//! What an idle connection costs embassy: no buffer (one is borrowed only
//! while bytes are in transit) and no pipe (splice makes a direction's pipe at
//! its first data). One test in its own process, so that the descriptor and
//! memory figures of other tests do not mix in.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use viking_embassy::{Config, CopyMode, Embassy, Route};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const N: usize = 500;

/// Raises the soft descriptor limit to the hard one; returns the soft limit.
#[allow(unsafe_code)]
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, exclusively borrowed struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Echoes every connection's bytes; holds every connection open.
async fn echo_server() -> SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let listener = socket.listen(4096).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `N` connections through an embassy with `copy`, each idle after one
/// byte went each way (or after nothing at all, with `send` false).
async fn idle_connections(embassy: &Embassy, port: u16, send: bool) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut c = TcpStream::connect((LOCALHOST, port)).await.unwrap();
        if send {
            c.write_all(b"x").await.unwrap();
            let mut back = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
        }
        conns.push(c);
    }
    // Every connection is through to the endpoint.
    for _ in 0..500 {
        if embassy.stats()[0].connections_active == N as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(embassy.stats()[0].connections_active, N as u64);
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hold_no_buffer_and_no_pipe() {
    assert!(raise_fd_limit() > 16 * N as u64, "too few descriptors");
    let ep = echo_server().await;

    // Buffered (and adaptive's first phase): a byte each way, then idle.
    let port = free_port();
    let mut config = Config::new(LOCALHOST);
    config.copy = CopyMode::Buffered;
    let embassy = Embassy::with_config(config);
    embassy
        .apply([(port, Route::new("echo", 7, [ep]))].into_iter().collect())
        .await
        .unwrap();
    let rss_before = rss_kib();
    let conns = idle_connections(&embassy, port, true).await;
    // The last echo may reach its client just before its buffer is given back.
    for _ in 0..500 {
        if embassy.buffers_lent() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_after = rss_kib();
    let grew_mib = rss_after.saturating_sub(rss_before) / 1024;
    println!(
        "{N} idle buffered connections: RSS {rss_before} KiB -> {rss_after} KiB (+{grew_mib} MiB), buffers lent {}",
        embassy.buffers_lent()
    );
    assert_eq!(embassy.buffers_lent(), 0, "idle connections hold buffers");
    // Two 256 KiB buffers each would be 250 MiB.
    assert!(grew_mib < 64, "RSS grew by {grew_mib} MiB");
    drop(conns);
    embassy.shutdown().await;

    // Splice: no pipe until a direction's first data.
    let port = free_port();
    let mut config = Config::new(LOCALHOST);
    config.copy = CopyMode::Splice;
    let embassy = Embassy::with_config(config);
    embassy
        .apply([(port, Route::new("echo", 7, [ep]))].into_iter().collect())
        .await
        .unwrap();
    let fds_before = open_fds();
    let conns = idle_connections(&embassy, port, false).await;
    let per_conn = (open_fds() - fds_before) as f64 / N as f64;

    println!("{N} silent spliced connections: {per_conn:.2} descriptors each");
    // Client, accepted, upstream and the endpoint's side: 4; pipes would add 4.
    assert!(per_conn < 5.0, "{per_conn} descriptors per idle connection");
    drop(conns);
    embassy.shutdown().await;
}
