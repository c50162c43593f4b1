//! viking-pki: the cluster's certificate authority and what it signs.
//!
//! - [`Ca`]: the cluster's CA (ECDSA P-256, made by `viking ca init` or
//!   `viking mesh init`), its fingerprint (SHA-256 of the certificate, hex,
//!   as join tokens carry it), and [`Ca::issue`]: a certificate for a
//!   server's name and addresses, good for both ends of a TLS connection
//!   (its API, and its calls to other servers and to etcd).
//! - [`JoinToken`]: `VKJ-1-<CA fingerprint>-<secret>`, swarm style: a
//!   joining machine checks the CA it is shown against the fingerprint before
//!   it sends the secret.
//! - [`renew_at`]: when a certificate is renewed (a random point between 50 %
//!   and 80 % of its lifetime, so a fleet does not renew at once).
//! - [`server_config`] and [`client_config`]: rustls configurations (ring
//!   provider: no C library to link) that trust only the cluster's CA.
//!
//! - [`renewal`]: what a certificate says ([`cert_info`]), a new one like
//!   it ([`Ca::reissue`]), and an identity swapped under running TLS
//!   configurations ([`LiveIdentity`]).
//!
//! Knows nothing about viking's servers or stores: files in, PEM and rustls
//! configurations out.

#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub mod renewal;
pub use renewal::{
    cert_info, cert_info_der, client_config_live, server_config_live, CertInfo, LiveIdentity,
};

/// The default lifetime of a server's certificate.
pub const CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// The lifetime of the certificates a mesh signs: [`CERT_LIFETIME`], or
/// `VIKING_CERT_LIFETIME` seconds (at least 10; for tests of renewal).
pub fn configured_lifetime() -> Duration {
    std::env::var("VIKING_CERT_LIFETIME")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s >= 10)
        .map(Duration::from_secs)
        .unwrap_or(CERT_LIFETIME)
}
/// The lifetime of a cluster's CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The file names in a PKI directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: not a valid PEM {expected}")]
    Pem {
        what: String,
        expected: &'static str,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS client verification: {0}")]
    Verifier(String),
    #[error("join token: {0}")]
    Token(String),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// The cluster's certificate authority.
#[derive(Clone)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &fingerprint(&self.cert_pem).ok())
            .finish()
    }
}

/// How long before its issue a certificate is valid, for clocks that are a
/// bit behind: five minutes, or a tenth of a short lifetime (so that a
/// certificate of seconds is not due for renewal as soon as it is made).
fn slack(lifetime: Duration) -> time::Duration {
    let s = (lifetime.as_secs() / 10).min(300);
    time::Duration::seconds(s as i64)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - slack(lifetime);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

impl Ca {
    /// A new CA for cluster `cluster` (its name goes in the subject).
    pub fn generate(cluster: &str) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("viking cluster CA {cluster}"));
        dn.push(DnType::OrganizationName, "viking");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_LIFETIME);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let ca = Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        };
        // Both must parse, and sign.
        ca.issuer()?;
        Ok(ca)
    }

    /// Read `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        Ca::from_pem(&cert, &key)
    }

    /// Write `ca.pem` (0644) and `ca-key.pem` (0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_file(&dir.join(CA_CERT), &self.cert_pem, 0o644)?;
        write_file(&dir.join(CA_KEY), &self.key_pem, 0o600)
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate's fingerprint: SHA-256 of its DER, hex.
    pub fn fingerprint(&self) -> Result<String> {
        fingerprint(&self.cert_pem)
    }

    fn issuer(&self) -> Result<(rcgen::Certificate, KeyPair)> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(&self.cert_pem)?;
        // The same subject and key: what signing needs of the issuer.
        let cert = params.self_signed(&key)?;
        Ok((cert, key))
    }

    /// A certificate for `name` at `ips` (and `dns` names), good as a TLS
    /// server and as a TLS client, valid for `lifetime`.
    pub fn issue(
        &self,
        name: &str,
        ips: &[IpAddr],
        dns: &[String],
        lifetime: Duration,
    ) -> Result<Issued> {
        let (issuer, issuer_key) = self.issuer()?;
        let key = KeyPair::generate()?;
        let cert = leaf_params(name, ips, dns, lifetime)?.signed_by(&key, &issuer, &issuer_key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Sign the public key of a certificate request (`csr_pem`, made by
    /// [`key_and_request`] on the machine that keeps the private key) for
    /// `name` at `ips` and `dns`: what the request itself asks for (its
    /// names, its extensions) is ignored, the signer decides.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        name: &str,
        ips: &[IpAddr],
        dns: &[String],
        lifetime: Duration,
    ) -> Result<String> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let (issuer, issuer_key) = self.issuer()?;
        let cert = leaf_params(name, ips, dns, lifetime)?.signed_by(
            &csr.public_key,
            &issuer,
            &issuer_key,
        )?;
        Ok(cert.pem())
    }

    /// The CA's private key, PEM (kept where only the cluster's servers
    /// can read it).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// The parameters of a server's certificate: its name (and `dns`) and
/// `ips` as subject alternative names, good for TLS servers and clients.
fn leaf_params(
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
    lifetime: Duration,
) -> Result<CertificateParams> {
    let mut names: Vec<String> = vec![name.to_string()];
    names.extend(dns.iter().cloned());
    names.sort();
    names.dedup();
    let mut params = CertificateParams::new(names)?;
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "viking");
    params.distinguished_name = dn;
    leaf_usages(&mut params);
    validity(&mut params, lifetime);
    Ok(params)
}

/// What a server's certificate is good for: TLS server and client, signed
/// by the CA it names (shared by issuing and renewal).
pub(crate) fn leaf_usages(params: &mut CertificateParams) {
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
}

/// A new private key and a certificate request for it (both PEM): the
/// key stays on this machine, the request goes to a server of the cluster,
/// which signs it ([`Ca::sign_request`]).
pub fn key_and_request(name: &str) -> Result<Issued> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok(Issued {
        cert_pem: csr.pem()?,
        key_pem: key.serialize_pem(),
    })
}

/// Write `contents` to `path` with `mode`, replacing it atomically.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| PkiError::Pem {
            what: what.to_string(),
            expected: "certificate",
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what: what.to_string(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

fn key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::Pem {
        what: what.to_string(),
        expected: "private key",
    })
}

/// SHA-256 of the first certificate in `pem`, hex.
pub fn fingerprint(pem: &str) -> Result<String> {
    let der = certs(pem, "CA certificate")?.remove(0);
    Ok(fingerprint_der(der.as_ref()))
}

/// SHA-256 of a DER certificate, hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A join token: `VKJ-1-<CA fingerprint, 64 hex>-<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub fingerprint: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("fingerprint", &self.fingerprint)
            .field("secret", &"<secret>")
            .finish()
    }
}

impl JoinToken {
    /// A new token for the CA with `fingerprint`, with a random secret.
    pub fn new(fingerprint: &str) -> JoinToken {
        let bytes: [u8; 24] = rand::random();
        JoinToken {
            fingerprint: fingerprint.to_string(),
            secret: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// Parse `VKJ-1-<fingerprint>-<secret>`.
    pub fn parse(s: &str) -> Result<JoinToken> {
        let mut parts = s.trim().splitn(4, '-');
        let bad = |why: &str| {
            PkiError::Token(format!("{why} (expected VKJ-1-<CA fingerprint>-<secret>)"))
        };
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("VKJ"), Some("1"), Some(fp), Some(secret)) => {
                if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("the CA fingerprint must be 64 hex digits"));
                }
                if secret.len() < 16 {
                    return Err(bad("the secret is too short"));
                }
                Ok(JoinToken {
                    fingerprint: fp.to_ascii_lowercase(),
                    secret: secret.to_string(),
                })
            }
            (Some("VKJ"), Some(v), _, _) => {
                Err(bad(&format!("version {v:?} is not one this viking reads")))
            }
            _ => Err(bad("not a viking join token")),
        }
    }

    /// Whether `secret` is this token's (constant time).
    pub fn secret_matches(&self, secret: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.secret.as_bytes().ct_eq(secret.as_bytes()).into()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VKJ-1-{}-{}", self.fingerprint, self.secret)
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`
/// (seconds since the epoch): at `fraction` of its lifetime, where
/// `fraction` is drawn from 0.5 to 0.8 by the caller ([`renew_fraction`]).
pub fn renew_at(not_before: u64, not_after: u64, fraction: f64) -> u64 {
    let life = not_after.saturating_sub(not_before) as f64;
    not_before + (life * fraction.clamp(0.5, 0.8)) as u64
}

/// A random point between 50 % and 80 % of a lifetime.
pub fn renew_fraction() -> f64 {
    0.5 + rand::random::<f64>() * 0.3
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// Whether a server asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client may show one (servers do, to each other); an operator's
    /// CLI may come with the token only.
    Optional,
    /// Every client must show a certificate from the CA.
    Required,
}

/// A TLS server with `cert`/`key` that trusts client certificates from the
/// CA in `ca_pem` only.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    auth: ClientAuth,
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
        .with_single_cert(certs(cert_pem, "certificate")?, key(key_pem, "key")?)?;
    Ok(Arc::new(config))
}

/// A TLS client that trusts only the CA in `ca_pem`, showing `identity`
/// (certificate and key, PEM) when given.
pub fn client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let config = match identity {
        Some((cert, k)) => {
            builder.with_client_auth_cert(certs(cert, "certificate")?, key(k, "key")?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A TLS client that accepts whatever certificate the server shows, for
/// one purpose only: fetching the CA certificate that a join token's
/// fingerprint then checks (`GET /v1/mesh/ca`, which carries nothing
/// secret). Nothing else may use it.
pub fn unverified_client_config() -> Result<Arc<rustls::ClientConfig>> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts any server certificate; still checks the handshake's
/// signatures (so the server holds the key of what it shows).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_that_chain_to_it() {
        let ca = Ca::generate("test").unwrap();
        let issued = ca
            .issue(
                "n1",
                &["10.0.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
                &["localhost".into()],
                CERT_LIFETIME,
            )
            .unwrap();
        // A server with it and a client trusting the CA agree (configs build).
        server_config(
            &issued.cert_pem,
            &issued.key_pem,
            ca.cert_pem(),
            ClientAuth::Optional,
        )
        .unwrap();
        client_config(ca.cert_pem(), Some((&issued.cert_pem, &issued.key_pem))).unwrap();
        // Verified against the CA's roots by webpki.
        let leaf = certs(&issued.cert_pem, "leaf").unwrap().remove(0);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(ca.cert_pem()).unwrap()),
            provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let now = rustls::pki_types::UnixTime::now();
        for name in ["n1", "localhost", "10.0.0.1", "127.0.0.1"] {
            let sn = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &sn, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("n2").unwrap();
        assert!(verifier
            .verify_server_cert(&leaf, &[], &other, &[], now)
            .is_err());
        // Another CA's certificate does not chain.
        let stranger = Ca::generate("other").unwrap();
        let foreign = stranger.issue("n1", &[], &[], CERT_LIFETIME).unwrap();
        let foreign = certs(&foreign.cert_pem, "foreign").unwrap().remove(0);
        let sn = rustls::pki_types::ServerName::try_from("n1").unwrap();
        assert!(verifier
            .verify_server_cert(&foreign, &[], &sn, &[], now)
            .is_err());
    }

    /// The key stays with the requester; the signer decides the names.
    #[test]
    fn a_request_is_signed_for_the_names_the_signer_gives() {
        let ca = Ca::generate("test").unwrap();
        let req = key_and_request("evil.example").unwrap();
        let cert = ca
            .sign_request(
                &req.cert_pem,
                "n2",
                &["10.0.0.2".parse().unwrap()],
                &[],
                CERT_LIFETIME,
            )
            .unwrap();
        // The signed certificate goes with the requester's key.
        server_config(&cert, &req.key_pem, ca.cert_pem(), ClientAuth::Required).unwrap();
        let other_key = key_and_request("n2").unwrap().key_pem;
        assert!(server_config(&cert, &other_key, ca.cert_pem(), ClientAuth::Required).is_err());
        let leaf = certs(&cert, "leaf").unwrap().remove(0);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(ca.cert_pem()).unwrap()),
            provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let now = rustls::pki_types::UnixTime::now();
        let ok = |name: &str| {
            let sn = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &sn, &[], now)
                .is_ok()
        };
        assert!(ok("n2") && ok("10.0.0.2"));
        assert!(!ok("evil.example"), "the request's own name is not signed");
        assert!(ca
            .sign_request("not a request", "n2", &[], &[], CERT_LIFETIME)
            .is_err());
    }

    #[test]
    fn a_ca_survives_being_saved_and_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("viking-pki-{}", rand::random::<u64>()));
        let ca = Ca::generate("x").unwrap();
        ca.save(&d).unwrap();
        let again = Ca::load(&d).unwrap();
        assert_eq!(again.fingerprint().unwrap(), ca.fingerprint().unwrap());
        let mode = std::fs::metadata(d.join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        again.issue("n", &[], &[], CERT_LIFETIME).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn join_tokens_carry_the_fingerprint() {
        let ca = Ca::generate("x").unwrap();
        let fp = ca.fingerprint().unwrap();
        assert_eq!(fp.len(), 64);
        let t = JoinToken::new(&fp);
        let s = t.to_string();
        assert!(s.starts_with(&format!("VKJ-1-{fp}-")));
        let back = JoinToken::parse(&s).unwrap();
        assert_eq!(back, t);
        assert!(back.secret_matches(&t.secret));
        assert!(!back.secret_matches("nope"));
        for bad in [
            "",
            "VKJ-2-aa-bb",
            "VKJ-1-short-secretsecretsecret",
            "tok-123",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn renewal_falls_between_half_and_four_fifths() {
        for _ in 0..100 {
            let at = renew_at(1000, 2000, renew_fraction());
            assert!((1500..=1800).contains(&at), "{at}");
        }
    }
}
