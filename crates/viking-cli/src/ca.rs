//! `viking ca`: a cluster CA for clusters built without `viking mesh` (on
//! the user's own etcd): `init` makes the CA in a directory, `issue` a
//! certificate for a server's name and addresses, signed by it, for
//! `viking server --tls-cert/--tls-key/--ca` and `--etcd-cert/--etcd-key`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;
use viking_pki::{Ca, CERT_LIFETIME};

use crate::Failure;

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Make a new cluster CA: DIR/ca.pem (0644) and DIR/ca-key.pem (0600).
    Init {
        /// Where the CA's files go.
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name, in the CA's subject.
        #[arg(long, default_value = "viking")]
        cluster: String,
    },
    /// Issue a certificate for a server: DIR/NAME.pem and DIR/NAME-key.pem.
    Issue {
        /// The server's name (`--name`), its certificate's subject.
        name: String,
        /// An address the server is reached at (repeat for more);
        /// 127.0.0.1 is always included.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// A DNS name the server is reached at (repeat for more).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// The CA's directory; the certificate is written there too.
        #[arg(long)]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 90, conflicts_with = "lifetime")]
        days: u64,
        /// How long the certificate is valid, as a number and a unit (30s,
        /// 10m, 12h, 90d): instead of --days. A server renews its
        /// certificate between 50 % and 80 % of it when it finds the CA in
        /// its store.
        #[arg(long, value_parser = parse_lifetime)]
        lifetime: Option<std::time::Duration>,
    },
}

/// The shortest and longest lifetime `--lifetime` takes.
const MIN_LIFETIME: u64 = 10;
const MAX_LIFETIME: u64 = 3650 * 86_400;

/// `--lifetime`: `30s`, `10m`, `12h`, `90d` (10 s to 3650 days).
pub fn parse_lifetime(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} must be a number and a unit: 30s, 10m, 12h, 90d");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let secs = match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        'd' => n.checked_mul(86_400),
        _ => return Err(bad()),
    }
    .ok_or_else(bad)?;
    if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&secs) {
        return Err(format!("{s:?} must be from 10s to 3650d"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::new(1, e.to_string())
}

pub fn run(c: CaCommand) -> Result<i32, Failure> {
    match c {
        CaCommand::Init { dir, cluster } => {
            if dir.join(viking_pki::CA_KEY).exists() {
                return Err(Failure::new(
                    1,
                    format!(
                        "{} already holds a CA; remove it first to make a new one",
                        dir.display()
                    ),
                ));
            }
            let ca = Ca::generate(&cluster).map_err(fail)?;
            ca.save(&dir).map_err(fail)?;
            println!("CA written to {}", dir.join(viking_pki::CA_CERT).display());
            println!("fingerprint {}", ca.fingerprint().map_err(fail)?);
            Ok(0)
        }
        CaCommand::Issue {
            name,
            mut ips,
            dns,
            dir,
            days,
            lifetime,
        } => {
            if days == 0 || days > 3650 {
                return Err(Failure::new(2, "--days: must be 1 to 3650"));
            }
            let ca = Ca::load(&dir).map_err(fail)?;
            let lo: IpAddr = [127, 0, 0, 1].into();
            if !ips.contains(&lo) {
                ips.push(lo);
            }
            let lifetime = match lifetime {
                Some(l) => l,
                None if days == 90 => CERT_LIFETIME,
                None => std::time::Duration::from_secs(days * 24 * 3600),
            };
            let issued = ca.issue(&name, &ips, &dns, lifetime).map_err(fail)?;
            let cert = dir.join(format!("{name}.pem"));
            let key = dir.join(format!("{name}-key.pem"));
            viking_pki::write_file(&cert, &issued.cert_pem, 0o644).map_err(fail)?;
            viking_pki::write_file(&key, &issued.key_pem, 0o600).map_err(fail)?;
            println!("{}", cert.display());
            println!("{}", key.display());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_lifetime;
    use std::time::Duration;

    #[test]
    fn lifetimes_take_a_unit_and_stay_in_bounds() {
        assert_eq!(parse_lifetime("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_lifetime("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_lifetime("90d"), Ok(Duration::from_secs(90 * 86_400)));
        for bad in [
            "",
            "30",
            "s",
            "5s",
            "3651d",
            "1y",
            "-3d",
            "99999999999999999d",
        ] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}
