//! Address plumbing: this machine's name and address, `ip:port` with IPv6
//! brackets, and the `HOST[:PORT]` a user gives `viking mesh join`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::{IoContext, MeshError, Result, DEFAULT_API_PORT};

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The address this machine uses to reach `target` (or the default route).
pub(crate) fn detect_ip(target: Option<&str>) -> Result<String> {
    let to: SocketAddr = match target.and_then(|t| t.to_socket_addrs().ok()?.next()) {
        Some(a) => a,
        None => SocketAddr::from(([192, 0, 2, 1], 9)),
    };
    let bind: SocketAddr = if to.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        "[::]:0"
            .parse()
            .map_err(|_| MeshError::Failed("bad address".into()))?
    };
    // A UDP "connect" sends nothing: it only picks the route.
    let sock = std::net::UdpSocket::bind(bind).ctx(|| "finding this machine's address".into())?;
    sock.connect(to)
        .and_then(|_| sock.local_addr())
        .map(|a| a.ip().to_string())
        .map_err(|e| {
            MeshError::Invalid(format!(
                "cannot find this machine's address ({e}): pass --ip"
            ))
        })
}

pub(crate) fn sock(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `HOST`, `HOST:PORT` or `http://HOST:PORT` as `(host, port)`.
pub(crate) fn parse_addr(addr: &str) -> Result<(String, u16)> {
    let rest = addr.strip_prefix("http://").unwrap_or(addr);
    let rest = rest.trim_end_matches('/');
    let bad = || MeshError::Invalid(format!("{addr:?} is not HOST[:PORT]"));
    if rest.is_empty() || rest.contains('/') || addr.starts_with("https://") {
        return Err(bad());
    }
    if let Ok(sa) = rest.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    if let Ok(ip) = rest
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Ok((ip.to_string(), DEFAULT_API_PORT));
    }
    match rest.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        None => Ok((rest.to_string(), DEFAULT_API_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(parse_addr("10.0.0.1").unwrap(), ("10.0.0.1".into(), 8791));
        assert_eq!(parse_addr("10.0.0.1:9").unwrap(), ("10.0.0.1".into(), 9));
        assert_eq!(
            parse_addr("http://h.example:80/").unwrap(),
            ("h.example".into(), 80)
        );
        assert!(parse_addr("https://x:1").is_err());
        assert!(parse_addr("").is_err());
    }
}
