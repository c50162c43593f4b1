//! [`Client`]: talks to a viking server's HTTP API, one connection per
//! request (the CLI makes a few calls; servers forward rarely), and opens
//! attached streams through an HTTP upgrade.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::api::{ErrorBody, ProgressLine, RunResponse, ATTACH_PROTOCOL};

/// How long connecting to a server may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The bidirectional byte stream of an attached job.
pub type AttachedIo = TokioIo<hyper::upgrade::Upgraded>;

/// Errors talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {0:?}: use http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot reach the viking server at {addr}: {reason} (is `viking server` running? set --server or VIKING_SERVER)")]
    Connect { addr: String, reason: String },
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("talking to the viking server: {0}")]
    Http(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    addr: String,
    token: Option<String>,
}

impl Client {
    /// `server` is `http://HOST:PORT` (or `HOST:PORT`).
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        let rest = server.strip_prefix("http://").unwrap_or(server);
        let addr = rest.trim_end_matches('/');
        if addr.is_empty()
            || addr.contains('/')
            || !addr.contains(':')
            || server.starts_with("https://")
        {
            return Err(ClientError::BadUrl(server.to_string()));
        }
        Ok(Self {
            addr: addr.to_string(),
            token,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
        // A host cut off the network drops SYNs: give up after a few
        // seconds rather than the kernel's minutes.
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await
        {
            Ok(r) => r.map_err(|e| ClientError::Connect {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?,
            Err(_) => {
                return Err(ClientError::Connect {
                    addr: self.addr.clone(),
                    reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            // Ends when the response (or upgraded stream) is done.
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr);
        if let Some(t) = &self.token {
            b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            b = b.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        b.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// Send a request; any status is returned as is.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let req = self.request(method, path, body)?;
        let mut sender = self.connect().await?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// Send a request and read a JSON answer; an error status becomes
    /// [`ClientError::Api`] with the server's message.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = read_body(resp).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Http(format!("unexpected answer: {e}")))
    }

    /// Send a request whose answer has no body of interest; an error status
    /// becomes [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = read_body(resp).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(())
    }

    /// Send a request whose answer is a stream; an error status becomes
    /// [`ClientError::Api`].
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Incoming, ClientError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = read_body(resp).await?;
            return Err(api_error(status, &bytes));
        }
        Ok(resp.into_body())
    }

    /// POST a job to a `progress=true` path and follow its progress lines
    /// until the result; `on_progress` sees each line.
    pub async fn run_with_progress(
        &self,
        path: &str,
        doc: Vec<u8>,
        on_progress: &(dyn Fn(String) + Sync),
    ) -> Result<RunResponse, ClientError> {
        let mut body = self.stream(Method::POST, path, Some(doc)).await?;
        let mut buf = bytes::BytesMut::new();
        loop {
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(nl + 1);
                let parsed: ProgressLine = serde_json::from_slice(&line).map_err(|e| {
                    ClientError::Http(format!("unexpected answer from the server: {e}"))
                })?;
                match parsed {
                    ProgressLine::Progress(p) => on_progress(p),
                    ProgressLine::Done(r) => return Ok(*r),
                    ProgressLine::Error(ErrorBody { error, status }) => {
                        return Err(ClientError::Api {
                            status,
                            message: error,
                        })
                    }
                }
            }
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ClientError::Http(format!(
                        "reading the server's answer: {e}"
                    )))
                }
                None => {
                    return Err(ClientError::Http(
                        "the server closed the connection before the job started".to_string(),
                    ))
                }
            }
        }
    }

    /// Open an attached stream (`101 Switching Protocols`).
    pub async fn attach(&self, path: &str, body: Vec<u8>) -> Result<AttachedIo, ClientError> {
        let mut req = self.request(Method::POST, path, Some(body))?;
        let h = req.headers_mut();
        h.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("Upgrade"),
        );
        h.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static(ATTACH_PROTOCOL),
        );
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = read_body(resp).await?;
            return Err(api_error(status, &bytes));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Http(format!("upgrading the connection: {e}")))?;
        Ok(TokioIo::new(upgraded))
    }
}

async fn read_body(resp: Response<Incoming>) -> Result<Bytes, ClientError> {
    resp.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ClientError::Http(e.to_string()))
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => b.error,
        Err(_) => format!(
            "server answered {status}: {}",
            String::from_utf8_lossy(bytes)
        ),
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Client::new("http://127.0.0.1:8791", None).unwrap().addr(),
            "127.0.0.1:8791"
        );
        assert_eq!(
            Client::new("10.0.0.1:1/", None).unwrap().addr(),
            "10.0.0.1:1"
        );
        assert!(Client::new("https://x:1", None).is_err());
        assert!(Client::new("http://x", None).is_err());
    }
}
