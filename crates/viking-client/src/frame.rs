//! Framing of attached streams, in the spirit of Docker's stream
//! multiplexing: each frame is one kind byte, a 4-byte big-endian length
//! and the payload.
//!
//! Server to client: [`STDOUT`], [`STDERR`], [`PROGRESS`] (a line about the
//! job, e.g. pulling its image), [`EXIT`] (8-byte big-endian exit code, the
//! last frame) or [`ERROR`] (a JSON [`crate::api::ErrorBody`], the last
//! frame). Client to server: [`STDIN`], [`STDIN_EOF`] and [`SIGNAL`] (a
//! signal name such as `SIGINT`).
//!
//! [`FrameCodec`] is the one encoder and decoder (tokio-util's codec
//! traits): no frame above [`MAX_FRAME`] is written or accepted; a larger
//! payload goes out as several frames of the same kind, which readers
//! simply append. The wire format is spoken between servers of different
//! versions and by the CLI: it does not change.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio_util::codec::{Decoder, Encoder, FramedRead};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const EXIT: u8 = 3;
pub const ERROR: u8 = 4;
pub const PROGRESS: u8 = 5;
pub const STDIN_EOF: u8 = 6;
pub const SIGNAL: u8 = 7;

/// The largest frame accepted; bigger payloads are split by the encoder.
pub const MAX_FRAME: usize = 1 << 20;

/// The kind byte and the length.
const HEADER: usize = 5;

/// How much room a reader keeps free, and how much it adds when short of
/// it: one read can then take a whole chunk of a busy stream.
const READ_ROOM: usize = 64 * 1024;
const READ_GROWTH: usize = 256 * 1024;

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

    /// Append the encoded frame to `buf`: one wire frame, or several of the
    /// same kind when the payload is larger than [`MAX_FRAME`].
    pub fn encode(&self, buf: &mut BytesMut) {
        let frames = self.data.len().div_ceil(MAX_FRAME).max(1);
        buf.reserve(HEADER * frames + self.data.len());
        // An empty payload is still one (empty) frame: STDIN_EOF is one.
        let empty: &[u8] = &[];
        let chunks = self
            .data
            .chunks(MAX_FRAME)
            .chain(self.data.is_empty().then_some(empty));
        for chunk in chunks {
            buf.put_u8(self.kind);
            // A chunk is at most MAX_FRAME (1 MiB) long: it fits in a u32.
            buf.put_u32(chunk.len() as u32);
            buf.put_slice(chunk);
        }
    }
}

/// The attached-stream codec: decodes one wire frame at a time (without
/// copying payloads) and encodes a [`Frame`] as one or more wire frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
        if buf.len() >= HEADER {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > MAX_FRAME {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("frame of {len} bytes is larger than the limit of {MAX_FRAME}"),
                ));
            }
            if buf.len() >= HEADER + len {
                let kind = buf[0];
                buf.advance(HEADER);
                let data = buf.split_to(len).freeze();
                return Ok(Some(Frame { kind, data }));
            }
            // Room for the whole frame, so it arrives without regrowing.
            buf.reserve(HEADER + len - buf.len());
        }
        if buf.capacity() - buf.len() < READ_ROOM {
            buf.reserve(READ_GROWTH);
        }
        Ok(None)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
        match self.decode(buf)? {
            Some(f) => Ok(Some(f)),
            None if buf.is_empty() => Ok(None),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "stream ended inside a frame",
            )),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, f: Frame, dst: &mut BytesMut) -> std::io::Result<()> {
        f.encode(dst);
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, f: &Frame, dst: &mut BytesMut) -> std::io::Result<()> {
        f.encode(dst);
        Ok(())
    }
}

/// Reads frames from a byte stream ([`FrameCodec`] over a [`FramedRead`]).
pub struct FrameReader<R> {
    inner: FramedRead<R, FrameCodec>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner: FramedRead::with_capacity(inner, FrameCodec, READ_GROWTH),
        }
    }

    /// The next frame; `None` at a clean end of stream.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        self.inner.next().await.transpose()
    }
}

/// The frames of a streamed HTTP answer (`viking logs`).
pub fn body_frames(body: hyper::body::Incoming) -> FrameReader<crate::body::BodyReader> {
    FrameReader::new(crate::body::reader(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut b = BytesMut::new();
        for f in frames {
            f.encode(&mut b);
        }
        b.to_vec()
    }

    /// Every frame of `wire`, decoded as a reader sees it when the bytes
    /// arrive cut at `cuts`.
    fn decode_chunked(wire: &[u8], cuts: &[usize]) -> std::io::Result<Vec<Frame>> {
        let mut codec = FrameCodec;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        ends.push(wire.len());
        ends.sort_unstable();
        for end in ends {
            buf.extend_from_slice(&wire[at..end.max(at)]);
            at = end.max(at);
            while let Some(f) = codec.decode(&mut buf)? {
                out.push(f);
            }
        }
        while let Some(f) = codec.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    /// Frames of one kind in a row, joined: what a reader shows.
    fn joined(frames: &[Frame]) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        for f in frames {
            match out.last_mut() {
                Some((k, d)) if *k == f.kind && f.kind != STDIN_EOF => d.extend_from_slice(&f.data),
                _ => out.push((f.kind, f.data.to_vec())),
            }
        }
        out
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let out = encoded(&[
            Frame::new(STDOUT, &b"hello"[..]),
            Frame::new(STDIN_EOF, Bytes::new()),
            Frame::exit(-3),
        ]);
        // The wire format, byte for byte.
        assert_eq!(
            &out[..10],
            &[STDOUT, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']
        );
        assert_eq!(&out[10..15], &[STDIN_EOF, 0, 0, 0, 0]);
        assert_eq!(&out[15..20], &[EXIT, 0, 0, 0, 8]);
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
        let e = r.next().await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_frame_above_the_limit_is_refused() {
        let mut buf = BytesMut::new();
        buf.put_u8(STDOUT);
        buf.put_u32(MAX_FRAME as u32 + 1);
        let e = FrameCodec.decode(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_large_payload_is_split_and_read_back_exactly() {
        let payload: Vec<u8> = (0..3 * MAX_FRAME + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let wire = encoded(&[Frame::new(STDOUT, payload.clone()), Frame::exit(0)]);
        let mut r = FrameReader::new(&wire[..]);
        let mut got = Vec::new();
        let mut frames = 0;
        loop {
            let f = r.next().await.unwrap().unwrap();
            if f.kind == EXIT {
                break;
            }
            assert_eq!(f.kind, STDOUT);
            assert!(f.data.len() <= MAX_FRAME);
            got.extend_from_slice(&f.data);
            frames += 1;
        }
        assert_eq!(frames, 4);
        assert!(got == payload, "the payload came back changed");
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_codec_encodes_through_a_sink() {
        use futures::SinkExt;
        let mut wire = Vec::new();
        let mut w = tokio_util::codec::FramedWrite::new(&mut wire, FrameCodec);
        w.send(Frame::new(STDERR, vec![7u8; MAX_FRAME + 1]))
            .await
            .unwrap();
        drop(w);
        let frames = decode_chunked(&wire, &[]).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].data.len(), MAX_FRAME);
        assert_eq!(frames[1].data.len(), 1);
    }

    /// A frame: the data streams (stdin, stdout, stderr) carry payloads up
    /// to three times the limit, which writers split; control frames (exit,
    /// error, progress, end of stdin, signal) are small, as real ones are.
    fn any_frame() -> impl Strategy<Value = Frame> {
        (0u8..8)
            .prop_flat_map(|k| {
                let small = proptest::collection::vec(any::<u8>(), 0..64);
                let data = if matches!(k, STDIN | STDOUT | STDERR) {
                    prop_oneof![
                        4 => small,
                        1 => (0usize..3 * MAX_FRAME).prop_map(|n| vec![0x5a; n]),
                    ]
                    .boxed()
                } else {
                    small.boxed()
                };
                (Just(k), data)
            })
            .prop_map(|(k, d)| Frame::new(k, d))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However the bytes are cut on the way, the reader gets every
        /// payload back exactly, in order, and no frame above the limit.
        #[test]
        fn any_chunking_reassembles(
            frames in proptest::collection::vec(any_frame(), 0..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let wire = encoded(&frames);
            let got = decode_chunked(&wire, &cuts).unwrap();
            prop_assert!(got.iter().all(|f| f.data.len() <= MAX_FRAME));
            prop_assert_eq!(joined(&got), joined(&frames));
        }
    }
}
