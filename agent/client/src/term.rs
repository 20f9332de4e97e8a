//! The client's terminal for `-t`: raw mode with a guard that restores the previous settings
//! on every way out (normal return, error, the signals the session handles), and the size.
//! Portable (termios and `TIOCGWINSZ` exist on Linux and macOS).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use bottle_api::TtySize;
use nix::sys::termios::{self, SetArg, Termios};

/// The size of the terminal on `fd`, if it is one.
pub fn size(fd: BorrowedFd<'_>) -> Option<TtySize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer, which is valid for the call;
    // a descriptor that is not a terminal fails with ENOTTY and writes nothing.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(TtySize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Puts stdin's terminal in raw mode until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // TCSADRAIN: what was written in raw mode is shown before the settings change.
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}
