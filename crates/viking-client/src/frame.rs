//! Framing of attached streams, in the spirit of Docker's stream
//! multiplexing: each frame is one kind byte, a 4-byte big-endian length
//! and the payload.
//!
//! Server to client: [`STDOUT`], [`STDERR`], [`PROGRESS`] (a line about the
//! job, e.g. pulling its image), [`EXIT`] (8-byte big-endian exit code, the
//! last frame) or [`ERROR`] (a JSON [`crate::api::ErrorBody`], the last
//! frame). Client to server: [`STDIN`], [`STDIN_EOF`] and [`SIGNAL`] (a
//! signal name such as `SIGINT`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const EXIT: u8 = 3;
pub const ERROR: u8 = 4;
pub const PROGRESS: u8 = 5;
pub const STDIN_EOF: u8 = 6;
pub const SIGNAL: u8 = 7;

/// The largest frame accepted; bigger payloads are split by writers.
pub const MAX_FRAME: usize = 1 << 20;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub data: Bytes,
}

impl Frame {
    pub fn new(kind: u8, data: impl Into<Bytes>) -> Self {
        Self {
            kind,
            data: data.into(),
        }
    }

    pub fn exit(code: i64) -> Self {
        Self::new(EXIT, Bytes::copy_from_slice(&code.to_be_bytes()))
    }

    /// The exit code of an [`EXIT`] frame.
    pub fn exit_code(&self) -> Option<i64> {
        let b: [u8; 8] = self.data.as_ref().try_into().ok()?;
        Some(i64::from_be_bytes(b))
    }

    /// Append the encoded frame to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(5 + self.data.len());
        buf.put_u8(self.kind);
        buf.put_u32(self.data.len() as u32);
        buf.put_slice(&self.data);
    }
}

/// Write one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    data: &[u8],
) -> std::io::Result<()> {
    for chunk in data
        .chunks(MAX_FRAME)
        .chain(data.is_empty().then_some(&[][..]))
    {
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..].copy_from_slice(&(chunk.len() as u32).to_be_bytes());
        w.write_all(&head).await?;
        w.write_all(chunk).await?;
    }
    Ok(())
}

/// Reads frames from a byte stream with one buffer, without copying payloads.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(256 * 1024),
        }
    }

    /// The next frame; `None` at a clean end of stream.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(f) = decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.buf.capacity() - self.buf.len() < 64 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame",
                ));
            }
        }
    }
}

/// Take one whole frame off the front of `buf`, if it holds one.
pub fn decode(buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than the limit"),
        ));
    }
    if buf.len() < 5 + len {
        buf.reserve(5 + len - buf.len());
        return Ok(None);
    }
    let kind = buf[0];
    buf.advance(5);
    let data = buf.split_to(len).freeze();
    Ok(Some(Frame { kind, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut out = Vec::new();
        write_frame(&mut out, STDOUT, b"hello").await.unwrap();
        write_frame(&mut out, STDIN_EOF, b"").await.unwrap();
        let mut b = BytesMut::new();
        Frame::exit(-3).encode(&mut b);
        out.extend_from_slice(&b);
        let mut r = FrameReader::new(&out[..]);
        assert_eq!(
            r.next().await.unwrap(),
            Some(Frame::new(STDOUT, &b"hello"[..]))
        );
        assert_eq!(r.next().await.unwrap().unwrap().kind, STDIN_EOF);
        assert_eq!(r.next().await.unwrap().unwrap().exit_code(), Some(-3));
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncated_stream_is_an_error() {
        let data = [STDOUT, 0, 0, 0, 9, b'x'];
        let mut r = FrameReader::new(&data[..]);
        assert!(r.next().await.is_err());
    }
}
