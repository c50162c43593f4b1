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
use viking_store::{Store, StoreExt};

const TOKEN: &str = "in-process-test-token";

/// The test servers' deadline for calls to their peers.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// One server on 127.0.0.1:0 over a fresh embedded store and a fake engine.
struct TestServer {
    client: Client,
    url: String,
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
        Self::try_start(name, store, dir, Duration::from_secs(3))
            .await
            .expect("serve")
    }

    /// A server with floki's TTL `ttl`, once it is registered; the
    /// server's error if it stops first.
    async fn try_start(
        name: &str,
        store: Arc<dyn Store>,
        dir: tempfile::TempDir,
        ttl: Duration,
    ) -> anyhow::Result<TestServer> {
        Self::try_start_with(name, store, dir, ttl, |_| {}).await
    }

    /// A server whose settings `tweak` changes.
    async fn start_with(
        name: &str,
        store: Arc<dyn Store>,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        Self::try_start_with(name, store, dir, Duration::from_secs(3), tweak)
            .await
            .expect("serve")
    }

    async fn try_start_with(
        name: &str,
        store: Arc<dyn Store>,
        dir: tempfile::TempDir,
        ttl: Duration,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<TestServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = ServerConfig {
            name: name.to_string(),
            ip: "127.0.0.1".to_string(),
            listen: addr,
            etcd: vec![],
            key: "/viking".to_string(),
            tags: vec![],
            data_dir: dir.path().to_path_buf(),
            docker: "fake".to_string(),
            token: Some(TOKEN.to_string()),
            host_ttl: ttl,
            resync: Duration::from_secs(30),
            policy: Default::default(),
            peer_timeout: PEER_TIMEOUT,
            health_interval: Duration::from_secs(30),
            embassy_ports: (41000, 41009),
            embassy_bind: Some("127.0.0.1".parse().expect("ip")),
            embassy_mode: Default::default(),
            metrics_listen: None,
            api_limits: Default::default(),
            embassy_max_connections: viking_embassy::DEFAULT_MAX_CONNECTIONS,
            embassy_idle_timeout: viking_embassy::DEFAULT_IDLE_TIMEOUT,
            containers: Default::default(),
            tls: Default::default(),
            docker_ping_failures: 3,
            compact_window: Duration::from_secs(600),
            runtime: Default::default(),
        };
        tweak(&mut config);
        let engine = FakeRuntime::new();
        engine.add_image("busybox");
        let prepared = viking_server::prepare_with(config, store, Arc::new(engine.clone()))
            .await
            .expect("prepare");
        let shared = prepared.shared();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let task = tokio::spawn(async move {
            let ended = viking_server::serve(prepared, listener, async move {
                let _ = rx.await;
            })
            .await;
            let _ = ended_tx.send(ended);
        });
        let client =
            Client::new(&format!("http://{addr}"), Some(TOKEN.to_string())).expect("client");
        let url = format!("http://{addr}");
        // Registered in floki (serve answers only then), or refused.
        let ready = async {
            loop {
                if client.hosts().await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = ready => {}
            ended = ended_rx => {
                return Err(ended.unwrap_or_else(|_| Err(anyhow::anyhow!("the server task vanished"))).err().unwrap_or_else(|| anyhow::anyhow!("the server stopped")));
            }
        }
        Ok(TestServer {
            client,
            url,
            engine,
            shared,
            stop: Some(tx),
            task,
            _dir: dir,
        })
    }

    fn client_url(&self) -> String {
        self.url.clone()
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
async fn a_job_asking_more_pids_than_the_server_allows_leaves_no_trace() {
    let s = TestServer::start().await;
    // (An interactive job is refused the same way: the end-to-end test.)
    let e = s
        .run(r#"{"name":"greedy","image":"busybox","daemonize":true,"pids_limit":5000}"#)
        .await
        .expect_err("above --pids-max");
    let message = e.to_string();
    assert_eq!(status(e), 400, "{message}");
    assert!(
        message.contains("pids_limit") && message.contains("4096"),
        "{message}"
    );
    assert!(s.keys(keys::PROC).await.is_empty());
    assert!(s.keys(keys::PS).await.is_empty());
    assert_eq!(s.containers_of("greedy"), 0);
    // Within the maximum the job's own limit is used, else the server's;
    // every container gets the server's log rotation.
    for (doc, pids) in [
        (
            r#"{"name":"modest","image":"busybox","daemonize":true,"pids_limit":300}"#,
            300,
        ),
        (
            r#"{"name":"plain","image":"busybox","daemonize":true}"#,
            1024,
        ),
    ] {
        let r = s.run(doc).await.expect("runs");
        let spec = s
            .engine
            .containers()
            .into_iter()
            .find(|c| c.spec.labels.get(viking_docker::LABEL_JOB) == Some(&r.job.name))
            .expect("its container")
            .spec;
        assert_eq!(spec.pids_limit, Some(pids), "{doc}");
        let log = spec.log.expect("log rotation");
        assert_eq!((log.max_size.as_str(), log.max_files), ("10m", 3));
    }
}

#[tokio::test]
async fn a_volume_through_a_planted_symlink_leaves_no_trace() {
    let s = TestServer::start().await;
    let outside = tempfile::tempdir().expect("tempdir");
    let data = s.shared.config.data_dir.join("volumes/esc/data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::os::unix::fs::symlink(outside.path(), data.join("hostetc")).expect("symlink");
    let e = s
        .run(r#"{"name":"esc","image":"busybox","daemonize":true,"volumes":["/data/hostetc"]}"#)
        .await
        .expect_err("the link is refused");
    let message = e.to_string();
    assert_eq!(status(e), 409, "{message}");
    assert!(
        message.contains("\"/data/hostetc\"") && message.contains("symbolic link"),
        "{message}"
    );
    assert!(s.keys(keys::PROC).await.is_empty());
    assert!(s.keys(keys::PS).await.is_empty());
    assert_eq!(s.containers_of("esc"), 0);
    assert_eq!(std::fs::read_dir(outside.path()).expect("ls").count(), 0);
}

#[tokio::test]
async fn removing_the_volumes_of_a_job_whose_host_is_gone_changes_nothing() {
    use viking_store::StoreExt;
    let (n1, n2) = two_hosts().await;
    n1.run(r#"{"name":"db","image":"busybox","daemonize":true,"host":"n2","volumes":["/data"]}"#)
        .await
        .expect("runs on n2");
    let data = n2.shared.config.data_dir.join("volumes/db/data");
    assert!(data.is_dir());
    // n2 dies, and its lease runs out.
    n2.task.abort();
    n1.shared
        .store
        .delete(&keys::host("n2"))
        .await
        .expect("delete");
    let e = n1
        .client
        .rm_with("db", true, true)
        .await
        .expect_err("its host is gone");
    let message = e.to_string();
    assert_eq!(status(e), 503, "{message}");
    assert!(message.contains("n2"), "{message}");
    assert_eq!(n1.keys(&keys::proc("db")).await.len(), 1, "proc kept");
    assert_eq!(n1.keys(&keys::ps("db")).await.len(), 1, "ps kept");
    assert_eq!(n1.keys(&keys::history("db")).await.len(), 1, "history kept");
    assert!(data.is_dir());
    // Without its viking-ps record (a fixed job waiting for its host), the
    // history names the host: refused the same way, proc kept.
    n1.shared
        .store
        .delete(&keys::ps("db"))
        .await
        .expect("delete");
    let e = n1
        .client
        .rm_with("db", true, true)
        .await
        .expect_err("its host is gone");
    assert_eq!(status(e), 503);
    assert_eq!(n1.keys(&keys::proc("db")).await.len(), 1, "proc kept");
    assert_eq!(n1.keys(&keys::history("db")).await.len(), 1, "history kept");
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

/// A record that names a container which is not this cluster's (another
/// cluster's on the same engine, or one viking did not make): stop, rm and
/// the server's runtime refuse it as not found and leave it running.
#[tokio::test]
async fn containers_of_other_clusters_are_never_stopped_or_removed() {
    use viking_docker::Runtime;
    let s = TestServer::start().await;
    s.run(r#"{"name":"w","image":"busybox","daemonize":true}"#)
        .await
        .expect("run");
    let job = viking_core::Job::parse(br#"{"name":"other","image":"busybox"}"#, String::new)
        .expect("job");
    let spec =
        viking_docker::ContainerSpec::for_job(&job, "n9", "/elsewhere", std::path::Path::new("/d"));
    let foreign = s.engine.create(&spec).await.expect("create");
    s.engine.start(&foreign).await.expect("start");
    let mut unlabelled = spec.clone();
    unlabelled.name = "not-vikings".to_string();
    unlabelled.labels.clear();
    let plain = s.engine.create(&unlabelled).await.expect("create");
    s.engine.start(&plain).await.expect("start");
    // w's record now names the other cluster's container.
    let store = s.shared.store.as_ref();
    let (mut rec, rev) = viking_server::state::ps(store, "w")
        .await
        .expect("read")
        .expect("ps");
    rec.container_id = foreign.clone();
    viking_server::state::put_ps_if(store, &rec, rev)
        .await
        .expect("write")
        .expect("written");
    let e = s
        .client
        .call(Method::POST, "/v1/jobs/w/stop?t=1", None)
        .await
        .expect_err("stop");
    assert_eq!(status(e), 404);
    let e = s
        .client
        .call(Method::DELETE, "/v1/jobs/w?force=true", None)
        .await
        .expect_err("rm");
    assert_eq!(status(e), 404);
    for id in [&foreign, &plain] {
        for r in [
            s.shared.runtime.stop(id, 1).await,
            s.shared.runtime.kill(id, "KILL").await,
            s.shared.runtime.remove(id, true).await,
        ] {
            assert!(matches!(r, Err(RuntimeError::NotFound(_))), "{r:?}");
        }
        let c = s.engine.container(id).expect("still there");
        assert_eq!(c.status, "running", "{c:?}");
    }
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

/// A push is start-first (the old container stopped only after the new
/// one was created and started) except for a job with volumes, whose data
/// two processes must never share: stopped first.
#[tokio::test]
async fn a_push_starts_the_new_container_first_unless_the_job_has_volumes() {
    use viking_docker::fake::Call;
    let s = TestServer::start().await;
    for doc in [
        r#"{"name":"app","image":"busybox","daemonize":true}"#,
        r#"{"name":"db","image":"busybox","daemonize":true,"volumes":["/data"]}"#,
    ] {
        s.run(doc).await.expect("run");
    }
    let ids: std::collections::BTreeMap<String, String> = ["app", "db"]
        .iter()
        .map(|j| {
            let id = s
                .engine
                .containers()
                .into_iter()
                .find(|c| {
                    c.spec
                        .labels
                        .get(viking_docker::LABEL_JOB)
                        .map(String::as_str)
                        == Some(*j)
                })
                .expect("its container")
                .id;
            (j.to_string(), id)
        })
        .collect();
    s.engine.clear_calls();
    s.engine.add_image("busybox");
    let summary = push(&s, push_request()).await;
    assert_eq!(summary.restarted.len(), 2, "{summary:?}");
    let calls = s.engine.calls();
    let at = |f: &dyn Fn(&Call) -> bool| calls.iter().position(f);
    for (job, start_first) in [("app", true), ("db", false)] {
        let old = &ids[job];
        let stopped =
            at(&|c| matches!(c, Call::Stop { id, .. } if id == old)).expect("old stopped");
        let created = at(&|c| matches!(c, Call::Create(spec) if spec.labels.get(viking_docker::LABEL_JOB).map(String::as_str) == Some(job)))
            .expect("new created");
        assert_eq!(created < stopped, start_first, "{job}: {calls:?}");
    }
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
    let mut hs = hosts(2).await;
    let n2 = hs.pop().expect("n2");
    let n1 = hs.pop().expect("n1");
    (n1, n2)
}

/// `n` servers, `n1`..., over one store, each with its own engine, once n1
/// sees them all alive.
async fn hosts(n: usize) -> Vec<TestServer> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        EmbeddedStore::open(&dir.path().join("viking.redb"), "/viking").expect("store");
    let mut out = vec![TestServer::start_on("n1", store.clone(), dir).await];
    for i in 2..=n {
        let s = TestServer::start_on(
            &format!("n{i}"),
            store.clone(),
            tempfile::tempdir().expect("tempdir"),
        )
        .await;
        out.push(s);
    }
    let n1 = &out[0];
    viking_testkit::eventually_async(
        "n1 sees every host alive",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            n1.client
                .hosts()
                .await
                .map(|hs| hs.iter().filter(|h| h.alive).count() == n)
                .unwrap_or(false)
        },
    )
    .await;
    out
}

fn kills(engine: &FakeRuntime) -> Vec<String> {
    engine
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            viking_docker::fake::Call::Kill { signal, .. } => Some(signal),
            _ => None,
        })
        .collect()
}

/// `viking kill` (and `docker kill`): a signal reaches the job's process on
/// its host through any server and leaves the job desired; a bad signal
/// is refused naming the field and sends nothing; KILL stops it for good.
#[tokio::test]
async fn kill_signals_the_job_where_it_runs() {
    use viking_core::signal::{Signal, KILL};
    let (n1, n2) = two_hosts().await;
    n1.run(r#"{"name":"far","image":"busybox","daemonize":true,"host":"n2"}"#)
        .await
        .expect("run through n1");
    let e = n1
        .client
        .call(Method::POST, "/v1/jobs/far/kill?signal=NOPE", None)
        .await
        .expect_err("a bad signal");
    assert!(e.to_string().contains("signal: \"NOPE\""), "{e}");
    assert_eq!(status(e), 400);
    let e = n1
        .client
        .kill("nobody", &KILL)
        .await
        .expect_err("no such job");
    assert_eq!(status(e), 404);
    assert!(kills(&n2.engine).is_empty() && kills(&n1.engine).is_empty());

    let hup = Signal::parse("hup").expect("HUP");
    n1.client.kill("far", &hup).await.expect("kill -s HUP");
    assert_eq!(kills(&n2.engine), vec!["SIGHUP".to_string()]);
    assert!(kills(&n1.engine).is_empty());
    assert_eq!(n1.keys(keys::PROC).await, vec!["proc/far".to_string()]);

    // KILL: out of viking-proc, its container stopped and never restarted.
    let r = n1.client.kill("far", &KILL).await.expect("kill");
    assert!(r.proc.is_none(), "{r:?}");
    assert!(!r.ps.expect("ps stays until rm").is_running());
    assert!(n2.engine.containers().iter().all(|c| c.status != "running"));
    let e = n1
        .client
        .kill("far", &hup)
        .await
        .expect_err("not running any more");
    assert_eq!(status(e), 409);
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

/// A store two test servers share, and a data directory for the first.
fn shared_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        EmbeddedStore::open(&dir.path().join("viking.redb"), "/viking").expect("store");
    (store, dir)
}

async fn floki_record(store: &dyn Store, name: &str) -> viking_core::records::HostRecord {
    let kv = store
        .get(&keys::host(name))
        .await
        .expect("get")
        .expect("in floki");
    viking_core::records::decode(&kv.value).expect("decode")
}

#[tokio::test]
async fn a_second_server_with_a_taken_name_is_refused_while_the_first_lives() {
    let (store, dir) = shared_store();
    let ttl = Duration::from_secs(1);
    let first = TestServer::try_start("n1", store.clone(), dir, ttl)
        .await
        .expect("first");
    let before = floki_record(store.as_ref(), "n1").await;
    // Another machine (another data directory, so another server id).
    let err =
        match TestServer::try_start("n1", store.clone(), tempfile::tempdir().expect("tmp"), ttl)
            .await
        {
            Ok(_) => panic!("a second server named n1 was let in"),
            Err(e) => e,
        };
    let err = err
        .chain()
        .find_map(|e| e.downcast_ref::<viking_server::error::ServerError>())
        .unwrap_or_else(|| panic!("not the server's error: {err:#}"));
    assert!(
        matches!(err, viking_server::error::ServerError::Conflict(_)),
        "{err}"
    );
    assert!(
        err.to_string().contains("another server named \"n1\""),
        "{err}"
    );
    // The first keeps its name and goes on refreshing its record.
    let after = floki_record(store.as_ref(), "n1").await;
    assert_eq!(after.server_id, before.server_id);
    assert_eq!(after.server_id, first.shared.server_id);
    // It writes its record again when something in it changes.
    first
        .shared
        .running
        .store(before.running + 7, std::sync::atomic::Ordering::Relaxed);
    viking_testkit::eventually_async(
        "the first server writes its changed floki record",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let now = floki_record(store.as_ref(), "n1").await;
            now.running == before.running + 7 && now.updated_at > before.updated_at
        },
    )
    .await;
}

#[tokio::test]
async fn a_server_that_crashed_gets_its_name_back_once_its_lease_is_gone() {
    let (store, dir) = shared_store();
    let ttl = Duration::from_secs(1);
    let first = TestServer::try_start("n1", store.clone(), dir, ttl)
        .await
        .expect("first");
    let old_id = first.shared.server_id.clone();
    // A crash: the server's tasks end without a word, its lease still runs.
    first.task.abort();
    let mut first = first;
    first.stop = None;
    let second = TestServer::try_start("n1", store.clone(), tempfile::tempdir().expect("tmp"), ttl)
        .await
        .expect("the name is free once the old lease expired");
    let rec = floki_record(store.as_ref(), "n1").await;
    assert_eq!(rec.server_id, second.shared.server_id);
    assert_ne!(rec.server_id, old_id);
}

#[tokio::test]
async fn a_server_restarted_on_its_data_directory_takes_its_name_back_at_once() {
    let (store, dir) = shared_store();
    // A long TTL: waiting for the old lease would take 30 s and more.
    let ttl = Duration::from_secs(30);
    let first = TestServer::try_start("n1", store.clone(), dir, ttl)
        .await
        .expect("first");
    let id = first.shared.server_id.clone();
    // The same data directory after a restart: its id file.
    let again = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        first.shared.config.data_dir.join("server-id"),
        again.path().join("server-id"),
    )
    .expect("copy id");
    // Stop the server (its lease stays until the TTL).
    let TestServer { task, .. } = &first;
    let task = task.abort_handle();
    drop(first);
    viking_testkit::eventually_async(
        "the first server to stop",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { task.is_finished() },
    )
    .await;
    let restarted = tokio::time::timeout(
        Duration::from_secs(10),
        TestServer::try_start("n1", store.clone(), again, ttl),
    )
    .await
    .expect("registered without waiting for the old lease")
    .expect("restarted");
    assert_eq!(restarted.shared.server_id, id);
    assert_eq!(floki_record(store.as_ref(), "n1").await.server_id, id);
}

#[tokio::test]
async fn concurrent_runs_with_the_same_host_port_go_one_per_host() {
    let hs = hosts(3).await;
    let runs = hs.iter().enumerate().map(|(i, h)| {
        let doc = format!(r#"{{"name":"p{i}","image":"busybox","ports":["8080:80"]}}"#);
        async move { h.run(&doc).await }
    });
    let done = futures::future::join_all(runs).await;
    let mut nodes: Vec<String> = done
        .into_iter()
        .map(|r| r.expect("every run succeeds").ps.expect("ps").node)
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "one per host");
    // A fourth has nowhere to go, and says why.
    let err = hs[0]
        .run(r#"{"name":"p4","image":"busybox","ports":["8080:80"]}"#)
        .await
        .expect_err("no host has 8080 free");
    assert!(err.to_string().contains("8080"), "{err}");
}

#[tokio::test]
async fn a_burst_of_concurrent_runs_spreads_evenly() {
    let hs = hosts(3).await;
    let runs = (0..30).map(|i| {
        let h = &hs[i % 3];
        let doc = format!(r#"{{"name":"b{i}","image":"busybox","daemonize":true}}"#);
        async move { h.run(&doc).await }
    });
    let done = futures::future::join_all(runs).await;
    let mut per_host: std::collections::BTreeMap<String, usize> = Default::default();
    for r in done {
        *per_host
            .entry(r.expect("every run succeeds").ps.expect("ps").node)
            .or_default() += 1;
    }
    let counts: Vec<usize> = per_host.values().copied().collect();
    assert_eq!(counts.len(), 3, "{per_host:?}");
    let (lo, hi) = (counts.iter().min(), counts.iter().max());
    assert!(
        hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
        "uneven: {per_host:?}"
    );
}

#[tokio::test]
async fn a_host_port_taken_outside_viking_places_the_job_elsewhere() {
    let (n1, n2) = two_hosts().await;
    // n2 is busier, so dowding prefers n1, where a process holds 8080.
    n2.run(r#"{"name":"busy","image":"busybox","daemonize":true,"host":"n2"}"#)
        .await
        .expect("run on n2");
    n1.engine.occupy_host_port(8080, viking_core::Proto::Tcp);
    let r = n1
        .run(r#"{"name":"web","image":"busybox","ports":["8080:80"]}"#)
        .await
        .expect("placed again on n2");
    assert_eq!(r.ps.expect("ps").node, "n2");
    assert_eq!(n1.containers_of("web"), 0, "nothing created on n1");
    assert_eq!(n2.containers_of("web"), 1);
    let proc = n1
        .shared
        .store
        .get(&keys::proc("web"))
        .await
        .expect("get")
        .expect("in proc");
    let proc: viking_core::records::ProcRecord =
        viking_core::records::decode(&proc.value).expect("decode");
    assert_eq!(proc.placed_on.as_deref(), Some("n2"), "the claim moved");
}

/// Delete every key of the store, as `etcdctl del --prefix` does.
async fn wipe(store: &dyn Store) {
    let (kvs, _) = store.list("").await.expect("list");
    for kv in kvs {
        store.delete(&kv.key).await.expect("delete");
    }
}

fn removals_or_stops(engine: &FakeRuntime) -> Vec<viking_docker::fake::Call> {
    engine
        .calls()
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                viking_docker::fake::Call::Remove { .. }
                    | viking_docker::fake::Call::Stop { .. }
                    | viking_docker::fake::Call::Kill { .. }
            )
        })
        .collect()
}

#[tokio::test]
async fn an_emptied_store_stops_nothing_and_recover_brings_the_fleet_back() {
    let s = TestServer::start().await;
    for doc in [
        r#"{"name":"web","image":"busybox","ports":["80"]}"#,
        r#"{"name":"worker","image":"busybox","daemonize":true}"#,
        r#"{"name":"db","image":"busybox","daemonize":true,"volumes":["/data"]}"#,
    ] {
        s.run(doc).await.expect("run");
    }
    let port_before = s
        .shared
        .store
        .get(&keys::ambassador_port("web", 80))
        .await
        .expect("get")
        .expect("web has an ambassador port")
        .value;
    let running = s.engine.containers().len();
    assert_eq!(running, 3);

    wipe(s.shared.store.as_ref()).await;
    // The server notices and holds: it says so, and refuses changes.
    let h = s.client.health().await.expect("health");
    assert!(h.held.is_some(), "{h:?}");
    let err = s
        .run(r#"{"name":"new","image":"busybox","daemonize":true}"#)
        .await
        .expect_err("a held server refuses a run");
    assert_eq!(err.status(), Some(503), "{err}");
    // A full resync and a reconciler round touch nothing.
    s.shared.resync_now.notify_one();
    viking_testkit::eventually_async(
        "floki to show the server holding",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            s.client
                .hosts()
                .await
                .map(|hs| {
                    hs.iter()
                        .any(|h| h.host.name == "n1" && h.host.held.is_some())
                })
                .unwrap_or(false)
        },
    )
    .await;
    viking_server::agent::resync(&s.shared)
        .await
        .expect("resync");
    viking_server::reconciler::reconcile_once(&s.shared)
        .await
        .expect("round");
    assert_eq!(
        removals_or_stops(&s.engine),
        vec![],
        "nothing removed or stopped"
    );
    assert!(s.engine.containers().iter().all(|c| c.status == "running"));

    // The records come back from the containers, and the server acts again.
    let summary = s
        .client
        .recover(&viking_client::api::RecoverRequest::default())
        .await
        .expect("recover");
    let mut got = summary.recovered.clone();
    got.sort();
    assert_eq!(got, ["db", "web", "worker"], "{summary:?}");
    assert_eq!(s.client.health().await.expect("health").held, None);
    let ps = s.client.ps(false).await.expect("ps");
    assert_eq!(ps.len(), 3, "{ps:?}");
    let port_after = s
        .shared
        .store
        .get(&keys::ambassador_port("web", 80))
        .await
        .expect("get")
        .expect("web's ambassador port is back")
        .value;
    assert_eq!(port_after, port_before, "the same ambassador port");
    let (hist, _) = (
        s.shared.store.get(&keys::history("db")).await.expect("get"),
        (),
    );
    assert!(hist.is_some(), "db's history (its host) is back");
    // And it acts: a stop works as before.
    s.client.stop("worker", 1).await.expect("stop");
    assert_eq!(removals_or_stops(&s.engine).len(), 1);
    // A second recovery changes nothing.
    let again = s
        .client
        .recover(&viking_client::api::RecoverRequest::default())
        .await
        .expect("recover again");
    assert!(again.recovered.is_empty(), "{again:?}");
}

#[tokio::test]
async fn a_store_of_another_cluster_is_only_taken_over_with_adopt() {
    let s = TestServer::start().await;
    s.run(r#"{"name":"keep","image":"busybox","daemonize":true}"#)
        .await
        .expect("run");
    wipe(s.shared.store.as_ref()).await;
    s.shared
        .store
        .put(keys::CLUSTER_ID, "someone-else")
        .await
        .expect("put");
    let h = s.client.health().await.expect("health");
    assert!(h.held.is_some_and(|w| w.contains("another cluster")));
    let err = s
        .client
        .recover(&viking_client::api::RecoverRequest::default())
        .await
        .expect_err("no adopt");
    assert_eq!(err.status(), Some(409), "{err}");
    let summary = s
        .client
        .recover(&viking_client::api::RecoverRequest { adopt: true })
        .await
        .expect("adopt");
    assert_eq!(summary.recovered, ["keep"]);
    assert_eq!(s.client.health().await.expect("health").held, None);
    assert_eq!(removals_or_stops(&s.engine), vec![]);
}

/// A floki record of a host named `name` whose API is at `api`: 64 CPUs,
/// 1 TiB, nothing running.
fn host_record(name: &str, api: &str) -> viking_core::records::HostRecord {
    viking_core::records::HostRecord {
        name: name.to_string(),
        ip: "127.0.0.1".to_string(),
        api: api.to_string(),
        tags: vec![],
        cpus: 64,
        memory: 1 << 40,
        running: 0,
        memory_used: 0,
        cpu_used: 0,
        version: "test".to_string(),
        started_at: 1,
        updated_at: 1,
        server_id: String::new(),
        held: None,
    }
}

/// A host that is alive in floki (a record under a lease kept alive) but
/// whose server accepts connections and never answers: stopped (SIGSTOP),
/// or cut off after connecting. Counts the connections it accepted; leaves
/// floki when dropped (its lease expires).
struct StalledHost {
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    listener: tokio::task::JoinHandle<()>,
    keep: viking_store::KeepAlive,
}

impl StalledHost {
    async fn register(store: Arc<dyn Store>, name: &str) -> StalledHost {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let listener = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
        let record = viking_core::records::HostRecord {
            server_id: format!("stalled-{name}"),
            ..host_record(name, &format!("http://{addr}"))
        };
        let ttl = Duration::from_secs(1);
        let lease = store.lease_grant(ttl).await.expect("lease");
        let keep = viking_store::spawn_keep_alive(store.clone(), lease, ttl);
        let value = viking_core::records::encode(&record).expect("encode");
        store
            .put_with_lease(&keys::host(name), value.clone(), lease)
            .await
            .expect("hosts/");
        store.put(&keys::fleet(name), value).await.expect("fleet/");
        StalledHost {
            accepted,
            listener,
            keep,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for StalledHost {
    fn drop(&mut self) {
        self.keep.abort();
        self.listener.abort();
    }
}

/// Put a daemonized job in viking-proc as it is asked for, for the
/// reconciler to place.
async fn want(store: &dyn Store, doc: &str) {
    let job = viking_core::Job::parse(doc.as_bytes(), String::new).expect("job");
    let rec = viking_core::records::ProcRecord {
        job: job.clone(),
        created_at: viking_server::now_ms(),
        placed_on: None,
        waiting: None,
    };
    store
        .put(
            &keys::proc(&job.name),
            viking_core::records::encode(&rec).expect("encode"),
        )
        .await
        .expect("proc");
}

async fn ps_of(store: &dyn Store, job: &str) -> Option<(PsRecord, i64)> {
    viking_server::state::ps(store, job).await.expect("ps")
}

#[tokio::test]
async fn a_run_whose_chosen_host_stalls_is_placed_again() {
    let (store, dir) = shared_store();
    let n1 = TestServer::start_on("n1", store.clone(), dir).await;
    // n1 is busier, so dowding prefers n2, whose server never answers.
    n1.run(r#"{"name":"busy","image":"busybox","daemonize":true,"host":"n1"}"#)
        .await
        .expect("run on n1");
    let n2 = StalledHost::register(store.clone(), "n2").await;
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        n1.run(r#"{"name":"moved","image":"busybox","daemonize":true}"#),
    )
    .await
    .expect("the run does not hang on the stalled host")
    .expect("placed again");
    assert_eq!(n2.accepted(), 1, "n2 was asked first");
    assert_eq!(r.ps.expect("ps").node, "n1", "placed again without n2");
    assert!(
        started.elapsed() < PEER_TIMEOUT + Duration::from_secs(5),
        "within the peer deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(n1.containers_of("moved"), 1);
    let proc = viking_server::state::proc(store.as_ref(), "moved")
        .await
        .expect("read")
        .expect("proc");
    assert_eq!(proc.placed_on.as_deref(), Some("n1"), "the claim moved");
}

#[tokio::test]
async fn the_reconciler_starts_other_jobs_while_a_start_hangs() {
    let (store, dir) = shared_store();
    // A deadline long enough that the hanging start outlives the test.
    let n1 = TestServer::try_start_with("n1", store.clone(), dir, Duration::from_secs(3), |c| {
        c.peer_timeout = Duration::from_secs(120)
    })
    .await
    .expect("n1");
    let n2 = StalledHost::register(store.clone(), "n2").await;
    want(
        store.as_ref(),
        r#"{"name":"slow","image":"busybox","daemonize":true,"host":"n2"}"#,
    )
    .await;
    viking_testkit::eventually_async(
        "the start of slow to hang on n2",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { n2.accepted() == 1 },
    )
    .await;
    // Another job to start, and rounds (every change triggers one) while
    // slow's start hangs.
    want(
        store.as_ref(),
        r#"{"name":"quick","image":"busybox","daemonize":true,"host":"n1"}"#,
    )
    .await;
    viking_testkit::eventually_async(
        "quick running on n1 while slow's start hangs",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            ps_of(store.as_ref(), "quick")
                .await
                .is_some_and(|(p, _)| p.is_running() && p.node == "n1")
        },
    )
    .await;
    let (slow, _) = ps_of(store.as_ref(), "slow").await.expect("slow's claim");
    assert_eq!(slow.status, viking_core::Status::Starting);
    assert_eq!(slow.claimed_by.as_deref(), Some("n1"), "{slow:?}");
    assert_eq!(n2.accepted(), 1, "a start in flight is not launched twice");
    assert_eq!(n1.containers_of("quick"), 1);
}

#[tokio::test]
async fn a_start_whose_claimant_left_floki_is_retried_at_once() {
    let (store, dir) = shared_store();
    let n1 = TestServer::start_on("n1", store.clone(), dir).await;
    // n3 claimed a start on n1 and died before asking n1: the record says
    // starting, created just now (the start timeout is five minutes).
    let doc = r#"{"name":"orphan","image":"busybox","daemonize":true}"#;
    let job = viking_core::Job::parse(doc.as_bytes(), String::new).expect("job");
    let starting =
        viking_server::state::starting_record(&job, "n1", Some("n3"), viking_server::now_ms());
    store
        .put(
            &keys::ps("orphan"),
            viking_core::records::encode(&starting).expect("encode"),
        )
        .await
        .expect("ps");
    want(store.as_ref(), doc).await;
    viking_testkit::eventually_async(
        "orphan running on n1",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            ps_of(store.as_ref(), "orphan")
                .await
                .is_some_and(|(p, _)| p.is_running())
        },
    )
    .await;
    assert_eq!(n1.containers_of("orphan"), 1);
}

/// A forwarded start that is slow on its host (here: Docker's start takes
/// seconds) while the job moves on: the host does not record its copy and
/// removes it, and the failed run's undo leaves the moved job alone.
#[tokio::test]
async fn a_failed_run_never_removes_a_job_that_moved_on() {
    let (n1, n2) = two_hosts().await;
    n2.engine.set_start_delay(Duration::from_secs(2));
    let run = {
        let c = n1.client.clone();
        tokio::spawn(async move {
            c.json::<RunResponse>(
                Method::POST,
                "/v1/jobs",
                Some(br#"{"name":"x","image":"busybox","daemonize":true,"host":"n2"}"#.to_vec()),
            )
            .await
        })
    };
    viking_testkit::eventually_async(
        "x's container created on n2",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async { n2.containers_of("x") == 1 },
    )
    .await;
    // Meanwhile the job moved to n1 and runs there (as the reconciler
    // does when n2 leaves floki): a new claim, and its start.
    let store = n1.shared.store.clone();
    let proc = viking_server::state::proc(store.as_ref(), "x")
        .await
        .expect("read")
        .expect("proc");
    let mut placed = proc.clone();
    placed.placed_on = Some("n1".to_string());
    let starting =
        viking_server::state::starting_record(&proc.job, "n1", Some("n1"), viking_server::now_ms());
    let moved = store
        .txn(
            vec![],
            vec![
                viking_store::Op::Put {
                    key: keys::ps("x"),
                    value: viking_core::records::encode(&starting).expect("encode"),
                    lease: None,
                },
                viking_store::Op::Put {
                    key: keys::proc("x"),
                    value: viking_core::records::encode(&placed).expect("encode"),
                    lease: None,
                },
            ],
            vec![],
        )
        .await
        .expect("move");
    viking_server::jobs::start_on(
        &n1.shared,
        &proc.job,
        &viking_server::placement::Target::Here,
        moved.revision,
        &|_| {},
    )
    .await
    .expect("started on n1");
    let answer = run.await.expect("the run's task");
    assert!(answer.is_err(), "the run through n2 failed: {answer:?}");
    let (ps, _) = ps_of(store.as_ref(), "x").await.expect("x keeps its ps");
    assert_eq!((ps.node.as_str(), ps.is_running()), ("n1", true), "{ps:?}");
    assert!(
        viking_server::state::proc(store.as_ref(), "x")
            .await
            .expect("read")
            .is_some(),
        "x is still in viking-proc"
    );
    assert_eq!(n1.containers_of("x"), 1, "x runs on n1");
    assert_eq!(n2.containers_of("x"), 0, "n2 removed its stale copy");
}

/// A progress stream says something at least every few seconds (a blank
/// heartbeat line while the start is quiet), so a client can tell a slow
/// start from a stopped server.
#[tokio::test]
async fn a_quiet_start_sends_heartbeats() {
    use tokio::io::AsyncReadExt;
    let s = TestServer::start().await;
    let quiet = viking_client::api::HEARTBEAT + Duration::from_secs(1);
    s.engine.set_start_delay(quiet);
    let body = s
        .client
        .stream(
            Method::POST,
            &viking_client::routes::run_with_progress(),
            Some(br#"{"name":"slow","image":"busybox","daemonize":true}"#.to_vec()),
        )
        .await
        .expect("progress");
    let mut text = String::new();
    viking_client::body::reader(body)
        .read_to_string(&mut text)
        .await
        .expect("the whole answer");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.is_empty()), "a heartbeat: {text}");
    assert!(
        lines.last().is_some_and(|l| l.starts_with("{\"done\"")),
        "ends with the result: {text}"
    );
    assert_eq!(s.containers_of("slow"), 1);
}

/// A start that reaches its host after its claim moved on (the host's
/// server was stopped while the job went elsewhere) creates nothing there.
#[tokio::test]
async fn a_start_whose_claim_moved_on_creates_no_container() {
    let (n1, n2) = two_hosts().await;
    let r = n1
        .run(r#"{"name":"x","image":"busybox","daemonize":true,"host":"n2"}"#)
        .await
        .expect("run on n2");
    assert_eq!(r.ps.expect("ps").node, "n2");
    // The claim that once asked n2 to start x, long superseded by the
    // record of its start.
    let store = n1.shared.store.clone();
    let (_, now) = ps_of(store.as_ref(), "x").await.expect("ps");
    let stale = now - 1;
    n2.engine.clear_calls();
    let doc = serde_json::to_vec(&r.job).expect("doc");
    let e = n2
        .client
        .start_placed(doc, Some(stale), &|_| {})
        .await
        .expect_err("a stale claim is refused");
    assert_eq!(status(e), 409);
    assert!(
        n2.engine.calls().iter().all(|c| !matches!(
            c,
            viking_docker::fake::Call::Create(_)
                | viking_docker::fake::Call::Start(_)
                | viking_docker::fake::Call::Remove { .. }
        )),
        "{:?}",
        n2.engine.calls()
    );
    assert_eq!(n2.containers_of("x"), 1, "the running copy is untouched");
}

#[tokio::test]
async fn a_start_of_a_job_whose_container_still_runs_keeps_that_container() {
    let s = TestServer::start().await;
    let r = s
        .run(r#"{"name":"keep","image":"busybox","daemonize":true}"#)
        .await
        .expect("run");
    let id = r.ps.expect("ps").container_id;
    // The record lags behind the container: it says the job waits (its
    // host was gone and is back; the agent has not refreshed it yet).
    let (mut rec, _) = viking_server::state::ps(s.shared.store.as_ref(), "keep")
        .await
        .expect("ps")
        .expect("record");
    rec.status = viking_core::Status::Waiting;
    s.shared
        .store
        .put(
            &keys::ps("keep"),
            viking_core::records::encode(&rec).expect("encode"),
        )
        .await
        .expect("put");
    viking_server::reconciler::reconcile_once(&s.shared)
        .await
        .expect("round");
    // Started "again": the running container is kept, not replaced.
    assert_eq!(removals_or_stops(&s.engine), vec![], "nothing removed");
    assert_eq!(s.containers_of("keep"), 1);
    let now = viking_server::state::ps(s.shared.store.as_ref(), "keep")
        .await
        .expect("ps")
        .expect("record")
        .0;
    assert_eq!(now.container_id, id);
    assert_eq!(now.status, viking_core::Status::Running);
}

/// Move job `name` to `host` and start it there, as the reconciler does
/// when the job's host leaves floki: a new claim, then the start.
async fn move_to(host: &TestServer, name: &str) -> (PsRecord, i64) {
    let store = host.shared.store.clone();
    let proc = viking_server::state::proc(store.as_ref(), name)
        .await
        .expect("read")
        .expect("proc");
    let mut placed = proc.clone();
    placed.placed_on = Some(host.shared.config.name.clone());
    let starting = viking_server::state::starting_record(
        &proc.job,
        &host.shared.config.name,
        Some(&host.shared.config.name),
        viking_server::now_ms(),
    );
    let claim = store
        .txn(
            vec![],
            vec![
                viking_store::Op::Put {
                    key: keys::ps(name),
                    value: viking_core::records::encode(&starting).expect("encode"),
                    lease: None,
                },
                viking_store::Op::Put {
                    key: keys::proc(name),
                    value: viking_core::records::encode(&placed).expect("encode"),
                    lease: None,
                },
            ],
            vec![],
        )
        .await
        .expect("claim");
    viking_server::jobs::start_on(
        &host.shared,
        &proc.job,
        &viking_server::placement::Target::Here,
        claim.revision,
        &|_| {},
    )
    .await
    .expect("started");
    ps_of(store.as_ref(), name).await.expect("moved record")
}

/// The chaos run's bug (issue 16): n1's Docker froze while its agent
/// refreshed its jobs. The agent read the records (j on n1) before the
/// freeze and got Docker's answers after it; meanwhile n1 left floki and j
/// was started on n2. The late refresh once re-read j's record, did not
/// find n2's container on n1's engine and marked n2's record missing; the
/// reconciler then started j again (on n1, the least loaded) and n2
/// removed its healthy copy as stale. The refresh is for the container the
/// agent saw, on its own host: n2's record is not touched, and n1's stale
/// copy goes.
#[tokio::test]
async fn a_frozen_engine_never_makes_the_agent_write_the_record_of_a_job_that_moved_on() {
    use viking_docker::Runtime;
    let (n1, n2) = two_hosts().await;
    let store = n1.shared.store.clone();
    // n2 is busier, so dowding puts j on n1.
    n2.run(r#"{"name":"busy","image":"busybox","daemonize":true,"host":"n2"}"#)
        .await
        .expect("run on n2");
    let r = n1
        .run(r#"{"name":"j","image":"busybox","daemonize":true}"#)
        .await
        .expect("run j");
    assert_eq!(r.ps.expect("ps").node, "n1");
    // Another container of n1 whose record the agent refreshes before j's
    // (newest first, as Docker lists them): created, never started, so
    // nothing but the resync looks at it.
    let a = viking_core::Job::parse(
        br#"{"name":"a","image":"busybox","daemonize":true}"#,
        String::new,
    )
    .expect("job");
    let spec =
        viking_docker::ContainerSpec::for_job(&a, "n1", "/viking", &n1.shared.config.data_dir);
    let a_id = n1.engine.create(&spec).await.expect("create a");
    let info = n1.engine.inspect(&a_id).await.expect("inspect").expect("a");
    let rec = viking_server::container::ps_from(&n1.shared, &info, 0);
    store
        .put(
            &keys::ps("a"),
            viking_core::records::encode(&rec).expect("encode"),
        )
        .await
        .expect("a's record");

    // n1's Docker freezes while the resync refreshes a: the plan is made.
    let mut held = n1.engine.hold_next(Op::Inspect, &a_id);
    let resync = tokio::spawn({
        let sh = n1.shared.clone();
        async move { viking_server::agent::resync(&sh).await }
    });
    tokio::time::timeout(Duration::from_secs(10), held.reached())
        .await
        .expect("the resync refreshes a");
    // Meanwhile j moves to n2 and runs there.
    let (moved, moved_rev) = move_to(&n2, "j").await;
    assert_eq!((moved.node.as_str(), moved.is_running()), ("n2", true));
    // Docker thaws: the resync goes on with what it planned.
    held.release();
    resync.await.expect("the resync's task").expect("resync");
    let (now, now_rev) = ps_of(store.as_ref(), "j").await.expect("j's record");
    assert_eq!(
        (now_rev, &now),
        (moved_rev, &moved),
        "n1's agent wrote n2's record of j"
    );
    viking_testkit::eventually_async(
        "n1's stale copy of j removed",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { n1.containers_of("j") == 0 },
    )
    .await;
    assert_eq!(n2.containers_of("j"), 1, "n2's copy runs on");
    let (after, _) = ps_of(store.as_ref(), "j").await.expect("j's record");
    assert_eq!(after.container_id, moved.container_id);
    assert!(after.is_running(), "{after:?}");
}

/// A full resync lists the containers, then reads the records: a job
/// started here in between has a record whose container is not in the
/// list. It is not missing (marking it so made the reconciler start it
/// again, perhaps elsewhere, and the healthy copy was removed as stale).
#[tokio::test]
async fn a_job_started_while_the_resync_lists_is_not_marked_missing() {
    let s = TestServer::start().await;
    let store = s.shared.store.clone();
    // Docker answers the resync's list late: the job starts meanwhile.
    let mut held = s.engine.hold_next(Op::List, "/viking");
    let resync = tokio::spawn({
        let sh = s.shared.clone();
        async move { viking_server::agent::resync(&sh).await }
    });
    tokio::time::timeout(Duration::from_secs(10), held.reached())
        .await
        .expect("the resync lists");
    s.run(r#"{"name":"x","image":"busybox","daemonize":true}"#)
        .await
        .expect("run x");
    let (started, rev) = ps_of(store.as_ref(), "x").await.expect("x's record");
    assert!(started.is_running(), "{started:?}");
    held.release();
    resync.await.expect("the resync's task").expect("resync");
    let (now, now_rev) = ps_of(store.as_ref(), "x").await.expect("x's record");
    assert_eq!((now_rev, &now), (rev, &started), "x's record was rewritten");
}

// ------------------------------------------------ a quiet, robust store

fn is_ping(c: &viking_docker::fake::Call) -> bool {
    matches!(c, viking_docker::fake::Call::Ping)
}

fn calls_matching(engine: &FakeRuntime, f: impl Fn(&viking_docker::fake::Call) -> bool) -> usize {
    engine.calls().iter().filter(|c| f(c)).count()
}

/// Wait until the engine has seen `n` more calls that `f` matches: a window
/// measured in the server's own steps, not in a fixed time.
async fn engine_calls_pass(
    engine: &FakeRuntime,
    what: &str,
    n: usize,
    f: impl Fn(&viking_docker::fake::Call) -> bool + Copy,
) {
    let start = calls_matching(engine, f);
    viking_testkit::eventually_async(
        what,
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async { calls_matching(engine, f) >= start + n },
    )
    .await;
}

/// An idle server with a running job writes nothing to the store over
/// several of floki's heartbeats and the agent's resyncs (its lease's
/// keep-alives are not writes): the store's revision does not move. A
/// change in its load is written (once).
#[tokio::test]
async fn an_idle_server_writes_nothing_to_the_store() {
    let (store, dir) = shared_store();
    let ttl = Duration::from_secs(1);
    let s = TestServer::try_start_with("n1", store.clone(), dir, ttl, |c| {
        c.resync = Duration::from_secs(1)
    })
    .await
    .expect("server");
    s.run(r#"{"name":"web","image":"busybox","daemonize":true}"#)
        .await
        .expect("run web");
    // Let the start settle: the first resync, the election, the standing.
    let settled = || async {
        let a = store.revision().await.expect("revision");
        // Past floki's shortest gap between two writes (2 s): three pings.
        engine_calls_pass(&s.engine, "three Docker pings", 3, is_ping).await;
        a == store.revision().await.expect("revision")
    };
    viking_testkit::eventually_async(
        "the server's start settles",
        Duration::from_secs(20),
        Duration::from_millis(10),
        settled,
    )
    .await;
    let before = store.revision().await.expect("revision");
    // Four Docker pings and four resyncs of the agent (a dozen heartbeats
    // of floki and rounds of the reconciler meanwhile).
    engine_calls_pass(&s.engine, "four Docker pings", 4, is_ping).await;
    engine_calls_pass(&s.engine, "four resyncs", 4, |c| {
        matches!(c, viking_docker::fake::Call::List(_))
    })
    .await;
    let after = store.revision().await.expect("revision");
    assert_eq!(
        after,
        before,
        "an idle server wrote {} times",
        after - before
    );
    assert!(floki_record(store.as_ref(), "n1").await.name == "n1");
    // A real change is written.
    s.shared
        .running
        .store(3, std::sync::atomic::Ordering::Relaxed);
    viking_testkit::eventually_async(
        "a change of load is written",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { floki_record(store.as_ref(), "n1").await.running == 3 },
    )
    .await;
}

/// Docker answering late once does not take the host out of floki; three
/// failed pings in a row (`--docker-ping-failures`) do, and it comes back
/// when Docker answers again.
#[tokio::test]
async fn a_host_leaves_floki_only_after_several_failed_pings_in_a_row() {
    let (store, dir) = shared_store();
    let s = TestServer::try_start("n1", store.clone(), dir, Duration::from_secs(1))
        .await
        .expect("server");
    let in_floki = || async { store.get(&keys::host("n1")).await.expect("get").is_some() };
    // One ping fails (the engine is unreachable for less than two pings).
    s.engine.set_unreachable(true);
    engine_calls_pass(&s.engine, "one failed ping", 1, is_ping).await;
    s.engine.set_unreachable(false);
    // Over the next four pings (each answered) it stays.
    let start = calls_matching(&s.engine, is_ping);
    viking_testkit::eventually_async(
        "four answered pings with the host in floki throughout",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            assert!(
                in_floki().await,
                "one failed ping took the host out of floki"
            );
            calls_matching(&s.engine, is_ping) >= start + 4
        },
    )
    .await;
    s.engine.set_unreachable(true);
    viking_testkit::eventually_async(
        "the host leaves floki after three failed pings",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { !in_floki().await },
    )
    .await;
    s.engine.set_unreachable(false);
    viking_testkit::eventually_async(
        "the host is back once Docker answers",
        Duration::from_secs(10),
        Duration::from_millis(50),
        in_floki,
    )
    .await;
}

/// A poison record (garbage in proc/, a newer version in ps/) is shown by
/// `viking ps` as an unreadable row and skipped: runs are still placed and
/// the reconciler still restarts a crashed job.
#[tokio::test]
async fn a_poison_record_stops_neither_a_run_nor_the_reconciler() {
    let s = TestServer::start().await;
    s.run(r#"{"name":"web","image":"busybox","daemonize":true}"#)
        .await
        .expect("run web");
    s.shared
        .store
        .put("proc/zz-garbage", "garbage")
        .await
        .expect("put");
    s.shared
        .store
        .put("ps/zz-newer", r#"{"v":99,"data":{}}"#)
        .await
        .expect("put");
    // A run is placed and started.
    let r = s
        .run(r#"{"name":"api","image":"busybox","daemonize":true}"#)
        .await
        .expect("a run with a poison record in the store");
    assert!(r.ps.expect("ps").is_running());
    // A crashed job is restarted by the reconciler.
    let id = s
        .engine
        .containers()
        .into_iter()
        .find(|c| {
            c.spec
                .labels
                .get(viking_docker::LABEL_JOB)
                .map(String::as_str)
                == Some("web")
        })
        .expect("web's container")
        .id;
    assert!(s.engine.exit(&id, 1));
    viking_testkit::eventually_async(
        "the reconciler restarts web",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let ps = s.client.ps(true).await.expect("ps");
            ps.iter()
                .any(|p| p.job == "web" && p.is_running() && p.restarts >= 1)
        },
    )
    .await;
    // The agent's full resync goes on too.
    viking_server::agent::resync(&s.shared)
        .await
        .expect("the agent's resync with a poison record in the store");
    // viking ps shows both, with or without -a.
    for all in [false, true] {
        let ps = s.client.ps(all).await.expect("ps");
        for (job, what) in [("zz-garbage", "viking-proc"), ("zz-newer", "viking-ps")] {
            let row = ps
                .iter()
                .find(|p| p.job == job)
                .unwrap_or_else(|| panic!("no row for {job}: {ps:?}"));
            assert_eq!(row.status, "unreadable");
            let e = row.error.as_deref().unwrap_or_default();
            assert!(e.contains(what), "{e}");
        }
        assert!(ps.iter().any(|p| p.job == "api" && p.is_running()));
    }
    let newer = s.client.ps(true).await.expect("ps");
    let e = newer
        .iter()
        .find(|p| p.job == "zz-newer")
        .and_then(|p| p.error.clone())
        .unwrap_or_default();
    assert!(e.contains("newer than this viking understands"), "{e}");
}

/// The leader compacts the store's history older than `--compact-window`:
/// a watch from the first revision is refused as compacted.
#[tokio::test]
async fn the_leader_compacts_the_history_beyond_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        EmbeddedStore::open(&dir.path().join("viking.redb"), "/viking").expect("store");
    let first = store.put("probe", "1").await.expect("put");
    let s = TestServer::start_with("n1", store.clone(), dir, |c| {
        c.compact_window = Duration::from_secs(1)
    })
    .await;
    viking_testkit::eventually_async(
        "the history before the window is compacted",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            matches!(
                store.watch("", first).await,
                Err(viking_store::StoreError::Compacted { .. })
            )
        },
    )
    .await;
    drop(s);
}

// ------------------------------------------------ a resync costs the host's own work

/// A periodic resync reads this host's own records only: the jobs of its
/// containers and those the leader's index (`assigned/<host>`) lists. A
/// record that names this host but whose container is not here (it
/// vanished without an event) is still found through the index and marked
/// missing, so the reconciler starts the job again.
#[tokio::test]
async fn a_resync_finds_a_vanished_container_through_the_leaders_index() {
    let s = TestServer::start().await;
    let store = s.shared.store.clone();
    let doc = r#"{"name":"ghost","image":"busybox","daemonize":true}"#;
    want(store.as_ref(), doc).await;
    // Its record says it runs here, in a container this engine never had.
    let rec: PsRecord = serde_json::from_value(serde_json::json!({
        "job": "ghost", "node": "n1", "container_id": "c-never-here", "image": "busybox",
        "image_id": "sha256:x", "command": [], "daemonize": true, "status": "running",
        "ports": [], "created_at": 1, "started_at": 1
    }))
    .expect("a ps record");
    store
        .put(
            &keys::ps("ghost"),
            viking_core::records::encode(&rec).expect("encode"),
        )
        .await
        .expect("ps");
    // The leader lists it among n1's jobs.
    viking_testkit::eventually_async(
        "the leader's index lists ghost on n1",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async {
            viking_server::state::get::<viking_core::records::AssignedRecord>(
                store.as_ref(),
                &keys::assigned("n1"),
            )
            .await
            .expect("assigned")
            .is_some_and(|(r, _)| r.jobs.contains("ghost"))
        },
    )
    .await;
    viking_server::agent::resync(&s.shared)
        .await
        .expect("resync");
    let (now, _) = ps_of(store.as_ref(), "ghost")
        .await
        .expect("ghost's record");
    assert!(
        now.container_id != "c-never-here" || now.status == viking_core::Status::Missing,
        "the vanished container's record still says {:?}",
        now.status
    );
}

/// The server that leads once its placer is in place.
/// A server of `hs` that is not `leader`.
fn follower<'a>(hs: &'a [TestServer], leader: &TestServer) -> &'a TestServer {
    hs.iter()
        .find(|h| h.shared.config.name != leader.shared.config.name)
        .expect("a follower")
}

async fn leader_of(hs: &[TestServer]) -> &TestServer {
    let i = viking_testkit::eventually_async(
        "a leader places runs",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { hs.iter().position(|h| h.shared.placer().is_some()) },
    )
    .await;
    &hs[i]
}

#[tokio::test]
async fn runs_at_any_server_are_placed_by_the_leader_or_here_when_it_cannot_be_reached() {
    let hs = hosts(3).await;
    let leader = leader_of(&hs).await;
    let placer = leader.shared.placer().expect("placer");
    let before = placer.claims_made();
    let followers: Vec<&TestServer> = hs
        .iter()
        .filter(|h| h.shared.config.name != leader.shared.config.name)
        .collect();
    let runs = (0..6).map(|i| {
        let h = followers[i % followers.len()];
        let doc = format!(r#"{{"name":"l{i}","image":"busybox","daemonize":true}}"#);
        async move { h.run(&doc).await }
    });
    let mut per_host: std::collections::BTreeMap<String, usize> = Default::default();
    for r in futures::future::join_all(runs).await {
        *per_host
            .entry(r.expect("every run succeeds").ps.expect("ps").node)
            .or_default() += 1;
    }
    assert_eq!(
        placer.claims_made() - before,
        6,
        "every run was claimed at the leader"
    );
    assert_eq!(
        per_host.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{per_host:?}"
    );

    // A leader that cannot be reached: the server places the job itself,
    // and asks again next time.
    let f = followers[0];
    let mut gone = viking_server::floki::record(&leader.shared).await;
    gone.api = format!("http://127.0.0.1:{}", viking_testkit::local::free_port());
    *f.shared.leader_hint.lock().expect("hint") = Some(gone);
    let r = f
        .run(r#"{"name":"alone","image":"busybox","daemonize":true}"#)
        .await
        .expect("placed without the leader");
    assert!(r.ps.expect("ps").is_running());
    assert_eq!(placer.claims_made() - before, 6, "not at the leader");
    assert!(
        f.shared.leader_hint.lock().expect("hint").is_none(),
        "the unreachable leader is forgotten"
    );
}

/// The leader's placer reads a job's history only when the job is fixed
/// (nothing else in dowding depends on it): a fixed job asked for at
/// another server returns to its host although that host is the busiest,
/// and a job that is not fixed goes to a less loaded one.
#[tokio::test]
async fn the_leader_sends_a_fixed_job_back_to_its_host_and_places_the_others_by_load() {
    let hs = hosts(3).await;
    let leader = leader_of(&hs).await;
    let placer = leader.shared.placer().expect("placer");
    let before = placer.claims_made();
    let followers: Vec<&TestServer> = hs
        .iter()
        .filter(|h| h.shared.config.name != leader.shared.config.name)
        .collect();
    let node = |r: RunResponse| r.ps.expect("ps").node;
    let fixed = r#"{"name":"db","image":"busybox","daemonize":true,"fixed":true}"#;
    let home = node(followers[0].run(fixed).await.expect("db runs"));
    let roaming = r#"{"name":"web","image":"busybox","daemonize":true}"#;
    let first = node(followers[0].run(roaming).await.expect("web runs"));
    // Both hosts the busiest, so only history can bring db back to its own.
    for (i, h) in [&home, &first, &home, &first].iter().enumerate() {
        let doc =
            format!(r#"{{"name":"load{i}","image":"busybox","daemonize":true,"host":"{h}"}}"#);
        followers[0].run(&doc).await.expect("load runs");
    }
    for name in ["db", "web"] {
        followers[0].client.rm(name, true).await.expect("rm");
    }
    let back = node(followers[1].run(fixed).await.expect("db runs again"));
    assert_eq!(back, home, "a fixed job returns to its host");
    let again = node(followers[1].run(roaming).await.expect("web runs again"));
    assert_ne!(
        again, first,
        "a job that is not fixed goes by load, not history"
    );
    assert_eq!(
        placer.claims_made() - before,
        8,
        "every run was claimed at the leader"
    );
}

/// Resources (issue 18): a job's `memory` and `cpus` reach its container as
/// Docker's limits and are reserved on its host; a host without room is
/// refused with what it has free, a job too big for every host is refused
/// with each host's reason and leaves no trace, and `viking hosts` shows
/// what each host's jobs reserve.
#[tokio::test]
async fn limits_reach_the_container_and_a_job_too_big_for_every_host_names_each_reason() {
    // Three fake engines of 4 CPUs and 8 GiB each.
    let hs = hosts(3).await;
    let leader = leader_of(&hs).await;
    let asker = follower(&hs, leader);
    let mut homes = std::collections::BTreeSet::new();
    for i in 0..3 {
        let doc = format!(
            r#"{{"name":"big{i}","image":"busybox","daemonize":true,"memory":"6g","cpus":"2.5"}}"#
        );
        let r = asker.run(&doc).await.expect("there is room for it");
        homes.insert(r.ps.expect("ps").node);
    }
    assert_eq!(homes.len(), 3, "one 6 GiB job per 8 GiB host: {homes:?}");
    let spec = hs
        .iter()
        .flat_map(|h| h.engine.containers())
        .find(|c| {
            c.spec
                .labels
                .get(viking_docker::LABEL_JOB)
                .map(String::as_str)
                == Some("big0")
        })
        .expect("big0's container")
        .spec;
    assert_eq!((spec.memory, spec.cpus), (Some(6 << 30), Some(2500)));

    // No host has 6 GiB left: refused, each host named with what it has.
    let too_big = r#"{"name":"huge","image":"busybox","daemonize":true,"memory":"6g"}"#;
    let e = asker.run(too_big).await.expect_err("no host has room");
    let text = e.to_string();
    for h in ["n1", "n2", "n3"] {
        assert!(
            text.contains(&format!("{h}: needs 6144 MiB, 2048 MiB free")),
            "{text}"
        );
    }
    assert!(asker
        .keys(keys::PROC)
        .await
        .iter()
        .all(|k| !k.contains("huge")));
    assert_eq!(hs.iter().map(|h| h.containers_of("huge")).sum::<usize>(), 0);
    // Nor 2 CPUs: 1.5 left on each.
    let cpu = r#"{"name":"cpu","image":"busybox","daemonize":true,"cpus":2}"#;
    let e = asker.run(cpu).await.expect_err("no host has 2 CPUs free");
    assert!(e.to_string().contains("needs 2 CPUs, 1.5 free"), "{e}");
    // What fits still runs; a job without limits reserves the default.
    asker
        .run(r#"{"name":"small","image":"busybox","daemonize":true,"memory":"1g"}"#)
        .await
        .expect("1 GiB fits");
    let dry = asker
        .client
        .dry_run(too_big.as_bytes().to_vec())
        .await
        .expect("dry run");
    assert_eq!(dry.host, None);
    assert_eq!(dry.rejected.len(), 3, "{:?}", dry.rejected);

    // The leader publishes what each host reserves.
    viking_testkit::eventually_async(
        "every host shows its reservation",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let hosts = asker.client.hosts().await.unwrap_or_default();
            let reserved: u64 = hosts.iter().map(|h| h.reserved_memory).sum();
            hosts.len() == 3
                && hosts.iter().all(|h| h.reserved_millicpus == 2500)
                && reserved == (18 << 30) + (1 << 30)
        },
    )
    .await;
}

/// Replicas (issue 18): a job with `replicas` runs as instances `NAME.1`
/// to `NAME.N` on distinct hosts while there are enough, embassy's route
/// for the service has every running instance, `scale` adds instances
/// apart from the others and removes the highest-numbered ones, the
/// service's name stops them all, and a fixed job with replicas is refused
/// before anything is written.
#[tokio::test]
async fn replicas_run_apart_scale_and_share_one_route() {
    let hs = hosts(3).await;
    let leader = leader_of(&hs).await;
    let asker = follower(&hs, leader);
    // Two hosts busy, one idle: by load alone every instance would go to
    // the idle one.
    for (i, h) in ["n2", "n3"].iter().cycle().take(6).enumerate() {
        let doc =
            format!(r#"{{"name":"busy{i}","image":"busybox","daemonize":true,"host":"{h}"}}"#);
        asker.run(&doc).await.expect("busy runs");
    }
    let doc = r#"{"name":"web","image":"busybox","daemonize":true,"replicas":3,"ports":["8080"]}"#;
    let r = asker.run(doc).await.expect("web runs");
    assert_eq!(r.job.name, "web");
    let mut names: Vec<&str> = r.instances.iter().map(|i| i.job.as_str()).collect();
    names.sort();
    assert_eq!(names, ["web.1", "web.2", "web.3"]);
    let nodes: std::collections::BTreeSet<&str> =
        r.instances.iter().map(|i| i.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one instance per host: {:?}", r.instances);
    let ps = asker.client.ps(false).await.expect("ps");
    assert_eq!(ps.iter().filter(|p| p.job.starts_with("web.")).count(), 3);

    // One route for the service, with every instance's endpoint.
    viking_testkit::eventually_async(
        "the service's route has three endpoints",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let services = asker.client.services().await.unwrap_or_default();
            services.len() == 1 && services[0].service == "web" && services[0].endpoints.len() == 3
        },
    )
    .await;

    // Scale up: with every host running one, the new instances go by
    // load: both to the idle host.
    let up = asker.client.scale("web", 5).await.expect("scale up");
    assert_eq!(up.instances.len(), 5, "{:?}", up.instances);
    let mut per_host: std::collections::BTreeMap<&str, usize> = Default::default();
    for i in &up.instances {
        *per_host.entry(i.node.as_str()).or_default() += 1;
    }
    let mut spread: Vec<usize> = per_host.values().copied().collect();
    spread.sort();
    assert_eq!(spread, vec![1, 1, 3], "{per_host:?}");
    assert_eq!(per_host.get("n1"), Some(&3), "{per_host:?}");
    // Down: the highest-numbered go, containers and all.
    let down = asker.client.scale("web", 2).await.expect("scale down");
    let mut names: Vec<&str> = down.instances.iter().map(|i| i.job.as_str()).collect();
    names.sort();
    assert_eq!(names, ["web.1", "web.2"]);
    for gone in ["web.3", "web.4", "web.5"] {
        assert_eq!(
            hs.iter().map(|h| h.containers_of(gone)).sum::<usize>(),
            0,
            "{gone}"
        );
    }
    // The service's name is taken, by a service or a job; a plain job
    // cannot scale.
    let e = asker.run(doc).await.expect_err("the name is taken");
    assert!(e.to_string().contains("web"), "{e}");
    let e = asker
        .run(r#"{"name":"web","image":"busybox","daemonize":true}"#)
        .await
        .expect_err("a job of the service's name");
    assert!(e.to_string().contains("web"), "{e}");
    asker
        .run(r#"{"name":"plain","image":"busybox","daemonize":true}"#)
        .await
        .expect("plain runs");
    let e = asker
        .client
        .scale("plain", 2)
        .await
        .expect_err("no replicas");
    assert!(e.to_string().contains("--replicas"), "{e}");

    // A fixed job with replicas: refused naming the field, nothing written.
    let fixed =
        r#"{"name":"db","image":"busybox","daemonize":true,"replicas":2,"volumes":["/data"]}"#;
    let e = asker
        .run(fixed)
        .await
        .expect_err("a fixed job has one host");
    assert!(e.to_string().contains("replicas"), "{e}");
    assert!(asker
        .keys(keys::PROC)
        .await
        .iter()
        .all(|k| !k.contains("db")));

    // The service's name stops every instance; removed, its name is free.
    asker.client.stop("web", 1).await.expect("stop web");
    assert!(asker
        .keys(keys::PROC)
        .await
        .iter()
        .all(|k| !k.contains("web")));
    asker.client.rm("web", true).await.expect("rm web");
    assert!(asker.keys(keys::SERVICES).await.is_empty());
    assert!(asker
        .keys(keys::PS)
        .await
        .iter()
        .all(|k| !k.contains("web")));
    asker
        .run(r#"{"name":"web","image":"busybox","daemonize":true}"#)
        .await
        .expect("the name is free again");
}

/// Jobs per host, as viking-ps says (running ones).
async fn running_per_host(s: &TestServer) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for p in s.client.ps(false).await.unwrap_or_default() {
        if p.status == "running" {
            *out.entry(p.node).or_default() += 1;
        }
    }
    out
}

/// Two servers with eight jobs (a 2-replica service among them), then a
/// third joins: `tweak` sets its rebalancing.
async fn uneven_fleet(tweak: fn(&mut ServerConfig)) -> (Vec<TestServer>, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        EmbeddedStore::open(&dir.path().join("viking.redb"), "/viking").expect("store");
    let mut hs = vec![TestServer::start_with("n1", store.clone(), dir, tweak).await];
    hs.push(
        TestServer::start_with(
            "n2",
            store.clone(),
            tempfile::tempdir().expect("tempdir"),
            tweak,
        )
        .await,
    );
    leader_of(&hs).await;
    for i in 0..6 {
        hs[0]
            .run(&format!(
                r#"{{"name":"j{i}","image":"busybox","daemonize":true}}"#
            ))
            .await
            .expect("runs");
    }
    hs[0]
        .run(r#"{"name":"web","image":"busybox","daemonize":true,"replicas":2}"#)
        .await
        .expect("web runs");
    assert_eq!(
        running_per_host(&hs[0])
            .await
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![4, 4]
    );
    hs.push(
        TestServer::start_with(
            "n3",
            store.clone(),
            tempfile::tempdir().expect("tempdir"),
            tweak,
        )
        .await,
    );
    (hs, store)
}

/// Rebalancing (issue 18): with `--rebalance off`, a host that joins stays
/// empty; `viking rebalance --dry-run` lists the moves and why, and
/// `viking rebalance` makes them, start-first.
#[tokio::test]
async fn rebalance_dry_run_explains_and_rebalance_makes_the_moves() {
    let (hs, _store) = uneven_fleet(|c| {
        c.policy.stable_after_ms = 0;
        c.policy.rebalance_per_minute = 0;
        c.resync = Duration::from_secs(2);
    })
    .await;
    let dry = hs[0].client.rebalance(true).await.expect("dry run");
    assert_eq!(dry.len(), 2, "4/4/0 → 3/3/2: {dry:?}");
    assert!(
        dry.iter()
            .all(|m| m.to == "n3" && m.why.contains("runs 4 jobs")),
        "{dry:?}"
    );
    assert!(
        dry[0].job.starts_with("web."),
        "an instance spreads its service first: {dry:?}"
    );
    // Nothing moved by the dry run, nor by the leader.
    assert_eq!(running_per_host(&hs[0]).await.get("n3"), None);
    let made = hs[1].client.rebalance(false).await.expect("rebalance");
    assert_eq!(made, dry);
    viking_testkit::eventually_async(
        "the moved jobs run on n3",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let per = running_per_host(&hs[0]).await;
            per.get("n3") == Some(&2) && per.values().sum::<usize>() == 8
        },
    )
    .await;
    // Start-first: each moved job's old copy is left to its agent, which
    // removes it once the job runs on n3.
    for m in &made {
        let old = hs
            .iter()
            .find(|h| h.shared.config.name == m.from)
            .expect("old host");
        viking_testkit::eventually_async(
            "the old copy is removed",
            Duration::from_secs(40),
            Duration::from_millis(50),
            || async { old.containers_of(&m.job) == 0 },
        )
        .await;
    }
    assert!(hs[0]
        .client
        .rebalance(true)
        .await
        .expect("dry run")
        .is_empty());
}

/// Rebalancing at the leader: a host that joins gets its share within the
/// rate, without anyone asking.
#[tokio::test]
async fn the_leader_rebalances_a_host_that_joins() {
    let (hs, _store) = uneven_fleet(|c| {
        c.policy.stable_after_ms = 0;
        c.policy.rebalance_per_minute = 600;
    })
    .await;
    viking_testkit::eventually_async(
        "n3 gets its share",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let per = running_per_host(&hs[0]).await;
            per.get("n3") == Some(&2) && per.values().sum::<usize>() == 8
        },
    )
    .await;
}

#[tokio::test]
async fn a_run_accepted_without_waiting_starts_after_the_answer_and_a_failed_start_is_retried() {
    let s = TestServer::start().await;
    let ps_of = |name: &'static str| {
        let store = s.shared.store.clone();
        async move {
            store
                .get(&keys::ps(name))
                .await
                .ok()
                .flatten()
                .and_then(|kv| viking_core::records::decode::<PsRecord>(&kv.value).ok())
        }
    };
    let accepted: RunResponse = s
        .client
        .run_no_wait(br#"{"name":"quick","image":"busybox","daemonize":true}"#.to_vec())
        .await
        .expect("accepted");
    assert_eq!(accepted.ps.expect("its claim").status, "starting");
    viking_testkit::eventually_async(
        "the accepted job runs",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { ps_of("quick").await.is_some_and(|p| p.is_running()) },
    )
    .await;
    assert_eq!(s.containers_of("quick"), 1);

    // A start that fails after the answer: the job stays in viking-proc,
    // viking-ps says why, and the reconciler starts it again.
    s.engine.fail_next_any(
        Op::Start,
        RuntimeError::Docker("the engine said no".to_string()),
    );
    s.client
        .run_no_wait(br#"{"name":"later","image":"busybox","daemonize":true}"#.to_vec())
        .await
        .expect("accepted");
    viking_testkit::eventually_async(
        "the failed start is recorded",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async {
            ps_of("later").await.is_some_and(|p| {
                p.status == viking_core::Status::Failed
                    || p.restarts > 0
                    || p.error.as_deref().is_some_and(|e| e.contains("said no"))
            })
        },
    )
    .await;
    assert!(s.keys(keys::PROC).await.contains(&keys::proc("later")));
    viking_testkit::eventually_async(
        "the reconciler starts it again",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || async { ps_of("later").await.is_some_and(|p| p.is_running()) },
    )
    .await;
}

/// Prometheus metrics (issue 21): `GET /metrics` behind the token, in the
/// text format (checked by `promtool check metrics`), with the jobs by
/// host, the placements and their failures, the reconcile rounds, the
/// leader and the API's requests by route and status.
#[tokio::test]
async fn metrics_count_placements_jobs_rounds_and_requests() {
    use http_body_util::BodyExt;
    let hs = hosts(2).await;
    let leader = leader_of(&hs).await;
    let other = hs
        .iter()
        .find(|h| h.shared.config.name != leader.shared.config.name)
        .unwrap();
    other
        .run(r#"{"name":"m1","image":"busybox","command":["sleep","1000"],"daemonize":true}"#)
        .await
        .expect("m1");
    // Too big for every host: a placement failure, by reason.
    assert!(other
        .run(r#"{"name":"m2","image":"busybox","daemonize":true,"memory":"1000g"}"#)
        .await
        .is_err());
    let body = other
        .client
        .stream(Method::GET, "/metrics", None)
        .await
        .expect("/metrics")
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let line = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let running: f64 = text
        .lines()
        .filter(|l| l.starts_with("viking_jobs_running{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(running, 1.0, "{text}");
    assert_eq!(line("viking_placements_total"), Some(1.0), "{text}");
    assert!(
        text.contains("viking_placement_failures_total{reason=\"no_host\"} 1"),
        "{text}"
    );
    assert_eq!(line("viking_hosts_alive"), Some(2.0), "{text}");
    assert_eq!(line("viking_hosts_gone"), Some(0.0), "{text}");
    // Every store request is timed, by operation.
    assert!(
        text.lines()
            .filter(|l| l.starts_with("viking_store_request_seconds_count{op=\"txn\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .any(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(line("viking_leader"), Some(0.0), "{text}");
    assert!(
        text.contains(
            "viking_api_requests_total{route=\"/v1/jobs\",method=\"POST\",status=\"201\"} 1"
        ),
        "{text}"
    );
    // The leader's rounds.
    let lt = leader
        .shared
        .metrics
        .scrape(&leader.shared)
        .await
        .expect("scrape");
    assert!(lt.contains("\nviking_leader 1\n"), "{lt}");
    let rounds = lt
        .lines()
        .find(|l| l.starts_with("viking_reconcile_rounds_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(rounds >= 1.0, "{lt}");
    // Without the token: 401.
    let anon = Client::new(&other.client_url(), None).expect("client");
    assert!(anon.stream(Method::GET, "/metrics", None).await.is_err());
    // promtool agrees it is Prometheus's format.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/prereqs.sh test installs Debian's prometheus)");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&body).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--metrics-listen`: `/metrics` without the token on its own address,
/// and nothing else there.
#[tokio::test]
async fn metrics_listen_serves_metrics_without_the_token() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        EmbeddedStore::open(&dir.path().join("viking.redb"), "/viking").expect("store");
    let _s = TestServer::start_with("n1", store, dir, |c| c.metrics_listen = Some(addr)).await;
    let get = |path: &'static str| async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        out
    };
    let got = get("/metrics").await;
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    assert!(got.contains("\nviking_hosts_alive 1\n"), "{got}");
    let other = get("/v1/ps").await;
    assert!(other.starts_with("HTTP/1.0 404"), "{other}");
}

/// The event stream (issue 21): a job's life from `since` with each
/// line's revision, filtered by job; replay from a revision gives the same
/// events again; a compacted revision is 410 naming the oldest one.
#[tokio::test]
async fn events_replay_a_jobs_life_and_refuse_a_compacted_revision() {
    let s = TestServer::start().await;
    let from = s.shared.store.revision().await.expect("revision") + 1;
    s.run(r#"{"name":"e1","image":"busybox","command":["sleep","1000"],"daemonize":true}"#)
        .await
        .expect("e1");
    s.run(r#"{"name":"e2","image":"busybox","command":["sleep","1000"],"daemonize":true}"#)
        .await
        .expect("e2");
    s.client.stop("e1", 1).await.expect("stop");
    let client = &s.client;
    let read = |since: i64| async move {
        let mut lines = client
            .events(Some(since), Some("e1"), None)
            .await
            .expect("events");
        let mut got = Vec::new();
        while got
            .last()
            .map(|e: &viking_client::api::FleetEvent| e.action.as_str())
            != Some("stopped")
        {
            let next = tokio::time::timeout(
                Duration::from_secs(10),
                lines.next::<viking_client::api::FleetEvent>(),
            )
            .await
            .expect("an event within 10 s")
            .expect("a line");
            match next {
                Some((e, _)) => got.push(e),
                None => break,
            }
        }
        got
    };
    let got = read(from).await;
    let actions: Vec<&str> = got.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["accepted", "placed", "started", "stopped"],
        "{got:?}"
    );
    assert!(got.iter().all(|e| e.job.as_deref() == Some("e1")));
    assert!(got.windows(2).all(|w| w[0].rev <= w[1].rev), "{got:?}");
    assert_eq!(got[1].host.as_deref(), Some(s.shared.config.name.as_str()));
    assert_eq!(got[1].detail["why"], "ranked first by dowding", "{got:?}");
    // From the revision of its start: that and what follows, again.
    let again = read(got[2].rev).await;
    assert_eq!(again.first().map(|e| e.action.as_str()), Some("started"));
    // The same events (a deletion's time is when it is read: not compared).
    let key = |e: &viking_client::api::FleetEvent| (e.rev, e.action.clone(), e.job.clone());
    assert_eq!(again.last().map(key), got.last().map(key));

    // History the store no longer holds.
    let now = s.shared.store.revision().await.expect("revision");
    s.shared.store.compact(now).await.expect("compact");
    let e = match s.client.events(Some(from), None, None).await {
        Err(e) => e,
        Ok(_) => panic!("a compacted revision was served"),
    };
    assert_eq!(e.status(), Some(410), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("oldest available is {now}")),
        "{e}"
    );
}

/// A reader of the event stream that stops reading costs the server a
/// bounded queue: its stream ends (it resumes with `since`), while one
/// that reads gets every event.
#[tokio::test]
async fn an_event_reader_that_falls_behind_has_its_stream_ended() {
    let s = TestServer::start().await;
    let from = s.shared.store.revision().await.expect("revision") + 1;
    let mut idle = viking_server::events::follow(&s.shared, Some(from), None, None)
        .await
        .expect("follow");
    let mut reading = viking_server::events::follow(&s.shared, Some(from), None, None)
        .await
        .expect("follow");
    let reader = tokio::spawn(async move {
        let mut joined = 0;
        while joined < 1500 {
            match tokio::time::timeout(Duration::from_secs(20), reading.recv()).await {
                Ok(Some(e)) if e.action == "joined" => joined += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        joined
    });
    for batch in 0..15 {
        let ops = (0..100)
            .map(|i| {
                let name = format!("h{batch}-{i}");
                let rec = host_record(&name, "http://127.0.0.1:9");
                viking_store::Op::Put {
                    key: keys::host(&name),
                    value: viking_core::records::encode(&rec).expect("encode"),
                    lease: None,
                }
            })
            .collect();
        s.shared
            .store
            .txn(vec![], ops, vec![])
            .await
            .expect("hosts");
    }
    assert_eq!(
        reader.await.expect("reader"),
        1500,
        "a reader gets them all"
    );
    let mut queued = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), idle.recv()).await {
            Ok(Some(_)) => queued += 1,
            Ok(None) => break,
            Err(_) => panic!("the stream of a reader that fell behind stayed open"),
        }
    }
    assert!(queued > 0 && queued < 1500, "{queued}");
}

/// `viking_failover_seconds`: the leader observes the time from a host's
/// death to all its jobs running elsewhere, once.
#[tokio::test]
async fn the_leader_measures_a_failover() {
    let mut hs = hosts(2).await;
    let leader_name = leader_of(&hs).await.shared.config.name.clone();
    let li = hs
        .iter()
        .position(|h| h.shared.config.name == leader_name)
        .unwrap();
    for i in 0..4 {
        hs[li]
            .run(&format!(
                r#"{{"name":"f{i}","image":"busybox","command":["sleep","1000"],"daemonize":true}}"#
            ))
            .await
            .expect("run");
    }
    let other = hs[1 - li].shared.config.name.clone();
    assert!(
        running_per_host(&hs[li])
            .await
            .get(&other)
            .copied()
            .unwrap_or(0)
            >= 1,
        "dowding spread the jobs"
    );
    let count = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("viking_failover_seconds_count "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    let leader = hs.remove(li);
    assert_eq!(
        count(&leader.shared.metrics.scrape(&leader.shared).await.unwrap()),
        0.0
    );
    // The event stream from now: told against the fleet as it is, so the
    // jobs' moves read as moves, with why.
    let mut events = leader
        .client
        .events(None, None, None)
        .await
        .expect("events");
    // The other host dies (its server stops; its lease runs out).
    drop(hs);
    viking_testkit::eventually_async(
        "the four jobs run on the leader's host",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            running_per_host(&leader)
                .await
                .get(&leader_name)
                .copied()
                .unwrap_or(0)
                == 4
        },
    )
    .await;
    viking_testkit::eventually_async(
        "the failover observed once",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { count(&leader.shared.metrics.scrape(&leader.shared).await.unwrap()) == 1.0 },
    )
    .await;
    let moved = loop {
        let next = tokio::time::timeout(
            Duration::from_secs(10),
            events.next::<viking_client::api::FleetEvent>(),
        )
        .await
        .expect("an event within 10 s")
        .expect("a line")
        .expect("the stream goes on");
        if next.0.action == "moved" {
            break next.0;
        }
    };
    assert_eq!(moved.detail["from"], other, "{moved:?}");
    assert_eq!(
        moved.detail["why"],
        format!("host {other} gone"),
        "{moved:?}"
    );
}

/// One HTTP/1.0 exchange with a server: status, head and body.
async fn http_raw(url: &str, request: String) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut out))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_string(), body.to_string())
}

fn get_with(path: &str, header: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: x\r\n{header}\r\n")
}

/// The dashboard (issue 21): pages behind a login that gives a cookie
/// (not the token), the bearer header works too; the fleet with its hosts,
/// the jobs with drift and filters, a job with its placement explained,
/// history, output and events; the live feed as server-sent events; a
/// login only redirects within the dashboard.
#[tokio::test]
async fn the_dashboard_shows_the_fleet_behind_a_login() {
    let servers = hosts(2).await;
    let s = &servers[0];
    s.run(r#"{"name":"web","image":"busybox","command":["sh","-c","echo hello-from-web; sleep 1000"],"daemonize":true}"#)
        .await
        .expect("web");

    // Not logged in: sent to the login page, which comes back here.
    let (st, head, _) = http_raw(&s.url, get_with("/ui/jobs?state=running", "")).await;
    assert_eq!(st, 303, "{head}");
    assert!(
        head.contains("location: /ui/login?next=/ui/jobs%3Fstate%3Drunning"),
        "{head}"
    );
    let (st, _, body) = http_raw(&s.url, get_with("/ui/login?next=/ui/jobs", "")).await;
    assert_eq!(st, 200);
    assert!(body.contains(r#"name="next" value="/ui/jobs""#), "{body}");
    // The feed and the API stay closed.
    assert_eq!(http_raw(&s.url, get_with("/ui/feed", "")).await.0, 401);

    let post = |body: String| {
        format!(
            "POST /ui/login HTTP/1.0\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (st, _, body) = http_raw(&s.url, post("token=nope&next=/ui".into())).await;
    assert_eq!(st, 401);
    assert!(
        body.contains("not this cluster&#39;s token") || body.contains("not this cluster's token"),
        "{body}"
    );
    let (st, head, _) = http_raw(
        &s.url,
        post(format!(
            "token={}&next=https://evil.example/",
            s.shared.token
        )),
    )
    .await;
    assert_eq!(st, 303);
    assert!(head.contains("location: /ui\r\n"), "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(&s.shared.token),
        "the cookie holds the token: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let with_cookie = format!("Cookie: {session}\r\n");

    // The fleet: both hosts, alive, one of them the leader.
    let (st, head, body) = http_raw(&s.url, get_with("/ui", &with_cookie)).await;
    assert_eq!(st, 200, "{body}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    for n in ["n1", "n2"] {
        assert!(body.contains(&format!(r#"data-host="{n}""#)), "{body}");
    }
    assert!(body.contains("alive, leader"), "{body}");
    // Each host with its jobs.
    assert!(
        body.contains(r#"href="/ui/jobs/web" title="running">web</a>"#),
        "{body}"
    );
    assert!(body.contains(r#"<b>2</b> hosts alive"#), "{body}");
    // The feed starts with what happened, newest first.
    assert!(body.contains("<b>started</b>"), "{body}");
    // An in-place refresh gets the content without the feed's lines.
    let (st, _, body) = http_raw(
        &s.url,
        get_with("/ui", &format!("{with_cookie}X-Viking-Refresh: 1\r\n")),
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        body.contains(r#"data-host="n2""#) && !body.contains("<b>started</b>"),
        "{body}"
    );

    // The jobs, with the bearer header instead of the cookie.
    let bearer = format!("Authorization: Bearer {}\r\n", s.shared.token);
    let (st, _, body) = http_raw(&s.url, get_with("/ui/jobs", &bearer)).await;
    assert_eq!(st, 200);
    assert!(
        body.contains(r#"data-job="web" data-state="running""#),
        "{body}"
    );
    let (_, _, body) = http_raw(&s.url, get_with("/ui/jobs?state=drifting", &bearer)).await;
    assert!(!body.contains(r#"data-job="web""#), "{body}");

    // One job: placement explained over every host, its output, events.
    let (st, _, body) = http_raw(&s.url, get_with("/ui/jobs/web", &with_cookie)).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("<b>chosen</b>"), "{body}");
    assert!(
        body.contains("eligible, ranked lower") || body.contains("rejected: "),
        "{body}"
    );
    assert!(body.contains("hello-from-web"), "{body}");
    assert!(body.contains("<b>placed</b>"), "{body}");
    assert!(body.contains(r#"data-job="web""#), "{body}");
    let (st, _, _) = http_raw(&s.url, get_with("/ui/jobs/nope", &with_cookie)).await;
    assert_eq!(st, 404);

    // The live feed: a stop arrives as a server-sent event with its
    // revision as the id.
    let rev = s.shared.store.revision().await.expect("revision");
    let url = s.url.clone();
    let feed = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(
            get_with(&format!("/ui/feed?since={}&job=web", rev + 1), &with_cookie).as_bytes(),
        )
        .await
        .expect("write");
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        while !got.contains("\"action\":\"stopped\"") {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "the feed ended: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        got
    });
    s.client.stop("web", 1).await.expect("stop");
    let got = tokio::time::timeout(Duration::from_secs(10), feed)
        .await
        .expect("the stop within 10 s")
        .expect("feed");
    assert!(got.contains("content-type: text/event-stream"), "{got}");
    assert!(got.contains("event: fleet\n"), "{got}");
    assert!(got.contains("\nid: "), "{got}");
}
