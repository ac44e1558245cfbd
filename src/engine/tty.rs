//! Terminals: the container's pty (made inside it, on its own devpts) and the runtime's
//! side that relays bytes and window sizes between the user's terminal and the pty master.

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sys::termios::{self, SetArg, Termios};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, libc::winsize);

pub fn winsize_of(fd: RawFd) -> Option<libc::winsize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ into a valid struct.
    unsafe { get_winsize(fd, &mut ws) }.ok().map(|_| ws)
}

pub fn apply_winsize(fd: RawFd, ws: &libc::winsize) {
    // SAFETY: TIOCSWINSZ from a valid struct; failure only loses a resize.
    let _ = unsafe { set_winsize(fd, ws) };
}

/// Child side, after pivot_root: open a pty on the container's devpts, make it the
/// controlling terminal of a new session and the command's stdio. Returns the master.
pub fn make_container_pty(size: Option<(u16, u16)>) -> Result<OwnedFd> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .context("open /dev/ptmx")?;
    nix::pty::grantpt(&master).context("grantpt")?;
    nix::pty::unlockpt(&master).context("unlockpt")?;
    let name = nix::pty::ptsname_r(&master).context("ptsname")?;
    if let Some((rows, cols)) = size {
        apply_winsize(
            master.as_raw_fd(),
            &libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        );
    }
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("open {name}"))?;
    // /dev/console is what init systems and some shells look for.
    if let Ok(console) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/dev/console")
    {
        drop(console);
        let _ = nix::mount::mount(
            Some(name.as_str()),
            "/dev/console",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
    }
    nix::unistd::setsid().context("setsid")?;
    // SAFETY: make the slave our controlling terminal.
    if unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("TIOCSCTTY");
    }
    for fd in 0..3 {
        nix::unistd::dup2(slave, fd).context("dup2 terminal")?;
    }
    if slave > 2 {
        let _ = nix::unistd::close(slave);
    }
    // SAFETY: posix_openpt returned an owned master; hand it over as a plain OwnedFd.
    Ok(unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) })
}

/// The user's terminal in raw mode for as long as this lives.
pub struct RawMode {
    fd: RawFd,
    saved: Termios,
}

impl RawMode {
    pub fn enter(fd: RawFd) -> Result<RawMode> {
        // SAFETY: fd 0 stays open for the life of the process.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let saved = termios::tcgetattr(b).context("read terminal settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(b, SetArg::TCSANOW, &raw).context("set terminal to raw mode")?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: see enter.
        let b = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(b, SetArg::TCSANOW, &self.saved);
    }
}

pub fn require_terminal_stdin() -> Result<()> {
    if !nix::unistd::isatty(std::io::stdin().as_fd().as_raw_fd()).unwrap_or(false) {
        bail!("-t/--tty needs a terminal on standard input, and there is none (e.g. CI, a pipe); run without -t");
    }
    Ok(())
}

/// Copy what is readable from `from` to `to`; returns false at end of file or on error.
pub fn pump(from: RawFd, to: RawFd) -> bool {
    let mut buf = [0u8; 16384];
    // SAFETY: read/write with a valid buffer.
    let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
    }
    let mut off = 0usize;
    while off < n as usize {
        // SAFETY: see above.
        let w = unsafe { libc::write(to, buf[off..].as_ptr().cast(), n as usize - off) };
        if w < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        off += w as usize;
    }
    true
}
