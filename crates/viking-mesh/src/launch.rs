//! Starting this machine's part of the mesh: the supervisor, in the
//! background or in this process, undoing it when a later step fails, and
//! waiting until etcd and the viking server are ready; `viking mesh start`,
//! `stop` and `up`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use backon::Retryable;
use hyper::Method;
use tokio::time::Instant;
use viking_client::Client;

use crate::state::{url, DataDir, EtcdRunner, MeshState, Role};
use crate::supervisor::{self, local_etcd};
use crate::{MeshError, Result, DEFAULT_API_PORT};

/// How long `init`, `join` and `start` wait for this machine's etcd member.
pub(crate) const ETCD_READY: Duration = Duration::from_secs(60);
/// How long they wait for this machine's viking server to answer.
pub(crate) const SERVER_READY: Duration = Duration::from_secs(60);

/// The last `n` lines of `<data-dir>/<what>.log`.
fn tail(dd: &DataDir, what: &str, n: usize) -> String {
    let text = std::fs::read_to_string(dd.log_file(what)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `e` with the last lines of this machine's mesh, etcd and server logs.
pub(crate) fn with_logs(e: MeshError, dd: &DataDir, role: Role) -> MeshError {
    let mut msg = e.to_string();
    let mut logs = vec!["mesh", "server"];
    if role == Role::Member {
        logs.insert(1, "etcd");
    }
    for what in logs {
        let t = tail(dd, what, 12);
        if !t.is_empty() {
            msg.push_str(&format!(
                "\n--- last lines of {} ---\n{t}",
                dd.log_file(what).display()
            ));
        }
    }
    MeshError::Failed(msg)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The supervisor, started in the background or in this process.
pub(crate) enum Launched {
    Background,
    Foreground {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<()>>,
    },
}

pub(crate) fn launch(dd: &DataDir, foreground: bool) -> Result<Launched> {
    if !foreground {
        supervisor::spawn_detached(dd)?;
        return Ok(Launched::Background);
    }
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let dd2 = dd.clone();
    let task = tokio::spawn(async move {
        let stopped = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = rx => {}
            }
        };
        supervisor::up(&dd2, stopped).await
    });
    Ok(Launched::Foreground { stop, task })
}

impl Launched {
    /// Undo: stop the supervisor and what it runs.
    pub(crate) async fn abort(self, dd: &DataDir) {
        match self {
            Launched::Background => {
                let _ = supervisor::stop(dd, true).await;
            }
            Launched::Foreground { stop, task } => {
                let _ = stop.send(());
                let _ = task.await;
            }
        }
        if let Ok(MeshState {
            etcd: Some(EtcdRunner::Image(_)),
            ..
        }) = dd.load()
        {
            if let Err(e) = supervisor::remove_etcd_container().await {
                supervisor::log(format!("removing the etcd container: {e}"));
            }
        }
    }

    /// Foreground: keep running until the supervisor ends.
    pub(crate) async fn wait(self) -> Result<()> {
        match self {
            Launched::Background => Ok(()),
            Launched::Foreground { stop, task } => {
                let r = task
                    .await
                    .map_err(|e| MeshError::Failed(format!("the supervisor failed: {e}")))?;
                drop(stop);
                r
            }
        }
    }
}

/// Wait until the viking server on this machine answers ping.
pub(crate) async fn wait_server(
    dd: &DataDir,
    st: &MeshState,
    token: &str,
    limit: Duration,
) -> Result<()> {
    let port = st
        .listen
        .parse::<SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(DEFAULT_API_PORT);
    let api = url(&st.ip, port);
    let client = Client::with_tls(&api, Some(token.to_string()), Some(dd.api_tls()?))?;
    let until = Instant::now() + limit;
    let ping = || async {
        match tokio::time::timeout(
            Duration::from_secs(3),
            client.json::<serde_json::Value>(Method::GET, "/v1/ping", None),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 3s".to_string()),
        }
    };
    ping.retry(supervisor::poll())
        .when(|_| Instant::now() < until)
        .await
        .map_err(|e| {
            MeshError::Failed(format!(
                "the viking server at {api} did not answer within {limit:?} ({e})"
            ))
        })
}

/// `viking mesh start`: bring this machine's part of the mesh back (after
/// `stop` or a reboot) from the data directory.
pub async fn start(data_dir: &Path, foreground: bool) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    let st = dd.load()?;
    if let Some(pid) = supervisor::running(&dd) {
        println!("{}: already running (supervisor pid {pid})", st.name);
        return Ok(());
    }
    let token = dd.token()?;
    let launched = launch(&dd, foreground)?;
    let ready = async {
        if st.role == Role::Member
            && !supervisor::wait_etcd(&dd, &local_etcd(&st), ETCD_READY).await
        {
            return Err(MeshError::Failed(format!(
                "etcd at {} has no leader after {ETCD_READY:?} (are the other members down?); \
                 the supervisor keeps trying",
                local_etcd(&st)
            )));
        }
        wait_server(&dd, &st, &token, SERVER_READY).await
    };
    if let Err(e) = ready.await {
        return Err(with_logs(e, &dd, st.role));
    }
    println!("{}: running", st.name);
    launched.wait().await
}

/// `viking mesh stop`: stop this machine's server and etcd member (it stays
/// in the mesh; `start` brings it back).
pub async fn stop(data_dir: &Path) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    let st = dd.load()?;
    let was = supervisor::stop(&dd, true).await?;
    println!(
        "{}: {}",
        st.name,
        if was { "stopped" } else { "was not running" }
    );
    Ok(())
}

/// `viking mesh up`: the supervisor, in the foreground (what a systemd unit
/// runs).
pub async fn up(data_dir: &Path, shutdown: impl Future<Output = ()>) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    supervisor::up(&dd, shutdown).await
}
