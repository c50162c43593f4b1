//! [`Client`]: talks to a viking server's HTTP API, one connection per
//! request (the CLI makes a few calls; servers forward rarely), and opens
//! attached streams through an HTTP upgrade.
//!
//! No call waits forever on a peer that accepts and never answers (a
//! stopped server, a silent partition): connecting has [`CONNECT_TIMEOUT`];
//! a control call (request and whole answer) has a deadline
//! ([`CALL_DEADLINE`] by default, [`Client::with_deadline`]; calls whose
//! work is long by nature, a stop's grace period, a pull, a push's settle
//! time, get that much more); a streamed answer must begin within the
//! deadline, and a newline-delimited one (the progress of a start, a push)
//! then fails when no byte arrives for [`STREAM_IDLE`]
//! ([`Client::with_stream_idle`]; servers send a blank heartbeat line
//! every few seconds). Attached sessions and `logs -f` may be silent for
//! as long as their job is, so after their answer begins only TCP
//! keepalive (on every connection) notices a peer that is gone.

use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::wire::{JobIntent, JobState};
use serde::Serialize;

use crate::api::{
    DryRunResponse, ErrorBody, ErrorReason, Health, HostContainer, HostView, InspectResponse,
    JoinRequest, JoinResponse, MeshCa, Ping, PlaceRequest, PlaceResponse, ProgressLine,
    PushRequest, RecoverRequest, RecoverSummary, ReplaceRequest, ResolveRequest, ResolveResponse,
    RunResponse, ServicePort, ATTACH_PROTOCOL,
};
use crate::body::NdjsonLines;
use crate::routes;

/// How long connecting to a server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a control call may take by default, from connecting to the
/// last byte of its answer.
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// How long a newline-delimited answer (progress, push) may go without a
/// byte by default; servers send a heartbeat line every
/// [`crate::api::HEARTBEAT`].
pub const STREAM_IDLE: Duration = Duration::from_secs(30);

/// How long a pull may take, on top of the deadline, in a call that pulls
/// (a push's resolve).
pub const PULL_ALLOWANCE: Duration = Duration::from_secs(600);

/// How long the answer to `viking run -d` may take to begin: the job is
/// placed and its name claimed first, retried while other placements onto
/// the same host come first.
pub const CLAIM_ALLOWANCE: Duration = Duration::from_secs(30);

/// How long a push's replacement may take besides its settle time (the old
/// container's stop, the new one's health checks), on top of the deadline.
pub const REPLACE_ALLOWANCE: Duration = Duration::from_secs(180);

/// TCP keepalive on every connection: the first probe after this much
/// silence, then [`KEEPALIVE_RETRIES`] more this far apart, so a peer that
/// is gone is noticed within about half a minute even on a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 4;

/// The bidirectional byte stream of an attached job.
pub type AttachedIo = TokioIo<hyper::upgrade::Upgraded>;

/// Errors talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {0:?}: use http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot reach the viking server at {addr}: {reason} (is `viking server` running? set --server or VIKING_SERVER)")]
    Connect { addr: String, reason: String },
    #[error("{name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        /// The server's machine-readable cause, if it gave one.
        reason: Option<ErrorReason>,
    },
    /// The server accepted the connection but did not answer in time (it
    /// may be stopped or cut off): like an unreachable server, the work
    /// may go elsewhere.
    #[error("the viking server at {addr} did not answer {what} within {after:?}")]
    Timeout {
        addr: String,
        /// What was awaited: "the request", "a byte of its answer".
        what: &'static str,
        after: Duration,
    },
    #[error("talking to the viking server: {0}")]
    Http(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// HTTP/1 over an established stream (plain or TLS), with upgrades.
async fn handshake<S>(
    io: S,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(async move {
        // Ends when the response (or upgraded stream) is done.
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    addr: String,
    token: Option<String>,
    /// For `https://` servers: whom to trust (the cluster's CA only) and the
    /// certificate to show. The token is sent only after the server proved
    /// a certificate from that CA for its address.
    tls: Option<Arc<rustls::ClientConfig>>,
    deadline: Duration,
    stream_idle: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Client {
    /// `server` is `http://HOST:PORT` (or `HOST:PORT`); an `https://` server
    /// needs [`Client::with_tls`].
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::with_tls(server, token, None)
    }

    /// A client of `server` (`https://HOST:PORT` with `tls`, or plain
    /// `http://HOST:PORT` without).
    pub fn with_tls(
        server: &str,
        token: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ClientError> {
        let https = server.starts_with("https://");
        let rest = server
            .strip_prefix("https://")
            .or_else(|| server.strip_prefix("http://"))
            .unwrap_or(server);
        let addr = rest.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        if https && tls.is_none() {
            return Err(ClientError::BadUrl(format!(
                "{server}: an https server needs the cluster's CA (--ca FILE or VIKING_CA)"
            )));
        }
        Ok(Self {
            addr: addr.to_string(),
            token,
            tls: if https { tls } else { None },
            deadline: CALL_DEADLINE,
            stream_idle: STREAM_IDLE,
        })
    }

    /// The deadline of a control call (and of the start of a streamed
    /// answer).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long a newline-delimited answer may go without a byte.
    pub fn with_stream_idle(mut self, idle: Duration) -> Self {
        self.stream_idle = idle;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether requests go over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The host part of the address, as the server's certificate names it.
    fn server_name(&self) -> Result<rustls::pki_types::ServerName<'static>, ClientError> {
        let host = match self.addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => self.addr.as_str(),
        };
        rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| ClientError::BadUrl(self.addr.clone()))
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn timeout(&self, what: &'static str, after: Duration) -> ClientError {
        ClientError::Timeout {
            addr: self.addr.clone(),
            what,
            after,
        }
    }

    /// `fut` within `after`, or [`ClientError::Timeout`].
    async fn within<T>(
        &self,
        after: Duration,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(after, fut)
            .await
            .map_err(|_| self.timeout(what, after))?
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
        // A host cut off the network drops SYNs: give up after a few
        // seconds rather than the kernel's minutes.
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await
        {
            Ok(r) => r.map_err(|e| ClientError::Connect {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?,
            Err(_) => {
                return Err(ClientError::Connect {
                    addr: self.addr.clone(),
                    reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE)
            .with_interval(KEEPALIVE)
            .with_retries(KEEPALIVE_RETRIES);
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
            return Err(ClientError::Connect {
                addr: self.addr.clone(),
                reason: format!("enabling TCP keepalive: {e}"),
            });
        }
        let Some(tls) = &self.tls else {
            return handshake(tcp).await;
        };
        let name = self.server_name()?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ClientError::Connect {
                    addr: self.addr.clone(),
                    reason: format!("TLS: {e} (is its certificate from the cluster's CA?)"),
                })
            }
            Err(_) => {
                return Err(ClientError::Connect {
                    addr: self.addr.clone(),
                    reason: format!("no TLS handshake within {CONNECT_TIMEOUT:?}"),
                })
            }
        };
        handshake(stream).await
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr);
        if let Some(t) = &self.token {
            b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            b = b.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        b.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// Send a request; any status is returned as is, once its head
    /// arrived within the deadline (the body is the caller's to read).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        self.within(
            self.deadline,
            "the request",
            self.send_now(method, path, body),
        )
        .await
    }

    async fn send_now(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let req = self.request(method, path, body)?;
        let mut sender = self.connect().await?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// Send a request and read its whole answer within `after`.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        after: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.within(after, "the request", async {
            let resp = self.send_now(method, path, body).await?;
            let status = resp.status();
            Ok((status, read_body(resp).await?))
        })
        .await
    }

    /// Send a request and read a JSON answer within the deadline; an error
    /// status becomes [`ClientError::Api`] with the server's message.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        self.json_within(method, path, body, self.deadline).await
    }

    /// [`Client::json`] for a call whose work takes up to `after`.
    async fn json_within<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        after: Duration,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.exchange(method, path, body, after).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Http(format!("unexpected answer: {e}")))
    }

    /// Send a request whose answer has no body of interest, within the
    /// deadline; an error status becomes [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.call_within(method, path, body, self.deadline).await
    }

    async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        after: Duration,
    ) -> Result<(), ClientError> {
        let (status, bytes) = self.exchange(method, path, body, after).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(())
    }

    /// Send a request whose answer is a stream; an error status becomes
    /// [`ClientError::Api`].
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Incoming, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = self
                .within(self.deadline, "its error", read_body(resp))
                .await?;
            return Err(api_error(status, &bytes));
        }
        Ok(resp.into_body())
    }

    /// A newline-delimited answer, failing when no byte arrives for the
    /// stream's idle time.
    async fn lines(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<NdjsonLines, ClientError> {
        let answer = self.stream(method, path, body).await?;
        Ok(NdjsonLines::new(answer).with_idle(&self.addr, self.stream_idle))
    }

    /// POST a job to a `progress=true` path and follow its progress lines
    /// until the result; `on_progress` sees each line.
    pub async fn run_with_progress(
        &self,
        path: &str,
        doc: Vec<u8>,
        on_progress: &(dyn Fn(String) + Sync),
    ) -> Result<RunResponse, ClientError> {
        let mut lines = self.lines(Method::POST, path, Some(doc)).await?;
        while let Some((line, _)) = lines.next::<ProgressLine>().await? {
            match line {
                ProgressLine::Progress(p) => on_progress(p),
                ProgressLine::Done(r) => return Ok(*r),
                ProgressLine::Error(ErrorBody {
                    error,
                    status,
                    reason,
                }) => {
                    return Err(ClientError::Api {
                        status,
                        message: error,
                        reason,
                    })
                }
            }
        }
        Err(ClientError::Http(
            "the server closed the connection before the job started".to_string(),
        ))
    }

    /// Open an attached stream (`101 Switching Protocols`).
    pub async fn attach(&self, path: &str, body: Vec<u8>) -> Result<AttachedIo, ClientError> {
        let mut req = self.request(Method::POST, path, Some(body))?;
        let h = req.headers_mut();
        h.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("Upgrade"),
        );
        h.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static(ATTACH_PROTOCOL),
        );
        // The session may be silent for as long as its job is: only its
        // opening has the deadline (and the connection TCP keepalive).
        self.within(self.deadline, "the request to attach", async {
            let mut sender = self.connect().await?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?;
            let status = resp.status();
            if status != StatusCode::SWITCHING_PROTOCOLS {
                let bytes = read_body(resp).await?;
                return Err(api_error(status, &bytes));
            }
            let upgraded = hyper::upgrade::on(resp)
                .await
                .map_err(|e| ClientError::Http(format!("upgrading the connection: {e}")))?;
            Ok(TokioIo::new(upgraded))
        })
        .await
    }
}

/// The typed calls, one per route (paths in [`routes`]).
impl Client {
    /// `GET /v1/ping`.
    pub async fn ping(&self) -> Result<Ping, ClientError> {
        self.json(Method::GET, routes::PING, None).await
    }

    /// viking-ps: running jobs, or every job with `all`.
    pub async fn ps(&self, all: bool) -> Result<Vec<JobState>, ClientError> {
        self.json(Method::GET, &routes::ps(all), None).await
    }

    /// viking-proc: the daemonized jobs.
    pub async fn proc(&self) -> Result<Vec<JobIntent>, ClientError> {
        self.json(Method::GET, routes::PROC, None).await
    }

    /// The servers of the fleet.
    pub async fn hosts(&self) -> Result<Vec<HostView>, ClientError> {
        self.json(Method::GET, routes::HOSTS, None).await
    }

    /// The services: ambassador ports and endpoints.
    pub async fn services(&self) -> Result<Vec<ServicePort>, ClientError> {
        self.json(Method::GET, routes::SERVICES, None).await
    }

    /// Proc, ps and history of a job.
    pub async fn inspect(&self, name: &str) -> Result<InspectResponse, ClientError> {
        self.json(Method::GET, &routes::job(job_name(name)?), None)
            .await
    }

    /// Stop a job (killed after `timeout` seconds) and take it out of
    /// viking-proc; what is known of it afterwards.
    pub async fn stop(&self, name: &str, timeout: i64) -> Result<InspectResponse, ClientError> {
        // The grace period, then a forward to the job's host, which has
        // its own deadline.
        let after = Duration::from_secs(timeout.max(0) as u64) + 2 * self.deadline;
        let path = routes::stop(job_name(name)?, timeout);
        self.json_within(Method::POST, &path, None, after).await
    }

    /// Send `signal` to a job's process where it runs; `KILL` stops the
    /// job for good (as `stop` with no grace period does).
    pub async fn kill(
        &self,
        name: &str,
        signal: &viking_core::signal::Signal,
    ) -> Result<InspectResponse, ClientError> {
        // A KILL is a stop: the forward to the job's host has its own
        // deadline.
        let path = routes::kill(job_name(name)?, signal);
        self.json_within(Method::POST, &path, None, 2 * self.deadline)
            .await
    }

    /// Scale a job run with replicas to `replicas` instances; the answer
    /// lists them.
    pub async fn scale(&self, name: &str, replicas: u32) -> Result<RunResponse, ClientError> {
        let path = routes::scale(job_name(name)?, replicas);
        self.clone()
            .with_deadline(self.deadline.max(CLAIM_ALLOWANCE))
            .json(Method::POST, &path, None)
            .await
    }

    /// Remove a job and its record (`force`: a running one too).
    pub async fn rm(&self, name: &str, force: bool) -> Result<(), ClientError> {
        self.rm_with(name, force, false).await
    }

    /// Remove a job; with `volumes`, its data directory (on the host it
    /// last ran on) and its history too.
    pub async fn rm_with(&self, name: &str, force: bool, volumes: bool) -> Result<(), ClientError> {
        let path = routes::rm_with(job_name(name)?, force, volumes);
        // Forwarded to the job's host, and with `volumes` maybe on to the
        // host of its data: each hop has its own deadline.
        self.call_within(Method::DELETE, &path, None, 3 * self.deadline)
            .await
    }

    /// A job's output: a body of [`crate::frame`]s (read them with
    /// [`crate::frame::body_frames`]).
    pub async fn logs(&self, name: &str, follow: bool) -> Result<Incoming, ClientError> {
        self.stream(Method::GET, &routes::logs(job_name(name)?, follow), None)
            .await
    }

    /// Where a job document would run, and why other hosts would not take it.
    pub async fn dry_run(&self, doc: Vec<u8>) -> Result<DryRunResponse, ClientError> {
        self.json(Method::POST, &routes::dry_run(), Some(doc)).await
    }

    /// Run a daemonized job; `on_progress` sees each progress line.
    pub async fn run(
        &self,
        doc: Vec<u8>,
        on_progress: &(dyn Fn(String) + Sync),
    ) -> Result<RunResponse, ClientError> {
        // The server places and claims the job before it answers (a name
        // taken is still a 409), and placements racing for one host are
        // serialised and decided again: under a burst that takes longer
        // than a control call.
        self.clone()
            .with_deadline(self.deadline.max(CLAIM_ALLOWANCE))
            .run_with_progress(&routes::run_with_progress(), doc, on_progress)
            .await
    }

    /// Run a daemonized job without waiting for it to start: the answer
    /// (`202 Accepted`) comes once it is placed and claimed, with its
    /// `starting` record; `viking ps` shows how its start went.
    pub async fn run_no_wait(&self, doc: Vec<u8>) -> Result<RunResponse, ClientError> {
        self.clone()
            .with_deadline(self.deadline.max(CLAIM_ALLOWANCE))
            .json(Method::POST, &routes::run_no_wait(), Some(doc))
            .await
    }

    /// Run an interactive job, attached.
    pub async fn run_attached(&self, doc: Vec<u8>) -> Result<AttachedIo, ClientError> {
        self.attach(routes::JOBS, doc).await
    }

    /// The fleet's events from `since` ([`crate::api::FleetEvent`] lines;
    /// blank heartbeat lines keep an idle stream open).
    pub async fn events(
        &self,
        since: Option<i64>,
        job: Option<&str>,
        host: Option<&str>,
    ) -> Result<NdjsonLines, ClientError> {
        if let Some(j) = job {
            job_name(j)?;
        }
        if let Some(h) = host {
            job_name(h)?;
        }
        self.lines(Method::GET, &routes::events(since, job, host), None)
            .await
    }

    /// A client certificate for `req`'s key, signed by the cluster's CA.
    pub async fn client_certificate(
        &self,
        req: &crate::api::ClientCertRequest,
    ) -> Result<crate::api::ClientCertResponse, ClientError> {
        self.json(
            Method::POST,
            routes::CLIENT_CERTIFICATE,
            Some(to_json(req)?),
        )
        .await
    }

    /// Between servers: the images the server's host has.
    pub async fn images(&self) -> Result<Vec<crate::api::ImageRow>, ClientError> {
        self.json(Method::GET, routes::INTERNAL_IMAGES, None).await
    }

    /// Run a command in a job's running container, attached: the same
    /// frames as [`Client::run_attached`].
    pub async fn exec(
        &self,
        name: &str,
        req: &crate::api::ExecRequest,
    ) -> Result<AttachedIo, ClientError> {
        self.attach(&routes::exec(job_name(name)?), to_json(req)?)
            .await
    }

    /// Whether the server acts on its containers, or holds and why.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(Method::GET, routes::HEALTH, None).await
    }

    /// Rebuild the store's records from the fleet's containers.
    /// The moves that even out the hosts' loads: made now, or only listed
    /// (`dry_run`).
    pub async fn rebalance(
        &self,
        dry_run: bool,
    ) -> Result<Vec<viking_core::rebalance::Move>, ClientError> {
        let path = format!("{}?dry_run={dry_run}", routes::REBALANCE);
        self.clone()
            .with_deadline(self.deadline.max(CLAIM_ALLOWANCE))
            .json(Method::POST, &path, None)
            .await
    }

    pub async fn recover(&self, req: &RecoverRequest) -> Result<RecoverSummary, ClientError> {
        // It asks every live host for its containers, each within the
        // deadline.
        let after = 6 * self.deadline;
        self.json_within(Method::POST, routes::RECOVER, Some(to_json(req)?), after)
            .await
    }

    /// The cluster's CA certificate (asked without the token).
    pub async fn mesh_ca(&self) -> Result<MeshCa, ClientError> {
        self.json(Method::GET, routes::MESH_CA, None).await
    }

    /// Ask to join the mesh. Adding an etcd member may wait for etcd (up
    /// to half a minute while its leader settles).
    pub async fn mesh_join(&self, req: &JoinRequest) -> Result<JoinResponse, ClientError> {
        let within = self.deadline.max(Duration::from_secs(45));
        self.json_within(Method::POST, routes::MESH_JOIN, Some(to_json(req)?), within)
            .await
    }

    /// Between servers: that host's containers, with their jobs.
    pub async fn host_containers(&self) -> Result<Vec<HostContainer>, ClientError> {
        self.json(Method::GET, routes::INTERNAL_CONTAINERS, None)
            .await
    }

    /// A code push: its answer, line by line ([`PushLine`]s).
    pub async fn push(&self, req: &PushRequest) -> Result<NdjsonLines, ClientError> {
        let body = to_json(req)?;
        self.lines(Method::POST, routes::PUSH, Some(body)).await
    }

    /// Between servers: start a job this server placed on that one (the
    /// job document, as stored in viking-proc), claimed by the `starting`
    /// record at revision `claim_rev` (that server starts it only while the
    /// claim holds).
    pub async fn start_placed(
        &self,
        doc: Vec<u8>,
        claim_rev: Option<i64>,
        on_progress: &(dyn Fn(String) + Sync),
    ) -> Result<RunResponse, ClientError> {
        self.run_with_progress(&routes::internal_start(claim_rev), doc, on_progress)
            .await
    }

    /// Between servers: run an interactive job claimed at `claim_rev` on
    /// that server, attached through this one.
    pub async fn attach_claimed(
        &self,
        claim_rev: i64,
        doc: Vec<u8>,
    ) -> Result<AttachedIo, ClientError> {
        self.attach(&routes::internal_attach(claim_rev), doc).await
    }

    /// Between servers, to the leader: place a daemonized job and claim it
    /// for the asking server.
    pub async fn place(&self, req: &PlaceRequest) -> Result<PlaceResponse, ClientError> {
        self.json(Method::POST, routes::INTERNAL_PLACE, Some(to_json(req)?))
            .await
    }

    /// Between servers: the image id a reference names on that host.
    pub async fn resolve(&self, req: &ResolveRequest) -> Result<ResolveResponse, ClientError> {
        let after = if req.pull {
            self.deadline + PULL_ALLOWANCE
        } else {
            self.deadline
        };
        self.json_within(
            Method::POST,
            routes::INTERNAL_RESOLVE,
            Some(to_json(req)?),
            after,
        )
        .await
    }

    /// Between servers: restart one job of that host on its tag's new image.
    pub async fn replace(&self, req: &ReplaceRequest) -> Result<JobState, ClientError> {
        // Its new container must run for the settle time (and pass its
        // health checks), after a stop of the old one.
        let after = self.deadline + Duration::from_millis(req.settle_ms) + REPLACE_ALLOWANCE;
        self.json_within(
            Method::POST,
            routes::INTERNAL_REPLACE,
            Some(to_json(req)?),
            after,
        )
        .await
    }
}

/// A job name that is safe in a path (every name viking accepts is).
fn job_name(name: &str) -> Result<&str, ClientError> {
    viking_core::job::validate_name(name).map_err(|e| ClientError::BadName {
        name: name.to_string(),
        reason: e.message,
    })?;
    Ok(name)
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(v).map_err(|e| ClientError::Http(format!("encoding the request: {e}")))
}

async fn read_body(resp: Response<Incoming>) -> Result<Bytes, ClientError> {
    resp.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ClientError::Http(e.to_string()))
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let (message, reason) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => (b.error, b.reason),
        Err(_) => (
            format!(
                "server answered {status}: {}",
                String::from_utf8_lossy(bytes)
            ),
            None,
        ),
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Client::new("http://127.0.0.1:8791", None).unwrap().addr(),
            "127.0.0.1:8791"
        );
        assert_eq!(
            Client::new("10.0.0.1:1/", None).unwrap().addr(),
            "10.0.0.1:1"
        );
        assert!(Client::new("https://x:1", None).is_err());
        assert!(Client::new("http://x", None).is_err());
    }

    /// A server that accepts and never answers (stopped, or cut off after
    /// connecting): every kind of call fails within its deadline.
    #[tokio::test]
    async fn a_peer_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let c = Client::new(&format!("http://{addr}"), None)
            .unwrap()
            .with_deadline(Duration::from_millis(300));
        assert!(matches!(
            bounded(c.ping()).await,
            Err(ClientError::Timeout { .. })
        ));
        assert!(matches!(
            bounded(c.start_placed(b"{}".to_vec(), None, &|_| {})).await,
            Err(ClientError::Timeout { .. })
        ));
        assert!(matches!(
            bounded(c.run_attached(b"{}".to_vec())).await,
            Err(ClientError::Timeout { .. })
        ));
        held.abort();
    }

    /// A call without a deadline would hang: the test's own bound.
    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("the call ended by itself")
    }
}
