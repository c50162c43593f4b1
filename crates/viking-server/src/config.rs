//! The server's settings, checked before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `viking server` is told. Built by the CLI from flags and
/// environment variables; [`ServerConfig::validate`] reports bad settings
/// before any port is bound or any file is written.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This server's name in floki (default: the host name).
    pub name: String,
    /// The advertised address: where other hosts reach this server and its
    /// jobs' published ports.
    pub ip: String,
    pub listen: SocketAddr,
    /// etcd endpoints; empty means the embedded store in the data directory.
    pub etcd: Vec<String>,
    /// The prefix of every key in the store.
    pub key: String,
    pub tags: Vec<String>,
    pub data_dir: PathBuf,
    /// The Docker engine's unix socket.
    pub docker: String,
    /// The cluster token; `None` means read or create `<data-dir>/token`.
    pub token: Option<String>,
    /// How long a dead server stays in floki as alive.
    pub host_ttl: Duration,
    /// How often the full Docker resync (and the reconciler's periodic
    /// round) runs.
    pub resync: Duration,
    /// The reconciler's restart backoff and timeouts (`--start-timeout`:
    /// `policy.start_timeout_ms`).
    pub policy: viking_core::reconcile::Policy,
    /// The deadline of a control call to another server, and how long a
    /// start forwarded to one may wait for its answer to begin
    /// (`--peer-timeout`, default 10 s).
    pub peer_timeout: Duration,
    /// How often health checks run.
    pub health_interval: Duration,
    /// The cluster-wide range of ambassador ports (the same on every server).
    pub embassy_ports: (u16, u16),
    /// Where embassy listens; `None`: Docker's bridge gateway.
    pub embassy_bind: Option<std::net::IpAddr>,
    /// How embassy forwards: netfilter rules or its proxy (`--embassy-mode`).
    pub embassy_mode: EmbassyMode,
    /// Where `/metrics` is also served, without the token
    /// (`--metrics-listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// The API's connection cap and timeouts.
    pub api_limits: ApiLimits,
    /// Connections one ambassador port serves at once.
    pub embassy_max_connections: usize,
    /// An ambassador connection where no byte moved either way for this long
    /// is closed.
    pub embassy_idle_timeout: Duration,
    /// What every container of this host is given: log rotation and a
    /// pids limit.
    pub containers: ContainerLimits,
    /// How many Docker pings (one a second) must fail in a row before this
    /// host leaves floki (`--docker-ping-failures`).
    pub docker_ping_failures: u32,
    /// How much of the store's history the leader keeps when it compacts
    /// (`--compact-window`): a watcher that falls further behind reads
    /// everything again.
    pub compact_window: Duration,
    /// TLS: the API, the calls between servers and etcd.
    pub tls: TlsSettings,
    /// The container runtime: the host's Docker engine, or a hollow one
    /// for scale tests (`--runtime hollow`).
    pub runtime: RuntimeChoice,
}

/// How embassy forwards connections (`--embassy-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EmbassyMode {
    /// The kernel where this host allows it (an IPv4 address that is not
    /// loopback, iptables with the right to change the nat table, a Docker
    /// engine), else the proxy, with a line in the log saying why.
    #[default]
    Auto,
    /// Netfilter rules (`viking_embassy::Kernel`); the server does not
    /// start where they cannot be written.
    Kernel,
    /// embassy's user-space proxy (`viking_embassy::Embassy`).
    Proxy,
}

/// Which container runtime a server drives (`--runtime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// The Docker engine at `--docker`.
    #[default]
    Docker,
    /// An engine in memory that runs nothing (`viking_docker::hollow`):
    /// the whole server over it, for scale tests only. Its embassy keeps
    /// its routing table but listens on no port.
    Hollow(viking_docker::hollow::HollowSpec),
}

/// This server's certificate and the cluster's CA (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: this server's certificate, from the cluster's CA.
    pub cert: PathBuf,
    /// `--tls-key`: its private key.
    pub key: PathBuf,
    /// `--ca`: the cluster's CA: the only issuer this server trusts (for
    /// other servers, clients that show a certificate, and etcd).
    pub ca: PathBuf,
    /// `--etcd-cert`/`--etcd-key`: what an https etcd is shown instead of
    /// `cert`/`key`.
    pub etcd_identity: Option<(PathBuf, PathBuf)>,
}

/// How the server talks to the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// With files: the API is served over TLS, other servers are called
    /// over mutual TLS, and `https://` etcd endpoints are reached with this
    /// server's certificate.
    pub files: Option<TlsFiles>,
    /// `--insecure-http`: serve plain HTTP on an address other than
    /// loopback anyway (a lab network where anyone may read the token).
    pub insecure_http: bool,
}

/// The API's connection cap and timeouts (see `listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Open connections at most (`--max-connections`).
    pub max_connections: usize,
    /// A connection that has not sent a complete request head within this
    /// is closed (also the longest silence between two requests).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl ApiLimits {
    /// Connections that have not yet sent a request with the token may hold
    /// at most a quarter of the cap.
    pub fn max_pending(&self) -> usize {
        (self.max_connections / 4).max(1)
    }
}

impl Default for ApiLimits {
    /// 1024 connections, 10 s to send a request head, 60 s idle.
    fn default() -> Self {
        ApiLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The default of `--docker-ping-failures`.
pub const DEFAULT_DOCKER_PING_FAILURES: u32 = 3;
/// The default of `--compact-window`.
pub const DEFAULT_COMPACT_WINDOW: Duration = Duration::from_secs(600);

/// The limits every container this server creates gets, so that one job's
/// output or fork bomb cannot take its host (and the host's viking server
/// and etcd member) down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLimits {
    /// Docker json-file `max-size` (`--log-max-size`).
    pub log_max_size: String,
    /// Docker json-file `max-file` (`--log-max-file`).
    pub log_max_files: u32,
    /// The pids limit of a job that asks for none (`--pids-limit`).
    pub pids_limit: u64,
    /// The largest pids limit a job may ask for (`--pids-max`).
    pub pids_max: u64,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        Self {
            log_max_size: "10m".to_string(),
            log_max_files: 3,
            pids_limit: 1024,
            pids_max: 4096,
        }
    }
}

impl ContainerLimits {
    /// Check the settings; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        let size = self.log_max_size.to_ascii_lowercase();
        let digits = size.trim_end_matches(['k', 'm', 'g']);
        let unit_ok = size.len() - digits.len() <= 1;
        if !unit_ok
            || digits.is_empty()
            || !digits.chars().all(|c| c.is_ascii_digit())
            || digits.chars().all(|c| c == '0')
        {
            return Err(format!(
                "--log-max-size {:?} must be a size like 10m (a number with an optional unit k, m or g)",
                self.log_max_size
            ));
        }
        if self.log_max_files == 0 {
            return Err("--log-max-file must be at least 1".to_string());
        }
        let ceiling = viking_core::job::MAX_PIDS_LIMIT;
        if !(1..=ceiling).contains(&self.pids_max) {
            return Err(format!(
                "--pids-max {} must be from 1 to {ceiling}",
                self.pids_max
            ));
        }
        if !(1..=self.pids_max).contains(&self.pids_limit) {
            return Err(format!(
                "--pids-limit {} must be from 1 to --pids-max ({})",
                self.pids_limit, self.pids_max
            ));
        }
        Ok(())
    }

    /// The json-file log rotation every container gets.
    pub fn log_rotation(&self) -> viking_docker::LogRotation {
        viking_docker::LogRotation {
            max_size: self.log_max_size.to_ascii_lowercase(),
            max_files: self.log_max_files,
        }
    }
}

impl ServerConfig {
    /// Check every setting; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        viking_core::job::validate_name(&self.name)
            .map_err(|e| format!("--name {:?}: {}", self.name, e.message))?;
        if self.ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("--ip {:?} is not an IP address", self.ip));
        }
        if !self.key.starts_with('/') || self.key.len() < 2 || self.key.ends_with('/') {
            return Err(format!(
                "--key {:?} must be an absolute prefix like /viking (no trailing '/')",
                self.key
            ));
        }
        for e in &self.etcd {
            let rest = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"))
                .unwrap_or(e);
            if !rest.contains(':') || rest.contains('/') {
                return Err(format!(
                    "--etcd {e:?} must look like https://HOST:PORT (or http://HOST:PORT)"
                ));
            }
            if e.starts_with("https://") && self.tls.files.is_none() {
                return Err(format!(
                    "--etcd {e:?}: an https etcd needs this server's certificate (--tls-cert, --tls-key, --ca)"
                ));
            }
        }
        if self.tls.files.is_none() && !self.tls.insecure_http && !self.listen.ip().is_loopback() {
            return Err(format!(
                "--listen {}: serving the API in plain HTTP on the network would show the token to \
                 anyone on it; give --tls-cert, --tls-key and --ca (`viking ca issue`), or \
                 --insecure-http for a lab network",
                self.listen
            ));
        }
        for t in &self.tags {
            if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c == ',') {
                return Err(format!("--tags: {t:?} is not a valid tag"));
            }
        }
        if !self.data_dir.is_absolute() {
            return Err(format!(
                "--data-dir {:?} must be an absolute path",
                self.data_dir
            ));
        }
        if let Some(t) = &self.token {
            if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err("--token must be at least 16 characters without spaces".to_string());
            }
        }
        let (lo, hi) = self.embassy_ports;
        if lo == 0 || lo > hi {
            return Err(format!(
                "--embassy-ports {lo}-{hi} must be a range LOW-HIGH within 1-65535"
            ));
        }
        if self.api_limits.max_connections < 4 {
            return Err(format!(
                "--max-connections {} must be at least 4",
                self.api_limits.max_connections
            ));
        }
        if self.api_limits.header_timeout.is_zero() || self.api_limits.idle_timeout.is_zero() {
            return Err("the API's header and idle timeouts must be above zero".to_string());
        }
        if self.embassy_max_connections == 0 {
            return Err("--embassy-max-connections must be at least 1".to_string());
        }
        if self.embassy_idle_timeout < Duration::from_millis(10) {
            return Err(format!(
                "--embassy-idle-timeout {:?} must be at least 0.01 s",
                self.embassy_idle_timeout
            ));
        }
        if self.peer_timeout < Duration::from_millis(100) {
            return Err("--peer-timeout must be at least 0.1s".to_string());
        }
        if self.policy.start_timeout_ms < 1_000 {
            return Err("--start-timeout must be at least 1s".to_string());
        }
        if self.host_ttl < Duration::from_secs(1) {
            return Err("--host-ttl must be at least 1s".to_string());
        }
        self.containers.validate()?;
        if self.docker_ping_failures == 0 {
            return Err("--docker-ping-failures must be at least 1".to_string());
        }
        if self.compact_window < Duration::from_secs(1) {
            return Err("--compact-window must be at least 1s".to_string());
        }
        Ok(())
    }

    /// The URL other servers and clients use to reach this one.
    pub fn api_url(&self) -> String {
        let port = self.listen.port();
        let scheme = if self.tls.files.is_some() {
            "https"
        } else {
            "http"
        };
        if self.ip.contains(':') {
            format!("{scheme}://[{}]:{port}", self.ip)
        } else {
            format!("{scheme}://{}:{port}", self.ip)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ContainerLimits, ServerConfig};
    use std::time::Duration;

    fn config() -> ServerConfig {
        ServerConfig {
            name: "n1".to_string(),
            ip: "127.0.0.1".to_string(),
            listen: "127.0.0.1:8791".parse().expect("addr"),
            etcd: vec![],
            key: "/viking".to_string(),
            tags: vec![],
            data_dir: "/var/lib/viking".into(),
            docker: "unix:///var/run/docker.sock".to_string(),
            token: None,
            host_ttl: Duration::from_secs(3),
            resync: Duration::from_secs(10),
            policy: Default::default(),
            peer_timeout: Duration::from_secs(10),
            health_interval: Duration::from_secs(2),
            embassy_ports: (20000, 29999),
            embassy_bind: None,
            embassy_mode: Default::default(),
            metrics_listen: None,
            containers: ContainerLimits::default(),
            api_limits: Default::default(),
            embassy_max_connections: 1024,
            embassy_idle_timeout: Duration::from_secs(600),
            tls: Default::default(),
            docker_ping_failures: 3,
            compact_window: Duration::from_secs(600),
            runtime: Default::default(),
        }
    }

    #[test]
    fn plain_http_on_the_network_needs_insecure_http() {
        let mut c = config();
        c.listen = "0.0.0.0:8791".parse().expect("addr");
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("--insecure-http") && err.contains("--tls-cert"),
            "{err}"
        );
        c.tls.insecure_http = true;
        assert_eq!(c.validate(), Ok(()));
        c.tls.insecure_http = false;
        c.tls.files = Some(super::TlsFiles {
            cert: "/c".into(),
            key: "/k".into(),
            ca: "/ca".into(),
            etcd_identity: None,
        });
        assert_eq!(c.validate(), Ok(()));
        assert!(c.api_url().starts_with("https://"));
        // An https etcd needs the server's certificate.
        let mut c = config();
        c.etcd = vec!["https://10.0.0.1:2379".into()];
        assert!(c.validate().unwrap_err().contains("--tls-cert"));
    }

    #[test]
    fn the_timeouts_are_checked_naming_the_flag() {
        assert_eq!(config().validate(), Ok(()));
        let mut c = config();
        c.peer_timeout = Duration::from_millis(10);
        assert!(c.validate().unwrap_err().contains("--peer-timeout"));
        let mut c = config();
        c.policy.start_timeout_ms = 0;
        assert!(c.validate().unwrap_err().contains("--start-timeout"));
    }

    #[test]
    fn container_limits_are_checked_naming_the_flag() {
        assert_eq!(ContainerLimits::default().validate(), Ok(()));
        let with = |f: &dyn Fn(&mut ContainerLimits)| {
            let mut l = ContainerLimits::default();
            f(&mut l);
            l.validate()
        };
        for ok in ["1", "500k", "10M", "1g", "1048576"] {
            assert_eq!(with(&|l| l.log_max_size = ok.to_string()), Ok(()), "{ok}");
        }
        for bad in ["", "m", "0", "0m", "10mb", "-1m", "1.5m", "10 m"] {
            let e = with(&|l| l.log_max_size = bad.to_string()).unwrap_err();
            assert!(e.contains("--log-max-size"), "{bad}: {e}");
        }
        let e = with(&|l| l.log_max_files = 0).unwrap_err();
        assert!(e.contains("--log-max-file"), "{e}");
        let e = with(&|l| l.pids_limit = 5000).unwrap_err();
        assert!(e.contains("--pids-limit"), "{e}");
        let e = with(&|l| l.pids_limit = 0).unwrap_err();
        assert!(e.contains("--pids-limit"), "{e}");
        let e = with(&|l| l.pids_max = 0).unwrap_err();
        assert!(e.contains("--pids-max"), "{e}");
        let e = with(&|l| l.pids_max = (1 << 22) + 1).unwrap_err();
        assert!(e.contains("--pids-max"), "{e}");
    }
}
