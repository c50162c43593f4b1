//! viking-cli: the `viking` command line (everything but `viking server`,
//! whose flags are defined here and which the binary starts).
//!
//! Layout:
//! - this file: the commands and flags (clap), and dispatch;
//! - [`run`]: `viking run`, docker run's flags to a job, daemonized or
//!   attached;
//! - [`push`]: `viking push`, rolling restarts after new code;
//! - [`table`]: docker-style tables and human times;
//! - [`terminal`]: raw mode for `viking run -it`.
//!
//! Output follows Docker's habits: tables for people, `--json` for scripts,
//! errors on stderr with a non-zero exit status.

#![deny(unsafe_code)]
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use viking_client::{Client, ClientError};

pub mod mesh;
pub mod push;
pub mod run;
pub mod table;
pub mod terminal;

/// viking: a container orchestrator for fleets of Docker hosts.
#[derive(Parser, Debug)]
#[command(name = "viking", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// The viking server to talk to.
    #[arg(
        long,
        env = "VIKING_SERVER",
        default_value = "http://127.0.0.1:8791",
        global = false
    )]
    pub server: String,
    /// The cluster token (default: the local server's token file).
    #[arg(long, env = "VIKING_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the viking server on this node.
    Server(ServerArgs),
    /// Run a job (docker run's flags, or a job file with -f).
    Run(run::RunArgs),
    /// List jobs and their containers (viking-ps).
    Ps {
        /// Show all jobs (default shows just running).
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// List daemonized jobs: the desired state (viking-proc).
    Proc {
        #[arg(long)]
        json: bool,
    },
    /// List the servers of the fleet (floki).
    Hosts {
        /// Only hosts with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only the host with this name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop a job and take it out of viking-proc.
    Stop {
        /// Seconds to wait for it to stop before killing it.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: i64,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove a job and its record.
    Rm {
        /// Remove a running job too.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show a job's output.
    Logs {
        /// Follow the output.
        #[arg(short, long)]
        follow: bool,
        name: String,
    },
    /// Show proc, ps and history of a job as JSON.
    Inspect { name: String },
    /// List services: ambassador ports and endpoints.
    Services {
        #[arg(long)]
        json: bool,
    },
    /// New code was pushed: restart non-static jobs whose image changed.
    Push(push::PushArgs),
    /// Make a cluster of machines that have Docker and viking (smesh).
    #[command(subcommand)]
    Mesh(mesh::MeshCommand),
}

/// `viking server`'s settings; each has an environment variable.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// This server's name in the fleet (default: the host name).
    #[arg(long, env = "HOSTNAME")]
    pub name: Option<String>,
    /// The address other hosts use to reach this one.
    #[arg(long, env = "VIKING_IP", default_value = "127.0.0.1")]
    pub ip: String,
    /// Where the HTTP API listens.
    #[arg(long, env = "VIKING_LISTEN", default_value = "127.0.0.1:8791")]
    pub listen: String,
    /// etcd endpoints, comma-separated (default: the embedded store).
    #[arg(long, env = "VIKING_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The prefix of every key in the store.
    #[arg(long, env = "VIKING_KEY", default_value = "/viking")]
    pub key: String,
    /// This server's tags, comma-separated.
    #[arg(long, env = "VIKING_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// The data directory: the embedded store, the token, job volumes.
    #[arg(long, env = "VIKING_DATA")]
    pub data_dir: Option<PathBuf>,
    /// The Docker engine's socket.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker: String,
    /// The cluster token (default: made at first start, kept in the data directory).
    #[arg(long, env = "VIKING_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long a silent server stays alive in floki (and the leader's
    /// lease), in seconds.
    #[arg(long, env = "VIKING_HOST_TTL", default_value_t = 3.0)]
    pub host_ttl: f64,
    /// Seconds between full resyncs of viking-ps with Docker and rounds of
    /// the reconciler.
    #[arg(long, env = "VIKING_RESYNC", default_value_t = 10.0)]
    pub resync: f64,
    /// The first restart delay of a job that keeps failing, in seconds.
    #[arg(long, env = "VIKING_BACKOFF", default_value_t = 1.0)]
    pub backoff: f64,
    /// The longest restart delay, in seconds.
    #[arg(long, env = "VIKING_BACKOFF_MAX", default_value_t = 60.0)]
    pub backoff_max: f64,
    /// Seconds between health checks of this host's jobs.
    #[arg(long, env = "VIKING_HEALTH_INTERVAL", default_value_t = 2.0)]
    pub health_interval: f64,
    /// The ambassador ports, LOW-HIGH: the same range on every server.
    #[arg(long, env = "VIKING_EMBASSY_PORTS", default_value = "20000-29999")]
    pub embassy_ports: String,
    /// Where embassy listens (default: Docker's bridge gateway).
    #[arg(long, env = "VIKING_EMBASSY_BIND")]
    pub embassy_bind: Option<std::net::IpAddr>,
    /// Connections embassy serves at once on one ambassador port; more are
    /// closed at once.
    #[arg(long, env = "VIKING_EMBASSY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub embassy_max_connections: usize,
    /// Seconds an ambassador connection may move no byte either way before
    /// embassy closes it.
    #[arg(long, env = "VIKING_EMBASSY_IDLE_TIMEOUT", default_value_t = 600.0)]
    pub embassy_idle_timeout: f64,
    /// API connections open at once. Connections that have not yet sent a
    /// request with the token may take a quarter of them (the oldest is
    /// closed to make room); a connection beyond the cap is closed at once.
    #[arg(long, env = "VIKING_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
}

/// The default data directory: `/var/lib/viking` for root, else
/// `~/.local/share/viking`.
pub fn default_data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VIKING_DATA") {
        if !d.is_empty() {
            return PathBuf::from(d);
        }
    }
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if is_root {
        return PathBuf::from("/var/lib/viking");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".to_string());
    PathBuf::from(home).join(".local/share/viking")
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A client for the server given on the command line; the token defaults
/// to the local server's token file.
pub fn client(cli_server: &str, token: Option<String>) -> Result<Client, ClientError> {
    let token = token.or_else(|| {
        std::fs::read_to_string(default_data_dir().join("token"))
            .ok()
            .map(|t| t.trim().to_string())
    });
    Client::new(cli_server, token)
}

/// An error for the user, with the exit status to use.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure {
            code: 1,
            message: e.to_string(),
        }
    }
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure::new(1, e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn path_segment(name: &str) -> Result<&str, Failure> {
    viking_core::job::validate_name(name)
        .map_err(|e| Failure::new(1, format!("{name:?}: {}", e.message)))?;
    Ok(name)
}

/// Run a client command (not `server`); the process exit status.
pub async fn dispatch(
    server: &str,
    token: Option<String>,
    command: Command,
) -> Result<i32, Failure> {
    let c = client(server, token)?;
    match command {
        Command::Server(_) => Err(Failure::new(2, "`viking server` is started by the binary")),
        Command::Mesh(_) => Err(Failure::new(2, "`viking mesh` is run by the binary")),
        Command::Run(args) => run::run(&c, args).await,
        Command::Ps { all, json } => {
            let v = c.ps(all).await?;
            if json {
                print_json(&v)?;
            } else {
                print!("{}", table::ps(&v, table::now_ms()));
            }
            Ok(0)
        }
        Command::Proc { json } => {
            let v = c.proc().await?;
            if json {
                print_json(&v)?;
            } else {
                print!("{}", table::proc(&v, table::now_ms()));
            }
            Ok(0)
        }
        Command::Hosts { tag, name, json } => {
            let mut v = c.hosts().await?;
            if let Some(t) = &tag {
                v.retain(|h| h.host.tags.contains(t));
            }
            if let Some(n) = &name {
                v.retain(|h| &h.host.name == n);
            }
            if json {
                print_json(&v)?;
            } else {
                print!("{}", table::hosts(&v, table::now_ms()));
            }
            Ok(0)
        }
        Command::Stop { time, names } => {
            let mut code = 0;
            for n in names {
                match c.stop(path_segment(&n)?, time).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        Command::Rm { force, names } => {
            let mut code = 0;
            for n in names {
                match c.rm(path_segment(&n)?, force).await {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        Command::Logs { follow, name } => {
            let body = c.logs(path_segment(&name)?, follow).await?;
            run::print_frames(body).await?;
            Ok(0)
        }
        Command::Push(a) => push::push(&c, a).await,
        Command::Services { json } => {
            let v = c.services().await?;
            if json {
                print_json(&v)?;
            } else {
                print!("{}", table::services(&v));
            }
            Ok(0)
        }
        Command::Inspect { name } => {
            let v = c.inspect(path_segment(&name)?).await?;
            print_json(&v)?;
            Ok(0)
        }
    }
}
