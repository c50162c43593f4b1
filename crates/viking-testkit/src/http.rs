//! A tiny blocking HTTP/1.1 GET over `std::net` (and rustls for
//! `https`), enough to poll health endpoints (etcd's `/health`, viking's
//! `/v1/ping`) without an HTTP client crate.

use anyhow::{bail, Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Status and body of an HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body (de-chunked when the server used chunked encoding).
    pub body: String,
}

impl HttpResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `GET http://{addr}{path}` with an optional `Authorization: Bearer` token.
/// `addr` is `host:port`; every step is bounded by `timeout`.
pub fn http_get(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let mut stream = connect(addr, timeout)?;
    get_over(&mut stream, addr, path, bearer)
}

/// `GET https://{addr}{path}` with `tls` (which decides what the server's
/// certificate must chain to, and what this client shows); the certificate
/// must name `addr`'s host (an IP address or a name).
pub fn https_get(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
) -> Result<HttpResponse> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .with_context(|| format!("bad server name {host}"))?;
    let conn = rustls::ClientConnection::new(tls, name).context("TLS client")?;
    let mut stream = rustls::StreamOwned::new(conn, connect(addr, timeout)?);
    get_over(&mut stream, addr, path, bearer)
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .with_context(|| format!("bad address {addr}"))?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    let stream =
        TcpStream::connect_timeout(&sock, timeout).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn get_over(
    stream: &mut impl ReadWrite,
    addr: &str,
    path: &str,
    bearer: Option<&str>,
) -> Result<HttpResponse> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = bearer {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS server that closes without close_notify, after a whole answer.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e).with_context(|| format!("read response from {addr}{path}")),
    }
    parse_response(&raw)
}

/// A byte stream both ways: a TCP socket or a TLS session over one.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("incomplete HTTP response ({} bytes)", raw.len());
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_str, 16) else {
            break;
        };
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = parse_response(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (401, "abcde"));
        assert!(!r.is_success());
    }
}
