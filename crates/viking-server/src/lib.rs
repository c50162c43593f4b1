//! viking-server: `viking server`, the process that runs on every node.
//!
//! Layout:
//! - [`config`]: the settings, checked before anything starts;
//! - [`token`]: the cluster token (bearer auth of every request);
//! - [`error`]: the server's one error type; [`status`]: its HTTP status
//!   and body, the only such mapping;
//! - [`api`]: the versioned HTTP API (axum); nothing imports it;
//!   [`docker_api`]: the Docker Engine API, reached through `api`'s
//!   fallback; the two are the only HTTP-facing parts; [`listen`]: the
//!   API's connections (cap, timeouts, graceful close) and the open-files
//!   limit;
//! - [`admission`]: a machine's join to a mesh, checked by the cluster
//!   (join secret, etcd member added, certificate signed);
//! - [`state`]: typed access to the records (proc, ps, history, ports) and
//!   the name claims;
//! - [`placement`]: dowding's snapshot and decision; [`peer`]: calls to
//!   other servers; [`container`]: this host's containers; [`volume`]: their
//!   volume directories, made and checked without following a symlink;
//! - [`jobs`]: running, stopping and removing jobs: viking-proc first, then
//!   Docker, then viking-ps;
//! - [`attach`]: the attached streams of interactive jobs; [`exec`]: a
//!   command in a job's running container;
//! - [`agent`]: keeps this host's viking-ps true from its Docker engine
//!   (events plus a full resync at start and periodically);
//!   [`assigned`]: each host's jobs as the leader publishes them, so a
//!   host's resync reads its own records only;
//! - [`floki`]: registers this server in the fleet registry under a lease;
//! - [`reconciler`]: the leader's level-triggered loop that converges the
//!   cluster on viking-proc; [`compaction`]: the leader's compaction of the
//!   store's history;
//! - [`health`]: the health checks of this host's jobs;
//! - [`metrics`]: Prometheus metrics (`GET /metrics`, `--metrics-listen`);
//!   [`events`]: the fleet's events from the store's changes
//!   (`GET /v1/events`);
//! - [`push`]: code pushes, rolling restarts of non-static jobs;
//! - [`services`]: ambassador ports, link variables, and embassy on this
//!   node (its kernel rules or its proxy);
//! - [`tls`]: this server's certificate and the TLS configurations built on
//!   it; [`renew`]: its renewal without a restart.
//!
//! A server is built from (config, store, runtime): [`prepare`] opens the
//! real ones (Docker, etcd or the embedded store), [`prepare_with`] takes
//! any, so the server's rules can be tested in-process over an in-memory
//! runtime. [`serve`] runs it on a listener until shutdown: the binary
//! passes Ctrl-C/SIGTERM, tests bind port 0. Shutdown reaches every task
//! through one `watch` channel; containers keep running when the server
//! stops. The background tasks are supervised: if one of them ends or
//! panics before shutdown, the server stops with an error naming it.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::TcpListener;
use viking_docker::{DockerRuntime, OwnedRuntime, Runtime};
use viking_store::embedded::EmbeddedStore;
use viking_store::etcd::EtcdStore;
use viking_store::Store;

pub mod admission;
pub mod agent;
pub mod api;
pub mod assigned;
pub mod attach;
pub mod compaction;
pub mod config;
pub mod container;
pub mod docker_api;
pub mod error;
pub mod events;
pub mod exec;
pub mod floki;
pub mod health;
pub mod held;
pub mod identity;
pub mod jobs;
pub mod listen;
pub mod metered;
pub mod metrics;
pub mod peer;
pub mod placement;
pub mod placer;
pub mod push;
pub mod reconciler;
pub mod recover;
pub mod renew;
pub mod services;
pub mod session;
pub mod standing;
pub mod state;
pub mod status;
pub mod tls;
pub mod token;
pub mod ui;
pub mod usage;
pub mod volume;

pub use config::ServerConfig;

/// The viking version, reported in floki and `/v1/ping`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// State shared by every request and task of one server.
pub struct Shared {
    pub config: ServerConfig,
    pub store: Arc<dyn Store>,
    pub runtime: Arc<dyn Runtime>,
    /// The engine's capacity, read once at start (it does not change).
    pub engine: viking_docker::EngineInfo,
    /// Running containers of viking jobs on this host, as of the agent's
    /// last resync (floki's load figure).
    pub running: std::sync::atomic::AtomicU64,
    /// Memory those containers use, in bytes, as of the same resync.
    pub memory_used: std::sync::atomic::AtomicU64,
    /// CPU they used over the last minute, in thousandths of a CPU, and
    /// the samples it comes from.
    pub cpu_used: std::sync::atomic::AtomicU64,
    pub cpu_window: std::sync::Mutex<usage::CpuWindow>,
    pub token: String,
    /// This server's TLS material (`--tls-cert`), if it serves over TLS.
    pub tls: Option<tls::Tls>,
    /// This server's identity (`identity::server_id`), in its floki record.
    pub server_id: String,
    /// The cluster this server belongs to (`None` until it joins one) and
    /// how it stands with the store (`standing`). Std mutexes: held only to
    /// read or swap.
    cluster: Mutex<(Option<String>, standing::Standing)>,
    pub started_at: u64,
    /// Names of the interactive jobs attached on this server right now. A
    /// std mutex: held only to insert, remove or copy, never across `.await`.
    pub sessions: Mutex<HashSet<String>>,
    /// Where this node's embassy listens: the address containers use to
    /// reach linked services.
    pub embassy_addr: std::net::IpAddr,
    /// embassy's kernel path, when it forwards with netfilter rules
    /// (`--embassy-mode`); `None`: its proxy.
    pub embassy_kernel: Option<Arc<viking_embassy::Kernel>>,
    /// Set when the server is told to stop for good (SIGTERM, Ctrl-C): the
    /// kernel path's rules are removed then. Left unset by a stop to
    /// restart (SIGHUP) and by a failure, so traffic keeps flowing.
    pub remove_rules_on_stop: std::sync::atomic::AtomicBool,
    /// Asks the agent for a full resync now (e.g. after a partition healed).
    pub resync_now: tokio::sync::Notify,
    /// dowding at the leader, while this server leads (`placer`).
    placer: Mutex<Option<Arc<placer::Placer>>>,
    /// The leading server as last looked up, for placements asked of it
    /// (forgotten when it does not answer or no longer leads).
    pub leader_hint: Mutex<Option<viking_core::records::HostRecord>>,
    /// Containers created through the Docker Engine API and not yet
    /// started (`docker_api::created`).
    pub docker_created: docker_api::created::CreatedTable,
    /// This server's Prometheus metrics (`metrics`).
    pub metrics: metrics::Metrics,
    /// embassy's proxy while it serves (for its stats), `None` in kernel
    /// mode.
    pub embassy_proxy: Mutex<Option<Arc<viking_embassy::Embassy>>>,
    /// Fires when the server shuts down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Shared {
    /// The id of the cluster this server belongs to.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster.lock().map(|c| c.0.clone()).unwrap_or(None)
    }

    /// Belong to cluster `id` from now on (a recovery made the store this
    /// server's).
    pub fn set_cluster_id(&self, id: &str) {
        if let Ok(mut c) = self.cluster.lock() {
            c.0 = Some(id.to_string());
        }
    }

    /// How this server stood at the last check.
    /// The leader's placer, while this server leads.
    pub fn placer(&self) -> Option<Arc<placer::Placer>> {
        self.placer.lock().ok().and_then(|p| p.clone())
    }

    /// Place runs here from now on (`Some`, a term began) or no longer.
    pub fn set_placer(&self, placer: Option<Arc<placer::Placer>>) {
        if let Ok(mut p) = self.placer.lock() {
            *p = placer;
        }
    }

    pub fn standing(&self) -> standing::Standing {
        self.cluster
            .lock()
            .map(|c| c.1.clone())
            .unwrap_or(standing::Standing::StoreEmpty)
    }

    /// Remember how this server stands; the previous standing.
    pub fn set_standing(&self, now: standing::Standing) -> standing::Standing {
        match self.cluster.lock() {
            Ok(mut c) => std::mem::replace(&mut c.1, now),
            Err(_) => now,
        }
    }

    /// Whether `name` is attached here now.
    pub fn in_session(&self, name: &str) -> bool {
        self.sessions
            .lock()
            .map(|s| s.contains(name))
            .unwrap_or(false)
    }
}

/// Resolves once the server is shutting down.
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything `serve` needs that can fail, prepared before the port is bound.
pub struct Prepared {
    shared: Arc<Shared>,
    shutdown_tx: tokio::sync::watch::Sender<bool>,
}

/// Check the settings, make the data directory and token, reach Docker and
/// open the store. Nothing is listening yet, so a bad setting changes
/// nothing.
pub async fn prepare(config: ServerConfig) -> anyhow::Result<Prepared> {
    config.validate().map_err(anyhow::Error::msg)?;
    identity::data_dir(&config.data_dir)?;
    let runtime: Arc<dyn Runtime> = match config.runtime {
        config::RuntimeChoice::Docker => Arc::new(
            DockerRuntime::connect(&config.docker)
                .await
                .context("connecting to Docker")?,
        ),
        config::RuntimeChoice::Hollow(spec) => {
            tracing::warn!(
                "--runtime hollow: containers are simulated in memory and nothing runs (scale tests only)"
            );
            Arc::new(viking_docker::hollow::engine(spec))
        }
    };
    let tls = config.tls.files.as_ref().map(tls::load).transpose()?;
    if config.etcd.iter().any(|e| e.starts_with("http://")) {
        tracing::warn!(
            "etcd is reached in plain HTTP: anyone on its network can read and change the cluster; \
             use https:// endpoints with client certificates (--ca, --tls-cert, --tls-key)"
        );
    }
    let mut etcd = None;
    let store: Arc<dyn Store> = if config.etcd.is_empty() {
        let path = config.data_dir.join("viking.redb");
        EmbeddedStore::open(&path, &config.key)
            .with_context(|| format!("opening the embedded store {}", path.display()))?
    } else {
        let store =
            EtcdStore::connect_tls(&config.etcd, &config.key, tls.as_ref().map(|t| &t.etcd))
                .await
                .with_context(|| format!("connecting to etcd at {}", config.etcd.join(",")))?;
        etcd = Some(store.clone());
        Arc::new(store)
    };
    let prepared = prepare_with(config, store, runtime).await?;
    // A renewed certificate reconnects etcd's client too.
    if let (Some(tls), Some(etcd)) = (prepared.shared.tls.as_ref(), etcd) {
        tls.attach_etcd(etcd);
    }
    Ok(prepared)
}

/// A server over the given store and container runtime (the seam: tests
/// pass the embedded store and an in-memory runtime).
pub async fn prepare_with(
    config: ServerConfig,
    store: Arc<dyn Store>,
    runtime: Arc<dyn Runtime>,
) -> anyhow::Result<Prepared> {
    config.validate().map_err(anyhow::Error::msg)?;
    identity::data_dir(&config.data_dir)?;
    let server_id = identity::server_id(&config.data_dir)?;
    let tls = config.tls.files.as_ref().map(tls::load).transpose()?;
    if tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "--insecure-http: the API and the token travel in plain text on the network"
        );
    }
    let cluster = standing::establish(store.as_ref(), &config.data_dir)
        .await
        .context("checking the store's cluster id")?;
    let token = match &config.token {
        Some(t) => t.clone(),
        None => token::load_or_create(&config.data_dir)?,
    };
    let embassy_addr = services::bind_address(config.embassy_bind, runtime.as_ref()).await;
    let embassy_kernel = services::choose_kernel(&config, embassy_addr).await?;
    let engine = runtime
        .info()
        .await
        .context("asking Docker for its capacity")?;
    // Stop, kill, remove, rename and start re-check that a container is
    // this cluster's before acting.
    let runtime: Arc<dyn Runtime> = Arc::new(OwnedRuntime::new(runtime, config.key.clone()));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // Every store request is timed for the metrics.
    let metrics = metrics::Metrics::new();
    let store: Arc<dyn Store> = Arc::new(metered::MeteredStore::new(store, &metrics));
    let shared = Arc::new(Shared {
        config,
        store,
        runtime,
        engine,
        running: std::sync::atomic::AtomicU64::new(0),
        memory_used: std::sync::atomic::AtomicU64::new(0),
        cpu_used: std::sync::atomic::AtomicU64::new(0),
        cpu_window: Default::default(),
        token,
        tls,
        server_id,
        cluster: Mutex::new(cluster),
        started_at: now_ms(),
        sessions: Mutex::new(HashSet::new()),
        resync_now: tokio::sync::Notify::new(),
        placer: Mutex::new(None),
        leader_hint: Mutex::new(None),
        embassy_addr,
        embassy_kernel,
        remove_rules_on_stop: std::sync::atomic::AtomicBool::new(false),
        docker_created: Default::default(),
        metrics,
        embassy_proxy: Mutex::new(None),
        shutdown: shutdown_rx,
    });
    Ok(Prepared {
        shared,
        shutdown_tx,
    })
}

impl Prepared {
    /// The server's state, for in-process tests that call its modules.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// Run a prepared server on `listener` until `shutdown` resolves.
pub async fn serve(
    prepared: Prepared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Prepared {
        shared,
        shutdown_tx,
    } = prepared;
    match listen::raise_nofile() {
        Ok(n) => tracing::info!(nofile = n, "open-files limit raised to the hard limit"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    // Bring viking-ps up to date with what Docker runs before answering.
    if let Err(e) = agent::initial_resync(&shared).await {
        tracing::warn!("initial resync with Docker failed: {e:#}");
    }
    let lease = floki::join(&shared)
        .await
        .context("registering this server in floki")?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(named("floki", floki::register(shared.clone(), lease)));
    tasks.spawn(named("agent", agent::run(shared.clone())));
    tasks.spawn(named("reconciler", reconciler::run(shared.clone())));
    tasks.spawn(named("health", health::run(shared.clone())));
    tasks.spawn(named("embassy", services::run(shared.clone())));
    tasks.spawn(named("certificate renewal", renew::run(shared.clone())));
    if let Some(addr) = shared.config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}"))?;
        tracing::info!(%addr, "metrics without the token");
        tasks.spawn(named(
            "metrics listener",
            api::serve_metrics(shared.clone(), listener),
        ));
    }

    let app = api::router(shared.clone());
    tracing::info!(
        name = %shared.config.name,
        listen = %shared.config.listen,
        store = shared.store.backend(),
        "viking server ready"
    );
    // The API ends at shutdown, or when a background task dies first: a
    // server whose floki, agent or reconciler is gone must not go on
    // answering as if it worked.
    let task_died = std::sync::Arc::new(tokio::sync::Mutex::new(None::<String>));
    let died = task_died.clone();
    let mut shutdown = Box::pin(shutdown);
    let api_shutdown = async move {
        let why = tokio::select! {
            _ = &mut shutdown => None,
            ended = tasks.join_next() => Some(match ended {
                Some(Ok(name)) => format!("the {name} task ended before shutdown"),
                Some(Err(e)) if e.is_panic() => format!("a background task panicked: {e}"),
                Some(Err(e)) => format!("a background task failed: {e}"),
                None => "no background task is left".to_string(),
            }),
        };
        if let Some(why) = &why {
            tracing::error!("{why}; stopping the server");
        }
        *died.lock().await = why;
        let _ = shutdown_tx.send(true);
        tasks
    };
    let (tasks_tx, tasks_rx) = tokio::sync::oneshot::channel();
    let token: Arc<str> = shared.token.as_str().into();
    let acceptor = shared
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone()));
    listen::serve(
        listener,
        app,
        token,
        shared.config.api_limits,
        acceptor,
        async move {
            let tasks = api_shutdown.await;
            let _ = tasks_tx.send(tasks);
        },
    )
    .await;
    tracing::info!("viking server stopping; containers keep running");
    let mut tasks = tasks_rx.await.unwrap_or_default();
    // Give the tasks a moment to finish their current step.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let why = task_died.lock().await.take();
    match why {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// A background task that says its name when it ends.
async fn named(name: &'static str, task: impl Future<Output = ()>) -> &'static str {
    task.await;
    name
}
