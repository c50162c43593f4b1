//! This server's TLS material, loaded at start from `--tls-cert`,
//! `--tls-key` and `--ca`: the API's server configuration (client
//! certificates from the cluster's CA are asked for, not required: an
//! operator's CLI may come with the token only), the client configuration
//! for calls to other servers (mutual TLS: this server shows its
//! certificate, trusts only the CA), and what etcd is reached with (the
//! server's certificate, or `--etcd-cert`/`--etcd-key`).
//!
//! Both configurations show the certificate an [`LiveIdentity`] holds at
//! each handshake, so [`crate::renew`] swaps a renewed certificate in
//! without a restart ([`Tls::swap`]): new API connections and new calls to
//! peers show it, connections already open keep the old one. etcd's client
//! is replaced with one connected with the new certificate once the store
//! is attached ([`Tls::attach_etcd`]), unless etcd is shown a certificate
//! of its own (`--etcd-cert`), which is not renewed here.

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use viking_pki::LiveIdentity;
use viking_store::{EtcdStore, EtcdTls};

use crate::config::TlsFiles;

/// What this server serves and calls with.
#[derive(Clone)]
pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    /// What etcd is reached with at start (the certificate of then).
    pub etcd: EtcdTls,
    /// The certificate shown now, renewed in place.
    pub identity: Arc<LiveIdentity>,
    /// The files of the flags: renewal writes the new certificate there.
    pub files: TlsFiles,
    /// The CA this server trusts (`--ca`, PEM).
    pub ca_pem: String,
    /// The etcd store this server uses, if it is etcd: told of a renewed
    /// certificate.
    etcd_store: Arc<OnceLock<EtcdStore>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

fn read(path: &std::path::Path, flag: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

/// Load and check the files (a wrong file is refused at start, naming its
/// flag).
pub fn load(files: &TlsFiles) -> anyhow::Result<Tls> {
    let cert = read(&files.cert, "--tls-cert")?;
    let key = read(&files.key, "--tls-key")?;
    let ca = read(&files.ca, "--ca")?;
    // The fixed configurations check that the files agree (a key that is
    // not the certificate's, a CA that does not parse) with the errors of
    // `viking_pki`.
    viking_pki::server_config(&cert, &key, &ca, viking_pki::ClientAuth::Optional)
        .context("--tls-cert/--tls-key/--ca")?;
    let identity = LiveIdentity::new(&cert, &key).context("--tls-cert/--tls-key")?;
    let server =
        viking_pki::server_config_live(&ca, viking_pki::ClientAuth::Optional, identity.clone())
            .context("--tls-cert/--tls-key/--ca")?;
    let client =
        viking_pki::client_config_live(&ca, identity.clone()).context("--tls-cert/--ca")?;
    let (etcd_cert, etcd_key) = match &files.etcd_identity {
        Some((c, k)) => (read(c, "--etcd-cert")?, read(k, "--etcd-key")?),
        None => (cert, key),
    };
    Ok(Tls {
        server,
        client,
        etcd: EtcdTls {
            ca_pem: ca.clone(),
            cert_pem: etcd_cert,
            key_pem: etcd_key,
        },
        identity,
        files: files.clone(),
        ca_pem: ca,
        etcd_store: Arc::new(OnceLock::new()),
    })
}

impl Tls {
    /// Tell this etcd store of renewed certificates.
    pub fn attach_etcd(&self, store: EtcdStore) {
        let _ = self.etcd_store.set(store);
    }

    /// Show `cert_pem`/`key_pem` from now on: new API connections and new
    /// calls to peers at once, etcd once a client connected with them is
    /// answered. The API and peers have switched even when etcd fails (it
    /// goes on with the old certificate, still valid).
    pub async fn swap(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        self.identity
            .set(cert_pem, key_pem)
            .context("the renewed certificate")?;
        let own_etcd_identity = self.files.etcd_identity.is_some();
        if let Some(store) = self.etcd_store.get().filter(|_| !own_etcd_identity) {
            store
                .set_identity(&EtcdTls {
                    ca_pem: self.ca_pem.clone(),
                    cert_pem: cert_pem.to_string(),
                    key_pem: key_pem.to_string(),
                })
                .await
                .context("reconnecting to etcd with the renewed certificate")?;
        }
        Ok(())
    }
}
