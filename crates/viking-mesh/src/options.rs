//! The options of `viking mesh init` and `join`, and the checks on them
//! made before anything changes (name, tags, IP, `--listen`, token, free
//! ports, how etcd runs).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::net::hostname;
use crate::state::EtcdRunner;
use crate::{MeshError, Result, DEFAULT_API_PORT};

/// `viking mesh init`.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub name: Option<String>,
    pub ip: Option<String>,
    pub tags: Vec<String>,
    /// The cluster token (default: a new random one).
    pub token: Option<String>,
    /// The viking server's `--listen` (default `0.0.0.0:8791`).
    pub listen: Option<String>,
    pub key: String,
    pub etcd_binary: Option<PathBuf>,
    pub etcd_image: Option<String>,
    /// Run the supervisor in this process instead of in the background.
    pub foreground: bool,
    /// Extra arguments for `viking server`.
    pub server_args: Vec<String>,
    /// etcd's backend quota in bytes (default [`DEFAULT_QUOTA_BACKEND_BYTES`]).
    pub quota_backend_bytes: Option<u64>,
}

/// `viking mesh join`.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub data_dir: PathBuf,
    /// A viking server of the mesh: `HOST[:PORT]` or `http://HOST:PORT`.
    pub addr: String,
    pub token: String,
    pub name: Option<String>,
    pub ip: Option<String>,
    pub tags: Vec<String>,
    pub listen: Option<String>,
    pub etcd_binary: Option<PathBuf>,
    pub etcd_image: Option<String>,
    /// How many etcd members the mesh grows to (default 3).
    pub max_members: Option<usize>,
    pub foreground: bool,
    pub server_args: Vec<String>,
    /// etcd's backend quota in bytes (default [`DEFAULT_QUOTA_BACKEND_BYTES`]).
    pub quota_backend_bytes: Option<u64>,
}

/// etcd's backend quota when none is given: 2 GiB, etcd's own default.
/// Past it etcd raises NOSPACE and refuses every write; the leader's
/// compaction and etcd's auto-compaction keep the database far below it.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;
/// The smallest quota accepted (what the end-to-end tests run with).
pub const MIN_QUOTA_BACKEND_BYTES: u64 = 8 << 20;
/// The largest quota accepted: etcd warns against more than 8 GiB.
pub const MAX_QUOTA_BACKEND_BYTES: u64 = 8 << 30;
/// etcd's own auto-compaction, the second guard behind the leader's: every
/// five minutes it keeps this many revisions (far more than the leader's
/// ten minutes hold on a quiet cluster).
pub const AUTO_COMPACTION_RETENTION: u64 = 100_000;

/// The backend quota: given, or the default; within bounds.
pub(crate) fn check_quota(q: Option<u64>) -> Result<u64> {
    let q = q.unwrap_or(DEFAULT_QUOTA_BACKEND_BYTES);
    if !(MIN_QUOTA_BACKEND_BYTES..=MAX_QUOTA_BACKEND_BYTES).contains(&q) {
        return Err(MeshError::Invalid(format!(
            "--quota-backend-bytes {q} must be from {MIN_QUOTA_BACKEND_BYTES} (8 MiB) to {MAX_QUOTA_BACKEND_BYTES} (8 GiB)"
        )));
    }
    Ok(q)
}

pub(crate) fn check_name(name: Option<String>) -> Result<String> {
    let name = name.filter(|n| !n.is_empty()).unwrap_or_else(hostname);
    viking_core::job::validate_name(&name)
        .map_err(|e| MeshError::Invalid(format!("--name {name:?}: {}", e.message)))?;
    Ok(name)
}

pub(crate) fn check_tags(tags: &[String]) -> Result<Vec<String>> {
    let tags: Vec<String> = tags.iter().filter(|t| !t.is_empty()).cloned().collect();
    for t in &tags {
        if t.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(MeshError::Invalid(format!(
                "--tags: {t:?} is not a valid tag"
            )));
        }
    }
    Ok(tags)
}

pub(crate) fn check_ip(ip: &str) -> Result<()> {
    let a: IpAddr = ip
        .parse()
        .map_err(|_| MeshError::Invalid(format!("--ip {ip:?} is not an IP address")))?;
    if a.is_unspecified() {
        return Err(MeshError::Invalid(format!(
            "--ip {ip} must be an address other machines can reach"
        )));
    }
    Ok(())
}

pub(crate) fn check_listen(listen: Option<String>) -> Result<String> {
    let l = listen.unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_API_PORT}"));
    l.parse::<SocketAddr>()
        .map_err(|_| MeshError::Invalid(format!("--listen {l:?} must be ADDR:PORT")))?;
    Ok(l)
}

pub(crate) fn check_token(t: &str) -> Result<()> {
    if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(MeshError::Invalid(
            "--token must be at least 16 characters without spaces".into(),
        ));
    }
    Ok(())
}

/// Fails when something already listens on one of the ports.
pub(crate) fn check_ports_free(addrs: &[String]) -> Result<()> {
    for a in addrs {
        if let Ok(sa) = a.parse::<SocketAddr>() {
            if let Err(e) = std::net::TcpListener::bind(sa) {
                return Err(MeshError::Failed(format!(
                    "cannot use {a} ({e}): is another etcd or viking server running on this machine?"
                )));
            }
        }
    }
    Ok(())
}

/// How etcd runs: `--etcd-image`, else `--etcd-binary`, else etcd's
/// official image.
pub(crate) fn etcd_runner(binary: Option<PathBuf>, image: Option<String>) -> Result<EtcdRunner> {
    if let Some(i) = image.filter(|i| !i.is_empty()) {
        return Ok(EtcdRunner::Image(i));
    }
    if let Some(b) = binary {
        if !b.is_file() {
            return Err(MeshError::Invalid(format!(
                "--etcd-binary {} is not a file",
                b.display()
            )));
        }
        return Ok(EtcdRunner::Binary(b));
    }
    // The default: etcd's official image, as a container with a restart
    // policy on this machine's Docker engine, which survives a reboot.
    Ok(EtcdRunner::Image(DEFAULT_ETCD_IMAGE.to_string()))
}

/// The etcd image used when neither `--etcd-image` nor `--etcd-binary` is
/// given: the etcd project's official release image.
pub const DEFAULT_ETCD_IMAGE: &str = "quay.io/coreos/etcd:v3.5.17";
