//! The Docker Engine API on every server (issue 20): the stock docker CLI
//! drives the fleet. `docker -H tcp://SERVER:PORT run -d ...` makes a
//! daemonized viking job placed by dowding, `docker run -i --rm ...` an
//! attached one, `docker ps` lists the fleet's jobs as `host/name`, and so
//! on. It is another front end over the same rules as viking's own API:
//! jobs are checked by `Job::from_spec`, run by `jobs` and `attach`, and a
//! request it refuses changes nothing.
//!
//! - `convert`: Docker's create body into a job document (every field
//!   viking cannot honour refused by name), records into Docker's JSON;
//! - `created`: containers created and not yet started, held in memory;
//! - `stream`: Docker's 8-byte frames and the relay between a hijacked
//!   connection and viking's attached frames.
//!
//! Paths are served unversioned and under `/v1.24/` to `/v1.44/` (the
//! version is checked and stripped by [`dispatch`]); every answer carries
//! `Api-Version: 1.44`. Authentication is the API's bearer token (the
//! docker CLI sends it from `HttpHeaders` in its `config.json`). Errors are
//! Docker's `{"message": ...}` with the status viking's own API would give.

pub mod convert;
pub mod created;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use viking_client::frame::FrameReader;
use viking_core::records::{HostRecord, ProcRecord, PsRecord};
use viking_core::{keys, Job};

use crate::error::ServerError;
use crate::{jobs, state, Shared};
use stream::Framing;

/// The API version viking speaks, and the oldest it accepts.
pub const API_VERSION: &str = "1.44";
const MAX_MINOR: u32 = 44;
const MIN_MINOR: u32 = 24;

/// The largest create body.
const BODY_LIMIT: usize = 1 << 20;

/// A Docker-style error answer: `{"message": ...}` with its status.
#[derive(Debug)]
pub struct DockerError {
    status: StatusCode,
    message: String,
}

impl DockerError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        DockerError {
            status,
            message: message.into(),
        }
    }

    fn no_such(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("No such container: {id}"))
    }
}

impl From<ServerError> for DockerError {
    fn from(e: ServerError) -> Self {
        DockerError::new(crate::status::of(&e), e.to_string())
    }
}

impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "message": self.message }))).into_response()
    }
}

type DResult<T> = Result<T, DockerError>;

/// The API version of a request (its minor number), from its path.
#[derive(Debug, Clone, Copy)]
struct Version(u32);

/// Docker's routes, unversioned, with the headers every answer carries.
pub fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/containers/json", get(list))
        .route("/containers/create", post(create))
        .route("/containers/{id}/json", get(inspect))
        .route("/containers/{id}/attach", post(attach))
        .route("/containers/{id}/wait", post(wait))
        .route("/containers/{id}/start", post(start))
        .route("/containers/{id}/stop", post(stop))
        .route("/containers/{id}/kill", post(kill))
        .route("/containers/{id}/logs", get(logs))
        .route("/containers/{id}", axum::routing::delete(remove))
        .route("/containers/{id}/resize", post(resize))
        .route("/containers/{id}/restart", post(restart))
        .route("/images/create", post(pull))
        .route("/images/json", get(images))
        .route("/containers/{id}/exec", post(exec_create))
        .route("/exec/{id}/start", post(exec_start))
        .route("/exec/{id}/json", get(exec_inspect))
        .route("/exec/{id}/resize", post(resize))
        .fallback(unsupported)
        .layer(axum::middleware::map_response(headers))
        .with_state(sh)
}

/// First path segments that are Docker's, unversioned.
const DOCKER_ROOTS: &[&str] = &[
    "_ping",
    "version",
    "info",
    "containers",
    "images",
    "networks",
    "volumes",
    "swarm",
    "services",
    "nodes",
    "tasks",
    "secrets",
    "configs",
    "plugins",
    "build",
    "exec",
    "events",
    "system",
    "session",
    "distribution",
    "auth",
    "commit",
];

/// A request no viking route took: Docker's (versioned `/v1.NN/...` or
/// one of its unversioned paths) goes to `docker`, the rest is viking's
/// 404.
pub async fn dispatch(docker: Router, mut req: Request) -> Response {
    let path = req.uri().path().to_string();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let first = segments.next().unwrap_or("");
    let version = first
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)));
    match version {
        Some((major, minor)) => {
            if major != 1 || minor < MIN_MINOR {
                return DockerError::new(StatusCode::BAD_REQUEST, format!("client version {major}.{minor} is too old. Minimum supported API version is 1.{MIN_MINOR}, please upgrade your client to a newer version")).into_response();
            }
            if minor > MAX_MINOR {
                return DockerError::new(
                    StatusCode::BAD_REQUEST,
                    format!("client version {major}.{minor} is too new. Maximum supported API version is {API_VERSION}"),
                )
                .into_response();
            }
            let rest = format!("/{}", segments.next().unwrap_or(""));
            let pq = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest,
            };
            match pq.parse::<Uri>() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => {
                    return DockerError::new(StatusCode::BAD_REQUEST, "bad path").into_response()
                }
            }
            req.extensions_mut().insert(Version(minor));
        }
        None if DOCKER_ROOTS.contains(&first) => {
            req.extensions_mut().insert(Version(MAX_MINOR));
        }
        None => {
            return ServerError::NotFound("no such API path; see /v1/...".to_string())
                .into_response()
        }
    }
    let mut docker = docker;
    match tower_service::Service::call(&mut docker, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

async fn headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    if let Ok(v) = HeaderValue::from_str(&format!("viking/{} (linux)", crate::VERSION)) {
        h.insert(header::SERVER, v);
    }
    res
}

async fn unsupported(method: Method, uri: Uri) -> DockerError {
    DockerError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "viking's Docker API does not do {method} {}: viking runs jobs (containers) across its hosts; networks, volumes, builds, swarm and the rest are not part of it",
            uri.path()
        ),
    )
}

async fn ping(method: Method) -> Response {
    let body = if method == Method::HEAD { "" } else { "OK" };
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn version() -> Json<Value> {
    Json(json!({
        "Platform": {"Name": "viking"},
        "Components": [{"Name": "viking", "Version": crate::VERSION, "Details": {"ApiVersion": API_VERSION}}],
        "Version": crate::VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": format!("1.{MIN_MINOR}"),
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch(),
        "KernelVersion": "",
    }))
}

/// Every job's records: proc and ps by name.
async fn records(
    sh: &Shared,
) -> DResult<(BTreeMap<String, ProcRecord>, BTreeMap<String, PsRecord>)> {
    let procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
    let ps: Vec<PsRecord> = state::list(sh.store.as_ref(), keys::PS).await?;
    Ok((
        procs.into_iter().map(|p| (p.job.name.clone(), p)).collect(),
        ps.into_iter().map(|p| (p.job.clone(), p)).collect(),
    ))
}

async fn hosts(sh: &Shared) -> DResult<Vec<HostRecord>> {
    Ok(state::list(sh.store.as_ref(), keys::HOSTS).await?)
}

fn host_ip<'a>(hosts: &'a [HostRecord], name: &str) -> &'a str {
    hosts
        .iter()
        .find(|h| h.name == name)
        .map_or("", |h| h.ip.as_str())
}

/// `docker info`: the fleet's counts, and each host in `SystemStatus`
/// (which the CLI prints as it is, as it did for classic Swarm).
async fn info(State(sh): State<Arc<Shared>>) -> DResult<Json<Value>> {
    let (procs, ps) = records(&sh).await?;
    let hosts = hosts(&sh).await?;
    let names: std::collections::BTreeSet<&String> = procs.keys().chain(ps.keys()).collect();
    let running = ps.values().filter(|p| p.status.is_live()).count();
    let mut status: Vec<[String; 2]> = vec![
        ["Role".into(), "viking".into()],
        ["Strategy".into(), "dowding".into()],
        ["Hosts".into(), hosts.len().to_string()],
    ];
    for h in &hosts {
        let jobs = ps
            .values()
            .filter(|p| p.node == h.name && p.status.is_live())
            .count();
        status.push([format!(" {}", h.name), h.ip.clone()]);
        status.push(["  └ Status".into(), "Healthy".into()]);
        status.push(["  └ Containers".into(), jobs.to_string()]);
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        status.push([
            "  └ CPUs".into(),
            format!("{:.1} used of {}", h.cpu_used as f64 / 1000.0, h.cpus),
        ]);
        status.push([
            "  └ Memory".into(),
            format!(
                "{:.1} GiB used of {:.1} GiB",
                gib(h.memory_used),
                gib(h.memory)
            ),
        ]);
        status.push(["  └ Labels".into(), h.tags.join(", ")]);
    }
    Ok(Json(json!({
        "ID": sh.server_id,
        "Name": sh.config.name,
        "Containers": names.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": names.len() - running.min(names.len()),
        "Images": 0,
        "Driver": "viking",
        "SystemStatus": status,
        "NCPU": hosts.iter().map(|h| h.cpus).sum::<u64>(),
        "MemTotal": hosts.iter().map(|h| h.memory).sum::<u64>(),
        "OperatingSystem": "viking",
        "OSType": "linux",
        "Architecture": arch(),
        "ServerVersion": crate::VERSION,
        "KernelVersion": "",
        "Labels": [],
        "Swarm": {"LocalNodeState": "inactive", "ControlAvailable": false},
    })))
}

/// Docker's rule for booleans in a query: "", 0, no, false and none are
/// false, anything else true.
fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| {
        !matches!(
            v.to_ascii_lowercase().as_str(),
            "" | "0" | "no" | "false" | "none"
        )
    })
}

/// `filters` of `docker ps`: `{"name": {"x": true}}` or `{"name": ["x"]}`.
fn filters(q: &HashMap<String, String>) -> DResult<BTreeMap<String, Vec<String>>> {
    let Some(raw) = q.get("filters").filter(|f| !f.is_empty()) else {
        return Ok(BTreeMap::new());
    };
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| DockerError::new(StatusCode::BAD_REQUEST, format!("filters: {e}")))?;
    let mut out = BTreeMap::new();
    if let Value::Object(m) = v {
        for (k, vals) in m {
            let list = match vals {
                Value::Object(o) => o.keys().cloned().collect(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                _ => vec![],
            };
            out.insert(k, list);
        }
    }
    for k in out.keys() {
        if !matches!(k.as_str(), "name" | "id" | "status" | "label") {
            return Err(DockerError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid filter '{k}': viking filters by name, id, status and label"),
            ));
        }
    }
    Ok(out)
}

/// `docker ps`: every job of the fleet, named `host/name`.
async fn list(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> DResult<Json<Vec<Value>>> {
    let all = truthy(&q, "all");
    let f = filters(&q)?;
    let (procs, ps) = records(&sh).await?;
    let hosts = hosts(&sh).await?;
    let now = crate::now_ms();
    let names: std::collections::BTreeSet<&String> = procs.keys().chain(ps.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let (pr, p) = (procs.get(name), ps.get(name));
        let ip = p.map_or("", |p| host_ip(&hosts, &p.node));
        let item = convert::summary(name, pr, p, ip, now);
        let st = item["State"].as_str().unwrap_or("");
        if !all && st != "running" && !f.contains_key("status") {
            continue;
        }
        let shown = item["Names"][0].as_str().unwrap_or("").to_string();
        let keep = f.iter().all(|(k, vals)| {
            vals.iter().any(|v| match k.as_str() {
                "name" => shown.contains(v.trim_start_matches('/')),
                "id" => item["Id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(v.as_str())),
                "status" => st == v,
                "label" => match v.split_once('=') {
                    Some((lk, lv)) => item["Labels"][lk] == lv,
                    None => item["Labels"].get(v.as_str()).is_some(),
                },
                _ => false,
            })
        });
        if keep {
            out.push(item);
        }
    }
    if let Some(n) = q.get("limit").and_then(|l| l.parse::<usize>().ok()) {
        if n > 0 {
            out.truncate(n);
        }
    }
    Ok(Json(out))
}

/// The job a Docker client means by `id`: a job's name (or `host/name`),
/// or a prefix of its id or of its container's id.
async fn resolve(sh: &Shared, id: &str) -> DResult<String> {
    let id = id.trim_start_matches('/');
    let name = id.rsplit('/').next().unwrap_or(id);
    if state::ps(sh.store.as_ref(), name).await?.is_some()
        || state::proc(sh.store.as_ref(), name).await?.is_some()
    {
        return Ok(name.to_string());
    }
    if id.len() >= 4 && id.chars().all(|c| c.is_ascii_hexdigit()) {
        let (procs, ps) = records(sh).await?;
        let names: std::collections::BTreeSet<&String> = procs.keys().chain(ps.keys()).collect();
        let hits: Vec<&&String> = names
            .iter()
            .filter(|n| {
                convert::job_id(n).starts_with(id)
                    || ps.get(**n).is_some_and(|p| p.container_id.starts_with(id))
            })
            .collect();
        if let [one] = hits.as_slice() {
            return Ok((**one).clone());
        }
    }
    Err(DockerError::no_such(id))
}

#[derive(serde::Deserialize)]
struct CreateQuery {
    name: Option<String>,
}

/// `POST /containers/create`: checks the container as viking's own API
/// checks a job, and holds it until its start. Nothing is written.
async fn create(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<CreateQuery>,
    body: axum::body::Bytes,
) -> DResult<Response> {
    crate::standing::require_known_member(&sh)?;
    if body.len() > BODY_LIMIT {
        return Err(DockerError::new(
            StatusCode::BAD_REQUEST,
            "the create body is larger than 1 MiB",
        ));
    }
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| DockerError::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    let c = convert::create(q.name.as_deref(), &doc)
        .map_err(|m| DockerError::new(StatusCode::BAD_REQUEST, m))?;
    let mut spec = c.spec;
    if spec.name.is_none() {
        spec.name = Some(crate::placement::generate_name());
    }
    let job = Job::from_spec(spec, crate::placement::generate_name)
        .map_err(|e| DockerError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    crate::container::check_limits(&sh, &job)?;
    let id = convert::job_id(&job.name);
    let name = job.name.clone();
    // The store's records first, then held here in one step (two creates
    // of one name at once: one is refused).
    let taken = state::ps(sh.store.as_ref(), &name).await?.is_some()
        || state::proc(sh.store.as_ref(), &name).await?.is_some()
        || !sh.docker_created.insert(id.clone(), job, c.attached, c.tty);
    if taken {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!(
                "Conflict. The container name \"/{}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                name, id
            ),
        ));
    }
    Ok((StatusCode::CREATED, Json(json!({"Id": id, "Warnings": []}))).into_response())
}

/// `POST /containers/{id}/attach`: the hijacked connection of a created
/// container, answered `101 UPGRADED` and handed to its start.
async fn attach(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    version: Option<axum::Extension<Version>>,
    mut req: Request,
) -> DResult<Response> {
    let Some(key) = sh.docker_created.find(&id) else {
        return match resolve(&sh, &id).await {
            Ok(name) => Err(DockerError::new(
                StatusCode::CONFLICT,
                format!("viking attaches to a job only as it starts (docker run); {name} is running: use docker logs -f"),
            )),
            Err(e) => Err(e),
        };
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(DockerError::new(
            StatusCode::BAD_REQUEST,
            "attach needs Connection: Upgrade",
        ));
    };
    let Some(tx) = sh.docker_created.attach(&key) else {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("container {id} is already attached or started"),
        ));
    };
    let tty = sh
        .docker_created
        .exit(&key)
        .is_some_and(|(job, _, _)| job.tty);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let _ = tx.send(TokioIo::new(upgraded));
            }
            Err(e) => tracing::debug!("docker attach: the upgrade failed: {e}"),
        }
    });
    Ok(hijacked(stream_type(version, tty)))
}

const RAW_STREAM: &str = "application/vnd.docker.raw-stream";
const MULTIPLEXED_STREAM: &str = "application/vnd.docker.multiplexed-stream";

/// The content type of an attached or logged stream: Docker's frames are
/// named `multiplexed-stream` from API 1.42, a TTY's raw bytes never are.
fn stream_type(version: Option<axum::Extension<Version>>, tty: bool) -> &'static str {
    let minor = version.map_or(MAX_MINOR, |v| v.0 .0);
    if minor >= 42 && !tty {
        MULTIPLEXED_STREAM
    } else {
        RAW_STREAM
    }
}

/// `101 UPGRADED` to Docker's raw TCP stream (attach, exec start).
fn hijacked(content_type: &'static str) -> Response {
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONNECTION, "Upgrade"),
            (header::UPGRADE, "tcp"),
        ],
    )
        .into_response()
}

/// A streamed answer whose headers go out at once and whose one line
/// comes when `done` resolves: `/wait` (the CLI starts the container only
/// after the wait's headers arrived).
fn later(done: impl std::future::Future<Output = Value> + Send + 'static) -> Response {
    let body = futures::stream::once(async move {
        let mut line = done.await.to_string();
        line.push('\n');
        Ok::<_, std::io::Error>(line)
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

fn exited(code: i64) -> Value {
    json!({"StatusCode": code, "Error": null})
}

/// The exit code of a job's container once it is not running any more
/// (polled), or 0 once the job is gone.
async fn exit_of(sh: Arc<Shared>, name: String) -> i64 {
    loop {
        match state::ps(sh.store.as_ref(), &name).await {
            Ok(Some((p, _))) => {
                let st = p.status.as_str();
                if matches!(st, "exited" | "dead" | "failed") {
                    return p.exit_code.unwrap_or(0);
                }
            }
            Ok(None) => {
                if matches!(state::proc(sh.store.as_ref(), &name).await, Ok(None)) {
                    return 0;
                }
            }
            Err(e) => tracing::debug!(job = %name, "docker wait: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `POST /containers/{id}/wait`: the headers at once, the exit code when
/// the container ends.
async fn wait(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> DResult<Response> {
    if let Some(key) = sh.docker_created.find(&id) {
        if let Some((job, attached, mut exit)) = sh.docker_created.exit(&key) {
            return Ok(later(async move {
                if attached {
                    let code = match exit.wait_for(Option::is_some).await {
                        Ok(c) => c.unwrap_or(125),
                        Err(_) => 125,
                    };
                    return exited(code);
                }
                exited(exit_of(sh, job.name).await)
            }));
        }
    }
    let name = resolve(&sh, &id).await?;
    Ok(later(async move { exited(exit_of(sh, name).await) }))
}

/// `POST /containers/{id}/start`: runs a created container as a viking
/// job: a daemonized one placed and started by dowding, an attached one
/// with its stream relayed to the attach connection.
async fn start(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> DResult<Response> {
    let Some(key) = sh.docker_created.find(&id) else {
        let name = resolve(&sh, &id).await?;
        let running = state::ps(sh.store.as_ref(), &name)
            .await?
            .is_some_and(|(p, _)| p.status.is_live());
        if running {
            return Ok(StatusCode::NOT_MODIFIED.into_response());
        }
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("viking starts a job when it is run; {name} is not running: docker rm it and docker run it again"),
        ));
    };
    let Some(starting) = sh.docker_created.start(&key) else {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    };
    // A task of its own: a client that goes away during the start cancels
    // nothing half-way, and the held entry always goes at its end.
    let started = tokio::spawn(begin(sh, key, starting));
    started.await.unwrap_or_else(|e| {
        Err(DockerError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the start ended: {e}"),
        ))
    })
}

/// A held container's start.
async fn begin(sh: Arc<Shared>, key: String, starting: created::Starting) -> DResult<Response> {
    let created::Starting {
        job,
        attached,
        tty,
        attach: attach_rx,
        exit,
    } = starting;
    if !attached {
        let r = jobs::run_daemon(&sh, job, &|_| {}).await;
        sh.docker_created.remove(&key);
        r?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // The attach connection: its upgrade completes just after its answer.
    let client = match attach_rx {
        Some(rx) => tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let stream = match crate::attach::open(sh.clone(), job).await {
        Ok(s) => s,
        Err(e) => {
            sh.docker_created.remove(&key);
            return Err(e.into());
        }
    };
    let framing = if tty {
        Framing::Raw
    } else {
        Framing::Multiplexed
    };
    tokio::spawn(async move {
        match client {
            Some(c) => {
                stream::relay(c, stream, framing, |code| {
                    exit.send_replace(Some(code.unwrap_or(125)));
                })
                .await
            }
            None => {
                let code = drain(stream).await;
                exit.send_replace(Some(code.unwrap_or(125)));
            }
        }
        sh.docker_created.remove(&key);
    });
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /containers/{id}/restart`: the job's container replaced on its
/// host by a new one of the same image (start-first unless it has volumes
/// or a fixed host port, as a code push does).
async fn restart(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> DResult<StatusCode> {
    let name = resolve(&sh, &id).await?;
    let Some((ps, _)) = state::ps(sh.store.as_ref(), &name).await? else {
        return Err(DockerError::no_such(&id));
    };
    if state::proc(sh.store.as_ref(), &name).await?.is_none() {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("{name} is not a daemonized job: viking restarts only those"),
        ));
    }
    let req = viking_client::api::ReplaceRequest {
        job: name,
        settle_ms: 0,
        restart: true,
    };
    crate::push::replace_on(&sh, &ps.node, &req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct PullQuery {
    #[serde(rename = "fromImage")]
    from_image: String,
    #[serde(default)]
    tag: String,
}

/// `POST /images/create?fromImage=&tag=` (`docker pull`): pulled on every
/// live host at once; one progress line per host, an error line for each
/// host that does not have the image afterwards.
async fn pull(State(sh): State<Arc<Shared>>, Query(q): Query<PullQuery>) -> DResult<Response> {
    let image = match q.tag.as_str() {
        "" => q.from_image.clone(),
        t if t.starts_with("sha256:") => format!("{}@{t}", q.from_image),
        t => format!("{}:{t}", q.from_image),
    };
    let hosts = hosts(&sh).await?;
    let req = viking_client::api::ResolveRequest {
        image: image.clone(),
        pull: true,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(hosts.len() + 1);
    tokio::spawn(async move {
        let results = futures::future::join_all(hosts.iter().map(|h| {
            let (sh, req) = (&sh, &req);
            async move {
                (
                    h.name.clone(),
                    crate::push::resolve_on(sh, &h.name, req).await,
                )
            }
        }))
        .await;
        let mut missing = Vec::new();
        for (host, r) in results {
            let line = match r {
                Ok(Some(id)) => json!({"status": format!("{image} is {id}"), "id": host}),
                Ok(None) => {
                    missing.push(host.clone());
                    json!({"status": format!("{image} could not be pulled"), "id": host})
                }
                Err(e) => {
                    missing.push(host.clone());
                    json!({"status": e.to_string(), "id": host})
                }
            };
            let _ = tx.send(Ok(format!("{line}\n"))).await;
        }
        let last = if missing.is_empty() {
            json!({"status": format!("Status: {image} is on every live host")})
        } else {
            let m = format!("{image} is not on {}", missing.join(", "));
            json!({"errorDetail": {"message": m}, "error": m})
        };
        let _ = tx.send(Ok(format!("{last}\n"))).await;
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

/// The images this host's engine has.
pub async fn images_here(sh: &Shared) -> Result<Vec<viking_client::api::ImageRow>, ServerError> {
    Ok(sh
        .runtime
        .images()
        .await?
        .into_iter()
        .map(|i| viking_client::api::ImageRow {
            id: i.id,
            tags: i.tags,
            created: i.created,
            size: i.size,
        })
        .collect())
}

/// `GET /images/json` (`docker images`): what every live host has, each
/// tag shown as `host/repository:tag`.
async fn images(State(sh): State<Arc<Shared>>) -> DResult<Json<Vec<Value>>> {
    let hosts = hosts(&sh).await?;
    let lists = futures::future::join_all(hosts.iter().map(|h| {
        let sh = &sh;
        async move {
            let rows = if h.name == sh.config.name {
                images_here(sh).await
            } else {
                match crate::peer::peer(sh, h) {
                    Ok(c) => c
                        .images()
                        .await
                        .map_err(|e| ServerError::from_peer(&h.name, e)),
                    Err(e) => Err(e),
                }
            };
            (h.name.clone(), rows)
        }
    }))
    .await;
    let mut out = Vec::new();
    for (host, rows) in lists {
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(host = %host, "docker images: {e}");
                continue;
            }
        };
        for r in rows {
            let tags: Vec<String> = r.tags.iter().map(|t| format!("{host}/{t}")).collect();
            out.push(json!({
                "Id": r.id,
                "ParentId": "",
                "RepoTags": tags,
                "RepoDigests": [],
                "Created": r.created,
                "Size": r.size,
                "SharedSize": -1,
                "VirtualSize": r.size,
                "Labels": {"viking.host": host},
                "Containers": -1,
            }));
        }
    }
    Ok(Json(out))
}

/// `resize` of a TTY: accepted; the size stays Docker's default.
async fn resize() -> StatusCode {
    StatusCode::OK
}

/// `POST /containers/{id}/exec`: an exec of a running job, held until its
/// start.
async fn exec_create(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> DResult<Response> {
    let name = resolve(&sh, &id).await?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| DockerError::new(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    let (cmd, tty) =
        convert::exec(&doc).map_err(|m| DockerError::new(StatusCode::BAD_REQUEST, m))?;
    let running = state::ps(sh.store.as_ref(), &name)
        .await?
        .is_some_and(|(p, _)| p.is_running());
    if !running {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("Container {name} is not running"),
        ));
    }
    let exec_id = sh.docker_created.insert_exec(name, cmd, tty);
    Ok((StatusCode::CREATED, Json(json!({ "Id": exec_id }))).into_response())
}

/// `POST /exec/{id}/start`: the exec runs on the job's host; its stream is
/// the hijacked connection.
async fn exec_start(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    mut req: Request,
) -> DResult<Response> {
    let Some((name, cmd, tty, exit)) = sh.docker_created.start_exec(&id) else {
        return Err(DockerError::new(
            StatusCode::NOT_FOUND,
            format!("No such exec instance: {id}"),
        ));
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return Err(DockerError::new(
            StatusCode::BAD_REQUEST,
            "viking runs an exec attached only (Connection: Upgrade)",
        ));
    };
    let stream = crate::exec::open(
        sh.clone(),
        &name,
        viking_client::api::ExecRequest { cmd, tty },
    )
    .await?;
    let framing = if tty {
        Framing::Raw
    } else {
        Framing::Multiplexed
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                stream::relay(TokioIo::new(upgraded), stream, framing, |code| {
                    exit.send_replace(Some(code.unwrap_or(125)));
                })
                .await
            }
            Err(e) => tracing::debug!("docker exec: the upgrade failed: {e}"),
        }
    });
    Ok(hijacked(if tty { RAW_STREAM } else { MULTIPLEXED_STREAM }))
}

/// `GET /exec/{id}/json`: whether it runs, and its exit code.
async fn exec_inspect(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> DResult<Json<Value>> {
    let Some((name, cmd, tty, code, started)) = sh.docker_created.exec_state(&id) else {
        return Err(DockerError::new(
            StatusCode::NOT_FOUND,
            format!("No such exec instance: {id}"),
        ));
    };
    Ok(Json(json!({
        "ID": id,
        "Running": started && code.is_none(),
        "ExitCode": code,
        "ProcessConfig": {"entrypoint": cmd.first(), "arguments": cmd.iter().skip(1).collect::<Vec<_>>(), "tty": tty},
        "OpenStdin": true,
        "OpenStderr": true,
        "OpenStdout": true,
        "CanRemove": false,
        "ContainerID": convert::job_id(&name),
        "Pid": 0,
    })))
}

/// Reads an attached stream nobody listens to until its exit code.
async fn drain(s: Box<dyn crate::attach::FrameStream>) -> Option<i64> {
    let (rd, mut wr) = tokio::io::split(s);
    let mut eof = bytes::BytesMut::new();
    viking_client::frame::Frame::new(viking_client::frame::STDIN_EOF, Vec::new()).encode(&mut eof);
    let _ = tokio::io::AsyncWriteExt::write_all(&mut wr, &eof).await;
    let mut frames = FrameReader::new(rd);
    while let Ok(Some(f)) = frames.next().await {
        if f.kind == viking_client::frame::EXIT {
            return f.exit_code();
        }
    }
    None
}

#[derive(serde::Deserialize)]
struct StopQuery {
    t: Option<i64>,
}

/// `POST /containers/{id}/stop`: `viking stop`.
async fn stop(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> DResult<StatusCode> {
    if let Some(key) = sh.docker_created.find_unstarted(&id) {
        sh.docker_created.remove(&key);
        return Ok(StatusCode::NO_CONTENT);
    }
    let name = resolve(&sh, &id).await?;
    jobs::stop(&sh, &name, q.t.unwrap_or(10)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
struct KillQuery {
    signal: Option<String>,
}

/// `POST /containers/{id}/kill`: `viking kill` (`docker kill [-s SIG]`, and
/// the signals `docker run` passes on from its terminal).
async fn kill(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> DResult<StatusCode> {
    // Docker's client sends `signal=` for its default.
    let signal = viking_core::signal::asked(q.signal.as_deref().filter(|s| !s.is_empty()))
        .map_err(|e| DockerError::new(StatusCode::BAD_REQUEST, format!("signal: {e}")))?;
    if sh.docker_created.find_unstarted(&id).is_some() {
        return Err(DockerError::new(
            StatusCode::CONFLICT,
            format!("Container {id} is not running"),
        ));
    }
    let name = resolve(&sh, &id).await?;
    jobs::kill(&sh, &name, signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /containers/{id}`: `viking rm` (`force`, `v` for its volumes).
async fn remove(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> DResult<StatusCode> {
    if let Some(key) = sh.docker_created.find_unstarted(&id) {
        sh.docker_created.remove(&key);
        return Ok(StatusCode::NO_CONTENT);
    }
    let name = resolve(&sh, &id).await?;
    jobs::remove(&sh, &name, truthy(&q, "force"), truthy(&q, "v")).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /containers/{id}/json`: `docker inspect`, with the host.
async fn inspect(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> DResult<Json<Value>> {
    if let Some(key) = sh.docker_created.find_unstarted(&id) {
        if let Some((job, _, _)) = sh.docker_created.exit(&key) {
            let proc = ProcRecord {
                job,
                created_at: crate::now_ms(),
                placed_on: None,
                waiting: None,
            };
            return Ok(Json(convert::inspect(
                &proc.job.name.clone(),
                Some(&proc),
                None,
                "",
            )));
        }
    }
    let name = resolve(&sh, &id).await?;
    let proc = state::proc(sh.store.as_ref(), &name).await?;
    let ps = state::ps(sh.store.as_ref(), &name).await?.map(|(p, _)| p);
    let hosts = hosts(&sh).await?;
    let ip = ps.as_ref().map_or("", |p| host_ip(&hosts, &p.node));
    Ok(Json(convert::inspect(
        &name,
        proc.as_ref(),
        ps.as_ref(),
        ip,
    )))
}

/// `GET /containers/{id}/logs`: the job's output in Docker's frames (raw
/// with a TTY); `tail` without `follow` keeps the last lines.
async fn logs(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    version: Option<axum::Extension<Version>>,
    Query(q): Query<HashMap<String, String>>,
) -> DResult<Response> {
    let name = resolve(&sh, &id).await?;
    let follow = truthy(&q, "follow");
    let (want_out, want_err) = (truthy(&q, "stdout"), truthy(&q, "stderr"));
    let tty = state::proc(sh.store.as_ref(), &name)
        .await?
        .is_some_and(|p| p.job.tty);
    let framing = if tty {
        Framing::Raw
    } else {
        Framing::Multiplexed
    };
    let tail = q
        .get("tail")
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|_| !follow);
    let raw = jobs::logs(&sh, &name, follow).await?;
    // Read and translated by a task of its own; the body is its channel.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut frames = FrameReader::new(tokio_util::io::StreamReader::new(raw));
        let mut kept = Tail::default();
        let send = |f: &viking_client::frame::Frame| {
            let mut out = bytes::BytesMut::new();
            stream::translate(f, framing, &mut out);
            out.freeze()
        };
        while let Ok(Some(f)) = frames.next().await {
            let wanted = match f.kind {
                viking_client::frame::STDOUT => want_out,
                viking_client::frame::STDERR => want_err,
                _ => false,
            };
            if !wanted {
                continue;
            }
            if let Some(n) = tail {
                kept.push(f, n);
            } else if tx.send(Ok(send(&f))).await.is_err() {
                return;
            }
        }
        if let Some(n) = tail {
            for f in last_lines(kept.frames.into(), n) {
                if tx.send(Ok(send(&f))).await.is_err() {
                    return;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, stream_type(version, tty))], body).into_response())
}

/// The most a `--tail` keeps of a log while it reads it: a line longer
/// than this is cut to its end.
const TAIL_BYTES: usize = 8 << 20;

/// The frames of a log that can still hold its last lines, as it is read:
/// a frame is dropped once the frames after it hold more than `n`
/// newlines, or the kept bytes pass [`TAIL_BYTES`]. So a job that wrote
/// gigabytes costs its `--tail` no more than that.
#[derive(Default)]
struct Tail {
    frames: std::collections::VecDeque<viking_client::frame::Frame>,
    newlines: usize,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, f: viking_client::frame::Frame, n: usize) {
        self.newlines += newlines(&f.data);
        self.bytes += f.data.len();
        self.frames.push_back(f);
        while self.frames.len() > 1 {
            let front = &self.frames[0];
            let (nl, len) = (newlines(&front.data), front.data.len());
            if self.newlines - nl <= n && self.bytes - len <= TAIL_BYTES {
                break;
            }
            self.newlines -= nl;
            self.bytes -= len;
            self.frames.pop_front();
        }
    }
}

fn newlines(data: &[u8]) -> usize {
    data.iter().filter(|b| **b == b'\n').count()
}

/// The frames that hold the last `n` lines of output (a frame is kept
/// whole from where the line count starts).
fn last_lines(
    frames: Vec<viking_client::frame::Frame>,
    n: usize,
) -> Vec<viking_client::frame::Frame> {
    let mut lines = 0;
    let mut start = frames.len();
    for (i, f) in frames.iter().enumerate().rev() {
        let mut nl = f.data.iter().filter(|b| **b == b'\n').count();
        // A frame's own last line ends with its newline.
        if i == frames.len() - 1 && f.data.last() != Some(&b'\n') {
            nl += 1;
        }
        if lines + nl > n {
            // Keep only the tail of this frame.
            let mut cut = f.data.len();
            let mut need = n - lines;
            if f.data.last() == Some(&b'\n') {
                cut -= 1;
            }
            while need > 0 && cut > 0 {
                cut -= 1;
                if f.data[cut] == b'\n' {
                    need -= 1;
                }
            }
            let from = if need == 0 { cut + 1 } else { 0 };
            let mut out = vec![viking_client::frame::Frame::new(
                f.kind,
                f.data.slice(from.min(f.data.len())..),
            )];
            out.extend(frames.into_iter().skip(i + 1));
            if n == 0 {
                return vec![];
            }
            return out;
        }
        lines += nl;
        start = i;
    }
    frames.into_iter().skip(start).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use viking_client::frame::{Frame, STDOUT};

    fn text(frames: &[Frame]) -> String {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            .collect()
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let frames = vec![
            Frame::new(STDOUT, &b"a\nb\n"[..]),
            Frame::new(STDOUT, &b"c\n"[..]),
            Frame::new(STDOUT, &b"d\ne\n"[..]),
        ];
        assert_eq!(text(&last_lines(frames.clone(), 2)), "d\ne\n");
        assert_eq!(text(&last_lines(frames.clone(), 3)), "c\nd\ne\n");
        assert_eq!(text(&last_lines(frames.clone(), 4)), "b\nc\nd\ne\n");
        assert_eq!(text(&last_lines(frames.clone(), 10)), "a\nb\nc\nd\ne\n");
        assert_eq!(text(&last_lines(frames, 0)), "");
    }

    /// The tail read as the log comes gives what the whole log gives, and
    /// keeps only what it needs: a few frames, whatever the log's size.
    #[test]
    fn a_tail_kept_while_reading_is_bounded() {
        let log: Vec<Frame> = (0..10_000)
            .map(|i| match i % 3 {
                0 => Frame::new(STDOUT, format!("line {i}\n").into_bytes()),
                1 => Frame::new(STDOUT, format!("part {i} ").into_bytes()),
                _ => Frame::new(STDOUT, format!("of a line {i}\nnext {i}\n").into_bytes()),
            })
            .collect();
        for n in (0..9).chain([40]) {
            let mut t = Tail::default();
            for f in log.iter().cloned() {
                t.push(f, n);
                assert!(t.frames.len() <= n + 2, "{n}: {}", t.frames.len());
            }
            assert_eq!(
                text(&last_lines(t.frames.into(), n)),
                text(&last_lines(log.clone(), n)),
                "{n}"
            );
        }
        // One endless line: cut to the last TAIL_BYTES or so.
        let mut t = Tail::default();
        for _ in 0..40 {
            t.push(Frame::new(STDOUT, vec![b'x'; 1 << 20]), 10);
        }
        assert!(t.bytes <= TAIL_BYTES + (1 << 20), "{}", t.bytes);
    }
}
