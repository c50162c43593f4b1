//! [`FakeRuntime`]: the whole [`Runtime`] in memory, for tests of the code
//! above the seam (the server's jobs, agent, push, attach) without a Docker
//! engine.
//!
//! It owns an engine's worth of state: local images and a registry to pull
//! from, containers in a `BTreeMap` by id, and an events broadcast with the
//! actions Docker emits (`create`, `start`, `kill`, `die`, `stop`,
//! `destroy`, `rename`). What a started container does is scripted by a
//! [`Behaviour`] per container name, per image, or by default. Tests can
//! make the next call of an [`Op`] fail with a chosen [`RuntimeError`], hold
//! the answer of the next inspect or list until they release it (a frozen
//! engine: [`FakeRuntime::hold_next`]), and read back every call made
//! ([`FakeRuntime::calls`]).
//!
//! It behaves like [`crate::DockerRuntime`] wherever viking depends on it:
//! container names are unique per engine and checked against Docker's
//! pattern (a taken name is [`RuntimeError::Conflict`]); starting a running
//! container, stopping or killing a stopped or unknown one, and removing a
//! removed one succeed; removing a running one without `force` is a
//! conflict; inspecting an unknown id is `Ok(None)`; containers are found by
//! full id, name or unique id prefix; creating from an image the engine does
//! not have fails (Docker's create does not pull) and pulling an image no
//! registry has fails, both as [`RuntimeError::Image`]. Host ports are
//! published when a container starts (from a counter when the spec names no
//! host port) and withdrawn when it exits.
//!
//! Time: the optional start delay sleeps on tokio's clock (so tests may
//! pause it); the timestamps in [`ContainerInfo`] are wall-clock Unix
//! milliseconds, as Docker's are.
//!
//! ```
//! use std::sync::Arc;
//! use viking_docker::fake::{Behaviour, Call, FakeRuntime, Op};
//! use viking_docker::{ContainerSpec, Runtime, RuntimeError};
//!
//! # async fn demo(spec: ContainerSpec) -> Result<(), RuntimeError> {
//! let fake = FakeRuntime::new();
//! fake.add_image(&spec.image);
//! fake.set_behaviour(&spec.name, Behaviour::Exit(3));
//! fake.fail_next(Op::Start, &spec.name, RuntimeError::Docker("boom".into()));
//! let runtime: Arc<dyn Runtime> = Arc::new(fake.clone()); // for the code under test
//! let id = runtime.create(&spec).await?;
//! assert!(runtime.start(&id).await.is_err());
//! runtime.start(&id).await?;
//! assert_eq!(runtime.wait(&id).await?, 3);
//! assert!(fake.calls().contains(&Call::Start(id)));
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc, watch};
use viking_core::records::PublishedPort;

use crate::{
    is_valid_container_name, Attached, ContainerEvent, ContainerInfo, ContainerSpec, EngineInfo,
    Labelled, Output, Result, Runtime, RuntimeError, LABEL_CLUSTER, LABEL_DAEMONIZE, LABEL_JOB,
    LABEL_NODE, LABEL_SPEC,
};

/// How many engines this process made: each one's ids differ.
static ENGINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The endpoint the fake names in [`RuntimeError::Unreachable`].
pub const FAKE_ENDPOINT: &str = "fake://engine";

/// The first host port handed out for a port without a host port (Docker's
/// ephemeral range starts there too).
pub const FIRST_EPHEMERAL_PORT: u16 = 32768;

/// What a started container does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Exit at once with this code.
    Exit(i64),
    /// Copy stdin to stdout, and exit 0 when stdin closes (`cat`). A
    /// container that does not keep stdin open (not interactive) sees an
    /// empty stdin and exits 0 at once.
    Echo,
    /// Run until stopped or killed.
    #[default]
    Run,
    /// Write these bytes to stdout, then exit with this code.
    Output(Bytes, i64),
}

/// The operations of [`Runtime`], to script failures with
/// [`FakeRuntime::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Info,
    Ping,
    ImageId,
    Pull,
    Create,
    Attach,
    Start,
    Wait,
    Inspect,
    Stop,
    Kill,
    Remove,
    Rename,
    BridgeGateway,
    List,
    Logs,
}

/// One call made to the fake, with its arguments, in the order made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Info,
    Ping,
    ImageId(String),
    Pull(String),
    Create(Box<ContainerSpec>),
    Attach(String),
    Start(String),
    Wait(String),
    Inspect(String),
    Stop {
        id: String,
        timeout_secs: i64,
    },
    Kill {
        id: String,
        signal: String,
    },
    Remove {
        id: String,
        force: bool,
    },
    Rename {
        id: String,
        new_name: String,
    },
    BridgeGateway,
    List(String),
    /// `events_for(cluster)` is `Some(cluster)`; `events()` is `None`.
    Events(Option<String>),
    Logs {
        id: String,
        follow: bool,
    },
}

/// A container as the fake holds it, for tests to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeContainer {
    pub id: String,
    pub name: String,
    pub spec: ContainerSpec,
    pub image_id: String,
    /// `created`, `running` or `exited`.
    pub status: String,
    pub exit_code: Option<i64>,
    /// How many times it was started.
    pub starts: u32,
    pub ports: Vec<PublishedPort>,
}

/// An in-memory [`Runtime`]. Cloning it gives another handle on the same
/// engine, so a test can keep one and hand the other to the code it tests.
#[derive(Clone)]
pub struct FakeRuntime {
    inner: Arc<Mutex<State>>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

/// A container event with the labels the filters need.
#[derive(Debug, Clone)]
struct Event {
    event: ContainerEvent,
    cluster: Option<String>,
}

struct Container {
    id: String,
    name: String,
    spec: ContainerSpec,
    image_id: String,
    created: u64,
    status: &'static str,
    exit_code: Option<i64>,
    started_at: Option<u64>,
    finished_at: Option<u64>,
    starts: u32,
    behaviour: Behaviour,
    ports: Vec<PublishedPort>,
    log: Vec<Output>,
    followers: Vec<mpsc::UnboundedSender<Output>>,
    /// `Some(exit code)` while not running; waiters watch it.
    not_running: watch::Sender<Option<i64>>,
    /// Stdin written before the container started (it reads it then).
    pending_stdin: Vec<Bytes>,
    stdin_closed: bool,
}

impl Container {
    fn info(&self) -> ContainerInfo {
        let label = |k: &str| self.spec.labels.get(k).cloned().unwrap_or_default();
        let mut command = self.spec.entrypoint.clone().unwrap_or_default();
        command.extend(self.spec.command.iter().cloned());
        ContainerInfo {
            id: self.id.clone(),
            job: label(LABEL_JOB),
            node: label(LABEL_NODE),
            cluster: label(LABEL_CLUSTER),
            daemonize: self
                .spec
                .labels
                .get(LABEL_DAEMONIZE)
                .is_some_and(|v| v == "true"),
            image: self.spec.image.clone(),
            image_id: self.image_id.clone(),
            command,
            status: self.status.to_string(),
            exit_code: self.exit_code,
            error: None,
            started_at: self.started_at,
            finished_at: self.finished_at,
            ports: self.ports.clone(),
            // No network: health checks probe the published port.
            ip: None,
            spec: self.spec.labels.get(LABEL_SPEC).cloned(),
        }
    }

    fn public(&self) -> FakeContainer {
        FakeContainer {
            id: self.id.clone(),
            name: self.name.clone(),
            spec: self.spec.clone(),
            image_id: self.image_id.clone(),
            status: self.status.to_string(),
            exit_code: self.exit_code,
            starts: self.starts,
            ports: self.ports.clone(),
        }
    }

    fn write(&mut self, o: Output) {
        self.log.push(o.clone());
        self.followers.retain(|f| f.send(o.clone()).is_ok());
    }
}

struct Failure {
    op: Op,
    target: Option<String>,
    error: RuntimeError,
}

/// A call to hold, set by [`FakeRuntime::hold_next`].
struct Hold {
    op: Op,
    target: String,
    reached: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// A call the engine holds, like a frozen engine's: it is answered once
/// [`Held::release`] is called (or this is dropped).
pub struct Held {
    reached: tokio::sync::oneshot::Receiver<()>,
    release: tokio::sync::oneshot::Sender<()>,
}

impl Held {
    /// Wait until the call has come (it is held from then on).
    pub async fn reached(&mut self) {
        let _ = (&mut self.reached).await;
    }

    /// Answer the held call.
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

struct State {
    /// Local images: normalised reference -> id.
    images: BTreeMap<String, String>,
    /// What a pull can fetch: normalised reference -> id.
    registry: BTreeMap<String, String>,
    containers: BTreeMap<String, Container>,
    by_name: HashMap<String, Behaviour>,
    by_image: HashMap<String, Behaviour>,
    default_behaviour: Behaviour,
    failures: Vec<Failure>,
    holds: Vec<Hold>,
    calls: Vec<Call>,
    /// Whether calls are recorded in `calls` (a hollow engine that runs for
    /// hours keeps no log).
    record_calls: bool,
    /// Whether every image is there (a hollow engine: a pull or a create
    /// of any image succeeds).
    any_image: bool,
    /// The memory a running container uses, in bytes (0: unknown).
    container_memory: u64,
    /// Feeds the ids; each engine of the process starts at its own value,
    /// so two engines never make the same id (tests with several hosts).
    counter: u64,
    /// Creation order of containers.
    created: u64,
    next_port: u16,
    /// Host ports held by processes outside the engine: (port, proto).
    occupied: std::collections::BTreeSet<(u16, String)>,
    start_delay: Duration,
    unreachable: bool,
    info: EngineInfo,
    gateway: Option<String>,
    events: broadcast::Sender<Event>,
}

/// The id of `image` on an engine that has every image: the same for the
/// same reference, on every engine.
fn any_image_id(image: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    normalise(image).hash(&mut h);
    format!("sha256:{:064x}", h.finish())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `busybox` and `busybox:latest` are one image, as for Docker.
fn normalise(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Docker's exit code for a process ended by `signal` (`KILL`, `SIGTERM`,
/// `9`, ...): 128 + its number.
fn signal_exit_code(signal: &str) -> i64 {
    let s = signal.trim_start_matches("SIG");
    let n = match s {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        other => other.parse().unwrap_or(9),
    };
    128 + n
}

fn not_found(r: &str) -> RuntimeError {
    RuntimeError::NotFound(format!("No such container: {r}"))
}

fn unreachable() -> RuntimeError {
    RuntimeError::Unreachable {
        endpoint: FAKE_ENDPOINT.to_string(),
        reason: "the fake engine is set unreachable".to_string(),
    }
}

fn invalid_name(name: &str) -> RuntimeError {
    RuntimeError::Docker(format!(
        "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
    ))
}

impl State {
    /// A fresh 64-hex-digit id (splitmix64 of a counter: distinct, and
    /// unlikely to share a short prefix with another).
    fn new_id(&mut self) -> String {
        let mut out = String::with_capacity(64);
        for _ in 0..4 {
            self.counter = self.counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.counter;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            out.push_str(&format!("{z:016x}"));
        }
        out
    }

    /// The id of the container `r` names: full id, name (with or without
    /// Docker's leading '/'), or unique id prefix.
    fn resolve(&self, r: &str) -> Option<String> {
        if r.is_empty() {
            return None;
        }
        if self.containers.contains_key(r) {
            return Some(r.to_string());
        }
        let name = r.strip_prefix('/').unwrap_or(r);
        if let Some(c) = self.containers.values().find(|c| c.name == name) {
            return Some(c.id.clone());
        }
        let mut prefixed = self.containers.keys().filter(|id| id.starts_with(r));
        match (prefixed.next(), prefixed.next()) {
            (Some(id), None) => Some(id.clone()),
            _ => None,
        }
    }

    /// Take the first scripted failure of `op` whose target is one of
    /// `names` (or that has no target).
    fn failure(&mut self, op: Op, names: &[&str]) -> Option<RuntimeError> {
        let i = self.failures.iter().position(|f| {
            f.op == op
                && f.target
                    .as_deref()
                    .is_none_or(|t| names.iter().any(|n| !n.is_empty() && *n == t))
        })?;
        Some(self.failures.remove(i).error)
    }

    /// The release of the first hold of `op` on one of `names`, taken (the
    /// holder learns that its call has come).
    fn take_hold(
        &mut self,
        op: Op,
        names: &[String],
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let i = self
            .holds
            .iter()
            .position(|h| h.op == op && names.iter().any(|n| !n.is_empty() && *n == h.target))?;
        let h = self.holds.remove(i);
        let _ = h.reached.send(());
        Some(h.release)
    }

    /// Record `call`, then fail as scripted for `op` on `names`, or as an
    /// unreachable engine.
    fn enter(&mut self, call: Call, op: Op, names: &[&str]) -> Result<()> {
        self.record(call);
        if self.unreachable {
            return Err(unreachable());
        }
        match self.failure(op, names) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The names a failure may target for container reference `r`: the
    /// reference, and the container's id and name when it exists.
    fn container_names(&self, r: &str) -> Vec<String> {
        let mut names = vec![r.to_string()];
        if let Some(c) = self.resolve(r).and_then(|id| self.containers.get(&id)) {
            names.push(c.id.clone());
            names.push(c.name.clone());
        }
        names
    }

    fn enter_container(&mut self, call: Call, op: Op, r: &str) -> Result<()> {
        let names = self.container_names(r);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.enter(call, op, &names)
    }

    fn emit(&self, id: &str, action: &str) {
        let Some(c) = self.containers.get(id) else {
            return;
        };
        let Some(job) = c.spec.labels.get(LABEL_JOB) else {
            // Docker's events reach viking only for labelled containers.
            return;
        };
        // Nobody listening is fine.
        let _ = self.events.send(Event {
            event: ContainerEvent {
                id: id.to_string(),
                job: job.clone(),
                action: action.to_string(),
            },
            cluster: c.spec.labels.get(LABEL_CLUSTER).cloned(),
        });
    }

    fn image_id_of(&self, image: &str) -> Option<String> {
        self.images
            .get(&normalise(image))
            .or_else(|| self.images.values().find(|id| *id == image))
            .cloned()
            .or_else(|| self.any_image.then(|| any_image_id(image)))
    }

    /// Keep `call` in the log, unless this engine keeps none.
    fn record(&mut self, call: Call) {
        if self.record_calls {
            self.calls.push(call);
        }
    }

    /// A host port for a container port without one: the next free one.
    fn ephemeral_port(&mut self) -> u16 {
        loop {
            let p = self.next_port;
            self.next_port = self
                .next_port
                .checked_add(1)
                .unwrap_or(FIRST_EPHEMERAL_PORT);
            if !self.port_in_use(p, None) {
                return p;
            }
        }
    }

    /// Whether a running container publishes host port `port` (of
    /// `proto`, or of any protocol), or a process outside the engine holds
    /// it ([`FakeRuntime::occupy_host_port`]).
    fn port_in_use(&self, port: u16, proto: Option<&str>) -> bool {
        self.occupied
            .iter()
            .any(|(p, x)| *p == port && proto.is_none_or(|w| w == x))
            || self.containers.values().any(|c| {
                c.ports
                    .iter()
                    .any(|p| p.host_port == port && proto.is_none_or(|x| x == p.proto))
            })
    }

    /// The container stops running with `code`: ports withdrawn, attached
    /// and following streams ended, waiters told, `die` emitted.
    fn exit(&mut self, id: &str, code: i64) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        if c.status != "running" {
            return;
        }
        c.status = "exited";
        c.exit_code = Some(code);
        c.finished_at = Some(now_ms());
        c.ports.clear();
        c.followers.clear();
        c.not_running.send_replace(Some(code));
        self.emit(id, "die");
    }

    /// Start container `id` (it exists) and run its behaviour's first step.
    fn start(&mut self, id: &str) -> Result<()> {
        let behaviour = {
            let Some(c) = self.containers.get(id) else {
                return Err(not_found(id));
            };
            if c.status == "running" {
                return Ok(());
            }
            self.by_name
                .get(&c.name)
                .or_else(|| self.by_image.get(&normalise(&c.spec.image)))
                .unwrap_or(&self.default_behaviour)
                .clone()
        };
        let mut ports = Vec::new();
        let specs = self.containers[id].spec.ports.clone();
        for p in specs {
            let host_port = match p.host {
                Some(h) if self.port_in_use(h, Some(p.proto.as_str())) => {
                    return Err(RuntimeError::Docker(format!(
                        "driver failed programming external connectivity on endpoint {}: \
                         Bind for 0.0.0.0:{h} failed: port is already allocated",
                        self.containers[id].name
                    )))
                }
                Some(h) => h,
                None => self.ephemeral_port(),
            };
            ports.push(PublishedPort {
                container: p.container,
                proto: p.proto.as_str().to_string(),
                host_ip: "0.0.0.0".to_string(),
                host_port,
            });
        }
        ports.sort_by(|a, b| (a.container, &a.proto).cmp(&(b.container, &b.proto)));
        let Some(c) = self.containers.get_mut(id) else {
            return Err(not_found(id));
        };
        c.status = "running";
        c.exit_code = None;
        c.started_at = Some(now_ms());
        c.finished_at = None;
        c.starts += 1;
        c.ports = ports;
        c.behaviour = behaviour.clone();
        c.not_running.send_replace(None);
        self.emit(id, "start");
        match behaviour {
            Behaviour::Run => {}
            Behaviour::Exit(code) => self.exit(id, code),
            Behaviour::Output(bytes, code) => {
                if let Some(c) = self.containers.get_mut(id) {
                    c.write(Output::Stdout(bytes));
                }
                self.exit(id, code);
            }
            Behaviour::Echo => {
                let Some(c) = self.containers.get_mut(id) else {
                    return Ok(());
                };
                for b in std::mem::take(&mut c.pending_stdin) {
                    c.write(Output::Stdout(b));
                }
                // Stdin closed before it started (the next start gets an
                // open one again), or never open: `cat` ends.
                if std::mem::take(&mut c.stdin_closed) || !c.spec.interactive {
                    self.exit(id, 0);
                }
            }
        }
        Ok(())
    }

    /// Stdin of container `id` got `chunk` (`None`: it closed).
    fn stdin(&mut self, id: &str, chunk: Option<Bytes>) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        let echoing = c.status == "running" && c.behaviour == Behaviour::Echo;
        match chunk {
            Some(b) if echoing => c.write(Output::Stdout(b)),
            Some(b) if c.status == "created" => c.pending_stdin.push(b),
            Some(_) => {}
            None if echoing => self.exit(id, 0),
            None if c.status == "created" => c.stdin_closed = true,
            None => {}
        }
    }

    /// The output so far and, when `follow` and the container may still
    /// write, a receiver of what it writes next.
    fn output(&mut self, id: &str, follow: bool) -> Option<(Vec<Output>, Option<Follow>)> {
        let c = self.containers.get_mut(id)?;
        let past = c.log.clone();
        let rx = follow.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            c.followers.push(tx);
            rx
        });
        Some((past, rx))
    }
}

type Follow = mpsc::UnboundedReceiver<Output>;

/// A stream of `past`, then of what `rx` receives until it closes.
fn output_stream(past: Vec<Output>, rx: Option<Follow>) -> BoxStream<'static, Result<Output>> {
    let past = stream::iter(past.into_iter().map(Ok));
    match rx {
        Some(rx) => past
            .chain(stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|o| (Ok(o), rx))
            }))
            .boxed(),
        None => past.boxed(),
    }
}

fn event_stream(
    rx: broadcast::Receiver<Event>,
    cluster: Option<String>,
) -> BoxStream<'static, Result<ContainerEvent>> {
    stream::unfold(rx, move |mut rx| {
        let cluster = cluster.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        if cluster.is_none() || e.cluster == cluster {
                            return Some((Ok(e.event), rx));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Some((
                            Err(RuntimeError::Docker(format!(
                                "event stream lagged: {n} events lost"
                            ))),
                            rx,
                        ))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
    .boxed()
}

impl FakeRuntime {
    /// An engine with no images, no containers, nothing scripted: every
    /// container runs until stopped ([`Behaviour::Run`]), no start delay.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Mutex::new(State {
                images: BTreeMap::new(),
                registry: BTreeMap::new(),
                containers: BTreeMap::new(),
                by_name: HashMap::new(),
                by_image: HashMap::new(),
                default_behaviour: Behaviour::Run,
                failures: Vec::new(),
                holds: Vec::new(),
                calls: Vec::new(),
                record_calls: true,
                any_image: false,
                container_memory: 0,
                counter: ENGINES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 32,
                created: 0,
                next_port: FIRST_EPHEMERAL_PORT,
                occupied: Default::default(),
                start_delay: Duration::ZERO,
                unreachable: false,
                info: EngineInfo {
                    cpus: 4,
                    memory: 8 << 30,
                },
                gateway: Some("172.17.0.1".to_string()),
                events,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already;
        // the state is still worth reading.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A process outside the engine holds host port `port` (`proto`):
    /// containers cannot publish it, as on a real host.
    pub fn occupy_host_port(&self, port: u16, proto: viking_core::Proto) {
        self.state()
            .occupied
            .insert((port, proto.as_str().to_string()));
    }

    /// The engine has `image` (built or pulled before), under a new id,
    /// which is returned: adding it again retags it, as a rebuild does.
    pub fn add_image(&self, image: &str) -> String {
        let mut st = self.state();
        let id = format!("sha256:{}", st.new_id());
        st.images.insert(normalise(image), id.clone());
        id
    }

    /// The engine forgets `image`.
    pub fn remove_image(&self, image: &str) {
        self.state().images.remove(&normalise(image));
    }

    /// A registry has `image` under a new id (returned): a pull fetches it,
    /// so publishing again is a push of a new version.
    pub fn publish_image(&self, image: &str) -> String {
        let mut st = self.state();
        let id = format!("sha256:{}", st.new_id());
        st.registry.insert(normalise(image), id.clone());
        id
    }

    /// Keep no log of calls ([`FakeRuntime::calls`] stays empty): an engine
    /// that runs for long.
    pub fn keep_no_calls(&self) {
        let mut st = self.state();
        st.record_calls = false;
        st.calls.clear();
    }

    /// Every image is there: a create or a pull of any image succeeds.
    pub fn have_every_image(&self) {
        self.state().any_image = true;
    }

    /// Each running container uses `bytes` of memory (what
    /// [`Runtime::memory_used`] says of it); 0: unknown, as by default.
    pub fn set_container_memory(&self, bytes: u64) {
        self.state().container_memory = bytes;
    }

    /// What containers do when started, unless set by name or image.
    pub fn set_default_behaviour(&self, b: Behaviour) {
        self.state().default_behaviour = b;
    }

    /// What containers of `image` do when started, unless set by name.
    pub fn set_image_behaviour(&self, image: &str, b: Behaviour) {
        self.state().by_image.insert(normalise(image), b);
    }

    /// What the container named `name` does when next started.
    pub fn set_behaviour(&self, name: &str, b: Behaviour) {
        self.state().by_name.insert(name.to_string(), b);
    }

    /// How long `start` takes before the container runs (default none).
    pub fn set_start_delay(&self, d: Duration) {
        self.state().start_delay = d;
    }

    /// Every call fails with [`RuntimeError::Unreachable`] while set.
    pub fn set_unreachable(&self, down: bool) {
        self.state().unreachable = down;
    }

    pub fn set_info(&self, info: EngineInfo) {
        self.state().info = info;
    }

    pub fn set_bridge_gateway(&self, gateway: Option<String>) {
        self.state().gateway = gateway;
    }

    /// The next call of `op` on `target` fails with `error`, once.
    /// `target` is a container's name or id (or the reference passed), an
    /// image for [`Op::Pull`] and [`Op::ImageId`], the cluster for
    /// [`Op::List`]; it is ignored by the calls without one.
    pub fn fail_next(&self, op: Op, target: &str, error: RuntimeError) {
        let target = match op {
            Op::Pull | Op::ImageId => normalise(target),
            _ => target.to_string(),
        };
        self.state().failures.push(Failure {
            op,
            target: Some(target),
            error,
        });
    }

    /// The next call of `op` on `target` (a container's name or id, or the
    /// cluster for [`Op::List`]) computes its answer and then holds it, as a
    /// frozen engine does, until the returned [`Held`] is released. Only
    /// [`Op::Inspect`] and [`Op::List`] can be held.
    pub fn hold_next(&self, op: Op, target: &str) -> Held {
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        self.state().holds.push(Hold {
            op,
            target: target.to_string(),
            reached: reached_tx,
            release: release_rx,
        });
        Held {
            reached: reached_rx,
            release: release_tx,
        }
    }

    /// The next call of `op`, whatever its target, fails with `error`, once.
    pub fn fail_next_any(&self, op: Op, error: RuntimeError) {
        self.state().failures.push(Failure {
            op,
            target: None,
            error,
        });
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// Container `r` (id, name or id prefix), labelled or not; not a call.
    pub fn container(&self, r: &str) -> Option<FakeContainer> {
        let st = self.state();
        let id = st.resolve(r)?;
        st.containers.get(&id).map(Container::public)
    }

    /// Every container, labelled or not, oldest first; not a call.
    pub fn containers(&self) -> Vec<FakeContainer> {
        let st = self.state();
        let mut all: Vec<&Container> = st.containers.values().collect();
        all.sort_by_key(|c| c.created);
        all.into_iter().map(Container::public).collect()
    }

    /// Running container `r` exits by itself with `code` (a crash, or a
    /// job that finished); false if it was not running.
    pub fn exit(&self, r: &str, code: i64) -> bool {
        let mut st = self.state();
        let Some(id) = st.resolve(r) else {
            return false;
        };
        let running = st
            .containers
            .get(&id)
            .is_some_and(|c| c.status == "running");
        st.exit(&id, code);
        running
    }

    /// Container `r` writes `o` (to its log and to whoever follows it);
    /// false if there is no such container.
    pub fn write_output(&self, r: &str, o: Output) -> bool {
        let mut st = self.state();
        let Some(id) = st.resolve(r) else {
            return false;
        };
        match st.containers.get_mut(&id) {
            Some(c) => {
                c.write(o);
                true
            }
            None => false,
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn memory_used(&self, id: &str) -> Option<u64> {
        let st = self.state();
        let c = st.containers.get(id)?;
        (st.container_memory > 0 && c.status == "running").then_some(st.container_memory)
    }

    fn cpu_used(&self, _id: &str) -> Option<u64> {
        None
    }

    async fn info(&self) -> Result<EngineInfo> {
        let mut st = self.state();
        st.enter(Call::Info, Op::Info, &[])?;
        Ok(st.info)
    }

    async fn ping(&self) -> Result<()> {
        self.state().enter(Call::Ping, Op::Ping, &[])
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>> {
        let mut st = self.state();
        st.enter(
            Call::ImageId(image.to_string()),
            Op::ImageId,
            &[&normalise(image)],
        )?;
        Ok(st.image_id_of(image))
    }

    fn pull(&self, image: &str) -> BoxStream<'static, Result<String>> {
        self.state().record(Call::Pull(image.to_string()));
        let inner = self.inner.clone();
        let image = image.to_string();
        // Like Docker's, the pull happens as the stream is read.
        stream::once(async move {
            let mut st = inner.lock().unwrap_or_else(|e| e.into_inner());
            let reference = normalise(&image);
            if st.unreachable {
                return vec![Err(unreachable())];
            }
            let tag = reference.rsplit_once(':').map_or("latest", |(_, t)| t);
            let first = format!("{tag}: Pulling from {image}");
            // A scripted failure comes after the first line of progress, as
            // a registry's failures mostly do.
            if let Some(e) = st.failure(Op::Pull, &[&reference]) {
                return vec![Ok(first), Err(e)];
            }
            let found = st.registry.get(&reference).cloned();
            let Some(id) = found.or_else(|| st.any_image.then(|| any_image_id(&reference))) else {
                let repo = reference
                    .rsplit_once(':')
                    .map_or(reference.as_str(), |(r, _)| r);
                return vec![Err(RuntimeError::Image {
                    image: image.clone(),
                    reason: format!(
                        "pull access denied for {repo}, repository does not exist \
                         or may require 'docker login'"
                    ),
                })];
            };
            let short = id.trim_start_matches("sha256:").get(..12).unwrap_or("");
            if st.images.get(&reference) == Some(&id) {
                return vec![
                    Ok(first.clone()),
                    Ok(format!("Digest: {id}")),
                    Ok(format!("Status: Image is up to date for {reference}")),
                ];
            }
            st.images.insert(reference.clone(), id.clone());
            vec![
                Ok(first),
                Ok(format!("{short}: Pull complete")),
                Ok(format!("Digest: {id}")),
                Ok(format!("Status: Downloaded newer image for {reference}")),
            ]
        })
        .flat_map(stream::iter)
        .boxed()
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let mut st = self.state();
        st.enter(
            Call::Create(Box::new(spec.clone())),
            Op::Create,
            &[&spec.name],
        )?;
        let mut name = spec
            .name
            .strip_prefix('/')
            .unwrap_or(&spec.name)
            .to_string();
        if name.is_empty() {
            name = format!("fake_{}", st.containers.len() + 1);
        }
        if !is_valid_container_name(&name) {
            return Err(invalid_name(&spec.name));
        }
        if let Some(other) = st.containers.values().find(|c| c.name == name) {
            return Err(RuntimeError::Conflict(format!(
                "Conflict. The container name \"/{name}\" is already in use by container \"{}\". \
                 You have to remove (or rename) that container to be able to reuse that name.",
                other.id
            )));
        }
        let Some(image_id) = st.image_id_of(&spec.image) else {
            return Err(RuntimeError::Image {
                image: spec.image.clone(),
                reason: format!("No such image: {}", normalise(&spec.image)),
            });
        };
        let id = st.new_id();
        let (not_running, _) = watch::channel(Some(0));
        st.created += 1;
        let created = st.created;
        st.containers.insert(
            id.clone(),
            Container {
                id: id.clone(),
                name,
                spec: spec.clone(),
                image_id,
                created,
                status: "created",
                exit_code: None,
                started_at: None,
                finished_at: None,
                starts: 0,
                behaviour: Behaviour::Run,
                ports: Vec::new(),
                log: Vec::new(),
                followers: Vec::new(),
                not_running,
                pending_stdin: Vec::new(),
                stdin_closed: false,
            },
        );
        st.emit(&id, "create");
        Ok(id)
    }

    async fn attach(&self, r: &str) -> Result<Attached> {
        let (id, past, rx) = {
            let mut st = self.state();
            st.enter_container(Call::Attach(r.to_string()), Op::Attach, r)?;
            let id = st.resolve(r).ok_or_else(|| not_found(r))?;
            let running_or_not_yet = st.containers.get(&id).is_some_and(|c| c.status != "exited");
            let (past, rx) = st
                .output(&id, running_or_not_yet)
                .ok_or_else(|| not_found(r))?;
            (id, past, rx)
        };
        let (input, mut engine_side) = tokio::io::duplex(64 * 1024);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let chunk = match engine_side.read(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => Some(Bytes::copy_from_slice(&buf[..n])),
                };
                let done = chunk.is_none();
                inner
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stdin(&id, chunk);
                if done {
                    return;
                }
            }
        });
        Ok(Attached {
            output: output_stream(past, rx),
            input: Box::pin(input),
        })
    }

    async fn start(&self, r: &str) -> Result<()> {
        let delay = {
            let mut st = self.state();
            st.enter_container(Call::Start(r.to_string()), Op::Start, r)?;
            let id = st.resolve(r).ok_or_else(|| not_found(r))?;
            if st
                .containers
                .get(&id)
                .is_some_and(|c| c.status == "running")
            {
                return Ok(());
            }
            st.start_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut st = self.state();
        // It may have gone while starting.
        let id = st.resolve(r).ok_or_else(|| not_found(r))?;
        st.start(&id)
    }

    async fn wait(&self, r: &str) -> Result<i64> {
        let mut rx = {
            let mut st = self.state();
            st.enter_container(Call::Wait(r.to_string()), Op::Wait, r)?;
            let id = st.resolve(r).ok_or_else(|| not_found(r))?;
            match st.containers.get(&id) {
                Some(c) => c.not_running.subscribe(),
                None => return Err(not_found(r)),
            }
        };
        // Removal drops the sender after the exit was published.
        let waited = rx.wait_for(Option::is_some).await.map(|v| *v);
        let code = match waited {
            Ok(c) => c,
            Err(_) => *rx.borrow(),
        };
        Ok(code.unwrap_or(0))
    }

    async fn inspect(&self, r: &str) -> Result<Option<ContainerInfo>> {
        let (answer, held) = {
            let mut st = self.state();
            st.enter_container(Call::Inspect(r.to_string()), Op::Inspect, r)?;
            let answer = st
                .resolve(r)
                .and_then(|id| st.containers.get(&id))
                .filter(|c| c.spec.labels.contains_key(LABEL_JOB))
                .map(Container::info);
            let names = st.container_names(r);
            (answer, st.take_hold(Op::Inspect, &names))
        };
        if let Some(release) = held {
            let _ = release.await;
        }
        Ok(answer)
    }

    async fn stop(&self, r: &str, timeout_secs: i64) -> Result<()> {
        let mut st = self.state();
        let call = Call::Stop {
            id: r.to_string(),
            timeout_secs,
        };
        st.enter_container(call, Op::Stop, r)?;
        let Some(id) = st.resolve(r) else {
            return Ok(());
        };
        if st
            .containers
            .get(&id)
            .is_some_and(|c| c.status == "running")
        {
            st.emit(&id, "kill");
            st.exit(&id, signal_exit_code("TERM"));
            st.emit(&id, "stop");
        }
        Ok(())
    }

    async fn kill(&self, r: &str, signal: &str) -> Result<()> {
        let mut st = self.state();
        let call = Call::Kill {
            id: r.to_string(),
            signal: signal.to_string(),
        };
        st.enter_container(call, Op::Kill, r)?;
        let Some(id) = st.resolve(r) else {
            return Ok(());
        };
        if st
            .containers
            .get(&id)
            .is_some_and(|c| c.status == "running")
        {
            st.emit(&id, "kill");
            st.exit(&id, signal_exit_code(signal));
        }
        Ok(())
    }

    async fn remove(&self, r: &str, force: bool) -> Result<()> {
        let mut st = self.state();
        let call = Call::Remove {
            id: r.to_string(),
            force,
        };
        st.enter_container(call, Op::Remove, r)?;
        let Some(id) = st.resolve(r) else {
            return Ok(());
        };
        if st
            .containers
            .get(&id)
            .is_some_and(|c| c.status == "running")
        {
            if !force {
                return Err(RuntimeError::Conflict(format!(
                    "You cannot remove a running container {id}. Stop the container \
                     before attempting removal or force remove"
                )));
            }
            st.emit(&id, "kill");
            st.exit(&id, signal_exit_code("KILL"));
        }
        st.emit(&id, "destroy");
        st.containers.remove(&id);
        Ok(())
    }

    async fn rename(&self, r: &str, new_name: &str) -> Result<()> {
        let mut st = self.state();
        let call = Call::Rename {
            id: r.to_string(),
            new_name: new_name.to_string(),
        };
        st.enter_container(call, Op::Rename, r)?;
        let id = st.resolve(r).ok_or_else(|| not_found(r))?;
        let name = new_name.strip_prefix('/').unwrap_or(new_name);
        if !is_valid_container_name(name) {
            return Err(invalid_name(new_name));
        }
        if let Some(other) = st.containers.values().find(|c| c.name == name) {
            return Err(if other.id == id {
                RuntimeError::Docker(format!(
                    "Renaming a container with the same name as its current name: {name}"
                ))
            } else {
                RuntimeError::Conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \
                     \"{}\". You have to remove (or rename) that container to be able to reuse \
                     that name.",
                    other.id
                ))
            });
        }
        if let Some(c) = st.containers.get_mut(&id) {
            c.name = name.to_string();
        }
        st.emit(&id, "rename");
        Ok(())
    }

    async fn bridge_gateway(&self) -> Result<Option<String>> {
        let mut st = self.state();
        st.enter(Call::BridgeGateway, Op::BridgeGateway, &[])?;
        Ok(st.gateway.clone())
    }

    async fn host_port_in_use(&self, port: u16, proto: viking_core::Proto) -> Result<bool> {
        Ok(self.state().port_in_use(port, Some(proto.as_str())))
    }

    async fn list(&self, cluster: &str) -> Result<Vec<ContainerInfo>> {
        let (answer, held) = {
            let mut st = self.state();
            st.enter(Call::List(cluster.to_string()), Op::List, &[cluster])?;
            let mut mine: Vec<&Container> = st
                .containers
                .values()
                .filter(|c| {
                    c.spec.labels.contains_key(LABEL_JOB)
                        && c.spec.labels.get(LABEL_CLUSTER).map(String::as_str) == Some(cluster)
                })
                .collect();
            // Newest first, as Docker lists them.
            mine.sort_by_key(|c| std::cmp::Reverse(c.created));
            let answer: Vec<ContainerInfo> = mine.into_iter().map(Container::info).collect();
            (answer, st.take_hold(Op::List, &[cluster.to_string()]))
        };
        if let Some(release) = held {
            let _ = release.await;
        }
        Ok(answer)
    }

    fn events_for(&self, cluster: &str) -> BoxStream<'static, Result<ContainerEvent>> {
        let mut st = self.state();
        st.record(Call::Events(Some(cluster.to_string())));
        if st.unreachable {
            return stream::iter([Err(unreachable())]).boxed();
        }
        event_stream(st.events.subscribe(), Some(cluster.to_string()))
    }

    fn events(&self) -> BoxStream<'static, Result<ContainerEvent>> {
        let mut st = self.state();
        st.record(Call::Events(None));
        if st.unreachable {
            return stream::iter([Err(unreachable())]).boxed();
        }
        event_stream(st.events.subscribe(), None)
    }

    fn logs(&self, r: &str, follow: bool) -> BoxStream<'static, Result<Output>> {
        let mut st = self.state();
        let call = Call::Logs {
            id: r.to_string(),
            follow,
        };
        if let Err(e) = st.enter_container(call, Op::Logs, r) {
            return stream::iter([Err(e)]).boxed();
        }
        let Some(id) = st.resolve(r) else {
            return stream::iter([Err(not_found(r))]).boxed();
        };
        let running = st
            .containers
            .get(&id)
            .is_some_and(|c| c.status == "running");
        match st.output(&id, follow && running) {
            Some((past, rx)) => output_stream(past, rx),
            None => stream::iter([Err(not_found(r))]).boxed(),
        }
    }

    /// Not recorded in [`FakeRuntime::calls`]: a look-up that the
    /// ownership check makes before each change.
    async fn labels(&self, r: &str) -> Result<Option<Labelled>> {
        let st = self.state();
        if st.unreachable {
            return Err(unreachable());
        }
        Ok(st
            .resolve(r)
            .and_then(|id| st.containers.get(&id))
            .map(|c| Labelled {
                id: c.id.clone(),
                labels: c.spec.labels.clone(),
            }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::AsyncWriteExt;
    use viking_core::Job;

    use super::*;

    const IMAGE: &str = "viking-test/busybox";

    fn spec(job: &str, cluster: &str) -> ContainerSpec {
        let doc = format!(r#"{{"name":"{job}","image":"{IMAGE}","ports":["80","53/udp"]}}"#);
        let job = Job::parse(doc.as_bytes(), String::new).unwrap();
        ContainerSpec::for_job(&job, "n1", cluster, Path::new("/data"))
    }

    fn engine() -> FakeRuntime {
        let rt = FakeRuntime::new();
        rt.add_image(IMAGE);
        rt
    }

    /// The next event, or a failure after a deadline.
    async fn next_event(s: &mut BoxStream<'static, Result<ContainerEvent>>) -> ContainerEvent {
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("no event within 5s")
            .expect("the event stream ended")
            .expect("an event stream error")
    }

    async fn collect(mut s: BoxStream<'static, Result<Output>>) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = Duration::from_secs(5);
        while let Some(o) = tokio::time::timeout(deadline, s.next())
            .await
            .expect("output did not end within 5s")
        {
            match o.unwrap() {
                Output::Stdout(b) | Output::Stderr(b) => out.extend_from_slice(&b),
            }
        }
        out
    }

    #[tokio::test]
    async fn names_are_unique_and_checked_like_dockers() {
        let rt = engine();
        let first = rt.create(&spec("web", "/c")).await.unwrap();
        match rt.create(&spec("web", "/c")).await {
            Err(RuntimeError::Conflict(m)) => assert!(m.contains(&first), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut one = spec("web", "/c");
        one.name = "a".to_string();
        assert!(matches!(
            rt.create(&one).await,
            Err(RuntimeError::Docker(m)) if m.contains("Invalid container name (a)")
        ));
        // A one-character job's container name is accepted.
        let id = rt.create(&spec("a", "/c")).await.unwrap();
        assert_eq!(rt.container(&id).unwrap().name, crate::container_name("a"));
        // Names are found with or without Docker's '/', and by id prefix.
        assert_eq!(rt.inspect("/web").await.unwrap().unwrap().id, first);
        assert_eq!(rt.inspect(&first[..12]).await.unwrap().unwrap().id, first);
        // Renaming onto a taken name is a conflict; a free one is fine and
        // frees the old name.
        assert!(matches!(
            rt.rename(&id, "web").await,
            Err(RuntimeError::Conflict(_))
        ));
        rt.rename(&first, "web.prev").await.unwrap();
        rt.create(&spec("web", "/c")).await.unwrap();
        assert!(matches!(
            rt.rename("nothing", "x1").await,
            Err(RuntimeError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn operations_are_idempotent_where_dockers_are() {
        let rt = engine();
        let id = rt.create(&spec("web", "/c")).await.unwrap();
        assert_eq!(rt.inspect("missing").await.unwrap(), None);
        rt.start(&id).await.unwrap();
        rt.start(&id).await.unwrap();
        assert_eq!(rt.container(&id).unwrap().starts, 1);
        assert!(matches!(
            rt.remove(&id, false).await,
            Err(RuntimeError::Conflict(_))
        ));
        rt.stop(&id, 10).await.unwrap();
        rt.stop(&id, 10).await.unwrap();
        rt.kill(&id, "KILL").await.unwrap();
        let info = rt.inspect(&id).await.unwrap().unwrap();
        assert_eq!(info.status, "exited");
        assert_eq!(info.exit_code, Some(143));
        rt.remove(&id, false).await.unwrap();
        rt.remove(&id, true).await.unwrap();
        rt.stop(&id, 1).await.unwrap();
        rt.kill(&id, "TERM").await.unwrap();
        assert_eq!(rt.inspect(&id).await.unwrap(), None);
        assert!(matches!(
            rt.start(&id).await,
            Err(RuntimeError::NotFound(_))
        ));
        assert!(matches!(rt.wait(&id).await, Err(RuntimeError::NotFound(_))));
        assert!(rt.containers().is_empty());
    }

    #[tokio::test]
    async fn images_are_pulled_from_the_registry_only() {
        let rt = FakeRuntime::new();
        assert_eq!(rt.image_id("app").await.unwrap(), None);
        match rt.create(&spec("web", "/c")).await {
            Err(RuntimeError::Image { image, reason }) => {
                assert_eq!(image, IMAGE);
                assert!(reason.contains("No such image"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let lines: Vec<_> = rt.pull("app").collect().await;
        assert!(matches!(
            lines.last(),
            Some(Err(RuntimeError::Image { .. }))
        ));
        assert_eq!(rt.image_id("app").await.unwrap(), None);

        let v1 = rt.publish_image("app");
        crate::pull_quietly(&rt, "app").await.unwrap();
        assert_eq!(rt.image_id("app:latest").await.unwrap(), Some(v1.clone()));
        // A push of a new version: the next pull brings the new id.
        let v2 = rt.publish_image("app:latest");
        assert_ne!(v1, v2);
        assert_eq!(rt.image_id("app").await.unwrap(), Some(v1));
        crate::pull_quietly(&rt, "app").await.unwrap();
        assert_eq!(rt.image_id("app").await.unwrap(), Some(v2.clone()));
        // A local rebuild retags.
        let v3 = rt.add_image("app");
        assert_ne!(v3, v2);
        assert_eq!(rt.image_id("app").await.unwrap(), Some(v3.clone()));
        assert_eq!(rt.image_id(&v3).await.unwrap(), Some(v3));
        rt.remove_image("app");
        assert_eq!(rt.image_id("app").await.unwrap(), None);
    }

    #[tokio::test]
    async fn events_are_dockers_for_the_cluster_asked_for() {
        let rt = engine();
        let mut mine = rt.events_for("/c");
        let mut all = rt.events();
        let other = rt.create(&spec("elsewhere", "/other")).await.unwrap();
        let mut foreign = spec("foreign", "/c");
        foreign.labels.clear();
        rt.create(&foreign).await.unwrap();
        let id = rt.create(&spec("web", "/c")).await.unwrap();
        rt.start(&id).await.unwrap();
        rt.stop(&id, 1).await.unwrap();
        rt.rename(&id, "web2").await.unwrap();
        rt.start(&id).await.unwrap();
        rt.remove(&id, true).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let e = next_event(&mut mine).await;
            assert_eq!((e.id.as_str(), e.job.as_str()), (id.as_str(), "web"));
            seen.push(e.action);
        }
        assert_eq!(
            seen,
            [
                "create", "start", "kill", "die", "stop", "rename", "start", "kill", "die",
                "destroy"
            ]
        );
        // Every cluster's, but never an unlabelled container's.
        let e = next_event(&mut all).await;
        assert_eq!((e.id, e.action.as_str()), (other, "create"));
        assert_eq!(next_event(&mut all).await.job, "web");
    }

    #[tokio::test]
    async fn list_is_the_clusters_labelled_containers_newest_first() {
        let rt = engine();
        let a = rt.create(&spec("a1", "/c")).await.unwrap();
        rt.create(&spec("b1", "/other")).await.unwrap();
        let mut foreign = spec("f1", "/c");
        foreign.labels.remove(LABEL_JOB);
        rt.create(&foreign).await.unwrap();
        let b = rt.create(&spec("a2", "/c")).await.unwrap();
        let ids: Vec<String> = rt
            .list("/c")
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, [b, a]);
        // Unlabelled: not viking's, so inspect does not report it either.
        assert_eq!(rt.inspect("f1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn behaviours_script_what_containers_do() {
        let rt = engine();
        rt.set_behaviour("exits", Behaviour::Exit(3));
        rt.set_image_behaviour(IMAGE, Behaviour::Output(Bytes::from_static(b"hello\n"), 7));
        let exits = rt.create(&spec("exits", "/c")).await.unwrap();
        rt.start(&exits).await.unwrap();
        assert_eq!(rt.wait(&exits).await.unwrap(), 3);
        let info = rt.inspect(&exits).await.unwrap().unwrap();
        assert_eq!((info.status.as_str(), info.exit_code), ("exited", Some(3)));
        assert!(info.finished_at >= info.started_at && info.started_at.is_some());

        let says = rt.create(&spec("says", "/c")).await.unwrap();
        rt.start(&says).await.unwrap();
        assert_eq!(rt.wait(&says).await.unwrap(), 7);
        assert_eq!(collect(rt.logs(&says, true)).await, b"hello\n");
        // Logs survive a restart, as Docker's do.
        rt.start(&says).await.unwrap();
        assert_eq!(collect(rt.logs(&says, false)).await, b"hello\nhello\n");

        rt.set_image_behaviour(IMAGE, Behaviour::Run);
        let runs = rt.create(&spec("runs", "/c")).await.unwrap();
        rt.start(&runs).await.unwrap();
        let waiter = tokio::spawn({
            let rt = rt.clone();
            let runs = runs.clone();
            async move { rt.wait(&runs).await }
        });
        // Output written while it runs reaches a follower, which ends at exit.
        let follow = rt.logs(&runs, true);
        assert!(rt.write_output(&runs, Output::Stderr(Bytes::from_static(b"err"))));
        assert!(rt.exit(&runs, 2));
        assert!(!rt.exit(&runs, 2));
        assert_eq!(collect(follow).await, b"err");
        assert_eq!(waiter.await.unwrap().unwrap(), 2);
        rt.start(&runs).await.unwrap();
        rt.kill(&runs, "SIGKILL").await.unwrap();
        assert_eq!(rt.wait(&runs).await.unwrap(), 137);
    }

    #[tokio::test]
    async fn echo_copies_stdin_to_stdout_until_it_closes() {
        let rt = engine();
        rt.set_default_behaviour(Behaviour::Echo);
        let mut s = spec("cat", "/c");
        s.interactive = true;
        let id = rt.create(&s).await.unwrap();
        // Attached before the start, as viking's `run` does.
        let mut att = rt.attach(&id).await.unwrap();
        att.input.write_all(b"early ").await.unwrap();
        att.input.flush().await.unwrap();
        rt.start(&id).await.unwrap();
        att.input.write_all(b"late").await.unwrap();
        att.input.shutdown().await.unwrap();
        assert_eq!(collect(att.output).await, b"early late");
        assert_eq!(rt.wait(&id).await.unwrap(), 0);
        // Without stdin (a daemon), `cat` ends at once.
        let d = rt.create(&spec("daemon", "/c")).await.unwrap();
        rt.start(&d).await.unwrap();
        assert_eq!(rt.container(&d).unwrap().status, "exited");
    }

    #[tokio::test]
    async fn ports_are_published_while_running() {
        let rt = engine();
        let a = rt.create(&spec("a1", "/c")).await.unwrap();
        let b = rt.create(&spec("b1", "/c")).await.unwrap();
        assert!(rt.inspect(&a).await.unwrap().unwrap().ports.is_empty());
        rt.start(&a).await.unwrap();
        rt.start(&b).await.unwrap();
        let pa = rt.inspect(&a).await.unwrap().unwrap().ports;
        let pb = rt.inspect(&b).await.unwrap().unwrap().ports;
        let shown: Vec<(u16, &str)> = pa.iter().map(|p| (p.container, p.proto.as_str())).collect();
        assert_eq!(shown, [(53, "udp"), (80, "tcp")]);
        let mut hosts: Vec<u16> = pa.iter().chain(&pb).map(|p| p.host_port).collect();
        assert!(hosts.iter().all(|p| *p >= FIRST_EPHEMERAL_PORT));
        hosts.sort_unstable();
        hosts.dedup();
        assert_eq!(hosts.len(), 4, "host ports are distinct");
        rt.stop(&a, 1).await.unwrap();
        assert!(rt.inspect(&a).await.unwrap().unwrap().ports.is_empty());

        // A fixed host port taken by a running container fails the start.
        let taken = pb.iter().find(|p| p.container == 80).unwrap().host_port;
        let mut fixed = spec("fixed", "/c");
        let web = fixed.ports.iter_mut().find(|p| p.container == 80).unwrap();
        web.host = Some(taken);
        let f = rt.create(&fixed).await.unwrap();
        assert!(matches!(
            rt.start(&f).await,
            Err(RuntimeError::Docker(m)) if m.contains("port is already allocated")
        ));
        rt.stop(&b, 1).await.unwrap();
        rt.start(&f).await.unwrap();
        let ports = rt.container(&f).unwrap().ports;
        assert_eq!(
            ports.iter().find(|p| p.container == 80).unwrap().host_port,
            taken
        );
    }

    #[tokio::test(start_paused = true)]
    async fn start_takes_the_start_delay() {
        let rt = engine();
        rt.set_start_delay(Duration::from_secs(3));
        let id = rt.create(&spec("slow", "/c")).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let start = tokio::spawn({
            let rt = rt.clone();
            let id = id.clone();
            async move { rt.start(&id).await }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(rt.container(&id).unwrap().status, "created");
        start.await.unwrap().unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(3));
        assert_eq!(rt.container(&id).unwrap().status, "running");
    }

    #[tokio::test]
    async fn scripted_failures_fail_once_and_calls_are_recorded() {
        let rt = engine();
        let busy = RuntimeError::Docker("busy".to_string());
        rt.fail_next(Op::Create, "web", busy.clone());
        rt.fail_next(Op::Start, "web", RuntimeError::Conflict("no".to_string()));
        let s = spec("web", "/c");
        assert_eq!(rt.create(&spec("other", "/c")).await.map(|_| ()), Ok(()));
        assert_eq!(rt.create(&s).await, Err(busy));
        let id = rt.create(&s).await.unwrap();
        // Targeted by name, the failure hits a call made with the id.
        assert!(matches!(
            rt.start(&id).await,
            Err(RuntimeError::Conflict(_))
        ));
        rt.start(&id).await.unwrap();
        rt.fail_next_any(Op::Ping, RuntimeError::Docker("down".to_string()));
        assert!(rt.ping().await.is_err());
        rt.ping().await.unwrap();
        rt.set_unreachable(true);
        assert!(matches!(
            rt.inspect(&id).await,
            Err(RuntimeError::Unreachable { .. })
        ));
        rt.set_unreachable(false);
        assert_eq!(
            rt.calls(),
            [
                Call::Create(Box::new(spec("other", "/c"))),
                Call::Create(Box::new(s.clone())),
                Call::Create(Box::new(s)),
                Call::Start(id.clone()),
                Call::Start(id.clone()),
                Call::Ping,
                Call::Ping,
                Call::Inspect(id),
            ]
        );
        rt.clear_calls();
        assert!(rt.calls().is_empty());
    }
}
