//! A certificate seen again, and replaced while it is in use:
//!
//! - [`CertInfo`]: what a certificate says that renewal needs (its validity,
//!   serial and fingerprint);
//! - [`Ca::reissue`]: a new certificate like a current one (the same subject,
//!   names and addresses, the same validity span) with a new key;
//! - [`LiveIdentity`]: a certificate and key that can be swapped under
//!   running rustls configurations ([`server_config_live`],
//!   [`client_config_live`]): handshakes after [`LiveIdentity::set`] show the
//!   new certificate, connections already open keep theirs. The client
//!   configuration's resumption store is emptied at each swap: a session
//!   made with the old certificate is not resumed, so the server sees the
//!   new one.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;

use crate::{certs, key, provider, roots, Ca, ClientAuth, Issued, PkiError, Result};

/// What renewal reads of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Validity, seconds since the Unix epoch.
    pub not_before: u64,
    pub not_after: u64,
    /// The serial number, hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, hex.
    pub fingerprint: String,
}

impl CertInfo {
    /// The validity span, `not_after - not_before`.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.not_after.saturating_sub(self.not_before))
    }
}

fn params_of(der: &CertificateDer<'_>) -> Result<CertificateParams> {
    Ok(CertificateParams::from_ca_cert_der(der)?)
}

fn epoch(t: time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

/// What the first certificate of `pem` says.
pub fn cert_info(pem: &str) -> Result<CertInfo> {
    let der = certs(pem, "certificate")?.remove(0);
    cert_info_der(der.as_ref())
}

/// What a DER certificate says.
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo> {
    let cert = CertificateDer::from(der);
    let p = params_of(&cert)?;
    Ok(CertInfo {
        not_before: epoch(p.not_before),
        not_after: epoch(p.not_after),
        serial: p
            .serial_number
            .as_ref()
            .map(|s| s.as_ref().iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default(),
        fingerprint: crate::fingerprint_der(der),
    })
}

impl Ca {
    /// A new certificate like `current_pem`: its subject, DNS names and IP
    /// addresses, a new key, valid from now for the same span
    /// (`not_after - not_before`) as the current one, with the same slack
    /// for clocks behind as [`Ca::issue`] gives.
    pub fn reissue(&self, current_pem: &str) -> Result<Issued> {
        let der = certs(current_pem, "current certificate")?.remove(0);
        let old = params_of(&der)?;
        let span = (old.not_after - old.not_before).max(time::Duration::seconds(2));
        let (issuer, issuer_key) = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = old.distinguished_name;
        params.subject_alt_names = old.subject_alt_names;
        crate::leaf_usages(&mut params);
        let now = time::OffsetDateTime::now_utc();
        let span_std = Duration::from_secs(u64::try_from(span.whole_seconds()).unwrap_or(2));
        params.not_before = now - crate::slack(span_std);
        params.not_after = params.not_before + span;
        let cert = params.signed_by(&key, &issuer, &issuer_key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The certificate and key this process shows, swappable while TLS
/// configurations built on it are in use.
pub struct LiveIdentity {
    current: RwLock<(Arc<CertifiedKey>, String)>,
    /// The client sessions to resume, made with the current certificate.
    sessions: RwLock<Arc<rustls::client::ClientSessionMemoryCache>>,
}

/// How many servers' sessions a client configuration keeps (rustls's
/// default).
const SESSIONS: usize = 256;

impl std::fmt::Debug for LiveIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveIdentity")
            .field("cert", &cert_info(&self.cert_pem()).ok())
            .finish()
    }
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>> {
    let ck = CertifiedKey::from_der(
        certs(cert_pem, "certificate")?,
        key(key_pem, "key")?,
        &provider(),
    )?;
    Ok(Arc::new(ck))
}

impl LiveIdentity {
    /// An identity showing `cert_pem` (with its key); both must parse and
    /// match.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<LiveIdentity>> {
        Ok(Arc::new(LiveIdentity {
            current: RwLock::new((certified(cert_pem, key_pem)?, cert_pem.to_string())),
            sessions: RwLock::new(Arc::new(rustls::client::ClientSessionMemoryCache::new(
                SESSIONS,
            ))),
        }))
    }

    /// Show `cert_pem` from the next handshake on. A certificate or key
    /// that does not parse, or a key that is not the certificate's, changes
    /// nothing.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let ck = certified(cert_pem, key_pem)?;
        // A swap of two values: consistent even after a panic elsewhere.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (ck, cert_pem.to_string());
        *self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner) =
            Arc::new(rustls::client::ClientSessionMemoryCache::new(SESSIONS));
        Ok(())
    }

    fn sessions(&self) -> Arc<rustls::client::ClientSessionMemoryCache> {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The certificate shown now (PEM).
    pub fn cert_pem(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl rustls::client::ResolvesClientCert for LiveIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The sessions a client resumes: those made since the last swap.
impl rustls::client::ClientSessionStore for LiveIdentity {
    fn set_kx_hint(&self, server: ServerName<'static>, group: rustls::NamedGroup) {
        self.sessions().set_kx_hint(server, group)
    }

    fn kx_hint(&self, server: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.sessions().kx_hint(server)
    }

    fn set_tls12_session(
        &self,
        server: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.sessions().set_tls12_session(server, value)
    }

    fn tls12_session(
        &self,
        server: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.sessions().tls12_session(server)
    }

    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.sessions().remove_tls12_session(server)
    }

    fn insert_tls13_ticket(
        &self,
        server: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.sessions().insert_tls13_ticket(server, value)
    }

    fn take_tls13_ticket(
        &self,
        server: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.sessions().take_tls13_ticket(server)
    }
}

/// Like [`crate::server_config`], showing whatever `identity` holds at
/// each handshake.
pub fn server_config_live(
    ca_pem: &str,
    auth: ClientAuth,
    identity: Arc<LiveIdentity>,
) -> Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)?),
        provider(),
    );
    let verifier = match auth {
        ClientAuth::Optional => builder.allow_unauthenticated().build(),
        ClientAuth::Required => builder.build(),
    }
    .map_err(|e| PkiError::Verifier(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    Ok(Arc::new(config))
}

/// Like [`crate::client_config`] with an identity, showing whatever
/// `identity` holds at each handshake.
pub fn client_config_live(
    ca_pem: &str,
    identity: Arc<LiveIdentity>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_cert_resolver(identity.clone());
    config.resumption = rustls::client::Resumption::store(identity);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{client_config, server_config, CERT_LIFETIME};

    /// Handshake a client and a server in memory; the certificates each
    /// side saw of the other (server's, client's).
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
        name: &str,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let sn = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(client, sn).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..20 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking(), "no handshake");
        let server_cert = c.peer_certificates().unwrap()[0].as_ref().to_vec();
        let client_cert = s.peer_certificates().map(|cs| cs[0].as_ref().to_vec());
        (server_cert, client_cert)
    }

    #[test]
    fn a_reissued_certificate_keeps_names_and_span_with_a_new_key() {
        let ca = Ca::generate("t").unwrap();
        let ips = ["10.1.2.3".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let old = ca
            .issue("n1", &ips, &["n1.example".into()], Duration::from_secs(30))
            .unwrap();
        let new = ca.reissue(&old.cert_pem).unwrap();
        let (a, b) = (
            cert_info(&old.cert_pem).unwrap(),
            cert_info(&new.cert_pem).unwrap(),
        );
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_ne!(a.serial, b.serial);
        assert_eq!(a.lifetime(), b.lifetime());
        // A short lifetime gets a short slack: renewal is not due at once.
        assert_eq!(a.lifetime(), Duration::from_secs(33));
        assert_ne!(old.key_pem, new.key_pem);
        let old_p = params_of(&certs(&old.cert_pem, "").unwrap()[0]).unwrap();
        let new_p = params_of(&certs(&new.cert_pem, "").unwrap()[0]).unwrap();
        assert_eq!(old_p.subject_alt_names, new_p.subject_alt_names);
        assert_eq!(old_p.distinguished_name, new_p.distinguished_name);
        // It chains to the CA and serves for the same names.
        let live = LiveIdentity::new(&new.cert_pem, &new.key_pem).unwrap();
        let server = server_config_live(ca.cert_pem(), ClientAuth::Optional, live).unwrap();
        for name in ["n1", "n1.example", "10.1.2.3"] {
            handshake(
                client_config(ca.cert_pem(), None).unwrap(),
                server.clone(),
                name,
            );
        }
        // The default lifetime keeps its five minutes of slack.
        let long = ca.issue("n1", &[], &[], CERT_LIFETIME).unwrap();
        let info = cert_info(&long.cert_pem).unwrap();
        assert_eq!(info.lifetime(), CERT_LIFETIME + Duration::from_secs(300));
    }

    #[test]
    fn a_live_identity_shows_its_new_certificate_at_the_next_handshake() {
        let ca = Ca::generate("t").unwrap();
        let first = ca.issue("n1", &[], &[], CERT_LIFETIME).unwrap();
        let second = ca.reissue(&first.cert_pem).unwrap();
        let fp = |pem: &str| cert_info(pem).unwrap().fingerprint;
        let live = LiveIdentity::new(&first.cert_pem, &first.key_pem).unwrap();
        let server = server_config_live(ca.cert_pem(), ClientAuth::Required, live.clone()).unwrap();
        let client = client_config_live(ca.cert_pem(), live.clone()).unwrap();
        let (s, c) = handshake(client.clone(), server.clone(), "n1");
        assert_eq!(crate::fingerprint_der(&s), fp(&first.cert_pem));
        assert_eq!(crate::fingerprint_der(&c.unwrap()), fp(&first.cert_pem));
        // A key that is not the certificate's changes nothing.
        assert!(live.set(&second.cert_pem, &first.key_pem).is_err());
        assert_eq!(fp(&live.cert_pem()), fp(&first.cert_pem));
        live.set(&second.cert_pem, &second.key_pem).unwrap();
        let (s, c) = handshake(client, server, "n1");
        assert_eq!(crate::fingerprint_der(&s), fp(&second.cert_pem));
        assert_eq!(crate::fingerprint_der(&c.unwrap()), fp(&second.cert_pem));
        // A server with a fixed certificate sees the new client certificate.
        let fixed = server_config(
            &first.cert_pem,
            &first.key_pem,
            ca.cert_pem(),
            ClientAuth::Required,
        )
        .unwrap();
        let client = client_config_live(ca.cert_pem(), live).unwrap();
        let (_, c) = handshake(client, fixed, "n1");
        assert_eq!(crate::fingerprint_der(&c.unwrap()), fp(&second.cert_pem));
    }
}
