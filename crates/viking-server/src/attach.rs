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
//! transaction as a daemonized job's name) that is deleted at the end.

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
use viking_core::records::{encode, PsRecord};
use viking_core::{keys, Job};
use viking_docker::Output;
use viking_store::{Compare, Op, StoreExt};

use crate::api::ApiError;
use crate::jobs::{self, Target};
use crate::Shared;

/// Place an interactive job, claim its name for the chosen host, then run
/// it here or attach through the host that runs it.
pub async fn start(sh: Arc<Shared>, job: Job, on_upgrade: OnUpgrade) -> Result<Response, ApiError> {
    crate::services::prepare_job(&sh, &job).await?;
    let host = match jobs::choose(&sh, &job).await? {
        Target::Here => None,
        Target::There(h) => Some(h),
        Target::Waiting(h) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("job {:?} is fixed to host {h:?}, which is not alive; run it again when {h} is back", job.name),
            ))
        }
    };
    let node = host
        .as_ref()
        .map_or(sh.config.name.clone(), |h| h.name.clone());
    let claim_rev = claim(&sh, &job, &node).await?;
    let Some(host) = host else {
        return serve_claimed(sh, job, claim_rev, on_upgrade).await;
    };
    // Forward: the chosen host runs it; this server relays the bytes.
    let forwarded = async {
        let doc = serde_json::to_vec(&job)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        jobs::peer(&sh, &host)?
            .attach(&format!("/v1/internal/attach?claim_rev={claim_rev}"), doc)
            .await
            .map_err(|e| jobs::peer_error(&host.name, e))
    }
    .await;
    let mut remote = match forwarded {
        Ok(io) => io,
        Err(e) => {
            let _ = sh
                .store
                .txn(
                    vec![Compare::ModRevision(keys::ps(&job.name), claim_rev)],
                    vec![Op::Delete {
                        key: keys::ps(&job.name),
                    }],
                    vec![],
                )
                .await;
            return Err(e);
        }
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

fn switching() -> Response {
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "Upgrade"),
            (header::UPGRADE, ATTACH_PROTOCOL),
        ],
    )
        .into_response()
}

/// Claim an interactive job's name in viking-ps for `node`; the claim's
/// revision.
async fn claim(sh: &Shared, job: &Job, node: &str) -> Result<i64, ApiError> {
    let rec = PsRecord {
        status: "created".to_string(),
        ..jobs::starting_record(job, node)
    };
    let r = sh
        .store
        .txn(
            vec![
                Compare::Absent(keys::proc(&job.name)),
                Compare::Absent(keys::ps(&job.name)),
            ],
            vec![Op::Put {
                key: keys::ps(&job.name),
                value: encode(&rec),
                lease: None,
            }],
            vec![],
        )
        .await?;
    if r.succeeded {
        Ok(r.revision)
    } else {
        Err(ApiError::conflict(format!(
            "the name {:?} is already in use by a job; remove it with `viking rm {}` or choose another --name",
            job.name, job.name
        )))
    }
}

/// Run an interactive job whose name is claimed for this host: answer
/// `101` and run the session.
pub async fn serve_claimed(
    sh: Arc<Shared>,
    job: Job,
    claim_rev: i64,
    on_upgrade: OnUpgrade,
) -> Result<Response, ApiError> {
    let ours = match sh.store.get(&keys::ps(&job.name)).await? {
        Some(kv) if kv.mod_revision == claim_rev => {
            viking_core::records::decode::<PsRecord>(&kv.value)
                .map(|p| p.node == sh.config.name && !p.daemonize)
                .unwrap_or(false)
        }
        _ => false,
    };
    let fresh = ours
        && sh
            .sessions
            .lock()
            .map(|mut s| s.insert(job.name.clone()))
            .unwrap_or(false);
    if !fresh {
        return Err(ApiError::conflict(format!(
            "job {:?} is not claimed for this host (or already attached)",
            job.name
        )));
    }
    tokio::spawn(async move {
        let name = job.name.clone();
        match on_upgrade.await {
            Ok(upgraded) => session(&sh, job, claim_rev, TokioIo::new(upgraded)).await,
            Err(e) => tracing::warn!(job = %name, "client went away before the stream opened: {e}"),
        }
        // The claim goes whatever happened, unless someone replaced it.
        if let Ok(Some(kv)) = sh.store.get(&keys::ps(&name)).await {
            let ours = viking_core::records::decode::<PsRecord>(&kv.value)
                .map(|p| p.node == sh.config.name && !p.daemonize)
                .unwrap_or(false);
            if ours {
                let _ = sh.store.delete(&keys::ps(&name)).await;
            }
        }
        if let Ok(mut s) = sh.sessions.lock() {
            s.remove(&name);
        }
    });
    Ok(switching())
}

/// The exit code `docker run` uses when a container cannot start.
fn start_failure_code(message: &str) -> i64 {
    if message.contains("executable file not found")
        || message.contains("no such file or directory")
    {
        127
    } else if message.contains("permission denied") {
        126
    } else {
        125
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, f: Frame) -> std::io::Result<()> {
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
    let last = match outcome {
        Ok(code) => Frame::exit(code),
        Err((code, e)) => {
            let _ = send(
                &mut wr,
                Frame::new(
                    frame::ERROR,
                    serde_json::to_vec(&e.body()).unwrap_or_default(),
                ),
            )
            .await;
            Frame::exit(code)
        }
    };
    let _ = send(&mut wr, last).await;
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

type Failure = (i64, ApiError);

async fn run<R, W>(
    sh: &Arc<Shared>,
    job: &Job,
    claim_rev: i64,
    rd: R,
    wr: &mut W,
) -> Result<i64, Failure>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    let daemon_err = |e: ApiError| (125, e);
    // Pull progress goes to the client as it comes.
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let pull = async {
        let r = jobs::ensure_image(sh, &job.image, &|l| {
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

    let spec = jobs::container_spec(sh, job).await.map_err(daemon_err)?;
    let id = jobs::create_container(sh, &spec)
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
) -> Result<i64, Failure>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    let daemon_err = |e: ApiError| (125, e);
    let att = sh
        .runtime
        .attach(id)
        .await
        .map_err(|e| daemon_err(e.into()))?;
    if let Err(e) = sh.runtime.start(id).await {
        let msg = e.to_string();
        return Err((start_failure_code(&msg), ApiError::docker(msg)));
    }
    // Record the running container in viking-ps, off the hot path; the
    // compare keeps it from resurrecting a record that is already gone.
    {
        let sh = sh.clone();
        let id = id.to_string();
        let name = job.name.clone();
        tokio::spawn(async move {
            if let Ok(Some(c)) = sh.runtime.inspect(&id).await {
                let ps = jobs::ps_from(&sh, &c, 0);
                let _ = sh
                    .store
                    .txn(
                        vec![Compare::ModRevision(keys::ps(&name), claim_rev)],
                        vec![Op::Put {
                            key: keys::ps(&name),
                            value: encode(&ps),
                            lease: None,
                        }],
                        vec![],
                    )
                    .await;
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
