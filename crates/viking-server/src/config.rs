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
    /// The reconciler's restart backoff and timeouts.
    pub policy: viking_core::reconcile::Policy,
    /// How often health checks run.
    pub health_interval: Duration,
    /// The cluster-wide range of ambassador ports (the same on every server).
    pub embassy_ports: (u16, u16),
    /// Where embassy listens; `None`: Docker's bridge gateway.
    pub embassy_bind: Option<std::net::IpAddr>,
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
            let rest = e.strip_prefix("http://").unwrap_or(e);
            if e.starts_with("https://") || !rest.contains(':') || rest.contains('/') {
                return Err(format!("--etcd {e:?} must look like http://HOST:PORT"));
            }
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
        if self.ip.contains(':') {
            format!("http://[{}]:{port}", self.ip)
        } else {
            format!("http://{}:{port}", self.ip)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerLimits;

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
