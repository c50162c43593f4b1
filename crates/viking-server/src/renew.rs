//! Renewal of this server's certificate without a restart.
//!
//! A server started with `--tls-cert/--tls-key/--ca` renews its certificate
//! at a random point between 50 % and 80 % of its lifetime
//! ([`viking_pki::renew_at`]): it reads the cluster's CA from the store
//! ([`keys::MESH_CA`], which must be the CA of `--ca`), issues a certificate
//! for the same subject, names and addresses with the same lifetime
//! ([`viking_pki::Ca::reissue`]), writes it over the files of the flags
//! (each replaced atomically, the key first and mode 0600: in a mesh, etcd
//! reads these same files and picks the new ones up by itself), and swaps
//! it in ([`crate::tls::Tls::swap`]): new API connections, new calls to
//! peers and a new etcd client show it.
//!
//! Without a CA in the store (a cluster built with `viking ca` keeps its CA
//! on the operator's machine), the server says at start when its
//! certificate expires and that it will not be renewed, warns again when
//! less than a fifth of its lifetime is left, and keeps looking for a CA in
//! the store now and then. A failed renewal is tried again, sooner as the
//! expiry comes nearer ([`retry_at`]).

use std::sync::Arc;
use std::time::Duration;

use viking_core::keys;
use viking_core::records::{decode, CaRecord, RecordError};
use viking_pki::CertInfo;
use viking_store::StoreError;

use crate::tls::Tls;
use crate::{stopped, Shared};

/// The longest single sleep: the wall clock is read again after it (a
/// machine that slept, a clock set).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Why a renewal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("no cluster CA in the store ({})", keys::MESH_CA)]
    NoCa,
    #[error("reading the cluster CA from the store: {0}")]
    Store(#[from] StoreError),
    #[error("the cluster CA in the store: {0}")]
    Record(#[from] RecordError),
    #[error(
        "the CA in the store (fingerprint {store}) is not the one of --ca (fingerprint {trusted})"
    )]
    OtherCa { store: String, trusted: String },
    #[error("{0}")]
    Pki(#[from] viking_pki::PkiError),
    #[error("{0:#}")]
    Swap(anyhow::Error),
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    crate::now_ms() / 1000
}

/// When less than a fifth of the lifetime is left.
pub fn warn_at(info: &CertInfo) -> u64 {
    let life = info.not_after.saturating_sub(info.not_before);
    info.not_before + life / 5 * 4
}

/// When to try again after a renewal that did not happen at `now`: a tenth
/// of the time left (1 s to 10 min), or every minute once expired.
pub fn retry_at(info: &CertInfo, now: u64) -> u64 {
    if now >= info.not_after {
        return now + 60;
    }
    now + ((info.not_after - now) / 10).clamp(1, 600)
}

/// The next renewal of a certificate, at a random point of its lifetime.
fn due(info: &CertInfo) -> u64 {
    viking_pki::renew_at(
        info.not_before,
        info.not_after,
        viking_pki::renew_fraction(),
    )
}

/// `at` (seconds since the epoch) as a time from now: `in 44d 23h`,
/// `in 25s`, `12m ago`.
fn human(at: u64) -> String {
    let now = now_secs();
    let (d, future) = if at >= now {
        (at - now, true)
    } else {
        (now - at, false)
    };
    let words = match d {
        0..=119 => format!("{d}s"),
        120..=7_199 => format!("{}m", d / 60),
        7_200..=172_799 => format!("{}h {}m", d / 3600, d % 3600 / 60),
        _ => format!("{}d {}h", d / 86_400, d % 86_400 / 3600),
    };
    if future {
        format!("in {words} (unix {at})")
    } else {
        format!("{words} ago (unix {at})")
    }
}

/// The cluster CA in the store, checked against `--ca`.
async fn ca(sh: &Shared, tls: &Tls) -> Result<viking_pki::Ca, RenewError> {
    let kv = sh.store.get(keys::MESH_CA).await?.ok_or(RenewError::NoCa)?;
    let rec: CaRecord = decode(&kv.value)?;
    let ca = viking_pki::Ca::from_pem(&rec.cert_pem, &rec.key_pem)?;
    let store = ca.fingerprint()?;
    let trusted = viking_pki::fingerprint(&tls.ca_pem)?;
    if store != trusted {
        return Err(RenewError::OtherCa { store, trusted });
    }
    Ok(ca)
}

/// Renew now: a new certificate like the current one, written over the
/// files and swapped in; what it says.
pub async fn renew(sh: &Shared, tls: &Tls) -> Result<CertInfo, RenewError> {
    let ca = ca(sh, tls).await?;
    let issued = ca.reissue(&tls.identity.cert_pem())?;
    let info = viking_pki::cert_info(&issued.cert_pem)?;
    // The key first: a reader between the two renames sees the old
    // certificate with the new key for an instant, and retries.
    viking_pki::write_file(&tls.files.key, &issued.key_pem, 0o600)?;
    viking_pki::write_file(&tls.files.cert, &issued.cert_pem, 0o644)?;
    tls.swap(&issued.cert_pem, &issued.key_pem)
        .await
        .map_err(RenewError::Swap)?;
    Ok(info)
}

/// The renewal task: sleeps until the certificate is due, renews it, and
/// again, until shutdown. A server without TLS only waits for shutdown.
pub async fn run(sh: Arc<Shared>) {
    let mut shutdown = sh.shutdown.clone();
    let Some(tls) = sh.tls.clone() else {
        stopped(&mut shutdown).await;
        return;
    };
    let mut info = match viking_pki::cert_info(&tls.identity.cert_pem()) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "cannot read this server's certificate; it will not be renewed");
            stopped(&mut shutdown).await;
            return;
        }
    };
    let mut next = due(&info);
    match ca(&sh, &tls).await {
        Ok(_) => tracing::info!(
            expires = %human(info.not_after),
            renewal = %human(next),
            "this server's certificate is renewed before it expires"
        ),
        Err(e) => tracing::warn!(
            expires = %human(info.not_after),
            why = %e,
            "this server's certificate will not be renewed automatically; \
             put the cluster's CA in the store or give the server a new certificate before then"
        ),
    }
    let mut warned = false;
    loop {
        let now = now_secs();
        if now < next {
            let pause = Duration::from_secs(next - now).min(MAX_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(pause) => continue,
                _ = stopped(&mut shutdown) => return,
            }
        }
        let renewed = tokio::select! {
            r = renew(&sh, &tls) => r,
            _ = stopped(&mut shutdown) => return,
        };
        let now = now_secs();
        match renewed {
            Ok(new) => {
                info = new;
                next = due(&info);
                warned = false;
                tracing::info!(
                    serial = %info.serial,
                    expires = %human(info.not_after),
                    renewal = %human(next),
                    "renewed this server's certificate"
                );
            }
            Err(e) => {
                let warn = warn_at(&info);
                if now >= warn && !warned {
                    warned = true;
                    tracing::warn!(
                        expires = %human(info.not_after),
                        why = %e,
                        "less than a fifth of this server's certificate lifetime is left and it is not renewed"
                    );
                } else if matches!(e, RenewError::NoCa) {
                    tracing::debug!("no cluster CA in the store; the certificate is not renewed");
                } else {
                    tracing::warn!(error = %e, "renewing this server's certificate failed; trying again");
                }
                next = if now < warn {
                    warn.min(retry_at(&info, now).max(now + 60))
                } else {
                    retry_at(&info, now)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: u64, not_after: u64) -> CertInfo {
        CertInfo {
            not_before,
            not_after,
            serial: String::new(),
            fingerprint: String::new(),
        }
    }

    #[test]
    fn a_failed_renewal_is_tried_again_sooner_as_expiry_nears() {
        let c = cert(1_000, 11_000);
        assert_eq!(warn_at(&c), 9_000);
        // 4000 s left: in 400 s.
        assert_eq!(retry_at(&c, 7_000), 7_400);
        // A long lifetime: at most ten minutes apart.
        let long = cert(0, 90 * 86_400);
        assert_eq!(retry_at(&long, 1_000), 1_600);
        // Seconds left: every second.
        assert_eq!(retry_at(&c, 10_995), 10_996);
        // Expired: every minute.
        assert_eq!(retry_at(&c, 12_000), 12_060);
    }
}
