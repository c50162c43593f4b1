//! `viking exec` and `docker exec`: a command run in a job's running
//! container, on the host that runs it, attached with viking's frames
//! (stdin one way, stdout, stderr and the exit code the other), relayed by
//! the server the client asked when the job runs elsewhere.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use futures::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use viking_client::api::ExecRequest;
use viking_client::frame::{self, Frame, FrameReader};
use viking_docker::{Attached, Output};

use crate::attach::{send, FrameStream};
use crate::error::{Result, ServerError};
use crate::peer::{owner, Owner};
use crate::{state, Shared};

/// How long an ended exec may take to report its exit code.
const EXIT_PATIENCE: Duration = Duration::from_secs(5);

/// Runs `req` in job `name`'s container and returns the client's end of
/// its stream.
pub async fn open(sh: Arc<Shared>, name: &str, req: ExecRequest) -> Result<Box<dyn FrameStream>> {
    if req.cmd.is_empty() {
        return Err(ServerError::Invalid(
            "exec: cmd: a command is needed".into(),
        ));
    }
    let Some((ps, _)) = state::ps(sh.store.as_ref(), name).await? else {
        return Err(state::no_such_job(name));
    };
    if !ps.is_running() || ps.container_id.is_empty() {
        return Err(ServerError::Conflict(format!(
            "job {name:?} is not running ({})",
            ps.status.as_str()
        )));
    }
    match owner(&sh, &ps).await? {
        Owner::Here => {
            let (exec_id, attached) = sh.runtime.exec(&ps.container_id, &req.cmd, req.tty).await?;
            let (client, server) = tokio::io::duplex(256 * 1024);
            tokio::spawn(session(sh, exec_id, attached, server));
            Ok(Box::new(client))
        }
        Owner::Peer(c, host) => c
            .exec(name, &req)
            .await
            .map(|io| Box::new(io) as Box<dyn FrameStream>)
            .map_err(|e| ServerError::from_peer(&host, e)),
        Owner::Gone(host) => Err(ServerError::Upstream(format!(
            "job {name:?} runs on host {host}, which is gone"
        ))),
    }
}

/// `POST /v1/jobs/{name}/exec`: answer `101` and relay the stream.
pub async fn start(
    sh: Arc<Shared>,
    name: &str,
    req: ExecRequest,
    on_upgrade: OnUpgrade,
) -> Result<Response> {
    let mut stream = open(sh, name, req).await?;
    let name = name.to_string();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut stream).await {
                    tracing::debug!(job = %name, "exec relay ended: {e}");
                }
            }
            Err(e) => tracing::debug!(job = %name, "exec: the client went away: {e}"),
        }
    });
    Ok(crate::attach::switching())
}

/// One exec on this host: the client's stdin frames to its input, its
/// output to the client, then its exit code.
async fn session<IO>(sh: Arc<Shared>, exec_id: String, attached: Attached, io: IO)
where
    IO: tokio::io::AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let mut input = attached.input;
    let stdin = tokio::spawn(async move {
        let mut frames = FrameReader::new(rd);
        while let Ok(Some(f)) = frames.next().await {
            match f.kind {
                frame::STDIN if input.write_all(&f.data).await.is_err() => return,
                frame::STDIN_EOF => {
                    let _ = input.flush().await;
                    let _ = input.shutdown().await;
                    return;
                }
                _ => {}
            }
        }
    });
    let mut output = attached.output;
    let mut client_alive = true;
    while let Some(item) = output.next().await {
        let f = match item {
            Ok(Output::Stdout(b)) => Frame::new(frame::STDOUT, b),
            Ok(Output::Stderr(b)) => Frame::new(frame::STDERR, b),
            Err(e) => {
                tracing::debug!(exec = %exec_id, "reading the exec's output: {e}");
                break;
            }
        };
        if client_alive && send(&mut wr, f).await.is_err() {
            client_alive = false;
        }
    }
    stdin.abort();
    // The output ended with the process; its exit code follows shortly.
    let deadline = tokio::time::Instant::now() + EXIT_PATIENCE;
    let code = loop {
        match sh.runtime.exec_exit_code(&exec_id).await {
            Ok(Some(code)) => break code,
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(None) => break 125,
            Err(e) => {
                tracing::debug!(exec = %exec_id, "the exec's exit code: {e}");
                break 125;
            }
        }
    };
    let _ = send(&mut wr, Frame::exit(code)).await;
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}
