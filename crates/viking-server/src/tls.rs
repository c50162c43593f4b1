//! This server's TLS material, loaded once at start from `--tls-cert`,
//! `--tls-key` and `--ca`: the API's server configuration (client
//! certificates from the cluster's CA are asked for, not required: an
//! operator's CLI may come with the token only), the client configuration
//! for calls to other servers (mutual TLS: this server shows its
//! certificate, trusts only the CA), and what etcd is reached with (the
//! server's certificate, or `--etcd-cert`/`--etcd-key`).

use std::sync::Arc;

use anyhow::Context;
use viking_store::EtcdTls;

use crate::config::TlsFiles;

/// What this server serves and calls with.
#[derive(Clone)]
pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    pub etcd: EtcdTls,
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
    let server = viking_pki::server_config(&cert, &key, &ca, viking_pki::ClientAuth::Optional)
        .context("--tls-cert/--tls-key/--ca")?;
    let client =
        viking_pki::client_config(&ca, Some((&cert, &key))).context("--tls-cert/--tls-key/--ca")?;
    let (etcd_cert, etcd_key) = match &files.etcd_identity {
        Some((c, k)) => (read(c, "--etcd-cert")?, read(k, "--etcd-key")?),
        None => (cert, key),
    };
    Ok(Tls {
        server,
        client,
        etcd: EtcdTls {
            ca_pem: ca,
            cert_pem: etcd_cert,
            key_pem: etcd_key,
        },
    })
}
