//! The mesh's files in the viking data directory, and this machine's
//! settings in it.
//!
//! ```text
//! <data-dir>/mesh.json    this machine's role and settings (written last by
//!                         init/join, removed first by nothing: leave removes
//!                         it at the end)
//! <data-dir>/token        the operator's token, mode 0600 (the viking
//!                         server reads it from here)
//! <data-dir>/context.json the local CLI's context: server, CA, token (0600)
//! <data-dir>/pki/         ca.pem (the cluster's CA), cert.pem and key.pem
//!                         (this machine's, 0600: its server's and its etcd
//!                         member's, for both ends of every connection);
//!                         ca-key.pem on the machine that made the mesh
//!                         (0600; the servers use the copy in etcd)
//! <data-dir>/etcd/        the etcd member's data (members only)
//! <data-dir>/mesh.pid     the supervisor (`viking mesh up`)
//! <data-dir>/etcd.pid, server.pid      its children
//! <data-dir>/mesh.log, etcd.log, server.log
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use viking_store::etcd::membership::Membership;
use viking_store::{EtcdStore, EtcdTls};

use crate::{IoContext, MeshError, Result};

/// The state file's name.
pub const STATE_FILE: &str = "mesh.json";
/// The token file's name (the same file `viking server` reads).
pub const TOKEN_FILE: &str = "token";

/// What this machine is in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An etcd member and a viking server.
    Member,
    /// A viking server only, using the members' etcd.
    Server,
}

/// How this machine's etcd member runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtcdRunner {
    /// A child process of the supervisor.
    Binary(PathBuf),
    /// A container on the machine's Docker engine with a restart policy.
    Image(String),
}

/// `mesh.json`: everything `viking mesh up` needs to bring this machine
/// back after a reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshState {
    /// The file's format version.
    pub v: u32,
    pub name: String,
    pub ip: String,
    pub role: Role,
    pub tags: Vec<String>,
    /// The viking server's `--listen`.
    pub listen: String,
    /// The store prefix (`--key`).
    pub key: String,
    /// etcd client URLs the server uses (refreshed from the member list at
    /// every start).
    pub etcd_endpoints: Vec<String>,
    /// etcd's `--initial-cluster` when this member first started.
    #[serde(default)]
    pub initial_cluster: String,
    /// etcd's `--initial-cluster-state` when this member first started.
    #[serde(default)]
    pub initial_cluster_state: String,
    #[serde(default)]
    pub etcd: Option<EtcdRunner>,
    /// Extra arguments for `viking server`.
    #[serde(default)]
    pub server_args: Vec<String>,
    /// etcd's backend quota (`--quota-backend-bytes`); `None` in files
    /// written before it existed: the default then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<u64>,
}

/// Version 2: the mesh runs on TLS (etcd, the API) with `pki/`.
pub const STATE_VERSION: u32 = 2;

/// The data directory and the paths in it.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub dir: PathBuf,
}

impl DataDir {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.is_absolute() {
            return Err(MeshError::Invalid(format!(
                "--data-dir {} must be an absolute path",
                dir.display()
            )));
        }
        Ok(Self { dir })
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
    pub fn token_file(&self) -> PathBuf {
        self.dir.join(TOKEN_FILE)
    }
    pub fn etcd_dir(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }
    pub fn ca_file(&self) -> PathBuf {
        self.pki_dir().join("ca.pem")
    }
    pub fn ca_key_file(&self) -> PathBuf {
        self.pki_dir().join("ca-key.pem")
    }
    pub fn cert_file(&self) -> PathBuf {
        self.pki_dir().join("cert.pem")
    }
    pub fn key_file(&self) -> PathBuf {
        self.pki_dir().join("key.pem")
    }
    pub fn context_file(&self) -> PathBuf {
        self.dir.join(viking_client::context::CONTEXT_FILE)
    }

    /// Write this machine's CA certificate, certificate and key.
    pub fn save_pki(&self, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
        let pki = self.pki_dir();
        std::fs::create_dir_all(&pki).ctx(|| format!("creating {}", pki.display()))?;
        write_atomic(&pki, &self.ca_file(), ca_pem.as_bytes(), 0o644)?;
        write_atomic(&pki, &self.cert_file(), cert_pem.as_bytes(), 0o644)?;
        write_atomic(&pki, &self.key_file(), key_pem.as_bytes(), 0o600)
    }

    /// Keep the CA's key on this machine (the one that made the mesh).
    pub fn save_ca_key(&self, key_pem: &str) -> Result<()> {
        write_atomic(
            &self.pki_dir(),
            &self.ca_key_file(),
            key_pem.as_bytes(),
            0o600,
        )
    }

    fn read(&self, path: &Path) -> Result<String> {
        std::fs::read_to_string(path).ctx(|| format!("reading {}", path.display()))
    }

    /// This machine's certificate, for etcd (both ends).
    pub fn etcd_tls(&self) -> Result<EtcdTls> {
        Ok(EtcdTls {
            ca_pem: self.read(&self.ca_file())?,
            cert_pem: self.read(&self.cert_file())?,
            key_pem: self.read(&self.key_file())?,
        })
    }

    /// etcd's membership API at `endpoints`, with this machine's
    /// certificate.
    pub fn members(&self, endpoints: Vec<String>) -> Result<Membership> {
        Ok(Membership::new(endpoints).with_tls(Some(self.etcd_tls()?)))
    }

    /// The cluster's store under `key`, with this machine's certificate.
    pub async fn store(&self, endpoints: &[String], key: &str) -> Result<EtcdStore> {
        let tls = self.etcd_tls()?;
        tokio::time::timeout(
            std::time::Duration::from_secs(15),
            EtcdStore::connect_tls(endpoints, key, Some(&tls)),
        )
        .await
        .map_err(|_| MeshError::Etcd(format!("{endpoints:?}: no answer within 15s")))?
        .map_err(|e| MeshError::Etcd(e.to_string()))
    }

    /// A TLS client configuration for this mesh's servers: trusts the
    /// cluster's CA only, shows this machine's certificate.
    pub fn api_tls(&self) -> Result<std::sync::Arc<rustls::ClientConfig>> {
        let ca = self.read(&self.ca_file())?;
        let cert = self.read(&self.cert_file())?;
        let key = self.read(&self.key_file())?;
        viking_pki::client_config(&ca, Some((&cert, &key)))
            .map_err(|e| MeshError::Failed(format!("{}: {e}", self.pki_dir().display())))
    }
    pub fn pid_file(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.pid"))
    }
    pub fn log_file(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.log"))
    }

    fn display(&self) -> String {
        self.dir.display().to_string()
    }

    /// Fails unless this directory holds no mesh (and no etcd data).
    pub fn ensure_fresh(&self) -> Result<()> {
        for p in [self.state_file(), self.etcd_dir()] {
            if p.exists() {
                return Err(MeshError::AlreadyInitialised(
                    self.display(),
                    p.display().to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Reads `mesh.json`.
    pub fn load(&self) -> Result<MeshState> {
        let path = self.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MeshError::NotInitialised(
                    self.display(),
                    path.display().to_string(),
                ))
            }
            Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
        };
        let st: MeshState = serde_json::from_str(&text)
            .map_err(|e| MeshError::Invalid(format!("{} is not valid: {e}", path.display())))?;
        if st.v < STATE_VERSION {
            return Err(MeshError::Invalid(format!(
                "{} was written by a viking whose mesh ran etcd and its API without TLS (format {}); \
                 this viking runs a mesh on mutual TLS only: make the mesh again (`viking mesh leave --force`, then init and join)",
                path.display(),
                st.v
            )));
        }
        if st.v > STATE_VERSION {
            return Err(MeshError::Invalid(format!(
                "{} was written by a newer viking (format {}, this one reads {STATE_VERSION})",
                path.display(),
                st.v
            )));
        }
        Ok(st)
    }

    /// Writes `mesh.json` atomically.
    pub fn save(&self, st: &MeshState) -> Result<()> {
        let text = serde_json::to_vec_pretty(st)
            .map_err(|e| MeshError::Failed(format!("encoding the mesh state: {e}")))?;
        write_atomic(&self.dir, &self.state_file(), &text, 0o644)
    }

    /// Reads the token file.
    pub fn token(&self) -> Result<String> {
        let path = self.token_file();
        let t = std::fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
        Ok(t.trim().to_string())
    }

    /// Writes the token file with mode 0600.
    pub fn save_token(&self, token: &str) -> Result<()> {
        write_atomic(&self.dir, &self.token_file(), token.as_bytes(), 0o600)
    }

    /// Removes every file of the mesh (not the logs, not job volumes).
    pub fn remove_mesh_files(&self) {
        for dir in [self.etcd_dir(), self.pki_dir()] {
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!("removing {}: {e}", dir.display());
                }
            }
        }
        for p in [
            self.context_file(),
            self.token_file(),
            self.pid_file("mesh"),
            self.pid_file("etcd"),
            self.pid_file("server"),
            self.state_file(),
        ] {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn write_atomic(dir: &Path, path: &Path, data: &[u8], mode: u32) -> Result<()> {
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .ctx(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .ctx(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("creating {}", path.display()))
}

/// A fresh random token (48 hex characters) from the kernel's generator.
pub fn new_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .ctx(|| "reading /dev/urandom".to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `https://IP:PORT`, with brackets for IPv6: etcd's and the API's
/// address in a mesh (everything is on TLS).
pub fn url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("https://[{ip}]:{port}")
    } else {
        format!("https://{ip}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn state() -> MeshState {
        MeshState {
            v: STATE_VERSION,
            name: "n1".into(),
            ip: "10.0.0.1".into(),
            role: Role::Member,
            tags: vec!["ssd".into()],
            listen: "0.0.0.0:8791".into(),
            key: "/viking".into(),
            etcd_endpoints: vec!["https://10.0.0.1:2379".into()],
            initial_cluster: "n1=https://10.0.0.1:2380".into(),
            initial_cluster_state: "new".into(),
            etcd: Some(EtcdRunner::Binary("/usr/bin/etcd".into())),
            server_args: vec![],
            quota_backend_bytes: Some(8 << 20),
        }
    }

    #[test]
    fn state_round_trips_and_detects_initialised() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(d.path()).unwrap();
        dd.ensure_fresh().unwrap();
        assert!(matches!(dd.load(), Err(MeshError::NotInitialised(..))));
        dd.save(&state()).unwrap();
        assert_eq!(dd.load().unwrap(), state());
        assert!(matches!(
            dd.ensure_fresh(),
            Err(MeshError::AlreadyInitialised(..))
        ));
        dd.save_token("abc").unwrap();
        let mode = std::fs::metadata(dd.token_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        dd.remove_mesh_files();
        dd.ensure_fresh().unwrap();
        assert!(!dd.token_file().exists());
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(url("::1", 1), "https://[::1]:1");
    }
}
