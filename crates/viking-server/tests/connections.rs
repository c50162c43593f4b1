//! The API's connections, in-process (over the embedded store and the
//! in-memory runtime), with small limits: the header-read timeout, the idle
//! timeout (and what it spares: `logs -f` and attached streams), pending
//! connections making room for an operator, the cap, `Connection: close`
//! without the token, and graceful shutdown with a stream open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use viking_client::Client;
use viking_docker::fake::FakeRuntime;
use viking_docker::Output;
use viking_server::config::ApiLimits;
use viking_server::ServerConfig;
use viking_store::embedded::EmbeddedStore;
use viking_store::Store;

const TOKEN: &str = "in-process-test-token";
const WAIT: Duration = Duration::from_secs(10);

struct TestServer {
    addr: SocketAddr,
    client: Client,
    engine: FakeRuntime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(limits: ApiLimits) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            EmbeddedStore::open(&dir.path().join("viking.redb"), "/viking").expect("store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = ServerConfig {
            name: "n1".to_string(),
            ip: "127.0.0.1".to_string(),
            listen: addr,
            etcd: vec![],
            key: "/viking".to_string(),
            tags: vec![],
            data_dir: dir.path().to_path_buf(),
            docker: "fake".to_string(),
            token: Some(TOKEN.to_string()),
            host_ttl: Duration::from_secs(3),
            resync: Duration::from_secs(30),
            policy: Default::default(),
            health_interval: Duration::from_secs(30),
            embassy_ports: (41100, 41109),
            embassy_bind: Some("127.0.0.1".parse().expect("ip")),
            embassy_mode: Default::default(),
            metrics_listen: None,
            api_limits: limits,
            embassy_max_connections: viking_embassy::DEFAULT_MAX_CONNECTIONS,
            embassy_idle_timeout: viking_embassy::DEFAULT_IDLE_TIMEOUT,
            containers: Default::default(),
            tls: Default::default(),
            docker_ping_failures: 3,
            compact_window: Duration::from_secs(600),
            runtime: Default::default(),
            peer_timeout: std::time::Duration::from_secs(10),
        };
        let engine = FakeRuntime::new();
        engine.add_image("busybox");
        let prepared = viking_server::prepare_with(config, store, Arc::new(engine.clone()))
            .await
            .expect("prepare");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = viking_server::serve(prepared, listener, async move {
                let _ = rx.await;
            })
            .await;
        });
        let client =
            Client::new(&format!("http://{addr}"), Some(TOKEN.to_string())).expect("client");
        let s = TestServer {
            addr,
            client,
            engine,
            stop: Some(tx),
            task,
            _dir: dir,
        };
        // Up once it answers.
        let deadline = Instant::now() + WAIT;
        while s.client.ping().await.is_err() {
            assert!(Instant::now() < deadline, "the server never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn limits(max: usize, header: Duration, idle: Duration) -> ApiLimits {
    ApiLimits {
        max_connections: max,
        header_timeout: header,
        idle_timeout: idle,
    }
}

fn ping(with_token: bool) -> String {
    let auth = if with_token {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    format!("GET /v1/ping HTTP/1.1\r\nHost: t\r\n{auth}\r\n")
}

/// Reads one response (head and a Content-Length body); its head.
async fn response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("a response in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("length"))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("body");
    head
}

/// An authenticated ping on a new connection, answered; the connection
/// stays open (keep-alive).
async fn authenticated(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(ping(true).as_bytes()).await.expect("write");
    let head = response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    s
}

/// How long until the server closes `s` (EOF or reset); `None` if it is
/// still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(start + within, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_after_the_header_timeout() {
    let header = Duration::from_millis(300);
    let s = TestServer::start(limits(64, header, Duration::from_secs(60))).await;
    let mut silent = TcpStream::connect(s.addr).await.expect("connect");
    let after = closed_within(&mut silent, WAIT)
        .await
        .expect("a silent connection stayed open");
    assert!(after >= header - Duration::from_millis(50), "{after:?}");
    // Half a request head is no better.
    let mut slow = TcpStream::connect(s.addr).await.expect("connect");
    slow.write_all(b"GET /v1/ping HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("write");
    assert!(closed_within(&mut slow, WAIT).await.is_some());
}

#[tokio::test]
async fn a_response_without_the_token_closes_its_connection() {
    let s = TestServer::start(ApiLimits::default()).await;
    let mut c = TcpStream::connect(s.addr).await.expect("connect");
    c.write_all(ping(false).as_bytes()).await.expect("write");
    let head = response(&mut c).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(closed_within(&mut c, WAIT).await.is_some());
    // With the token, the connection is kept for the next request.
    let mut kept = authenticated(s.addr).await;
    assert!(closed_within(&mut kept, Duration::from_millis(300))
        .await
        .is_none());
    kept.write_all(ping(true).as_bytes()).await.expect("write");
    assert!(response(&mut kept).await.starts_with("http/1.1 200"));
}

#[tokio::test]
async fn silent_connections_make_room_for_an_operator() {
    // A cap of 16: at most 4 pending connections.
    let s = TestServer::start(limits(16, Duration::from_secs(30), Duration::from_secs(60))).await;
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(TcpStream::connect(s.addr).await.expect("connect"));
    }
    let start = Instant::now();
    let hosts = tokio::time::timeout(WAIT, s.client.hosts())
        .await
        .expect("the operator is answered in time")
        .expect("hosts");
    println!(
        "answered after {:?} with 100 silent connections open",
        start.elapsed()
    );
    assert_eq!(hosts.len(), 1);
    // The oldest were closed to make room; a few newest may still be open.
    let mut open = 0;
    for c in &mut flood {
        if closed_within(c, Duration::from_millis(20)).await.is_none() {
            open += 1;
        }
    }
    assert!(open <= 4, "{open} silent connections still open");
}

#[tokio::test]
async fn at_the_cap_with_every_connection_authenticated_new_ones_are_closed() {
    let s = TestServer::start(limits(4, Duration::from_secs(30), Duration::from_secs(60))).await;
    let mut kept = Vec::new();
    for _ in 0..4 {
        kept.push(authenticated(s.addr).await);
    }
    let mut extra = TcpStream::connect(s.addr).await.expect("connect");
    let _ = extra.write_all(ping(true).as_bytes()).await;
    assert!(
        closed_within(&mut extra, WAIT).await.is_some(),
        "a connection beyond the cap was served"
    );
    // The open ones are still served.
    for c in &mut kept {
        c.write_all(ping(true).as_bytes()).await.expect("write");
        assert!(response(c).await.starts_with("http/1.1 200"));
    }
    // One closed makes room.
    drop(kept.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        let _ = c.write_all(ping(true).as_bytes()).await;
        if closed_within(&mut c, Duration::from_millis(200))
            .await
            .is_none()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_not_a_quiet_stream() {
    let idle = Duration::from_millis(300);
    let s = TestServer::start(limits(64, Duration::from_secs(30), idle)).await;
    // Kept alive after a request, then idle: closed after the idle timeout,
    // long before the header timeout.
    let mut kept = authenticated(s.addr).await;
    let after = closed_within(&mut kept, WAIT)
        .await
        .expect("an idle connection stayed open");
    assert!(after >= idle - Duration::from_millis(50), "{after:?}");

    // `logs -f` of a job that says nothing for three idle timeouts.
    s.client
        .json::<viking_client::api::RunResponse>(
            hyper::Method::POST,
            "/v1/jobs",
            Some(br#"{"name":"quiet","image":"busybox","daemonize":true}"#.to_vec()),
        )
        .await
        .expect("run");
    let mut logs = s.client.logs("quiet", true).await.expect("logs -f");
    // An attached job that says nothing either.
    let mut attached = s
        .client
        .attach("/v1/jobs", br#"{"name":"talk","image":"busybox"}"#.to_vec())
        .await
        .expect("attach");
    let quiet_until = Instant::now() + 3 * idle;
    let early = tokio::time::timeout_at(quiet_until, logs.frame()).await;
    assert!(early.is_err(), "the logs stream ended early: {early:?}");
    tokio::time::sleep_until(quiet_until).await;

    assert!(s
        .engine
        .write_output("quiet", Output::Stdout(Bytes::from_static(b"late\n"))));
    let frame = tokio::time::timeout(WAIT, logs.frame())
        .await
        .expect("a log line in time")
        .expect("the stream is open")
        .expect("a frame");
    let data = frame.into_data().expect("data");
    assert!(String::from_utf8_lossy(&data).contains("late"), "{data:?}");

    assert!(s
        .engine
        .write_output("talk", Output::Stdout(Bytes::from_static(b"still here\n"))));
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, attached.read(&mut buf))
        .await
        .expect("attached output in time")
        .expect("read");
    assert!(n > 0, "the attached stream was closed");
}

#[tokio::test]
async fn shutdown_ends_the_server_with_a_stream_open() {
    let mut s = TestServer::start(ApiLimits::default()).await;
    s.client
        .json::<viking_client::api::RunResponse>(
            hyper::Method::POST,
            "/v1/jobs",
            Some(br#"{"name":"quiet","image":"busybox","daemonize":true}"#.to_vec()),
        )
        .await
        .expect("run");
    let mut logs = s.client.logs("quiet", true).await.expect("logs -f");
    let _kept = authenticated(s.addr).await;
    let _silent = TcpStream::connect(s.addr).await.expect("connect");
    let _ = s.stop.take().expect("running").send(());
    tokio::time::timeout(WAIT, &mut s.task)
        .await
        .expect("the server stops in time")
        .expect("no panic");
    // The stream ended rather than hanging.
    let end = tokio::time::timeout(WAIT, async {
        while let Some(Ok(_)) = logs.frame().await {}
    })
    .await;
    assert!(end.is_ok(), "the logs stream outlived the server");
    assert!(TcpStream::connect(s.addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn bad_connection_limits_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        EmbeddedStore::open(&dir.path().join("viking.redb"), "/viking").expect("store");
    let base = ServerConfig {
        name: "n1".to_string(),
        ip: "127.0.0.1".to_string(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        etcd: vec![],
        key: "/viking".to_string(),
        tags: vec![],
        data_dir: dir.path().to_path_buf(),
        docker: "fake".to_string(),
        token: Some(TOKEN.to_string()),
        host_ttl: Duration::from_secs(3),
        resync: Duration::from_secs(30),
        policy: Default::default(),
        health_interval: Duration::from_secs(30),
        embassy_ports: (41110, 41119),
        embassy_bind: Some("127.0.0.1".parse().expect("ip")),
        embassy_mode: Default::default(),
        metrics_listen: None,
        api_limits: ApiLimits::default(),
        embassy_max_connections: viking_embassy::DEFAULT_MAX_CONNECTIONS,
        embassy_idle_timeout: viking_embassy::DEFAULT_IDLE_TIMEOUT,
        containers: Default::default(),
        tls: Default::default(),
        docker_ping_failures: 3,
        compact_window: Duration::from_secs(600),
        runtime: Default::default(),
        peer_timeout: std::time::Duration::from_secs(10),
    };
    let mut api = base.clone();
    api.api_limits.max_connections = 0;
    let mut embassy = base.clone();
    embassy.embassy_max_connections = 0;
    let mut idle = base.clone();
    idle.embassy_idle_timeout = Duration::ZERO;
    for (config, flag) in [
        (api, "--max-connections"),
        (embassy, "--embassy-max-connections"),
        (idle, "--embassy-idle-timeout"),
    ] {
        let refused =
            viking_server::prepare_with(config, store.clone(), Arc::new(FakeRuntime::new())).await;
        let Err(e) = refused else {
            panic!("{flag}: a bad value was accepted");
        };
        assert!(e.to_string().contains(flag), "{flag}: {e}");
    }
}
