//! Streamed HTTP answers read as bytes: a body as an [`AsyncRead`]
//! ([`reader`]), and newline-delimited JSON read line by line
//! ([`NdjsonLines`], for `progress=true` runs and pushes). Attached-stream
//! frames over a body are in [`crate::frame::body_frames`].

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
        }
    }

    /// The next line as the server wrote it (without its newline); `None`
    /// when the answer ends.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        match self.lines.next().await {
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
    async fn a_line_that_is_not_json_is_an_error() {
        let text = b"progress\n";
        let mut r = NdjsonLines::from_reader(&text[..]);
        assert!(matches!(
            r.next::<serde_json::Value>().await,
            Err(ClientError::Http(_))
        ));
    }
}
