//! Docker's attached and logged streams: its 8-byte frame header (`stream,
//! 0, 0, 0, length as big-endian u32`: 1 stdout, 2 stderr, 3 an error of
//! the daemon), raw bytes with a TTY, and the relay between a client's
//! hijacked connection and viking's own attached frames.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use viking_client::frame::{self, Frame, FrameReader};

/// Docker's stream numbers.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const SYSTEMERR: u8 = 3;

/// Appends `data` as Docker frames of `stream` (split below 4 GiB, as the
/// header's length allows).
pub fn encode(stream: u8, data: &[u8], out: &mut BytesMut) {
    for chunk in data.chunks(u32::MAX as usize) {
        out.put_u8(stream);
        out.put_bytes(0, 3);
        out.put_u32(chunk.len() as u32);
        out.put_slice(chunk);
    }
}

/// How the client reads output: Docker frames, or raw bytes with a TTY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Multiplexed,
    Raw,
}

/// One viking frame as the client reads it; `None` for frames it does not
/// see (pull progress, stdin's).
pub fn translate(f: &Frame, framing: Framing, out: &mut BytesMut) -> bool {
    let stream = match f.kind {
        frame::STDOUT => STDOUT,
        frame::STDERR => STDERR,
        frame::ERROR => SYSTEMERR,
        _ => return false,
    };
    match (framing, stream) {
        (Framing::Raw, SYSTEMERR) | (Framing::Multiplexed, _) => {
            let data = if stream == SYSTEMERR {
                error_text(&f.data)
            } else {
                f.data.to_vec()
            };
            encode(stream, &data, out)
        }
        (Framing::Raw, _) => out.extend_from_slice(&f.data),
    }
    true
}

/// The message of an error frame (viking's error body), as text.
fn error_text(data: &[u8]) -> Vec<u8> {
    serde_json::from_slice::<viking_client::api::ErrorBody>(data)
        .map(|b| b.error.into_bytes())
        .unwrap_or_else(|_| data.to_vec())
}

/// Relays a Docker client's hijacked connection and a viking attached
/// stream until the job ends: the client's raw stdin bytes become stdin
/// frames (its half-close the end of stdin), the job's output the client's
/// frames. `on_exit` hears the job's exit code (`None` if the stream ended
/// without one) before the client's stream closes, so a client that asks
/// for it when its stream ends finds it.
pub async fn relay<C, V>(
    client: C,
    viking: V,
    framing: Framing,
    on_exit: impl FnOnce(Option<i64>) + Send,
) where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    V: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut c_rd, mut c_wr) = tokio::io::split(client);
    let (v_rd, mut v_wr) = tokio::io::split(viking);
    let stdin = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = BytesMut::new();
        loop {
            let n = match c_rd.read(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            out.clear();
            if n == 0 {
                Frame::new(frame::STDIN_EOF, Vec::new()).encode(&mut out);
                let _ = v_wr.write_all(&out).await;
                let _ = v_wr.flush().await;
                return v_wr;
            }
            Frame::new(frame::STDIN, buf[..n].to_vec()).encode(&mut out);
            if v_wr.write_all(&out).await.is_err() {
                return v_wr;
            }
        }
    });
    let mut frames = FrameReader::new(v_rd);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut code = None;
    while let Ok(Some(f)) = frames.next().await {
        if f.kind == frame::EXIT {
            code = f.exit_code();
            break;
        }
        out.clear();
        if translate(&f, framing, &mut out) && c_wr.write_all(&out).await.is_err() {
            // The client is gone: end the job (as viking's own client does).
            break;
        }
    }
    on_exit(code);
    let _ = c_wr.flush().await;
    let _ = c_wr.shutdown().await;
    stdin.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_dockers_eight_byte_header() {
        let mut out = BytesMut::new();
        encode(STDOUT, b"HELLO\nWORLD\n", &mut out);
        assert_eq!(&out[..], b"\x01\x00\x00\x00\x00\x00\x00\x0cHELLO\nWORLD\n");
        let mut out = BytesMut::new();
        assert!(translate(
            &Frame::new(frame::STDERR, &b"err\n"[..]),
            Framing::Multiplexed,
            &mut out
        ));
        assert_eq!(&out[..], b"\x02\x00\x00\x00\x00\x00\x00\x04err\n");
        let mut out = BytesMut::new();
        assert!(translate(
            &Frame::new(frame::STDOUT, &b"raw"[..]),
            Framing::Raw,
            &mut out
        ));
        assert_eq!(&out[..], b"raw");
        let mut out = BytesMut::new();
        assert!(!translate(
            &Frame::new(frame::PROGRESS, &b"pulling"[..]),
            Framing::Raw,
            &mut out
        ));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn the_relay_carries_stdin_its_end_output_and_the_exit_code() {
        let (client, mut docker_cli) = tokio::io::duplex(1 << 16);
        let (viking_side, mut job) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let relay = tokio::spawn(relay(client, viking_side, Framing::Multiplexed, move |c| {
            let _ = tx.send(c);
        }));
        docker_cli.write_all(b"hello\n").await.unwrap();
        docker_cli.shutdown().await.unwrap();
        // The job's side reads a stdin frame, then the end of stdin.
        let mut frames = FrameReader::new(&mut job);
        let f = frames.next().await.unwrap().unwrap();
        assert_eq!((f.kind, &f.data[..]), (frame::STDIN, &b"hello\n"[..]));
        let f = frames.next().await.unwrap().unwrap();
        assert_eq!(f.kind, frame::STDIN_EOF);
        drop(frames);
        let mut out = BytesMut::new();
        Frame::new(frame::STDOUT, &b"HELLO\n"[..]).encode(&mut out);
        Frame::exit(3).encode(&mut out);
        job.write_all(&out).await.unwrap();
        relay.await.unwrap();
        assert_eq!(rx.await.unwrap(), Some(3));
        let mut got = Vec::new();
        docker_cli.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"\x01\x00\x00\x00\x00\x00\x00\x06HELLO\n");
    }
}
