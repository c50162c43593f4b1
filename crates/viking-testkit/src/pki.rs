//! A test cluster's certificates: its own CA (viking-pki), a certificate per
//! node (its name, its address on the test network and 127.0.0.1) and one it
//! shows etcd (`--etcd-cert`), one for
//! etcd (the gateway and 127.0.0.1) and one for the harness's own clients
//! (etcdctl, the store, the pings), written as PEM files in the cluster's
//! temporary directory. Each node's files sit in a directory of their own,
//! bind-mounted read-only into the node at [`NODE_TLS_DIR`].

use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use viking_pki::{Ca, Issued, CERT_LIFETIME};
use viking_store::testing::TlsFiles;
use viking_store::EtcdTls;

/// Where a node finds its files: `ca.pem`, `cert.pem`, `key.pem` (its
/// API's and its calls to other servers) and `etcd.pem`, `etcd-key.pem`
/// (what it shows etcd).
pub const NODE_TLS_DIR: &str = "/etc/viking-test/tls";

/// The cluster's CA and the harness's own client certificate.
#[derive(Debug)]
pub(crate) struct ClusterPki {
    ca: Ca,
    dir: PathBuf,
    /// The harness's client identity (certificate and key, PEM).
    client: Issued,
    /// A rustls client that trusts the CA and shows the harness's certificate.
    pub(crate) client_config: Arc<rustls::ClientConfig>,
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    viking_pki::write_file(path, contents, mode).with_context(|| format!("{}", path.display()))
}

impl ClusterPki {
    /// A new CA for cluster `name`, its files under `dir`, and the
    /// certificate of etcd on `gateway`.
    pub(crate) fn create(name: &str, dir: &Path, gateway: Ipv4Addr) -> Result<ClusterPki> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let ca = Ca::generate(name).context("the cluster's CA")?;
        write(&dir.join("ca.pem"), ca.cert_pem(), 0o644)?;
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let etcd = ca
            .issue("etcd", &[gateway.into(), lo], &[], CERT_LIFETIME)
            .context("etcd's certificate")?;
        write(&dir.join("etcd.pem"), &etcd.cert_pem, 0o644)?;
        write(&dir.join("etcd-key.pem"), &etcd.key_pem, 0o600)?;
        let client = ca
            .issue("viking-test", &[lo], &[], CERT_LIFETIME)
            .context("the harness's certificate")?;
        write(&dir.join("client.pem"), &client.cert_pem, 0o644)?;
        write(&dir.join("client-key.pem"), &client.key_pem, 0o600)?;
        let client_config =
            viking_pki::client_config(ca.cert_pem(), Some((&client.cert_pem, &client.key_pem)))
                .context("the harness's TLS client")?;
        Ok(ClusterPki {
            ca,
            dir: dir.to_path_buf(),
            client,
            client_config,
        })
    }

    /// etcd's files.
    pub(crate) fn etcd_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("etcd.pem"),
            key: self.dir.join("etcd-key.pem"),
            ca: self.ca_file(),
        }
    }

    /// The CA's certificate file.
    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA's certificate, PEM.
    pub(crate) fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The CA's private key, PEM.
    pub(crate) fn ca_key_pem(&self) -> &str {
        self.ca.key_pem()
    }

    /// The harness's client certificate and key files.
    pub(crate) fn client_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client-key.pem"))
    }

    /// What the store is given to reach the cluster's etcd as the harness.
    pub(crate) fn etcd_tls(&self) -> EtcdTls {
        EtcdTls {
            ca_pem: self.ca.cert_pem().to_string(),
            cert_pem: self.client.cert_pem.clone(),
            key_pem: self.client.key_pem.clone(),
        }
    }

    /// Issues node `name`'s certificate for `ip` and 127.0.0.1 and writes
    /// `ca.pem`, `cert.pem` and `key.pem` into a directory of its own;
    /// returns that directory (to bind-mount at [`NODE_TLS_DIR`]).
    pub(crate) fn node_dir(&self, name: &str, ip: Ipv4Addr) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let cert = self
            .ca
            .issue(name, &[ip.into(), lo], &[], CERT_LIFETIME)
            .with_context(|| format!("{name}'s certificate"))?;
        // What the server shows etcd (`--etcd-cert/--etcd-key`), apart
        // from its API's certificate, as with a user's own etcd.
        let etcd = self
            .ca
            .issue(&format!("{name}-etcd"), &[ip.into()], &[], CERT_LIFETIME)
            .with_context(|| format!("{name}'s etcd client certificate"))?;
        write(&dir.join("ca.pem"), self.ca.cert_pem(), 0o644)?;
        write(&dir.join("cert.pem"), &cert.cert_pem, 0o644)?;
        write(&dir.join("key.pem"), &cert.key_pem, 0o600)?;
        write(&dir.join("etcd.pem"), &etcd.cert_pem, 0o644)?;
        write(&dir.join("etcd-key.pem"), &etcd.key_pem, 0o600)?;
        Ok(dir)
    }
}
