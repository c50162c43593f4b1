//! The server's rules, in-process: a real server (API, floki, agent,
//! reconciler) over the embedded store and the in-memory container runtime,
//! driven through its HTTP API with the real client. No Docker engine: the
//! end-to-end tests in `crates/viking/tests` cover that.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use viking_client::api::{InspectResponse, RunResponse};
use viking_client::{Client, ClientError};
use viking_core::keys;
use viking_core::records::PsRecord;
use viking_docker::fake::{Behaviour, FakeRuntime, Op};
use viking_docker::RuntimeError;
use viking_server::{ServerConfig, Shared};
use viking_store::embedded::EmbeddedStore;
use viking_store::Store;

const TOKEN: &str = "in-process-test-token";

/// One server on 127.0.0.1:0 over a fresh embedded store and a fake engine.
struct TestServer {
    client: Client,
    engine: FakeRuntime,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            EmbeddedStore::open(&dir.path().join("viking.redb"), "/viking").expect("store");
        Self::start_on("n1", store, dir).await
    }

    /// A server named `name` over a store other servers may share.
    async fn start_on(name: &str, store: Arc<dyn Store>, dir: tempfile::TempDir) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = ServerConfig {
            name: name.to_string(),
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
            embassy_ports: (41000, 41009),
            embassy_bind: Some("127.0.0.1".parse().expect("ip")),
            api_limits: Default::default(),
            embassy_max_connections: viking_embassy::DEFAULT_MAX_CONNECTIONS,
            embassy_idle_timeout: viking_embassy::DEFAULT_IDLE_TIMEOUT,
        };
        let engine = FakeRuntime::new();
        engine.add_image("busybox");
        let prepared = viking_server::prepare_with(config, store, Arc::new(engine.clone()))
            .await
            .expect("prepare");
        let shared = prepared.shared();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = viking_server::serve(prepared, listener, async move {
                let _ = rx.await;
            })
            .await;
        });
        let client =
            Client::new(&format!("http://{addr}"), Some(TOKEN.to_string())).expect("client");
        TestServer {
            client,
            engine,
            shared,
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    async fn run(&self, doc: &str) -> Result<RunResponse, ClientError> {
        self.client
            .json(Method::POST, "/v1/jobs", Some(doc.as_bytes().to_vec()))
            .await
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let (kvs, _) = self.shared.store.list(prefix).await.expect("list");
        kvs.into_iter().map(|kv| kv.key).collect()
    }

    fn containers_of(&self, job: &str) -> usize {
        self.engine
            .containers()
            .iter()
            .filter(|c| {
                c.spec
                    .labels
                    .get(viking_docker::LABEL_JOB)
                    .map(String::as_str)
                    == Some(job)
            })
            .count()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Read frames (kind, big-endian u32 length, payload) until the exit code.
async fn exit_code<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> i64 {
    use tokio::io::AsyncReadExt;
    loop {
        let mut head = [0u8; 5];
        r.read_exact(&mut head).await.expect("a frame header");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut data = vec![0u8; len];
        r.read_exact(&mut data).await.expect("a frame payload");
        if head[0] == viking_client::frame::EXIT {
            let b: [u8; 8] = data.as_slice().try_into().expect("8-byte exit code");
            return i64::from_be_bytes(b);
        }
    }
}

fn status(e: ClientError) -> u16 {
    e.status()
        .unwrap_or_else(|| panic!("not an API error: {e}"))
}

#[tokio::test]
async fn a_daemonized_job_runs_and_is_recorded() {
    let s = TestServer::start().await;
    let r = s
        .run(r#"{"name":"web","image":"busybox","ports":["8080"]}"#)
        .await
        .expect("run");
    let ps = r.ps.expect("ps");
    assert_eq!(ps.node, "n1");
    assert!(ps.is_running(), "{ps:?}");
    assert_eq!(s.containers_of("web"), 1);
    assert_eq!(s.keys(keys::PROC).await, vec!["proc/web".to_string()]);
    assert_eq!(
        s.keys("ports/web/").await,
        vec!["ports/web/8080".to_string()]
    );
}

#[tokio::test]
async fn a_taken_name_is_refused_and_changes_nothing() {
    let s = TestServer::start().await;
    s.run(r#"{"name":"db","image":"busybox","ports":["5432"]}"#)
        .await
        .expect("first run");
    let counter_before = s.shared.store.get(keys::PORT_COUNTER).await.expect("get");
    // Same name, other ports: refused, and no ambassador port is allocated
    // for the refused document (B2).
    let e = s
        .run(r#"{"name":"db","image":"busybox","ports":["6000","7000"]}"#)
        .await
        .expect_err("second run");
    assert_eq!(status(e), 409);
    assert_eq!(s.keys("ports/db/").await, vec!["ports/db/5432".to_string()]);
    let counter_after = s.shared.store.get(keys::PORT_COUNTER).await.expect("get");
    assert_eq!(
        counter_before.map(|kv| kv.mod_revision),
        counter_after.map(|kv| kv.mod_revision),
        "the port counter moved for a refused run"
    );
    assert_eq!(s.containers_of("db"), 1);
}

#[tokio::test]
async fn a_run_no_host_can_take_leaves_no_ports() {
    let s = TestServer::start().await;
    let e = s
        .run(r#"{"name":"api","image":"busybox","ports":["80"],"filter":["gpu"]}"#)
        .await
        .expect_err("no host has the tag");
    assert_eq!(status(e), 503);
    assert!(s.keys(keys::PORTS).await.is_empty());
    assert!(s.keys(keys::PROC).await.is_empty());
    assert!(s.keys(keys::PS).await.is_empty());
}

#[tokio::test]
async fn a_docker_failure_leaves_no_trace() {
    let s = TestServer::start().await;
    s.engine.fail_next_any(
        Op::Start,
        RuntimeError::Docker("the engine said no".to_string()),
    );
    let e = s
        .run(r#"{"name":"bad","image":"busybox","ports":["80"]}"#)
        .await
        .expect_err("start fails");
    assert_eq!(status(e), 502);
    assert!(s.keys(keys::PROC).await.is_empty());
    assert!(s.keys(keys::PS).await.is_empty());
    assert_eq!(s.containers_of("bad"), 0, "the failed container is removed");
}

#[tokio::test]
async fn removing_a_service_frees_its_ambassador_ports_for_the_next() {
    let s = TestServer::start().await;
    // The range holds ten ports: twenty services run and removed in turn
    // must not use it up.
    for i in 0..20 {
        let name = format!("svc{i}");
        s.run(&format!(
            r#"{{"name":"{name}","image":"busybox","ports":["80"]}}"#
        ))
        .await
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
        s.client
            .call(Method::DELETE, &format!("/v1/jobs/{name}?force=true"), None)
            .await
            .unwrap_or_else(|e| panic!("rm {name}: {e}"));
        assert!(s.keys(&format!("ports/{name}/")).await.is_empty());
    }
}

#[tokio::test]
async fn stop_takes_the_job_out_of_proc_then_stops_its_container() {
    let s = TestServer::start().await;
    s.run(r#"{"name":"w","image":"busybox","daemonize":true}"#)
        .await
        .expect("run");
    let r: InspectResponse = s
        .client
        .json(Method::POST, "/v1/jobs/w/stop?t=1", None)
        .await
        .expect("stop");
    assert!(r.proc.is_none());
    let ps = r.ps.expect("ps stays until rm");
    assert!(!ps.is_running(), "{ps:?}");
    let c = s.engine.containers();
    assert!(c.iter().all(|c| c.status != "running"));
}

#[tokio::test]
async fn an_attached_job_frees_its_name_before_its_exit_code() {
    let s = TestServer::start().await;
    s.engine.set_image_behaviour("busybox", Behaviour::Exit(3));
    // Run the same name twice in a row: the second run must find the name
    // free the moment the first one's exit code arrived (B3).
    for round in 0..5 {
        let doc = br#"{"name":"once","image":"busybox"}"#.to_vec();
        let mut io = s.client.attach("/v1/jobs", doc).await.expect("attach");
        let code = exit_code(&mut io).await;
        assert_eq!(code, 3, "round {round}");
        assert!(
            s.shared
                .store
                .get(&keys::ps("once"))
                .await
                .expect("get")
                .is_none(),
            "round {round}: the claim outlived the exit code"
        );
    }
}

#[tokio::test]
async fn a_ps_write_does_not_bring_back_a_removed_record() {
    let s = TestServer::start().await;
    s.run(r#"{"name":"p","image":"busybox","daemonize":true}"#)
        .await
        .expect("run");
    let store = s.shared.store.as_ref();
    let (rec, rev) = viking_server::state::ps(store, "p")
        .await
        .expect("read")
        .expect("ps");
    s.client
        .call(Method::DELETE, "/v1/jobs/p?force=true", None)
        .await
        .expect("rm");
    let again: Option<PsRecord> = viking_server::state::put_ps_if(store, &rec, rev)
        .await
        .expect("write")
        .map(|_| rec.clone());
    assert!(again.is_none());
    assert!(store.get(&keys::ps("p")).await.expect("get").is_none());
}

/// The summary at the end of a push's answer.
async fn push(
    s: &TestServer,
    req: viking_client::api::PushRequest,
) -> viking_client::api::PushSummary {
    use viking_client::api::PushLine;
    let mut lines = s.client.push(&req).await.expect("push");
    while let Some((line, _)) = lines.next::<PushLine>().await.expect("a push line") {
        match line {
            PushLine::Event(_) => {}
            PushLine::Done(summary) => return summary,
            PushLine::Error(e) => panic!("push failed: {}", e.error),
        }
    }
    panic!("the push answer ended without a summary")
}

fn push_request() -> viking_client::api::PushRequest {
    viking_client::api::PushRequest {
        images: vec!["busybox".to_string()],
        all: false,
        parallel: 1,
        pull: false,
        settle_ms: Some(0),
    }
}

/// A server running the daemonized job `app`, and its viking-ps record.
async fn running_app() -> (TestServer, viking_client::wire::JobState) {
    let s = TestServer::start().await;
    let old = s
        .run(r#"{"name":"app","image":"busybox","daemonize":true}"#)
        .await
        .expect("run")
        .ps
        .expect("ps");
    (s, old)
}

/// The job's viking-ps record now.
async fn app_now(s: &TestServer) -> PsRecord {
    let (now, _) = viking_server::state::ps(s.shared.store.as_ref(), "app")
        .await
        .expect("read")
        .expect("ps");
    now
}

#[tokio::test]
async fn a_push_replaces_a_job_whose_image_changed() {
    let (s, old) = running_app().await;
    let new_image = s.engine.add_image("busybox");
    let summary = push(&s, push_request()).await;
    assert_eq!(summary.restarted, vec!["app".to_string()]);
    let now = app_now(&s).await;
    assert_ne!(now.container_id, old.container_id);
    assert_eq!(now.image_id, new_image);
    assert!(now.is_running(), "{now:?}");
    assert_eq!(s.containers_of("app"), 1, "the old container is removed");
}

#[tokio::test]
async fn a_push_whose_new_version_fails_rolls_back() {
    let (s, old) = running_app().await;
    s.engine.add_image("busybox");
    // The new container will not start; the old one must come back.
    s.engine.fail_next(
        Op::Start,
        "app",
        RuntimeError::Docker("the new version is broken".to_string()),
    );
    let summary = push(&s, push_request()).await;
    let failed = summary.failed.expect("the push reports the failure");
    assert_eq!(failed.job, "app");
    let now = app_now(&s).await;
    assert_eq!(
        now.container_id, old.container_id,
        "rolled back to the old container"
    );
    assert_eq!(now.image_id, old.image_id);
    assert!(now.is_running(), "{now:?}");
    let c = s
        .engine
        .container(&old.container_id)
        .expect("the old container");
    assert_eq!(c.status, "running");
    assert_eq!(c.name, "app", "renamed back from aside");
    assert_eq!(
        s.containers_of("app"),
        1,
        "the failed new container is removed"
    );
}

/// Two servers over one store, each with its own engine.
async fn two_hosts() -> (TestServer, TestServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        EmbeddedStore::open(&dir.path().join("viking.redb"), "/viking").expect("store");
    let n1 = TestServer::start_on("n1", store.clone(), dir).await;
    let n2 = TestServer::start_on("n2", store, tempfile::tempdir().expect("tempdir")).await;
    // Both alive as n1's API sees them.
    viking_testkit::eventually_async(
        "n1 sees both hosts alive",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            n1.client
                .hosts()
                .await
                .map(|hs| hs.iter().filter(|h| h.alive).count() == 2)
                .unwrap_or(false)
        },
    )
    .await;
    (n1, n2)
}

#[tokio::test]
async fn a_job_pinned_to_another_host_is_forwarded_there() {
    let (n1, n2) = two_hosts().await;
    let r = n1
        .run(r#"{"name":"far","image":"busybox","daemonize":true,"host":"n2"}"#)
        .await
        .expect("run through n1");
    assert_eq!(r.ps.expect("ps").node, "n2");
    assert_eq!(n2.containers_of("far"), 1, "n2's engine runs it");
    assert_eq!(n1.containers_of("far"), 0, "n1's engine does not");
}

#[tokio::test]
async fn a_run_whose_host_cannot_be_reached_is_placed_again() {
    let (n1, n2) = two_hosts().await;
    // n1 is busier, so dowding prefers n2.
    n1.run(r#"{"name":"busy","image":"busybox","daemonize":true,"host":"n1"}"#)
        .await
        .expect("run on n1");
    // n2's server dies: its API is gone, its floki record lives until its
    // lease expires.
    n2.task.abort();
    let r = n1
        .run(r#"{"name":"moved","image":"busybox","daemonize":true}"#)
        .await
        .expect("placed again");
    let ps = r.ps.expect("ps");
    assert_eq!(ps.node, "n1", "placed again without the unreachable host");
    assert_eq!(n1.containers_of("moved"), 1);
    let proc = viking_server::state::proc(n1.shared.store.as_ref(), "moved")
        .await
        .expect("read")
        .expect("proc");
    assert_eq!(proc.placed_on.as_deref(), Some("n1"), "the claim moved");
}
