//! The versioned HTTP API (`/v1/...`), JSON in and out. The paths are listed
//! in `viking_client::api`. Every request needs the cluster token, but the
//! two of a machine joining a mesh (`/v1/mesh/ca`, `/v1/mesh/join`, which
//! carries the join token's secret instead); every error is JSON with a
//! message and the right status.
//!
//! Architecture invariant: handlers only translate HTTP to calls into the
//! server's modules and back; nothing imports this module; the Docker API
//! is never exposed.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use viking_client::api::{Ping, ProgressLine, ATTACH_PROTOCOL};
use viking_client::routes;
use viking_client::wire::{JobIntent, JobState};
use viking_core::records::{ProcRecord, PsRecord};
use viking_core::{keys, Job};

use crate::error::ServerError;
use crate::{jobs, placement, state, status, token, Shared};

/// An error answer: the status and JSON body [`crate::status`] gives it.
impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        (status::of(&self), Json(status::body(&self))).into_response()
    }
}

type ApiResult<T> = Result<T, ServerError>;

/// The API's routes, behind the token check.
pub fn router(shared: Arc<Shared>) -> Router {
    // The Docker Engine API: every path no route of viking's own takes.
    let docker = crate::docker_api::router(shared.clone());
    Router::new()
        .route(routes::PING, get(ping))
        .route(routes::JOBS, post(run))
        .route(routes::PS, get(ps))
        .route(routes::PROC, get(proc_list))
        .route(routes::HOSTS, get(hosts))
        .route(routes::JOB, get(inspect).delete(remove))
        .route(routes::JOB_STOP, post(stop))
        .route(routes::JOB_KILL, post(kill))
        .route(routes::JOB_SCALE, post(scale))
        .route(routes::JOB_LOGS, get(logs))
        .route(routes::JOB_EXEC, post(exec))
        .route("/metrics", get(metrics))
        .route(routes::EVENTS, get(events))
        .route(routes::PUSH, post(push))
        .route(routes::SERVICES, get(services))
        .route(routes::HEALTH, get(health))
        .route(routes::RECOVER, post(recover))
        .route(routes::REBALANCE, post(rebalance))
        .route(routes::INTERNAL_CONTAINERS, get(internal_containers))
        .route(routes::INTERNAL_START, post(internal_start))
        .route(routes::INTERNAL_RESOLVE, post(internal_resolve))
        .route(routes::INTERNAL_REPLACE, post(internal_replace))
        .route(routes::INTERNAL_ATTACH, post(internal_attach))
        .route(routes::INTERNAL_PLACE, post(internal_place))
        .route(routes::INTERNAL_IMAGES, get(internal_images))
        .route(routes::CLIENT_CERTIFICATE, post(client_certificate))
        .fallback(move |req: Request| crate::docker_api::dispatch(docker.clone(), req))
        .layer(middleware::from_fn_with_state(shared.clone(), auth))
        .layer(middleware::from_fn_with_state(shared.clone(), count))
        // Without the token: the CA a joining machine checks against its
        // join token, and the join, which carries the join token's secret.
        .merge(
            Router::new()
                .route(routes::MESH_CA, get(mesh_ca))
                .route(routes::MESH_JOIN, post(mesh_join)),
        )
        .with_state(shared.clone())
        // The dashboard: its own gate (a login cookie, the token or a
        // client certificate).
        .merge(crate::ui::router(shared))
}

async fn mesh_ca(State(sh): State<Arc<Shared>>) -> ApiResult<Json<viking_client::api::MeshCa>> {
    Ok(Json(crate::admission::ca(&sh).await?))
}

async fn mesh_join(
    State(sh): State<Arc<Shared>>,
    Json(req): Json<viking_client::api::JoinRequest>,
) -> ApiResult<Json<viking_client::api::JoinResponse>> {
    Ok(Json(crate::admission::join(&sh, req).await?))
}

/// Counts every answer by route (the matched path, `docker` for the
/// Docker Engine API's), method and status.
async fn count(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |m| m.as_str())
        .to_string();
    let method = req.method().to_string();
    let res = next.run(req).await;
    sh.metrics
        .api_requests
        .get_or_create(&crate::metrics::RouteLabels {
            route,
            method,
            status: res.status().as_u16().to_string(),
        })
        .inc();
    res
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<i64>,
    job: Option<String>,
    host: Option<String>,
}

/// `GET /v1/events?since=REV`: the fleet's events as newline-delimited
/// JSON, from `since` (now when absent), forever; a blank line after every
/// [`viking_client::api::HEARTBEAT`] of silence. A `since` the store no
/// longer holds: 410, naming the oldest revision it has.
async fn events(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let from = match q.since {
        Some(r) if r < 1 => {
            return Err(ServerError::Invalid(format!(
                "since: {r}: revisions start at 1"
            )))
        }
        r => r,
    };
    let rx = crate::events::follow(&sh, from, q.job, q.host).await?;
    ndjson(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `GET /metrics`: Prometheus's text format.
async fn metrics(State(sh): State<Arc<Shared>>) -> ApiResult<Response> {
    let text = sh.metrics.scrape(&sh).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `--metrics-listen`: `/metrics` alone, without the token, until
/// shutdown.
pub async fn serve_metrics(sh: Arc<Shared>, listener: tokio::net::TcpListener) {
    let mut shutdown = sh.shutdown.clone();
    let app = Router::new().route("/metrics", get(metrics)).with_state(sh);
    let stopped = async move { crate::stopped(&mut shutdown).await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::warn!("the metrics listener: {e}");
    }
}

async fn auth(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    // A client certificate from the cluster's CA, verified in the handshake.
    if req
        .extensions()
        .get::<crate::listen::ClientCertified>()
        .is_some()
    {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if token::matches(&sh.token, t) => next.run(req).await,
        _ => {
            let message = "missing or wrong token: pass --token or set VIKING_TOKEN (the server keeps it in <data-dir>/token)";
            // `message` too, for Docker's clients (the Docker Engine API).
            (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({
                    "error": message,
                    "status": StatusCode::UNAUTHORIZED.as_u16(),
                    "message": message,
                })),
            )
                .into_response()
        }
    }
}

async fn ping(State(sh): State<Arc<Shared>>) -> Json<Ping> {
    Json(Ping {
        name: sh.config.name.clone(),
        version: crate::VERSION.to_string(),
        store: sh.store.backend().to_string(),
        key: sh.config.key.clone(),
    })
}

#[derive(Deserialize, Default)]
struct RunQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    progress: bool,
    /// Answer once the job is placed and claimed (`202 Accepted`); its
    /// start follows.
    #[serde(default)]
    no_wait: bool,
}

/// The largest request body: a job document of 256 KiB plus some slack.
const BODY_LIMIT: usize = viking_core::job::MAX_DOCUMENT_BYTES + 4096;

async fn run(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<RunQuery>,
    mut req: Request,
) -> ApiResult<Response> {
    // A daemonized job's claim carries the cluster id in its transaction;
    // other runs read it first.
    crate::standing::require_known_member(&sh)?;
    let wants_attach = is_attach(req.headers());
    let on_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| {
            ServerError::Invalid(format!(
                "invalid job: (document): larger than the limit of {} bytes (256 KiB)",
                viking_core::job::MAX_DOCUMENT_BYTES
            ))
        })?;
    let job = Job::parse(&body, placement::generate_name)
        .map_err(|e| ServerError::Invalid(e.to_string()))?;

    if q.dry_run {
        return Ok(Json(placement::dry_run(&sh, job).await?).into_response());
    }
    if let Some(instances) = job.instances() {
        if q.progress {
            return progress_response(sh, move |sh, progress| {
                Box::pin(
                    async move { jobs::run_replicas(sh, job, instances, true, progress).await },
                )
            });
        }
        let r = jobs::run_replicas(&sh, job, instances, !q.no_wait, &|_| {}).await?;
        let status = match q.no_wait {
            true => StatusCode::ACCEPTED,
            false => StatusCode::CREATED,
        };
        return Ok((status, Json(r)).into_response());
    }
    if !job.daemonize {
        crate::standing::require_member(&sh).await?;
        let Some(on_upgrade) = on_upgrade.filter(|_| wants_attach) else {
            return Err(ServerError::Invalid(format!(
                "job {:?} is not daemonized, so it needs an attached client (Upgrade: {ATTACH_PROTOCOL}); run it with `viking run`, or give it ports or -d to daemonize it",
                job.name
            )));
        };
        return crate::attach::start(sh, job, on_upgrade).await;
    }
    if q.no_wait {
        let claim = jobs::claim_daemon(&sh, &job).await?;
        let r = jobs::accepted(&sh, &job, &claim);
        tokio::spawn(async move { jobs::start_accepted(&sh, job, claim).await });
        return Ok((StatusCode::ACCEPTED, Json(r)).into_response());
    }
    if !q.progress {
        let r = jobs::run_daemon(&sh, job, &|_| {}).await?;
        return Ok((StatusCode::CREATED, Json(r)).into_response());
    }
    // Progress: the name is claimed before answering, so a conflict is
    // still a 409.
    let claim = jobs::claim_daemon(&sh, &job).await?;
    progress_response(sh, move |sh, progress| {
        Box::pin(async move { jobs::run_claimed(sh, job, claim, progress).await })
    })
}

/// Newline-delimited JSON progress of a daemonized job, ending with the
/// result or the error.
fn progress_response<F>(sh: Arc<Shared>, work: F) -> ApiResult<Response>
where
    F: for<'a> FnOnce(
            &'a Shared,
            &'a (dyn Fn(String) + Sync),
        )
            -> futures::future::BoxFuture<'a, ApiResult<viking_client::api::RunResponse>>
        + Send
        + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ProgressLine>();
    tokio::spawn(async move {
        let tx2 = tx.clone();
        let progress = move |line: String| {
            let _ = tx2.send(ProgressLine::Progress(line));
        };
        let last = match work(&sh, &progress).await {
            Ok(r) => ProgressLine::Done(Box::new(r)),
            Err(e) => ProgressLine::Error(status::body(&e)),
        };
        let _ = tx.send(last);
    });
    ndjson(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

/// A streamed answer: one JSON value per line, as the channel yields them,
/// and a blank line after every [`HEARTBEAT`] of silence, so the client
/// can tell a slow step (a pull, a settle) from a stopped server.
fn ndjson<T: serde::Serialize + Send + 'static>(
    rx: impl futures::Stream<Item = T> + Send + Unpin + 'static,
) -> ApiResult<Response> {
    use futures::StreamExt;
    use viking_client::api::HEARTBEAT;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let line = match tokio::time::timeout(HEARTBEAT, rx.next()).await {
            Ok(Some(line)) => {
                let mut v = match serde_json::to_vec(&line) {
                    Ok(v) => v,
                    Err(e) => return Some((Err(std::io::Error::other(e)), rx)),
                };
                v.push(b'\n');
                v
            }
            Ok(None) => return None,
            Err(_) => b"\n".to_vec(),
        };
        Some((Ok::<_, std::io::Error>(line), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(|e| ServerError::Internal(e.to_string()))
}

async fn read_job(req: Request) -> ApiResult<Job> {
    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| {
            ServerError::Invalid("invalid job: (document): larger than 1 MiB".to_string())
        })?;
    Job::parse(&body, String::new).map_err(|e| ServerError::Invalid(e.to_string()))
}

#[derive(Deserialize)]
struct StartQuery {
    /// The revision of the `starting` record that asks.
    claim_rev: Option<i64>,
}

/// Another server placed a job here and wrote it to viking-proc: start it,
/// while its claim holds.
async fn internal_start(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<StartQuery>,
    req: Request,
) -> ApiResult<Response> {
    // The start reads the cluster id with the job's records.
    crate::standing::require_known_member(&sh)?;
    let job = read_job(req).await?;
    progress_response(sh, move |sh, progress| {
        Box::pin(async move { jobs::start_placed(sh, &job, q.claim_rev, progress).await })
    })
}

/// Another server asks this one, as the leader, to place a daemonized
/// job and claim it for that server.
async fn internal_place(
    State(sh): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<viking_client::api::PlaceResponse>> {
    // The claim carries the cluster id in its transaction.
    crate::standing::require_known_member(&sh)?;
    let mut req: viking_client::api::PlaceRequest = parse(&body)?;
    // The same checks as a job from a client.
    let doc = serde_json::to_vec(&req.job).map_err(|e| ServerError::Internal(e.to_string()))?;
    req.job = Job::parse(&doc, String::new).map_err(|e| ServerError::Invalid(e.to_string()))?;
    Ok(Json(crate::placer::serve(&sh, req).await?))
}

/// A client certificate for an operator (`viking context export --docker`).
async fn client_certificate(
    State(sh): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<viking_client::api::ClientCertResponse>> {
    let req: viking_client::api::ClientCertRequest = parse(&body)?;
    Ok(Json(crate::admission::client_certificate(&sh, req).await?))
}

/// The images this host's engine has (`docker images` at any server).
async fn internal_images(
    State(sh): State<Arc<Shared>>,
) -> ApiResult<Json<Vec<viking_client::api::ImageRow>>> {
    Ok(Json(crate::docker_api::images_here(&sh).await?))
}

/// A command in a job's running container, attached (`viking exec`).
async fn exec(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    let on_upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .filter(|_| is_attach(req.headers()))
        .ok_or_else(|| ServerError::Invalid(format!("exec needs Upgrade: {ATTACH_PROTOCOL}")))?;
    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| ServerError::Invalid("exec: the request is too large".to_string()))?;
    let exec_req: viking_client::api::ExecRequest = parse(&body)?;
    crate::exec::start(sh, &name, exec_req, on_upgrade).await
}

#[derive(Deserialize)]
struct AttachQuery {
    claim_rev: i64,
}

/// Another server claimed an interactive job for this host: run it here,
/// attached through that server.
async fn internal_attach(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<AttachQuery>,
    mut req: Request,
) -> ApiResult<Response> {
    crate::standing::require_member(&sh).await?;
    let on_upgrade = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .filter(|_| is_attach(req.headers()))
        .ok_or_else(|| ServerError::Invalid(format!("needs Upgrade: {ATTACH_PROTOCOL}")))?;
    let job = read_job(req).await?;
    crate::attach::serve_claimed(sh, job, q.claim_rev, on_upgrade).await
}

/// A code push: a stream of [`viking_client::api::PushLine`]s ending in the
/// summary.
async fn push(State(sh): State<Arc<Shared>>, body: axum::body::Bytes) -> ApiResult<Response> {
    crate::standing::require_member(&sh).await?;
    use viking_client::api::PushLine;
    let req: viking_client::api::PushRequest = parse(&body)?;
    crate::push::check(&req)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PushLine>();
    tokio::spawn(async move {
        let tx2 = tx.clone();
        let events = move |e| {
            let _ = tx2.send(PushLine::Event(e));
        };
        let last = match crate::push::push(&sh, req, &events).await {
            Ok(s) => PushLine::Done(s),
            Err(e) => PushLine::Error(status::body(&e)),
        };
        let _ = tx.send(last);
    });
    ndjson(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

/// A JSON body, or a 400 that says what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ServerError::Invalid(format!("invalid request body: {e}")))
}

async fn internal_resolve(
    State(sh): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<viking_client::api::ResolveResponse>> {
    let req = parse(&body)?;
    Ok(Json(crate::push::resolve_here(&sh, &req).await?))
}

async fn internal_replace(
    State(sh): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<JobState>> {
    crate::standing::require_member(&sh).await?;
    let req = parse(&body)?;
    Ok(Json(JobState::from(
        &crate::push::replace_here(&sh, &req).await?,
    )))
}

fn is_attach(h: &HeaderMap) -> bool {
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(ATTACH_PROTOCOL));
    let connection = h
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    upgrade && connection
}

#[derive(Deserialize, Default)]
struct PsQuery {
    #[serde(default)]
    all: bool,
}

async fn ps(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<PsQuery>,
) -> ApiResult<Json<Vec<JobState>>> {
    let (mut v, bad_ps) = state::list_all::<PsRecord>(sh.store.as_ref(), keys::PS).await?;
    let (_, bad_proc) = state::list_all::<ProcRecord>(sh.store.as_ref(), keys::PROC).await?;
    if !q.all {
        v.retain(|p| p.is_running());
    }
    let mut rows: Vec<JobState> = v.iter().map(JobState::from).collect();
    // A record that cannot be read is shown (always, with or without -a),
    // never silently left out.
    rows.extend(crate::state::unreadable_rows(&bad_ps, &bad_proc));
    rows.sort_by(|a, b| a.job.cmp(&b.job));
    Ok(Json(rows))
}

async fn services(
    State(sh): State<Arc<Shared>>,
) -> ApiResult<Json<Vec<viking_client::api::ServicePort>>> {
    Ok(Json(crate::services::list(&sh).await?))
}

async fn proc_list(State(sh): State<Arc<Shared>>) -> ApiResult<Json<Vec<JobIntent>>> {
    let procs: Vec<ProcRecord> = state::list(sh.store.as_ref(), keys::PROC).await?;
    Ok(Json(procs.iter().map(JobIntent::from).collect()))
}

async fn health(State(sh): State<Arc<Shared>>) -> ApiResult<Json<viking_client::api::Health>> {
    let standing = crate::standing::check(&sh).await?;
    Ok(Json(viking_client::api::Health {
        name: sh.config.name.clone(),
        cluster: sh.cluster_id(),
        held: standing.held(),
    }))
}

#[derive(Deserialize, Default)]
struct RebalanceQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn rebalance(
    State(sh): State<Arc<Shared>>,
    Query(q): Query<RebalanceQuery>,
) -> ApiResult<Json<Vec<viking_core::rebalance::Move>>> {
    crate::standing::require_member(&sh).await?;
    Ok(Json(
        crate::reconciler::rebalance_now(&sh, q.dry_run).await?,
    ))
}

async fn recover(
    State(sh): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> ApiResult<Json<viking_client::api::RecoverSummary>> {
    let req: viking_client::api::RecoverRequest = if body.is_empty() {
        Default::default()
    } else {
        parse(&body)?
    };
    Ok(Json(crate::recover::recover(&sh, &req).await?))
}

async fn internal_containers(
    State(sh): State<Arc<Shared>>,
) -> ApiResult<Json<Vec<viking_client::api::HostContainer>>> {
    Ok(Json(crate::recover::host_containers(&sh).await?))
}

async fn hosts(
    State(sh): State<Arc<Shared>>,
) -> ApiResult<Json<Vec<viking_client::api::HostView>>> {
    Ok(Json(crate::floki::list(&sh).await?))
}

async fn inspect(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> ApiResult<Json<viking_client::api::InspectResponse>> {
    Ok(Json(jobs::inspect(&sh, &name).await?))
}

#[derive(Deserialize, Default)]
struct StopQuery {
    t: Option<i64>,
}

async fn stop(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<Json<viking_client::api::InspectResponse>> {
    crate::standing::require_member(&sh).await?;
    let t = q.t.unwrap_or(10);
    // A service's name stops every instance; the first one's answer.
    let mut first = None;
    for i in jobs::jobs_named(&sh, &name).await? {
        let r = jobs::stop(&sh, &i, t).await?;
        first.get_or_insert(r);
    }
    first
        .map(Json)
        .ok_or_else(|| crate::state::no_such_job(&name))
}

#[derive(Deserialize, Default)]
struct KillQuery {
    signal: Option<String>,
}

/// `viking kill`: a signal to a job's process (a service's name: to each
/// of its instances); `KILL`, the default, stops it.
async fn kill(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<KillQuery>,
) -> ApiResult<Json<viking_client::api::InspectResponse>> {
    crate::standing::require_member(&sh).await?;
    let signal = viking_core::signal::asked(q.signal.as_deref())
        .map_err(|e| ServerError::Invalid(format!("signal: {e}")))?;
    let mut first = None;
    for i in jobs::jobs_named(&sh, &name).await? {
        let r = jobs::kill(&sh, &i, signal).await?;
        first.get_or_insert(r);
    }
    first
        .map(Json)
        .ok_or_else(|| crate::state::no_such_job(&name))
}

#[derive(Deserialize)]
struct ScaleQuery {
    replicas: u32,
}

async fn scale(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<ScaleQuery>,
) -> ApiResult<Json<viking_client::api::RunResponse>> {
    crate::standing::require_member(&sh).await?;
    Ok(Json(jobs::scale(&sh, &name, q.replicas).await?))
}

#[derive(Deserialize, Default)]
struct RmQuery {
    #[serde(default)]
    force: bool,
    /// Delete the job's data directory and history too.
    #[serde(default)]
    volumes: bool,
}

async fn remove(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<RmQuery>,
) -> ApiResult<StatusCode> {
    crate::standing::require_member(&sh).await?;
    // A service's name removes every instance.
    for i in jobs::jobs_named(&sh, &name).await? {
        jobs::remove(&sh, &i, q.force, q.volumes).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

async fn logs(
    State(sh): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let stream = jobs::logs(&sh, &name, q.follow).await?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/vnd.viking.stream")
        .body(Body::from_stream(stream))
        .map_err(|e| ServerError::Internal(e.to_string()))
}
