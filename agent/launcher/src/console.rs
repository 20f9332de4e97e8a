//! The console socket: with `terminal: true`, runc makes the PTY inside the container and sends
//! its master end to `--console-socket PATH` as an `SCM_RIGHTS` message. We listen, accept one
//! connection and take the descriptor.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("console socket {path}: no PTY received within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("console socket {path}: receiving the PTY: {source}")]
    Recv {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("console socket {path}: the message carried no file descriptor")]
    NoFd { path: PathBuf },
}

pub type Result<T, E = ConsoleError> = std::result::Result<T, E>;

/// A listening console socket; removed from the file system when dropped.
#[derive(Debug)]
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Listens on `path` (a stale socket there is replaced; mode 0600: only root's runc
    /// connects).
    pub fn bind(path: &Path) -> Result<Self> {
        let io_err = |source| ConsoleError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(e)),
            _ => {}
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for runc to connect and send the PTY master.
    pub fn recv_master(&self, timeout: Duration) -> Result<OwnedFd> {
        let deadline = Instant::now() + timeout;
        let stream = self.accept(deadline, timeout)?;
        wait_readable(stream.as_fd(), deadline).map_err(|e| self.wait_err(e, timeout))?;
        let mut buf = [0_u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|source| ConsoleError::Recv {
            path: self.path.clone(),
            source,
        })?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for cmsg in msg.cmsgs().map_err(|source| ConsoleError::Recv {
            path: self.path.clone(),
            source,
        })? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel just installed `fd` in our table for this message;
                    // nothing else owns it, so wrapping it once is sound.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        // runc sends exactly one; any extra is closed by dropping it.
        let mut fds = fds.into_iter();
        fds.next().ok_or_else(|| ConsoleError::NoFd {
            path: self.path.clone(),
        })
    }

    fn accept(&self, deadline: Instant, timeout: Duration) -> Result<UnixStream> {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(self.listener.as_fd(), deadline)
                        .map_err(|e| self.wait_err(e, timeout))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ConsoleError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
    }

    fn wait_err(&self, e: Option<io::Error>, timeout: Duration) -> ConsoleError {
        match e {
            None => ConsoleError::Timeout {
                path: self.path.clone(),
                timeout,
            },
            Some(source) => ConsoleError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets the size of the terminal whose master (or slave) is `fd` (`TIOCSWINSZ`); the
/// foreground process group gets `SIGWINCH`.
pub fn set_size(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call; a
    // descriptor that is not a terminal fails with ENOTTY.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Polls `fd` for input until `deadline`: `Err(None)` on timeout.
fn wait_readable(
    fd: std::os::fd::BorrowedFd<'_>,
    deadline: Instant,
) -> Result<(), Option<io::Error>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(None);
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => {}
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Some(e.into())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::{IoSlice, Read, Write};

    #[test]
    fn receives_a_descriptor_like_runc_sends_it() {
        let dir = tempfile::tempdir().unwrap();
        let sock = ConsoleSocket::bind(&dir.path().join("console.sock")).unwrap();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let path = sock.path().to_path_buf();
        let sender = std::thread::spawn(move || {
            let s = UnixStream::connect(&path).unwrap();
            let name = b"/dev/pts/0";
            let fds = [theirs.as_raw_fd()];
            sendmsg::<()>(
                s.as_raw_fd(),
                &[IoSlice::new(name)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .unwrap();
        });
        let fd = sock.recv_master(Duration::from_secs(5)).unwrap();
        sender.join().unwrap();
        let mut got = std::fs::File::from(fd);
        got.write_all(b"ping").unwrap();
        let mut buf = [0_u8; 4];
        ours.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn times_out_without_runc() {
        let dir = tempfile::tempdir().unwrap();
        let sock = ConsoleSocket::bind(&dir.path().join("c.sock")).unwrap();
        let err = sock.recv_master(Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, ConsoleError::Timeout { .. }), "{err}");
        let p = sock.path().to_path_buf();
        drop(sock);
        assert!(!p.exists());
    }
}
