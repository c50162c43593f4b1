//! One task per client connection: picks an endpoint round robin, fails over
//! to the next on a refused or slow connect, then pumps bytes both ways
//! (`splice(2)` through kernel pipes, or a user-space buffer), propagating
//! half-closes. The connection is closed when either side fails, when its
//! endpoint is removed from the route, or on shutdown.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::config::{Config, CopyMode, ADAPTIVE_SWITCH};
use crate::route::RouteState;
use crate::shutdown::{Shutdown, TaskGuard};
use crate::splice::{self, Pipe};

/// `_guard` comes first so that it is dropped last, after the sockets.
pub(crate) async fn serve(
    _guard: TaskGuard,
    client: TcpStream,
    peer: SocketAddr,
    port: u16,
    route: Arc<RouteState>,
    config: Config,
    mut shutdown: Shutdown,
) {
    let counters = &route.counters;
    let _active = counters.open();
    let mut endpoints_rx = route.endpoints.subscribe();
    let endpoints = endpoints_rx.borrow_and_update().clone();

    let connected = tokio::select! {
        connected = connect_any(&route, &endpoints, config.connect_timeout) => connected,
        _ = shutdown.recv() => return,
    };
    let Some((upstream, endpoint)) = connected else {
        counters.unserved.fetch_add(1, Relaxed);
        tracing::warn!(port, service = %route.name(), %peer, tried = endpoints.len(),
            "no endpoint reachable; closing the client connection");
        return;
    };
    for (side, stream) in [("client", &client), ("endpoint", &upstream)] {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(port, side, %error, "TCP_NODELAY not set");
        }
    }
    tracing::trace!(port, %peer, %endpoint, "forwarding");

    let pump = pump(&client, &upstream, &config, &route);
    tokio::pin!(pump);
    loop {
        tokio::select! {
            done = &mut pump => {
                if let Err(error) = done {
                    tracing::debug!(port, %peer, %endpoint, %error, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.recv() => return,
            changed = endpoints_rx.changed() => {
                if changed.is_err() || !endpoints_rx.borrow_and_update().contains(&endpoint) {
                    tracing::debug!(port, %peer, %endpoint, "endpoint removed from its route; closing");
                    return;
                }
            }
        }
    }
}

/// Connects to the route's next endpoint, trying each in turn once.
async fn connect_any(
    route: &RouteState,
    endpoints: &[SocketAddr],
    timeout: Duration,
) -> Option<(TcpStream, SocketAddr)> {
    if endpoints.is_empty() {
        return None;
    }
    let start = route.next.fetch_add(1, Relaxed);
    for i in 0..endpoints.len() {
        let endpoint = endpoints[start.wrapping_add(i) % endpoints.len()];
        let error = match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => return Some((stream, endpoint)),
            Ok(Err(error)) => error,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        route.counters.connect_failures.fetch_add(1, Relaxed);
        tracing::debug!(service = %route.name(), %endpoint, %error, "endpoint unreachable; trying the next");
    }
    None
}

/// Moves bytes both ways until both directions reached end of file, or one
/// of them failed.
async fn pump(
    client: &TcpStream,
    upstream: &TcpStream,
    config: &Config,
    route: &RouteState,
) -> io::Result<()> {
    let (bytes_in, bytes_out) = (&route.counters.bytes_in, &route.counters.bytes_out);
    let size = config.buffer_size.max(4096);
    if config.copy == CopyMode::Splice {
        match (Pipe::new(size), Pipe::new(size)) {
            (Ok(up), Ok(down)) => {
                tokio::try_join!(
                    splice_one(client, upstream, &up, size, bytes_in),
                    splice_one(upstream, client, &down, size, bytes_out),
                )?;
                return Ok(());
            }
            (Err(error), _) | (_, Err(error)) => {
                // E.g. out of descriptors: still serve, the slower way.
                tracing::debug!(%error, "no pipe for splice; copying through a buffer");
            }
        }
    }
    if config.copy == CopyMode::Adaptive {
        tokio::try_join!(
            adaptive_one(client, upstream, size, bytes_in),
            adaptive_one(upstream, client, size, bytes_out),
        )?;
        return Ok(());
    }
    tokio::try_join!(
        copy_one(client, upstream, size, bytes_in, u64::MAX),
        copy_one(upstream, client, size, bytes_out, u64::MAX),
    )?;
    Ok(())
}

/// One direction: buffered until [`ADAPTIVE_SWITCH`] bytes, then splice.
async fn adaptive_one(
    from: &TcpStream,
    to: &TcpStream,
    size: usize,
    counter: &AtomicU64,
) -> io::Result<()> {
    if copy_one(from, to, size, counter, ADAPTIVE_SWITCH).await? == Copied::Done {
        return Ok(());
    }
    match Pipe::new(size) {
        Ok(pipe) => splice_one(from, to, &pipe, size, counter).await,
        Err(error) => {
            tracing::debug!(%error, "no pipe for splice; copying through a buffer");
            copy_one(from, to, size, counter, u64::MAX)
                .await
                .map(|_| ())
        }
    }
}

/// How a buffered copy ended.
#[derive(Debug, PartialEq, Eq)]
enum Copied {
    /// End of file reached and passed on.
    Done,
    /// The byte budget is spent; the stream goes on.
    Budget,
}

/// One direction, zero-copy: socket -> pipe -> socket. Reading and writing
/// overlap: while the destination is not ready, the source keeps filling the
/// pipe up to its capacity, so neither side waits for the other's wake-up.
async fn splice_one(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    chunk: usize,
    counter: &AtomicU64,
) -> io::Result<()> {
    let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
    // Never ask for more than the pipe holds: a splice into a full pipe
    // fails with `WouldBlock`, which clears the source's read readiness
    // (the data stays unread, no new wake-up comes: the connection stalls),
    // and once the source has half-closed, its readiness is sticky and the
    // loop would spin without ever yielding.
    let chunk = chunk.min(pipe.capacity());
    let mut in_pipe = 0usize;
    let mut eof = false;
    loop {
        // Move what is ready without waiting, in both directions.
        let mut progressed = false;
        if !eof && in_pipe < chunk {
            match from.try_io(Interest::READABLE, || {
                splice::splice(from_fd, pipe.write_fd(), chunk - in_pipe)
            }) {
                Ok(0) => eof = true,
                Ok(n) => {
                    in_pipe += n;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if in_pipe > 0 {
            match to.try_io(Interest::WRITABLE, || {
                splice::splice(pipe.read_fd(), to_fd, in_pipe)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    in_pipe -= m;
                    counter.fetch_add(m as u64, Relaxed);
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if eof && in_pipe == 0 {
            return splice::shutdown_write(to_fd);
        }
        if progressed {
            continue;
        }
        // Nothing was ready: wait for whichever side can move next.
        let can_read = !eof && in_pipe < chunk;
        let can_write = in_pipe > 0;
        tokio::select! {
            r = from.readable(), if can_read => r?,
            w = to.writable(), if can_write => w?,
        }
    }
}

/// One direction through a user-space buffer, allocated at the first byte so
/// that idle connections cost none.
async fn copy_one(
    from: &TcpStream,
    to: &TcpStream,
    size: usize,
    counter: &AtomicU64,
    budget: u64,
) -> io::Result<Copied> {
    let mut buf = Vec::new();
    let mut moved = 0u64;
    loop {
        if moved >= budget {
            return Ok(Copied::Budget);
        }
        from.readable().await?;
        if buf.is_empty() {
            buf = vec![0u8; size];
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => return splice::shutdown_write(to.as_raw_fd()).map(|_| Copied::Done),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < n {
            to.writable().await?;
            match to.try_write(&buf[written..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => written += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        counter.fetch_add(n as u64, Relaxed);
        moved += n as u64;
    }
}
