//! viking-cli: the `viking` command line (everything but `viking server`,
//! whose flags are defined here and which the binary starts).
//!
//! Layout:
//! - this file: the commands and flags (clap), and dispatch;
//! - [`context`]: where the CLI talks to (flags, a context file,
//!   defaults) and `viking context`;
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

pub mod ca;
pub mod context;
pub mod mesh;
pub mod push;
pub mod run;
pub mod table;
pub mod terminal;

/// viking: a container orchestrator for fleets of Docker hosts.
#[derive(Parser, Debug)]
#[command(name = "viking", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// The viking server to talk to (default: the context's, else
    /// http://127.0.0.1:8791).
    #[arg(long, env = "VIKING_SERVER", global = false)]
    pub server: Option<String>,
    /// A context file (`viking context export`): the server, its CA and the
    /// token (default: <data dir>/context.json when it exists). --server,
    /// --token, --token-file and --ca override its values.
    #[arg(long, env = "VIKING_CONTEXT")]
    pub context: Option<PathBuf>,
    /// The cluster token (default: the local server's token file). On the
    /// command line it is visible in `ps`: prefer --token-file or
    /// VIKING_TOKEN.
    #[arg(long, env = "VIKING_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file that holds the cluster token.
    #[arg(long, env = "VIKING_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The cluster's CA (PEM), for an https:// server: the token is sent
    /// only to a server whose certificate it signed.
    #[arg(long, env = "VIKING_CA")]
    pub ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the viking server on this node.
    Server(Box<ServerArgs>),
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
    /// Even out the hosts' loads now: move jobs (not fixed, not static,
    /// not pinned) from the most loaded hosts, start-first.
    Rebalance {
        /// Only print the moves and why.
        #[arg(long = "dry-run")]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the store's records from the fleet's containers, after the
    /// store was emptied or replaced (servers hold until then).
    Recover {
        /// Take over a store that carries another cluster's id.
        #[arg(long)]
        adopt: bool,
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
    /// Run a job started with --replicas as N instances: new ones placed
    /// apart from the others, the highest-numbered ones removed.
    Scale {
        name: String,
        #[arg(value_parser = clap::value_parser!(u32).range(1..=viking_core::job::MAX_REPLICAS as i64))]
        replicas: u32,
    },
    /// Stop a job and take it out of viking-proc.
    Stop {
        /// Seconds to wait for it to stop before killing it (0 to 86400).
        #[arg(short = 't', long = "time", default_value_t = 10,
              value_parser = clap::value_parser!(i64).range(0..=viking_client::api::MAX_WAIT_SECONDS as i64))]
        time: i64,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Send a signal to a job's process where it runs. KILL (the
    /// default) stops the job and takes it out of viking-proc; any other
    /// signal leaves it desired (a daemonized job that it ends is restarted).
    Kill {
        /// The signal: a name (HUP, SIGTERM) or a number.
        #[arg(short = 's', long = "signal", default_value = "KILL",
              value_parser = parse_signal)]
        signal: viking_core::signal::Signal,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove a job and its record (its volumes and history are kept).
    Rm {
        /// Remove a running job too.
        #[arg(short, long)]
        force: bool,
        /// Also delete the job's volumes (its data directory on the host it
        /// last ran on) and its placement history.
        #[arg(short, long)]
        volumes: bool,
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
    /// Follow the fleet's events (like `docker events`): jobs accepted,
    /// placed, started, exited, restarted, moved, stopped, removed; hosts
    /// joined, gone, returned; the leader.
    Events {
        /// Replay from this store revision (each line says its own).
        #[arg(long)]
        since: Option<i64>,
        /// Only this job's events.
        #[arg(long)]
        job: Option<String>,
        /// Only this host's events.
        #[arg(long)]
        host: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a job's running container (`docker exec`).
    Exec {
        /// Keep stdin attached even when it is a terminal.
        #[arg(short, long)]
        interactive: bool,
        /// Allocate a TTY (one output stream).
        #[arg(short, long)]
        tty: bool,
        name: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
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
    /// A cluster CA and server certificates, for clusters built without
    /// `viking mesh`.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Where the CLI talks to: show it, or export it for another machine.
    #[command(subcommand)]
    Context(context::ContextCommand),
}

/// A setting that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
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
    /// This server's certificate (PEM, from the cluster's CA: `viking ca
    /// issue`): the API is served over TLS, other servers are called over
    /// mutual TLS, https:// etcd is reached with it.
    #[arg(long, env = "VIKING_TLS_CERT", requires_all = ["tls_key", "ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "VIKING_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA (PEM): the only issuer this server trusts.
    #[arg(long, env = "VIKING_CA", requires = "tls_cert")]
    pub ca: Option<PathBuf>,
    /// The certificate this server shows to an https:// etcd (PEM, from
    /// the CA of --ca; default: --tls-cert).
    #[arg(long, env = "VIKING_ETCD_CERT", requires_all = ["etcd_key", "ca"])]
    pub etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(long, env = "VIKING_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (a lab network:
    /// anyone on it can read the token).
    #[arg(long, env = "VIKING_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// The Docker engine's socket.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker: String,
    /// The cluster token (default: made at first start, kept in the data
    /// directory). On the command line it is visible in `ps`: prefer
    /// --token-file or VIKING_TOKEN.
    #[arg(long, env = "VIKING_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file that holds the cluster token.
    #[arg(long, env = "VIKING_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
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
    /// Seconds after which a start that has not finished (still `starting`
    /// while the server that claimed it is alive) is tried again.
    #[arg(long, env = "VIKING_START_TIMEOUT", default_value_t = 300.0)]
    pub start_timeout: f64,
    /// Seconds a call to another server may take (a start forwarded to it:
    /// until its answer begins) before that server counts as unreachable.
    #[arg(long, env = "VIKING_PEER_TIMEOUT", default_value_t = 10.0)]
    pub peer_timeout: f64,
    /// Seconds between health checks of this host's jobs.
    #[arg(long, env = "VIKING_HEALTH_INTERVAL", default_value_t = 2.0)]
    pub health_interval: f64,
    /// The ambassador ports, LOW-HIGH: the same range on every server.
    #[arg(long, env = "VIKING_EMBASSY_PORTS", default_value = "20000-29999")]
    pub embassy_ports: String,
    /// Where embassy listens (default: Docker's bridge gateway).
    #[arg(long, env = "VIKING_EMBASSY_BIND")]
    pub embassy_bind: Option<std::net::IpAddr>,
    /// How embassy forwards: `kernel` (netfilter rules: no byte passes
    /// through a process) or `proxy` (embassy's own proxy). Default: the
    /// kernel where this host allows it, else the proxy.
    #[arg(long, env = "VIKING_EMBASSY_MODE", value_parser = ["kernel", "proxy"])]
    pub embassy_mode: Option<String>,
    /// Also serve `/metrics` here, without the token (e.g. 127.0.0.1:9791
    /// for a local Prometheus).
    #[arg(long, env = "VIKING_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
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
    /// Every container's json-file log is rotated at this size (10m, 1g).
    #[arg(long, env = "VIKING_LOG_MAX_SIZE", default_value = "10m")]
    pub log_max_size: String,
    /// How many rotated log files of a container are kept.
    #[arg(
        long = "log-max-file",
        env = "VIKING_LOG_MAX_FILE",
        default_value_t = 3
    )]
    pub log_max_file: u32,
    /// The most processes a container may have, unless its job asks for
    /// another limit.
    #[arg(long, env = "VIKING_PIDS_LIMIT", default_value_t = 1024)]
    pub pids_limit: u64,
    /// The largest pids limit a job may ask for.
    #[arg(long, env = "VIKING_PIDS_MAX", default_value_t = 4096)]
    pub pids_max: u64,
    /// What dowding reserves on its host for a job without a memory limit
    /// (when this server leads).
    #[arg(long, env = "VIKING_RESERVE_MEMORY", default_value = "64m")]
    pub reserve_memory: String,
    /// What dowding reserves on its host for a job without a CPU limit
    /// (0: none, it shares what the host has).
    #[arg(long, env = "VIKING_RESERVE_CPUS", default_value = "0")]
    pub reserve_cpus: String,
    /// Whether the leader moves jobs to even out the hosts' loads (when a
    /// host joins or comes back, or loads drift apart).
    #[arg(long, env = "VIKING_REBALANCE", value_enum, default_value = "on")]
    pub rebalance: OnOff,
    /// At most this many jobs moved a minute by rebalancing.
    #[arg(long, env = "VIKING_REBALANCE_RATE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=600))]
    pub rebalance_rate: u32,
    /// Jobs move while the most loaded live host runs more than this many
    /// jobs more than the least loaded.
    #[arg(long, env = "VIKING_REBALANCE_THRESHOLD", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub rebalance_threshold: u64,
    /// How many Docker pings (one a second) must fail in a row before this
    /// host leaves floki and its jobs move.
    #[arg(long, env = "VIKING_DOCKER_PING_FAILURES", default_value_t = 3)]
    pub docker_ping_failures: u32,
    /// Seconds of the store's history the leader keeps when it compacts
    /// etcd (a watcher further behind reads everything again).
    #[arg(long, env = "VIKING_COMPACT_WINDOW", default_value_t = 600.0)]
    pub compact_window: f64,
    /// The container runtime: the host's Docker engine, or `hollow`, an
    /// engine in memory that runs nothing, for scale tests only.
    #[arg(long, env = "VIKING_RUNTIME", value_enum, default_value = "docker")]
    pub runtime: RuntimeArg,
    /// CPUs a hollow engine reports (--runtime hollow).
    #[arg(long, default_value_t = 4)]
    pub hollow_cpus: u64,
    /// Memory a hollow engine reports, like 8g (--runtime hollow).
    #[arg(long, default_value = "8g")]
    pub hollow_memory: String,
    /// Seconds a hollow engine takes to start a container (--runtime hollow).
    #[arg(long, default_value_t = 0.3)]
    pub hollow_start_delay: f64,
}

/// `viking server --runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeArg {
    /// The Docker engine at --docker.
    Docker,
    /// An engine in memory that runs nothing: scale tests only.
    Hollow,
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

/// The token a `--token-file` holds (its first line, trimmed).
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let t = t.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        return Err(format!(
            "--token-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(t)
}

/// Whether the token was given as `--token` in this process's arguments,
/// where every user of the machine can read it.
pub fn token_in_arguments() -> bool {
    std::env::args_os().any(|a| {
        let a = a.to_string_lossy();
        a == "--token" || a.starts_with("--token=")
    })
}

/// The warning printed when [`token_in_arguments`].
pub const TOKEN_IN_ARGUMENTS: &str = "warning: --token on the command line is visible to every user of this machine (ps); use --token-file FILE or the VIKING_TOKEN environment variable";

/// A client of the resolved target ([`context::resolve`]).
pub fn client(target: &context::Target) -> Result<Client, Failure> {
    let server = target.server.as_str();
    let tls = match (server.starts_with("https://"), &target.ca_pem) {
        (true, Some(pem)) => Some(
            viking_pki::client_config(pem, None)
                .map_err(|e| Failure::new(2, format!("{}: {e}", target.ca_from)))?,
        ),
        _ => None,
    };
    // A lab of --insecure-http servers says so once in the environment
    // (VIKING_INSECURE_HTTP=1) instead of being warned on every command.
    let lab = std::env::var("VIKING_INSECURE_HTTP").is_ok_and(|v| v == "1" || v == "true");
    if !server.starts_with("https://") && target.token.is_some() && !is_loopback_url(server) && !lab
    {
        eprintln!(
            "viking: warning: {server} is plain HTTP: the token crosses the network readable by anyone on it"
        );
    }
    Client::with_tls(server, target.token.clone(), tls).map_err(Failure::from)
}

/// Whether an `http://HOST:PORT` URL names this machine.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

/// One JSON object on one line (a stream's line, `--json`).
fn print_json_line<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string(v).map_err(|e| Failure::new(1, e.to_string()))?;
    println!("{}", json_for_terminal(s));
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure::new(1, e.to_string()))?;
    println!("{}", json_for_terminal(s));
    Ok(())
}

/// JSON safe to print on a terminal (`viking inspect`, `--json`): serde_json
/// escapes C0 control characters but writes DEL and C1 (U+0080 to U+009F,
/// CSI among them) as they are. They occur only inside strings, where
/// `\u00XX` means the same character, so the document is unchanged.
fn json_for_terminal(s: String) -> String {
    if !s.chars().any(|c| matches!(c, '\u{7f}'..='\u{9f}')) {
        return s;
    }
    s.chars()
        .map(|c| match c {
            '\u{7f}'..='\u{9f}' => format!("\\u{:04x}", u32::from(c)),
            c => c.to_string(),
        })
        .collect()
}

fn path_segment(name: &str) -> Result<&str, Failure> {
    viking_core::job::validate_name(name)
        .map_err(|e| Failure::new(1, format!("{name:?}: {}", e.message)))?;
    Ok(name)
}

/// Run a client command (not `server`); the process exit status.
pub async fn dispatch(target: &context::Target, command: Command) -> Result<i32, Failure> {
    // Commands that talk to no server.
    let command = match command {
        Command::Server(_) => {
            return Err(Failure::new(2, "`viking server` is started by the binary"))
        }
        Command::Mesh(_) => return Err(Failure::new(2, "`viking mesh` is run by the binary")),
        Command::Ca(c) => return ca::run(c),
        Command::Context(context::ContextCommand::Export { docker: Some(dir) }) => {
            let code = context::run(
                target,
                context::ContextCommand::Export {
                    docker: Some(dir.clone()),
                },
            )?;
            // And a client certificate, where the cluster's CA is in its
            // store (a mesh): the docker CLI then needs no token.
            if target.server.starts_with("https://") {
                match context::docker_certificate(&client(target)?, &dir).await {
                    Ok(()) => {}
                    Err(why) => eprintln!(
                        "no client certificate ({why}); the token in {}/config.json is the credential",
                        dir.display()
                    ),
                }
            }
            return Ok(code);
        }
        Command::Context(c) => return context::run(target, c),
        other => other,
    };
    let c = client(target)?;
    match command {
        Command::Server(_) | Command::Mesh(_) | Command::Ca(_) | Command::Context(_) => {
            Err(Failure::new(2, "not a command that talks to a server"))
        }
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
                let ps = c.ps(true).await?;
                print!("{}", table::proc(&v, &ps, table::now_ms()));
            }
            Ok(0)
        }
        Command::Rebalance { dry_run, json } => {
            let moves = c.rebalance(dry_run).await?;
            if json {
                print_json(&moves)?;
            } else if moves.is_empty() {
                println!("the hosts' loads are even: nothing to move");
            } else {
                print!("{}", table::moves(&moves));
            }
            Ok(0)
        }
        Command::Recover { adopt, json } => {
            let s = c
                .recover(&viking_client::api::RecoverRequest { adopt })
                .await?;
            if json {
                print_json(&s)?;
            } else {
                println!(
                    "cluster {}: read {} host(s); {} job(s) recovered, {} stopped job(s) listed",
                    s.cluster,
                    s.hosts.len(),
                    s.recovered.len(),
                    s.stopped.len()
                );
                for h in &s.unreachable {
                    println!("host {h} did not answer: run `viking recover` again when it does");
                }
                for k in &s.skipped {
                    println!("skipped {k}");
                }
            }
            Ok(if s.unreachable.is_empty() { 0 } else { 1 })
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
        Command::Scale { name, replicas } => {
            let r = c.scale(path_segment(&name)?, replicas).await?;
            for i in &r.instances {
                println!("{}\t{}\t{}", i.job, i.node, i.status);
            }
            Ok(0)
        }
        Command::Kill { signal, names } => {
            let mut code = 0;
            for n in names {
                match c.kill(path_segment(&n)?, &signal).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
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
        Command::Rm {
            force,
            volumes,
            names,
        } => {
            let mut code = 0;
            for n in names {
                match c.rm_with(path_segment(&n)?, force, volumes).await {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        Command::Events {
            since,
            job,
            host,
            json,
        } => {
            let mut lines = c.events(since, job.as_deref(), host.as_deref()).await?;
            while let Some((e, _)) = lines.next::<viking_client::api::FleetEvent>().await? {
                if json {
                    print_json_line(&e)?;
                } else {
                    println!("{}", table::event_line(&e));
                }
            }
            Ok(0)
        }
        Command::Exec {
            interactive,
            tty,
            name,
            cmd,
        } => {
            let req = viking_client::api::ExecRequest { cmd, tty };
            let io = c.exec(path_segment(&name)?, &req).await?;
            let stdin_attached =
                interactive || !std::io::IsTerminal::is_terminal(&std::io::stdin());
            run::attached(io, stdin_attached).await
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

/// `--signal`: Docker's spellings of a signal.
fn parse_signal(s: &str) -> Result<viking_core::signal::Signal, String> {
    viking_core::signal::Signal::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_carries_no_raw_control_character() {
        let v = serde_json::json!({ "command": ["sh", "-c", "\x1b[2J\u{9b}2J\u{7f}"] });
        let out = json_for_terminal(serde_json::to_string_pretty(&v).expect("json"));
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        // The same document.
        let back: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(back, v);
    }
}
