//! Streamed HTTP answers read as bytes: a body as an [`AsyncRead`]
//! ([`reader`]), and newline-delimited JSON read line by line
//! ([`NdjsonLines`], for `progress=true` runs and pushes). Attached-stream
//! frames over a body are in [`crate::frame::body_frames`].
//!
//! A newline-delimited answer may carry blank lines: the server's
//! heartbeats (every [`crate::api::HEARTBEAT`]), skipped here. With an idle
//! time ([`NdjsonLines::with_idle`]), reading fails when no byte at all
//! arrives for that long: the server is stopped or cut off.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::{MapErr, StreamExt, TryStreamExt};
use http_body_util::{BodyDataStream, BodyExt};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use tokio::io::AsyncRead;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use crate::ClientError;

/// The longest NDJSON line accepted (a line carries one job and its record).
pub const MAX_LINE: usize = 16 * 1024 * 1024;

type ToIo = fn(hyper::Error) -> std::io::Error;

/// A streamed HTTP body as an [`AsyncRead`](tokio::io::AsyncRead).
pub type BodyReader = StreamReader<MapErr<BodyDataStream<Incoming>, ToIo>, Bytes>;

/// Read a body as a byte stream.
pub fn reader(body: Incoming) -> BodyReader {
    let to_io: ToIo = std::io::Error::other;
    StreamReader::new(body.into_data_stream().map_err(to_io))
}

/// The lines of a newline-delimited JSON answer.
pub struct NdjsonLines<R = BodyReader> {
    lines: FramedRead<R, LinesCodec>,
    /// The server's address and how long it may stay silent.
    idle: Option<(String, Duration)>,
}

impl NdjsonLines {
    pub fn new(body: Incoming) -> Self {
        Self::from_reader(reader(body))
    }
}

impl<R: AsyncRead + Unpin> NdjsonLines<R> {
    pub fn from_reader(r: R) -> Self {
        Self {
            lines: FramedRead::new(r, LinesCodec::new_with_max_length(MAX_LINE)),
            idle: None,
        }
    }

    /// Fail a read when the server at `addr` sends nothing (not even a
    /// heartbeat) for `idle`.
    pub fn with_idle(mut self, addr: &str, idle: Duration) -> Self {
        self.idle = Some((addr.to_string(), idle));
        self
    }

    /// The next line as the server wrote it (without its newline), skipping
    /// heartbeats; `None` when the answer ends.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            match self.next_raw().await? {
                Some(line) if line.trim().is_empty() => continue,
                other => return Ok(other),
            }
        }
    }

    async fn next_raw(&mut self) -> Result<Option<String>, ClientError> {
        let next = match &self.idle {
            None => self.lines.next().await,
            Some((addr, idle)) => match tokio::time::timeout(*idle, self.lines.next()).await {
                Ok(n) => n,
                Err(_) => {
                    return Err(ClientError::Timeout {
                        addr: addr.clone(),
                        what: "a byte of its answer",
                        after: *idle,
                    })
                }
            },
        };
        match next {
            None => Ok(None),
            Some(Ok(line)) => Ok(Some(line)),
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => Err(ClientError::Http(format!(
                "the server answered a line longer than {MAX_LINE} bytes"
            ))),
            Some(Err(LinesCodecError::Io(e))) => Err(ClientError::Http(format!(
                "reading the server's answer: {e}"
            ))),
        }
    }

    /// The next line decoded, with its text; `None` when the answer ends.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<(T, String)>, ClientError> {
        let Some(line) = self.next_line().await? else {
            return Ok(None);
        };
        let value = serde_json::from_str(&line)
            .map_err(|e| ClientError::Http(format!("unexpected answer from the server: {e}")))?;
        Ok(Some((value, line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_one_by_one_and_decoded() {
        let text = b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}";
        let mut r = NdjsonLines::from_reader(&text[..]);
        let (v, line) = r.next::<serde_json::Value>().await.unwrap().unwrap();
        assert_eq!((v["a"].as_i64(), line.as_str()), (Some(1), "{\"a\":1}"));
        assert_eq!(r.next_line().await.unwrap().as_deref(), Some("{\"a\":2}"));
        // The last line needs no newline.
        assert_eq!(r.next_line().await.unwrap().as_deref(), Some("{\"a\":3}"));
        assert_eq!(r.next_line().await.unwrap(), None);
    }

    #[tokio::test]
    async fn heartbeats_are_skipped() {
        let text = b"\n{\"a\":1}\n\n\n{\"a\":2}\n\n";
        let mut r = NdjsonLines::from_reader(&text[..]);
        assert_eq!(r.next_line().await.unwrap().as_deref(), Some("{\"a\":1}"));
        assert_eq!(r.next_line().await.unwrap().as_deref(), Some("{\"a\":2}"));
        assert_eq!(r.next_line().await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_fails_the_read_after_the_idle_time() {
        // One line, then nothing ever again (the writer is kept open).
        let (mut w, r) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut w, b"{\"a\":1}\n")
            .await
            .unwrap();
        let mut r = NdjsonLines::from_reader(r).with_idle("n2:1", Duration::from_secs(30));
        assert!(r.next_line().await.unwrap().is_some());
        let started = tokio::time::Instant::now();
        let e = r.next_line().await.unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(w);
    }

    #[tokio::test]
    async fn a_line_that_is_not_json_is_an_error() {
        let text = b"progress\n";
        let mut r = NdjsonLines::from_reader(&text[..]);
        assert!(matches!(
            r.next::<serde_json::Value>().await,
            Err(ClientError::Http(_))
        ));
    }
}
