//! End-to-end tests of embassy on loopback, with real TCP servers started
//! by each test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use viking_embassy::{Config, CopyMode, Embassy, Error, Route, RoutingTable};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(10);

/// A port nothing listens on right now (bound, then released).
/// An address that refuses connections for as long as the socket lives.
fn dead_endpoint() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    (socket.local_addr().unwrap(), socket)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listen_any() -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    socket.listen(4096).unwrap()
}

/// Echoes each connection until EOF, then half-closes it.
async fn echo_server() -> SocketAddr {
    tagged_server(None).await
}

/// Like `echo_server`, but first sends `tag` (one byte) on each connection.
async fn tagged_server(tag: Option<u8>) -> SocketAddr {
    let listener = listen_any();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Some(tag) = tag {
                    s.write_all(&[tag]).await?;
                }
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    addr
}

async fn embassy_with(routes: &[(u16, Route)]) -> Embassy {
    embassy_with_config(Config::new(LOCALHOST), routes).await
}

async fn embassy_with_config(config: Config, routes: &[(u16, Route)]) -> Embassy {
    let embassy = Embassy::with_config(config);
    let report = embassy
        .apply(routes.iter().cloned().collect())
        .await
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    embassy
}

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect((LOCALHOST, port)).await.unwrap()
}

async fn read_tag(s: &mut TcpStream) -> u8 {
    let mut tag = [0u8; 1];
    tokio::time::timeout(WAIT, s.read_exact(&mut tag))
        .await
        .unwrap()
        .unwrap();
    tag[0]
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
}

/// Whether the peer closed the connection (EOF or reset) within `WAIT`.
async fn is_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn half_close_both_ways(copy: CopyMode) {
    // Client -> endpoint: the server answers only after it saw EOF.
    let replier = listen_any();
    let replier_addr = replier.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = replier.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(b"reply to ").await.unwrap();
        s.write_all(&got).await.unwrap();
        s.shutdown().await.unwrap();
        // Endpoint -> client: the server half-closes first and still reads.
        let (mut s, _) = replier.accept().await.unwrap();
        s.write_all(b"greeting").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let port = free_port();
    let mut config = Config::new(LOCALHOST);
    config.copy = copy;
    let embassy =
        embassy_with_config(config, &[(port, Route::new("svc", 80, [replier_addr]))]).await;

    let mut c = connect(port).await;
    c.write_all(b"hello").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"reply to hello");

    let mut c = connect(port).await;
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"greeting");
    c.write_all(b"after your EOF").await.unwrap();
    c.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(got, b"after your EOF");

    let stats = embassy.stats();
    assert_eq!(stats[0].connections_total, 2);
    assert_eq!(stats[0].bytes_in, 5 + 14);
    assert_eq!(stats[0].bytes_out, 14 + 8);
    embassy.shutdown().await;
}

#[tokio::test]
async fn forwards_and_propagates_half_close_with_splice() {
    half_close_both_ways(CopyMode::Splice).await;
}

#[tokio::test]
async fn forwards_and_propagates_half_close_with_buffer() {
    half_close_both_ways(CopyMode::Buffered).await;
    half_close_both_ways(CopyMode::Adaptive).await;
}

#[tokio::test]
async fn round_robin_spreads_over_three_endpoints() {
    let eps = [
        tagged_server(Some(0)).await,
        tagged_server(Some(1)).await,
        tagged_server(Some(2)).await,
    ];
    let port = free_port();
    let embassy = embassy_with(&[(port, Route::new("web", 80, eps))]).await;
    let mut counts = [0u32; 3];
    for _ in 0..30 {
        let mut c = connect(port).await;
        counts[usize::from(read_tag(&mut c).await)] += 1;
    }
    assert_eq!(counts, [10, 10, 10]);
    assert_eq!(embassy.stats()[0].connections_total, 30);
    embassy.shutdown().await;
}

#[tokio::test]
async fn dead_endpoint_is_skipped() {
    // A port bound without a listener: connects are refused, and no other
    // test can take the port meanwhile.
    let (dead, _held) = dead_endpoint();
    let eps = [
        dead,
        tagged_server(Some(1)).await,
        tagged_server(Some(2)).await,
    ];
    let port = free_port();
    let embassy = embassy_with(&[(port, Route::new("web", 80, eps))]).await;
    for _ in 0..9 {
        let mut c = connect(port).await;
        let tag = read_tag(&mut c).await;
        assert!(tag == 1 || tag == 2);
        roundtrip(&mut c, b"still here").await;
    }
    let stats = &embassy.stats()[0];
    assert_eq!(stats.connect_failures, 3, "{stats:?}");
    assert_eq!(stats.unserved, 0);

    // No endpoint at all reachable: the client connection is closed.
    embassy
        .apply(RoutingTable::new().with(port, Route::new("web", 80, [dead])))
        .await
        .unwrap();
    let mut c = connect(port).await;
    assert!(is_closed(&mut c).await);
    assert_eq!(embassy.stats()[0].unserved, 1);
    embassy.shutdown().await;
}

#[tokio::test]
async fn moving_a_route_keeps_open_connections_to_listed_endpoints() {
    let old = tagged_server(Some(1)).await;
    let new = tagged_server(Some(2)).await;
    let port = free_port();
    let embassy = embassy_with(&[(port, Route::new("db", 5432, [old]))]).await;

    let mut c1 = connect(port).await;
    assert_eq!(read_tag(&mut c1).await, 1);
    roundtrip(&mut c1, b"before").await;

    let report = embassy
        .apply(RoutingTable::new().with(port, Route::new("db", 5432, [new, old])))
        .await
        .unwrap();
    assert_eq!(report.updated, vec![port]);
    assert!(report.opened.is_empty() && report.closed.is_empty());

    let mut c2 = connect(port).await;
    assert_eq!(
        read_tag(&mut c2).await,
        2,
        "the next connection goes to the new endpoint"
    );
    roundtrip(&mut c1, b"old endpoint still listed").await;
    roundtrip(&mut c2, b"new").await;

    // Chosen behaviour: removing an endpoint closes its connections.
    embassy
        .apply(RoutingTable::new().with(port, Route::new("db", 5432, [new])))
        .await
        .unwrap();
    assert!(is_closed(&mut c1).await);
    roundtrip(&mut c2, b"unaffected").await;
    let stats = &embassy.stats()[0];
    assert_eq!(stats.endpoints, vec![new]);
    assert_eq!(stats.connections_active, 1, "{stats:?}");
    embassy.shutdown().await;
}

#[tokio::test]
async fn removing_a_route_refuses_new_connections() {
    let ep = echo_server().await;
    let (port, other) = (free_port(), free_port());
    let embassy = embassy_with(&[
        (port, Route::new("gone", 80, [ep])),
        (other, Route::new("stays", 80, [ep])),
    ])
    .await;
    let mut open = connect(port).await;
    roundtrip(&mut open, b"hi").await;

    let report = embassy
        .apply(RoutingTable::new().with(other, Route::new("stays", 80, [ep])))
        .await
        .unwrap();
    assert_eq!(report.closed, vec![port]);
    let refused = TcpStream::connect((LOCALHOST, port)).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(is_closed(&mut open).await);
    let mut still = connect(other).await;
    roundtrip(&mut still, b"other port still served").await;
    assert_eq!(embassy.ports(), vec![other]);
    embassy.shutdown().await;
}

#[tokio::test]
async fn a_port_that_fails_to_bind_does_not_stop_the_others() {
    let ep = echo_server().await;
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let free = free_port();
    let embassy = Embassy::start(LOCALHOST);
    let report = embassy
        .apply(
            RoutingTable::new()
                .with(taken_port, Route::new("a", 80, [ep]))
                .with(free, Route::new("b", 80, [ep])),
        )
        .await
        .unwrap();
    assert_eq!(report.opened, vec![free]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].port, taken_port);
    assert!(matches!(report.failed[0].error, Error::Bind { .. }));
    let mut c = connect(free).await;
    roundtrip(&mut c, b"served").await;

    // Once the port is free, the next apply opens it.
    drop(taken);
    let report = embassy
        .apply(
            RoutingTable::new()
                .with(taken_port, Route::new("a", 80, [ep]))
                .with(free, Route::new("b", 80, [ep])),
        )
        .await
        .unwrap();
    assert_eq!(report.opened, vec![taken_port]);
    assert!(report.is_complete());
    embassy.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_everything() {
    let ep = echo_server().await;
    let port = free_port();
    let embassy = embassy_with(&[(port, Route::new("svc", 80, [ep]))]).await;
    let mut open = connect(port).await;
    roundtrip(&mut open, b"x").await;
    tokio::time::timeout(WAIT, embassy.shutdown())
        .await
        .unwrap();
    assert!(is_closed(&mut open).await);
    let refused = TcpStream::connect((LOCALHOST, port)).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(matches!(
        embassy.apply(RoutingTable::new()).await,
        Err(Error::ShutDown)
    ));
    embassy.shutdown().await; // idempotent
}

#[tokio::test]
async fn drop_closes_listeners() {
    let ep = echo_server().await;
    let port = free_port();
    let embassy = embassy_with(&[(port, Route::new("svc", 80, [ep]))]).await;
    let mut open = connect(port).await;
    roundtrip(&mut open, b"x").await;
    drop(embassy);
    assert!(is_closed(&mut open).await);
    let refused = TcpStream::connect((LOCALHOST, port)).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections() {
    const N: usize = 1000;
    // Per connection: client, accepted, upstream, server sockets + 2 pipes.
    let limit = raise_fd_limit();
    assert!(
        limit >= 8 * N as u64 + 256,
        "need more descriptors than {limit}"
    );
    let ep = echo_server().await;
    let port = free_port();
    let embassy = embassy_with(&[(port, Route::new("echo", 7, [ep]))]).await;
    let clients: Vec<_> = (0..N)
        .map(|i| {
            tokio::spawn(async move {
                let msg: Vec<u8> = (0..4096u32)
                    .map(|j| (i as u32).wrapping_mul(31).wrapping_add(j) as u8)
                    .collect();
                let mut c = TcpStream::connect((LOCALHOST, port)).await?;
                c.write_all(&msg).await?;
                c.shutdown().await?;
                let mut back = Vec::new();
                c.read_to_end(&mut back).await?;
                Ok::<_, std::io::Error>(back == msg)
            })
        })
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(clients))
        .await
        .unwrap();
    let ok = results
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(true))))
        .count();
    assert_eq!(ok, N);
    let stats = &embassy.stats()[0];
    assert_eq!(stats.connections_total, N as u64);
    assert_eq!(stats.bytes_in, 4096 * N as u64);
    embassy.shutdown().await;
}

/// Bytes moved each way by the bulk tests: well past [`ADAPTIVE_SWITCH`], so
/// that the adaptive mode runs both its buffered and its splice phase.
const BULK: usize = 8 << 20;

/// `len` bytes of a xorshift stream: no period a lost, doubled or shifted
/// chunk could hide behind.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Where the first difference is, for a readable failure (no 8 MiB dump).
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: {} bytes received, {} sent; first difference at {at:?}",
        got.len(),
        want.len()
    );
}

/// One server for the three bulk exchanges; the first byte of a connection
/// says which: `S` sink (reads to EOF and hands what it got to the test),
/// `D` source (sends `download`, then closes), `E` echo (until EOF).
async fn bulk_server(
    download: std::sync::Arc<Vec<u8>>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = listen_any();
    let addr = listener.local_addr().unwrap();
    let (sunk_tx, sunk_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (download, sunk) = (download.clone(), sunk_tx.clone());
            tokio::spawn(async move {
                let mut kind = [0u8; 1];
                s.read_exact(&mut kind).await?;
                match kind[0] {
                    b'S' => {
                        let mut got = Vec::with_capacity(BULK);
                        s.read_to_end(&mut got).await?;
                        let _ = sunk.send(got);
                    }
                    b'D' => s.write_all(&download).await?,
                    _ => {
                        let (mut r, mut w) = s.split();
                        tokio::io::copy(&mut r, &mut w).await?;
                    }
                }
                s.shutdown().await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    (addr, sunk_rx)
}

/// 8 MiB up (client -> sink), 8 MiB down (source -> client) and 8 MiB both
/// ways at once (echo) through embassy in `copy` mode, each compared byte
/// for byte, and the route's byte counters exact.
async fn bulk_byte_exact(copy: CopyMode) {
    let mut config = Config::new(LOCALHOST);
    config.copy = copy;
    bulk_byte_exact_with(config).await;
}

async fn bulk_byte_exact_with(config: Config) {
    let copy = config.copy;
    assert!(BULK as u64 > 2 * viking_embassy::ADAPTIVE_SWITCH);
    let up = pattern(1, BULK);
    let down = std::sync::Arc::new(pattern(2, BULK));
    let (ep, mut sunk) = bulk_server(down.clone()).await;
    let port = free_port();
    // Not dropped if the test fails: a wedged embassy thread would make the
    // drop (which joins it) hang instead of letting the failure show.
    let embassy = std::mem::ManuallyDrop::new(
        embassy_with_config(config, &[(port, Route::new("bulk", 9, [ep]))]).await,
    );
    let bulk_wait = Duration::from_secs(60);

    // Client -> endpoint.
    let mut c = connect(port).await;
    let sent = async {
        c.write_all(b"S").await?;
        c.write_all(&up).await?;
        c.shutdown().await?;
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await?;
        Ok::<_, std::io::Error>(rest)
    };
    let rest = tokio::time::timeout(bulk_wait, sent)
        .await
        .expect("upload timed out")
        .unwrap();
    assert!(rest.is_empty());
    let got = tokio::time::timeout(WAIT, sunk.recv())
        .await
        .unwrap()
        .unwrap();
    assert_same(&got, &up, &format!("{copy:?} client -> endpoint"));

    // Endpoint -> client.
    let mut c = connect(port).await;
    let received = async {
        c.write_all(b"D").await?;
        let mut got = Vec::with_capacity(BULK);
        c.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let got = tokio::time::timeout(bulk_wait, received)
        .await
        .expect("download timed out")
        .unwrap();
    assert_same(&got, &down, &format!("{copy:?} endpoint -> client"));

    // Both directions at once: the client writes while it reads the echo.
    let c = connect(port).await;
    let (mut r, mut w) = c.into_split();
    let writer = async {
        w.write_all(b"E").await?;
        w.write_all(&up).await?;
        w.shutdown().await
    };
    let reader = async {
        let mut got = Vec::with_capacity(BULK);
        r.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let (wrote, got) = tokio::time::timeout(bulk_wait, async { tokio::join!(writer, reader) })
        .await
        .expect("echo timed out");
    wrote.unwrap();
    assert_same(&got.unwrap(), &up, &format!("{copy:?} echo"));

    // Every byte counted once: the kind bytes, then the payloads.
    let stats = &embassy.stats()[0];
    assert_eq!(stats.bytes_in, (3 + 2 * BULK) as u64, "{stats:?}");
    assert_eq!(stats.bytes_out, (2 * BULK) as u64, "{stats:?}");
    embassy.shutdown().await;
    drop(std::mem::ManuallyDrop::into_inner(embassy));
}

#[tokio::test]
async fn bulk_transfer_is_byte_exact_with_buffer() {
    bulk_byte_exact(CopyMode::Buffered).await;
}

#[tokio::test]
async fn bulk_transfer_is_byte_exact_with_splice() {
    bulk_byte_exact(CopyMode::Splice).await;
}

#[tokio::test]
async fn bulk_transfer_is_byte_exact_with_adaptive_switch() {
    bulk_byte_exact(CopyMode::Adaptive).await;
}

#[tokio::test]
async fn bulk_splice_is_byte_exact_when_the_pipe_is_smaller_than_the_buffer() {
    // The kernel cannot make a pipe this large (2 GiB at most; an
    // unprivileged user is refused past pipe-max-size, 1 MiB by default), so
    // the pipes keep their default size, far below the buffer size.
    let mut config = Config::new(LOCALHOST);
    config.copy = CopyMode::Splice;
    config.buffer_size = 1 << 32;
    bulk_byte_exact_with(config).await;
}

/// Whether a new connection to `port` is served (an echo comes back), or
/// closed by embassy.
async fn served(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((LOCALHOST, port)).await else {
        return false;
    };
    if s.write_all(b"?").await.is_err() {
        return false;
    }
    let mut back = [0u8; 1];
    matches!(
        tokio::time::timeout(WAIT, s.read(&mut back)).await,
        Ok(Ok(1))
    )
}

#[tokio::test]
async fn a_port_at_its_connection_cap_closes_new_connections() {
    let ep = echo_server().await;
    let (port, other) = (free_port(), free_port());
    let mut config = Config::new(LOCALHOST);
    config.max_connections = 2;
    let embassy = embassy_with_config(
        config,
        &[
            (port, Route::new("full", 80, [ep])),
            (other, Route::new("other", 80, [ep])),
        ],
    )
    .await;
    let mut first = connect(port).await;
    roundtrip(&mut first, b"one").await;
    let mut second = connect(port).await;
    roundtrip(&mut second, b"two").await;

    // The third is accepted by the kernel, then closed by embassy.
    let mut third = connect(port).await;
    assert!(is_closed(&mut third).await, "a third connection was served");
    let stats = embassy.stats();
    let full = stats.iter().find(|s| s.port == port).unwrap();
    assert_eq!(full.refused, 1, "{stats:?}");
    assert_eq!(full.connections_total, 2, "{stats:?}");
    // The open ones go on; the cap is per port.
    roundtrip(&mut first, b"still one").await;
    roundtrip(&mut second, b"still two").await;
    assert!(served(other).await, "another port is not served");

    // A slot freed is a slot taken again.
    drop(first);
    let mut served_again = false;
    for _ in 0..100 {
        if served(port).await {
            served_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served_again, "no connection served after one closed");
    embassy.shutdown().await;
}

#[tokio::test]
async fn a_connection_idle_both_ways_is_closed_after_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(400);
    let ep = echo_server().await;
    let port = free_port();
    let mut config = Config::new(LOCALHOST);
    config.idle_timeout = IDLE;
    let embassy = embassy_with_config(config, &[(port, Route::new("idle", 80, [ep]))]).await;

    // Traffic every 100 ms for three idle timeouts: the connection stays.
    let mut busy = connect(port).await;
    let until = tokio::time::Instant::now() + 3 * IDLE;
    while tokio::time::Instant::now() < until {
        roundtrip(&mut busy, b"tick").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    roundtrip(&mut busy, b"still open").await;
    assert_eq!(embassy.stats()[0].idle_closed, 0);

    // Silent both ways: closed once the timeout has passed, not before.
    let quiet_since = tokio::time::Instant::now();
    assert!(is_closed(&mut busy).await, "an idle connection stayed open");
    let after = quiet_since.elapsed();
    assert!(
        after >= IDLE - Duration::from_millis(50),
        "closed after {after:?}"
    );
    assert_eq!(embassy.stats()[0].idle_closed, 1);

    // A connection that never sent a byte is closed as well.
    let mut silent = connect(port).await;
    assert!(
        is_closed(&mut silent).await,
        "a silent connection stayed open"
    );
    embassy.shutdown().await;
}
