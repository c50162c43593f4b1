//! The only `unsafe` code of the crate: thin wrappers over `pipe2(2)`,
//! `fcntl(F_SETPIPE_SZ)`, `splice(2)` and `shutdown(2)`, used by the
//! zero-copy byte pump in `forward`. Each call passes only file descriptors
//! owned by live Rust values and no pointer but a local array.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A kernel pipe used as the zero-copy buffer between two sockets.
/// Both ends are non-blocking and close-on-exec; closed on drop.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What the pipe holds before a write to it would block, in bytes.
    capacity: usize,
}

impl Pipe {
    /// A new pipe; tries to make its capacity `size` bytes (best effort:
    /// the kernel may refuse beyond `/proc/sys/fs/pipe-max-size`, or past a
    /// user's pipe quota). [`Pipe::capacity`] says what it got.
    pub(crate) fn new(size: usize) -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [-1; 2];
        // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by
        // nobody else; OwnedFd takes that ownership and closes them on drop.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if let Ok(size) = libc::c_int::try_from(size) {
            // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int.
            // A failure only leaves the default capacity, read back below.
            let _ = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        }
        // SAFETY: fcntl on a descriptor we own; F_GETPIPE_SZ takes no argument.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        // Every pipe holds at least one page; assume no more if unknown.
        let capacity = usize::try_from(got).ok().filter(|c| *c > 0).unwrap_or(4096);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// The pipe's real capacity, in bytes (may be less than asked for).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub(crate) fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

/// Moves up to `len` bytes from `from` to `to` without copying through user
/// space (one of them must be a pipe). Never blocks: returns `WouldBlock`
/// when the socket side is not ready. `Ok(0)` means end of file on `from`.
pub(crate) fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice takes two descriptors and null offsets (both are
    // streams); the caller passes descriptors borrowed from live sockets and
    // pipes, so they are open for the whole call.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        // n >= 0 and at most `len`, so it fits.
        Ok(n.unsigned_abs())
    }
}

/// Shuts down the write side of the socket `fd` (sends FIN): the half-close
/// of one direction. tokio offers this only through `&mut` `AsyncWrite`,
/// which the two directions of one connection cannot both hold.
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown on a descriptor borrowed from a live socket.
    let rc = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        // The peer may already be gone; nothing left to tell it.
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}
