//! Interactive (non-daemonized) jobs: the attached stream.
//!
//! The client's request is upgraded to a raw connection that carries
//! [`viking_client::frame`]s: stdin one way, stdout, stderr and the exit code
//! the other. stdin and stdout are pumped by two independent tasks, as
//! Docker's own client does, so a job that does not read its stdin can still
//! write its output. The container is removed when it exits, before the exit
//! code is sent, so its name is free again when the client returns; if the
//! client goes away the container is stopped.
//!
//! While it runs, the job has a viking-ps record (claimed with the same
//! transaction as a daemonized job's name). At the end the container is
//! removed and the claim deleted before the exit code is sent, so a client
//! that runs the same name again at once finds it free.

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use viking_client::api::ATTACH_PROTOCOL;
use viking_client::frame::{self, Frame, FrameReader};
use viking_core::records::PsRecord;
use viking_core::{keys, Job};
use viking_docker::Output;
use viking_store::{Compare, Op};

use crate::container;
use crate::error::ServerError;
use crate::placement::{self, Target};
use crate::{now_ms, peer, state, status, Shared};

/// Where an interactive job runs once its name is claimed.
enum Claimed {
    /// On this host, under the claim of this revision.
    Here(i64),
    /// On another host, reached through this stream of frames.
    There(viking_client::client::AttachedIo),
}

/// Place an interactive job and claim its name for the chosen host; when
/// that is another host, ask it to run the job and return its stream.
async fn claim(sh: &Arc<Shared>, job: &Job) -> Result<Claimed, ServerError> {
    container::check_limits(sh, job)?;
    crate::services::check_links(sh, job).await?;
    let host = match placement::choose(sh, job).await?.0 {
        Target::Here => None,
        Target::There(h) => Some(h),
        Target::Waiting(h) => {
            return Err(ServerError::Unavailable(format!(
            "job {:?} is fixed to host {h:?}, which is not alive; run it again when {h} is back",
            job.name
        )))
        }
    };
    let node = host
        .as_ref()
        .map_or(sh.config.name.clone(), |h| h.name.clone());
    let claim_rev = state::claim_attached(sh.store.as_ref(), job, &node, now_ms()).await?;
    let Some(host) = host else {
        return Ok(Claimed::Here(claim_rev));
    };
    // Forward: the chosen host runs it; this server relays the bytes.
    let forwarded = async {
        let doc = serde_json::to_vec(job).map_err(|e| ServerError::Internal(e.to_string()))?;
        peer::peer(sh, &host)?
            .attach_claimed(claim_rev, doc)
            .await
            .map_err(|e| ServerError::from_peer(&host.name, e))
    }
    .await;
    match forwarded {
        Ok(io) => Ok(Claimed::There(io)),
        Err(e) => {
            let undo = sh
                .store
                .txn(
                    vec![Compare::ModRevision(keys::ps(&job.name), claim_rev)],
                    vec![Op::Delete {
                        key: keys::ps(&job.name),
                    }],
                    vec![],
                )
                .await;
            if let Err(ue) = undo {
                tracing::warn!(job = %job.name, "releasing the claim of a job that could not be forwarded: {ue}");
            }
            Err(e)
        }
    }
}

/// Place an interactive job, claim its name for the chosen host, then run
/// it here or attach through the host that runs it.
pub async fn start(
    sh: Arc<Shared>,
    job: Job,
    on_upgrade: OnUpgrade,
) -> Result<Response, ServerError> {
    let mut remote = match claim(&sh, &job).await? {
        Claimed::Here(claim_rev) => return serve_claimed(sh, job, claim_rev, on_upgrade).await,
        Claimed::There(io) => io,
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut local = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
                    &mut local,
                    &mut remote,
                    256 * 1024,
                    256 * 1024,
                )
                .await
                {
                    tracing::debug!(job = %job.name, "relay ended: {e}");
                }
            }
            Err(e) => {
                tracing::warn!(job = %job.name, "client went away before the stream opened: {e}")
            }
        }
    });
    Ok(switching())
}

/// A stream of attached frames (viking's own, [`viking_client::frame`]),
/// either end.
pub trait FrameStream: tokio::io::AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + AsyncWrite + Send + Unpin> FrameStream for T {}

/// Place, claim and run an interactive job, and return the client's end of
/// its stream: what [`start`] gives an HTTP client, for another front end
/// (the Docker Engine API) to translate.
pub async fn open(sh: Arc<Shared>, job: Job) -> Result<Box<dyn FrameStream>, ServerError> {
    match claim(&sh, &job).await? {
        Claimed::There(io) => Ok(Box::new(io)),
        Claimed::Here(claim_rev) => {
            if !begin_session(&sh, &job.name) {
                return Err(ServerError::Conflict(format!(
                    "job {:?} is already attached",
                    job.name
                )));
            }
            let (client, server) = tokio::io::duplex(256 * 1024);
            tokio::spawn(async move { session(&sh, job, claim_rev, server).await });
            Ok(Box::new(client))
        }
    }
}

/// Marks `name` as attached on this server; false if it already is.
fn begin_session(sh: &Shared, name: &str) -> bool {
    sh.sessions
        .lock()
        .map(|mut s| s.insert(name.to_string()))
        .unwrap_or(false)
}

pub(crate) fn switching() -> Response {
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "Upgrade"),
            (header::UPGRADE, ATTACH_PROTOCOL),
        ],
    )
        .into_response()
}

/// Run an interactive job whose name is claimed for this host: answer
/// `101` and run the session.
pub async fn serve_claimed(
    sh: Arc<Shared>,
    job: Job,
    claim_rev: i64,
    on_upgrade: OnUpgrade,
) -> Result<Response, ServerError> {
    let ours = match sh.store.get(&keys::ps(&job.name)).await? {
        Some(kv) if kv.mod_revision == claim_rev => {
            viking_core::records::decode::<PsRecord>(&kv.value)
                .map(|p| p.node == sh.config.name && !p.daemonize)
                .unwrap_or(false)
        }
        _ => false,
    };
    let fresh = ours && begin_session(&sh, &job.name);
    if !fresh {
        return Err(ServerError::Conflict(format!(
            "job {:?} is not claimed for this host (or already attached)",
            job.name
        )));
    }
    tokio::spawn(async move {
        let name = job.name.clone();
        match on_upgrade.await {
            Ok(upgraded) => session(&sh, job, claim_rev, TokioIo::new(upgraded)).await,
            Err(e) => {
                tracing::warn!(job = %name, "client went away before the stream opened: {e}");
                end_session(&sh, &name).await;
            }
        }
    });
    Ok(switching())
}

/// The end of a session: the claim goes (unless someone replaced it) and
/// the name leaves this server's sessions.
async fn end_session(sh: &Shared, name: &str) {
    if let Err(e) = state::release_attached(sh.store.as_ref(), name, &sh.config.name).await {
        tracing::warn!(job = %name, "releasing the claim of a finished attached job: {e}");
    }
    if let Ok(mut s) = sh.sessions.lock() {
        s.remove(name);
    }
}

/// Writes one frame.
pub(crate) async fn send<W: AsyncWrite + Unpin>(w: &mut W, f: Frame) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(5 + f.data.len());
    f.encode(&mut buf);
    w.write_all(&buf).await
}

async fn session<IO>(sh: &Arc<Shared>, job: Job, claim_rev: i64, io: IO)
where
    IO: tokio::io::AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let outcome = run(sh, &job, claim_rev, rd, &mut wr).await;
    // The container is gone; the name is free before the client hears the
    // exit code.
    end_session(sh, &job.name).await;
    let last = match outcome {
        Ok(code) => Frame::exit(code),
        Err((code, e)) => {
            match serde_json::to_vec(&status::body(&e)) {
                Ok(body) => {
                    let _ = send(&mut wr, Frame::new(frame::ERROR, body)).await;
                }
                Err(je) => tracing::error!(job = %job.name, "encoding an error frame: {je}"),
            }
            Frame::exit(code)
        }
    };
    let _ = send(&mut wr, last).await;
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

/// A session that failed: the exit code to report and why.
type ExitWithError = (i64, ServerError);

async fn run<R, W>(
    sh: &Arc<Shared>,
    job: &Job,
    claim_rev: i64,
    rd: R,
    wr: &mut W,
) -> Result<i64, ExitWithError>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    let daemon_err = |e: ServerError| (125, e);
    // Pull progress goes to the client as it comes.
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let pull = async {
        let r = container::ensure_image(sh, &job.image, &|l| {
            let _ = ptx.send(l);
        })
        .await;
        drop(ptx);
        r
    };
    let forward = async {
        while let Some(line) = prx.recv().await {
            let _ = send(wr, Frame::new(frame::PROGRESS, line.into_bytes())).await;
        }
    };
    let (pulled, ()) = tokio::join!(pull, forward);
    pulled.map_err(daemon_err)?;

    let spec = container::container_spec(sh, job)
        .await
        .map_err(daemon_err)?;
    let id = container::create_container(sh, &spec)
        .await
        .map_err(daemon_err)?;
    let result = attached(sh, job, claim_rev, &id, rd, wr).await;
    if let Err(e) = sh.runtime.remove(&id, true).await {
        tracing::warn!(job = %job.name, "removing the finished container: {e}");
    }
    result
}

async fn attached<R, W>(
    sh: &Arc<Shared>,
    job: &Job,
    claim_rev: i64,
    id: &str,
    rd: R,
    wr: &mut W,
) -> Result<i64, ExitWithError>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    let daemon_err = |e: ServerError| (125, e);
    let att = sh
        .runtime
        .attach(id)
        .await
        .map_err(|e| daemon_err(e.into()))?;
    if let Err(e) = sh.runtime.start(id).await {
        return Err((e.start_exit_code(), ServerError::Runtime(e)));
    }
    // Record the running container in viking-ps, off the hot path; the
    // compare keeps it from resurrecting a record that is already gone.
    {
        let sh = sh.clone();
        let id = id.to_string();
        let name = job.name.clone();
        tokio::spawn(async move {
            if let Ok(Some(c)) = sh.runtime.inspect(&id).await {
                let ps = container::ps_from(&sh, &c, 0);
                match state::put_ps_if(sh.store.as_ref(), &ps, claim_rev).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::debug!(job = %name, "the claim changed before the running container was recorded")
                    }
                    Err(e) => tracing::warn!(job = %name, "recording the running container: {e}"),
                }
            }
        });
    }

    // stdin: client frames to the container, in its own task.
    let mut input = att.input;
    let stdin_sh = sh.clone();
    let stdin_id = id.to_string();
    let stdin_task = tokio::spawn(async move {
        let mut frames = FrameReader::new(rd);
        let mut input_open = true;
        loop {
            match frames.next().await {
                Ok(Some(f)) => match f.kind {
                    // The process closed its stdin: drop the rest.
                    frame::STDIN if input_open && input.write_all(&f.data).await.is_err() => {
                        input_open = false;
                    }
                    frame::STDIN_EOF if input_open => {
                        let _ = input.flush().await;
                        let _ = input.shutdown().await;
                        input_open = false;
                    }
                    frame::SIGNAL => {
                        // Ctrl-C: stop the job (TERM, then KILL after 2 s).
                        let _ = stdin_sh.runtime.stop(&stdin_id, 2).await;
                    }
                    _ => {}
                },
                Ok(None) | Err(_) => {
                    // The client is gone: nobody reads the output any more.
                    let _ = stdin_sh.runtime.stop(&stdin_id, 2).await;
                    return;
                }
            }
        }
    });

    // stdout/stderr: the container's output to the client.
    let mut output = att.output;
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut client_alive = true;
    while let Some(item) = output.next().await {
        let f = match item {
            Ok(Output::Stdout(b)) => Frame::new(frame::STDOUT, b),
            Ok(Output::Stderr(b)) => Frame::new(frame::STDERR, b),
            Err(e) => {
                tracing::warn!(job = %job.name, "reading the container's output: {e}");
                break;
            }
        };
        if client_alive {
            buf.clear();
            f.encode(&mut buf);
            if wr.write_all(&buf).await.is_err() {
                client_alive = false;
                let _ = sh.runtime.stop(id, 2).await;
            }
        }
    }
    let code = sh.runtime.wait(id).await.map_err(|e| daemon_err(e.into()));
    stdin_task.abort();
    code
}
