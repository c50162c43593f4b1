//! Raw mode for `viking run -it`: keystrokes go to the container's TTY as
//! they are typed (Ctrl-C included, which the TTY turns into SIGINT for the
//! job), and the terminal is restored when the job ends.
//!
//! The only `unsafe` of the CLI: `tcgetattr`/`tcsetattr` on stdin.
#![allow(unsafe_code)]

use std::io::IsTerminal;

/// The terminal's settings before raw mode; restored on drop.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Put stdin's terminal in raw mode; `None` when stdin is not a
    /// terminal or it cannot be changed.
    pub fn enable() -> Option<RawMode> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0, which
        // is open for the whole process.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: a valid termios for fd 0.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from fd 0 by `enable`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}
