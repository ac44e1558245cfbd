//! The parent/child channel: a SOCK_SEQPACKET pair (message boundaries, fd passing).
//!
//! parent -> child: `Go` once the id maps (and later cgroup, network) are in place.
//! child -> parent: `Pty` with the terminal's master fd, or `Failed` with an exit code and
//! one line of text, and `Executing` right before execve. The child's end is close-on-exec,
//! so end-of-file after `Executing` means the container's command was executed; without
//! it, that the child died first.

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair")
}

/// What the child reports.
pub enum Report {
    Pty(OwnedFd),
    Failed {
        code: i32,
        message: String,
    },
    /// About to execve.
    Executing,
    /// End of file.
    Executed,
}

pub fn send_go(fd: &OwnedFd, winsize: Option<libc::winsize>) -> Result<()> {
    let mut buf = vec![b'G'];
    if let Some(ws) = winsize {
        buf.extend_from_slice(&ws.ws_row.to_ne_bytes());
        buf.extend_from_slice(&ws.ws_col.to_ne_bytes());
    }
    nix::unistd::write(fd, &buf).context("signal the container to start")?;
    Ok(())
}

/// Child side: wait for `Go`. Returns the terminal size the parent wants, if any.
pub fn wait_go(fd: RawFd) -> Result<Option<(u16, u16)>> {
    let mut buf = [0u8; 16];
    let n = loop {
        match nix::unistd::read(fd, &mut buf) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.context("wait for the runtime")?,
        }
    };
    if n == 0 || buf[0] != b'G' {
        bail!("the runtime went away before the container started");
    }
    if n >= 5 {
        Ok(Some((
            u16::from_ne_bytes([buf[1], buf[2]]),
            u16::from_ne_bytes([buf[3], buf[4]]),
        )))
    } else {
        Ok(None)
    }
}

/// Child side: fail if the runtime has gone away (its end of the socket is closed).
pub fn check_runtime_alive(fd: RawFd) -> Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid fd without waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLIN) != 0 {
        bail!("the runtime went away before the container started");
    }
    Ok(())
}

pub fn send_failure(fd: RawFd, code: i32, message: &str) {
    let mut buf = format!("F{code} ").into_bytes();
    buf.extend_from_slice(message.as_bytes());
    buf.truncate(4000);
    // SAFETY: write to a socket fd we hold; the result does not matter on this path.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// Child side: the next thing is execve (its failure is sent as `Failed` after this).
pub fn send_executing(fd: RawFd) {
    // SAFETY: write to a socket fd we hold; a runtime that is gone kills us (PDEATHSIG).
    unsafe { libc::write(fd, b"X".as_ptr().cast(), 1) };
}

pub fn send_pty(fd: RawFd, master: RawFd) -> Result<()> {
    send_fd(fd, b'P', master).context("send terminal to runtime")
}

/// A one-byte message `tag` carrying the file descriptor `passed`.
pub fn send_fd(fd: RawFd, tag: u8, passed: RawFd) -> Result<()> {
    let fds = [passed];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(fd, &[IoSlice::new(&[tag])], &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// The next message (empty at end of file) and the descriptor it carried, if any.
pub fn recv_message(fd: RawFd) -> Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg_space = nix::cmsg_space!([RawFd; 1]);
    let (bytes, raw) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            fd,
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                let mut raw = None;
                for c in msg.cmsgs().context("control message")? {
                    if let ControlMessageOwned::ScmRights(r) = c {
                        raw = raw.or(r.first().copied());
                    }
                }
                break (msg.bytes, raw);
            }
        }
    };
    buf.truncate(bytes);
    // SAFETY: the fd arrived via SCM_RIGHTS and is ours now.
    Ok((buf, raw.map(|r| unsafe { OwnedFd::from_raw_fd(r) })))
}

/// A `send_failure` message: its exit code and text.
pub fn parse_failure(msg: &[u8]) -> Option<(i32, String)> {
    let rest = msg.strip_prefix(b"F")?;
    let text = String::from_utf8_lossy(rest).to_string();
    let (code, message) = text.split_once(' ').unwrap_or(("125", &text));
    Some((code.parse().unwrap_or(125), message.to_string()))
}

/// Parent side: read the next report from the child.
pub fn recv_report(fd: &OwnedFd) -> Result<Report> {
    let (msg, passed) = recv_message(fd.as_raw_fd()).context("read from the container's setup")?;
    if msg.is_empty() {
        return Ok(Report::Executed);
    }
    if let Some((code, message)) = parse_failure(&msg) {
        return Ok(Report::Failed { code, message });
    }
    match msg[0] {
        b'X' => Ok(Report::Executing),
        b'P' => Ok(Report::Pty(
            passed.context("terminal message without a file descriptor")?,
        )),
        other => bail!("unexpected message {other:#x} from the container's setup"),
    }
}

/// A failure the child already reported, without waiting: when the runtime's own step
/// fails because the child has died (its /proc entries are gone), the child's reason is
/// the one to show.
pub fn reported_failure(fd: &OwnedFd) -> Option<(i32, String)> {
    let mut buf = [0u8; 4096];
    // SAFETY: recv into a buffer we own, never blocking.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    parse_failure(&buf[..n.max(0) as usize])
}
