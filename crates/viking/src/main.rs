//! The `viking` binary: parses the command line and hands over to the
//! server (`viking server`) or the client commands.

#![forbid(unsafe_code)]
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use viking_cli::mesh::{MeshCommand, MeshDir, MeshMachineArgs};
use viking_cli::{Cli, Command, ServerArgs};
use viking_server::ServerConfig;

/// `LOW-HIGH`, both ports.
fn parse_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let bad = || anyhow::anyhow!("--embassy-ports {s:?} must look like 20000-29999");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    Ok((
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    ))
}

/// A size like `8g`: a number of bytes with an optional binary unit (k, m,
/// g, t); `None` when it is not one.
fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, shift) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 10),
        'm' => (&s[..s.len() - 1], 20),
        'g' => (&s[..s.len() - 1], 30),
        't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

/// `--reserve-memory` and `--reserve-cpus`: written as a job's limits
/// are, or 0 for none.
fn reservation(memory: &str, cpus: &str) -> anyhow::Result<viking_core::job::Reservation> {
    use viking_core::job::{parse_cpus, parse_memory, JobError, Quantity};
    let zero = |s: &str| s.trim().chars().all(|c| c == '0' || c == '.');
    let why = |flag: &str, e: JobError| match e {
        JobError::Field(f) => anyhow::anyhow!("{flag}: {}", f.message),
        other => anyhow::anyhow!("{flag}: {other}"),
    };
    let memory = match zero(memory) {
        true => 0,
        false => {
            parse_memory(&Quantity::Text(memory.into())).map_err(|e| why("--reserve-memory", e))?
        }
    };
    let cpus = match zero(cpus) {
        true => 0,
        false => parse_cpus(&Quantity::Text(cpus.into())).map_err(|e| why("--reserve-cpus", e))?,
    };
    Ok(viking_core::job::Reservation { memory, cpus })
}

fn server_config(a: ServerArgs) -> anyhow::Result<ServerConfig> {
    let listen: SocketAddr = a
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} must be ADDR:PORT", a.listen))?;
    let secs = |v: f64, flag: &str| -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(v)
            .map_err(|_| anyhow::anyhow!("{flag} {v} is not a duration in seconds"))
    };
    Ok(ServerConfig {
        name: a
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(viking_cli::hostname),
        ip: a.ip,
        listen,
        etcd: a.etcd.into_iter().filter(|e| !e.is_empty()).collect(),
        key: a.key,
        tags: a.tags.into_iter().filter(|t| !t.is_empty()).collect(),
        data_dir: a.data_dir.unwrap_or_else(viking_cli::default_data_dir),
        docker: a.docker,
        token: match &a.token_file {
            Some(f) => Some(viking_cli::read_token_file(f).map_err(anyhow::Error::msg)?),
            None => a.token.filter(|t| !t.is_empty()),
        },
        host_ttl: secs(a.host_ttl, "--host-ttl")?,
        resync: secs(a.resync, "--resync")?.max(Duration::from_secs(1)),
        policy: viking_core::reconcile::Policy {
            backoff_base_ms: secs(a.backoff, "--backoff")?.as_millis() as u64,
            backoff_max_ms: secs(a.backoff_max, "--backoff-max")?.as_millis() as u64,
            start_timeout_ms: secs(a.start_timeout, "--start-timeout")?.as_millis() as u64,
            reserve: reservation(&a.reserve_memory, &a.reserve_cpus)?,
            rebalance_per_minute: match a.rebalance {
                viking_cli::OnOff::On => a.rebalance_rate,
                viking_cli::OnOff::Off => 0,
            },
            rebalance_threshold: a.rebalance_threshold,
            ..Default::default()
        },
        peer_timeout: secs(a.peer_timeout, "--peer-timeout")?,
        embassy_ports: parse_range(&a.embassy_ports)?,
        embassy_bind: a.embassy_bind,
        metrics_listen: a.metrics_listen,
        embassy_mode: match a.embassy_mode.as_deref() {
            Some("kernel") => viking_server::config::EmbassyMode::Kernel,
            Some("proxy") => viking_server::config::EmbassyMode::Proxy,
            _ => viking_server::config::EmbassyMode::Auto,
        },
        api_limits: viking_server::config::ApiLimits {
            max_connections: a.max_connections,
            ..Default::default()
        },
        embassy_max_connections: a.embassy_max_connections,
        embassy_idle_timeout: secs(a.embassy_idle_timeout, "--embassy-idle-timeout")?,
        containers: viking_server::config::ContainerLimits {
            log_max_size: a.log_max_size,
            log_max_files: a.log_max_file,
            pids_limit: a.pids_limit,
            pids_max: a.pids_max,
        },
        health_interval: secs(a.health_interval, "--health-interval")?
            .max(Duration::from_millis(100)),
        tls: viking_server::config::TlsSettings {
            files: match (a.tls_cert, a.tls_key, a.ca) {
                (Some(cert), Some(key), Some(ca)) => Some(viking_server::config::TlsFiles {
                    cert,
                    key,
                    ca,
                    etcd_identity: a.etcd_cert.zip(a.etcd_key),
                }),
                _ => None,
            },
            insecure_http: a.insecure_http,
        },
        docker_ping_failures: a.docker_ping_failures,
        compact_window: secs(a.compact_window, "--compact-window")?,
        runtime: match a.runtime {
            viking_cli::RuntimeArg::Docker => viking_server::config::RuntimeChoice::Docker,
            viking_cli::RuntimeArg::Hollow => {
                viking_server::config::RuntimeChoice::Hollow(viking_docker::hollow::HollowSpec {
                    cpus: a.hollow_cpus,
                    memory: parse_bytes(&a.hollow_memory).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--hollow-memory {:?} must be a size like 8g (a number with an optional unit k, m, g or t)",
                            a.hollow_memory
                        )
                    })?,
                    start_delay: secs(a.hollow_start_delay, "--hollow-start-delay")?,
                    ..Default::default()
                })
            }
        },
    })
}

async fn server(a: ServerArgs) -> anyhow::Result<()> {
    let config = server_config(a)?;
    let listen = config.listen;
    let prepared = viking_server::prepare(config).await?;
    let listener = bind(listen).with_context(|| format!("listening on {listen}"))?;
    let shared = prepared.shared();
    viking_server::serve(prepared, listener, server_stop(shared)).await
}

/// Resolves when the server is told to stop. SIGTERM or Ctrl-C: a stop for
/// good, so embassy's kernel rules go too. SIGHUP: a stop to restart (an
/// upgrade; `viking mesh up` starts the server again), so they stay and
/// traffic keeps flowing until the next server rewrites them.
async fn server_stop(shared: std::sync::Arc<viking_server::Shared>) {
    let hangup = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = viking_mesh::shutdown_signal() => {
            shared
                .remove_rules_on_stop
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("stopping");
        }
        _ = hangup => tracing::info!("stopping to restart (SIGHUP): embassy's kernel rules stay"),
    }
}

/// The API's listening socket, with a backlog of 4096 (capped by the
/// kernel's `net.core.somaxconn`) rather than tokio's (and std's) 128, so
/// that a burst of connections waits in the kernel instead of having its
/// SYNs dropped (a dropped SYN costs its client a 1 s retransmit).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// `viking mesh`: hands over to viking-mesh.
async fn mesh(m: MeshCommand) -> Result<(), viking_mesh::MeshError> {
    let dir = |d: MeshDir| d.data_dir.unwrap_or_else(viking_cli::default_data_dir);
    match m {
        MeshCommand::Init(a) => {
            let MeshMachineArgs {
                dir: d,
                name,
                ip,
                tags,
                listen,
                etcd_binary,
                etcd_image,
                foreground,
                quota_backend_bytes,
                server_args,
            } = a.machine;
            viking_mesh::init(viking_mesh::InitOptions {
                data_dir: dir(d),
                name,
                ip,
                tags,
                token: a.token,
                listen,
                key: a.key,
                etcd_binary,
                etcd_image,
                foreground,
                server_args,
                quota_backend_bytes: Some(quota_backend_bytes),
            })
            .await
        }
        MeshCommand::Join(a) => {
            let MeshMachineArgs {
                dir: d,
                name,
                ip,
                tags,
                listen,
                etcd_binary,
                etcd_image,
                foreground,
                quota_backend_bytes,
                server_args,
            } = a.machine;
            viking_mesh::join(viking_mesh::JoinOptions {
                data_dir: dir(d),
                addr: a.addr,
                token: a.token,
                name,
                ip,
                tags,
                listen,
                etcd_binary,
                etcd_image,
                max_members: Some(a.max_members),
                foreground,
                server_args,
                quota_backend_bytes: Some(quota_backend_bytes),
            })
            .await
        }
        MeshCommand::Status { dir: d, json } => viking_mesh::status(&dir(d), json).await,
        MeshCommand::Leave { dir: d, force } => viking_mesh::leave(&dir(d), force).await,
        MeshCommand::Start { dir: d, foreground } => viking_mesh::start(&dir(d), foreground).await,
        MeshCommand::Stop { dir: d } => viking_mesh::stop(&dir(d)).await,
        MeshCommand::Up { dir: d } => {
            viking_mesh::up(&dir(d), viking_mesh::shutdown_signal()).await
        }
        MeshCommand::Defrag { dir: d } => viking_mesh::defrag(&dir(d)).await,
        MeshCommand::Token { dir: d, rotate } => viking_mesh::token(&dir(d), rotate).await,
    }
}

fn main() {
    let cli = Cli::parse();
    if viking_cli::token_in_arguments() {
        eprintln!("viking: {}", viking_cli::TOKEN_IN_ARGUMENTS);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viking: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Server(a) => {
                tracing_subscriber::fmt()
                    .with_env_filter(
                        tracing_subscriber::EnvFilter::try_from_env("VIKING_LOG")
                            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                    )
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .init();
                match server(*a).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("viking server: {e:#}");
                        1
                    }
                }
            }
            Command::Mesh(m) => match mesh(m).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("viking mesh: {e}");
                    1
                }
            },
            command => {
                let flags = viking_cli::context::Flags {
                    server: cli.server.filter(|s| !s.is_empty()),
                    token: cli.token.filter(|t| !t.is_empty()),
                    token_file: cli.token_file,
                    ca: cli.ca,
                    context: cli.context,
                };
                let target = viking_cli::context::resolve(&flags, &viking_cli::default_data_dir());
                match match target {
                    Ok(t) => viking_cli::dispatch(&t, command).await,
                    Err(f) => Err(f),
                } {
                    Ok(code) => code,
                    Err(f) => {
                        eprintln!("viking: {}", f.message);
                        f.code
                    }
                }
            }
        }
    });
    // Do not wait for the stdin reader thread, which may block on a read.
    rt.shutdown_timeout(Duration::from_millis(10));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_take_a_binary_unit() {
        assert_eq!(parse_bytes("8g"), Some(8 << 30));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("2kb"), Some(2048));
        for bad in ["", "g", "8x", "-1g", "99999999999t"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }
}
