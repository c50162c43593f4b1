//! One task per client connection: picks an endpoint round robin, fails over
//! to the next on a refused or slow connect, then pumps bytes both ways
//! (`splice(2)` through kernel pipes, or a user-space buffer), propagating
//! half-closes. The connection is closed when either side fails, when its
//! endpoint is removed from the route, when no byte moved either way for the
//! idle timeout, or on shutdown. An idle connection costs two sockets and its
//! task: a buffer is borrowed from the pool only while bytes are in transit,
//! and a direction makes its pipe at its first data.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::buffer::BufferPool;
use crate::config::{Config, CopyMode, ADAPTIVE_SWITCH};
use crate::route::RouteState;
use crate::shutdown::{Shutdown, TaskGuard};
use crate::splice::{self, Pipe};
use crate::stats::Slot;

/// `_guard` comes first so that it is dropped last, after the sockets (and
/// `_slot` second: the port's count drops once the sockets are closed).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    _guard: TaskGuard,
    _slot: Slot,
    client: TcpStream,
    peer: SocketAddr,
    port: u16,
    route: Arc<RouteState>,
    config: Config,
    buffers: Arc<BufferPool>,
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

    let activity = Activity::new();
    let pump = pump(&client, &upstream, &config, &route, &buffers, &activity);
    tokio::pin!(pump);
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
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
            _ = &mut idle => {
                let deadline = activity.last() + config.idle_timeout;
                if deadline <= Instant::now() {
                    counters.idle_closed.fetch_add(1, Relaxed);
                    tracing::debug!(port, %peer, %endpoint, "no byte moved for the idle timeout; closing");
                    return;
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
}

/// When a connection last moved a byte, either way.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte moved.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Bytes moved now.
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Relaxed))
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
    buffers: &BufferPool,
    activity: &Activity,
) -> io::Result<()> {
    let (bytes_in, bytes_out) = (&route.counters.bytes_in, &route.counters.bytes_out);
    let size = config.buffer_size.max(4096);
    let up = Direction {
        from: client,
        to: upstream,
        size,
        counter: bytes_in,
        buffers,
        activity,
    };
    let down = Direction {
        from: upstream,
        to: client,
        size,
        counter: bytes_out,
        buffers,
        activity,
    };
    match config.copy {
        CopyMode::Splice => {
            tokio::try_join!(up.splice(), down.splice())?;
        }
        CopyMode::Adaptive => {
            tokio::try_join!(up.adaptive(), down.adaptive())?;
        }
        CopyMode::Buffered => {
            tokio::try_join!(up.copy(u64::MAX), down.copy(u64::MAX))?;
        }
    }
    Ok(())
}

/// One direction of a connection and what it moves bytes with.
struct Direction<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// Buffer (and pipe) size.
    size: usize,
    /// The route's byte counter for this direction.
    counter: &'a AtomicU64,
    buffers: &'a BufferPool,
    activity: &'a Activity,
}

impl Direction<'_> {
    /// Counts `n` bytes moved.
    fn moved(&self, n: usize) {
        self.counter.fetch_add(n as u64, Relaxed);
        self.activity.touch();
    }

    /// Zero-copy, through a pipe made once the first data (or the end of
    /// file) arrives; through a buffer if no pipe can be had.
    async fn splice(&self) -> io::Result<()> {
        // Readiness alone may be spurious: wait until a byte (or the end of
        // file) is really there.
        self.from.peek(&mut [0u8; 1]).await?;
        match Pipe::new(self.size) {
            Ok(pipe) => self.splice_through(&pipe).await,
            Err(error) => {
                // E.g. out of descriptors: still serve, the slower way.
                tracing::debug!(%error, "no pipe for splice; copying through a buffer");
                self.copy(u64::MAX).await.map(|_| ())
            }
        }
    }

    /// Buffered until [`ADAPTIVE_SWITCH`] bytes, then splice.
    async fn adaptive(&self) -> io::Result<()> {
        if self.copy(ADAPTIVE_SWITCH).await? == Copied::Done {
            return Ok(());
        }
        self.splice().await
    }

    /// One direction, zero-copy: socket -> pipe -> socket. Reading and writing
    /// overlap: while the destination is not ready, the source keeps filling the
    /// pipe up to its capacity, so neither side waits for the other's wake-up.
    async fn splice_through(&self, pipe: &Pipe) -> io::Result<()> {
        let (from, to) = (self.from, self.to);
        let (from_fd, to_fd) = (from.as_raw_fd(), to.as_raw_fd());
        // Never ask for more than the pipe holds: a splice into a full pipe
        // fails with `WouldBlock`, which clears the source's read readiness
        // (the data stays unread, no new wake-up comes: the connection stalls),
        // and once the source has half-closed, its readiness is sticky and the
        // loop would spin without ever yielding.
        let chunk = self.size.min(pipe.capacity());
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
                        self.moved(m);
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

    /// One direction through a user-space buffer, borrowed from the pool
    /// only while bytes read are not yet written: an idle direction holds none.
    /// Stops at end of file (passed on) or once `budget` bytes have moved.
    async fn copy(&self, budget: u64) -> io::Result<Copied> {
        let (from, to) = (self.from, self.to);
        let mut moved = 0u64;
        loop {
            if moved >= budget {
                return Ok(Copied::Budget);
            }
            from.readable().await?;
            let mut buf = self.buffers.take();
            let result = self.copy_ready(&mut buf).await;
            self.buffers.give(buf);
            match result? {
                None => return splice::shutdown_write(to.as_raw_fd()).map(|_| Copied::Done),
                Some(n) => moved += n as u64,
            }
        }
    }

    /// One read into `buf` and its write out: the bytes moved (0 when nothing
    /// was ready after all), `None` at end of file.
    async fn copy_ready(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let (from, to) = (self.from, self.to);
        let n = match from.try_read(buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(0)),
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
        self.moved(n);
        Ok(Some(n))
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
