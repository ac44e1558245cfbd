//! The container's own network namespace with `--network none`, made by a short-lived
//! helper process while the container's first process sets up its mounts.
//!
//! Creating a network namespace is the dearest step of a start here (about 0.5 ms: the
//! loopback device, per-namespace sysctl tables and proc entries). Nothing outside has to
//! join this one, so it need not exist before the process is released: a fork of the
//! first process (in the same user namespace, which then owns the network namespace)
//! creates it on the other core and hands it over as a file descriptor; the first
//! process joins it before it mounts sysfs, which shows the mounter's network namespace.
//! A thread would share the address space, and every change to it would then cost both
//! cores a TLB flush; a helper process does not. When newuidmap and newgidmap write the
//! maps, the first process waits for them longer than the namespace takes, so it makes
//! the namespace itself meanwhile (a helper would only compete with them for the cores).
//! With a network helper or the bridge the namespace comes from clone(2), as they need it
//! before the container is released.

use super::sync;
use anyhow::{bail, Context, Result};
use nix::unistd::Pid;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Bring the loopback interface of the current network namespace up.
pub fn loopback_up() -> Result<()> {
    // SAFETY: plain socket + ioctl on a zeroed ifreq naming "lo".
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let ok = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) == 0 && {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) == 0
        };
        let err = std::io::Error::last_os_error();
        libc::close(s);
        if !ok {
            return Err(err).context("bring up the loopback interface");
        }
    }
    Ok(())
}

/// A network namespace being made by a helper; `enter` joins it (once).
pub struct PendingNetns {
    helper: Pid,
    sock: OwnedFd,
}

/// Move the calling process into a new network namespace with `lo` up.
pub fn create() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the container's network namespace ({e}): {}",
            crate::cli::userns_hint()
        )
    })?;
    loopback_up()
}

/// In the helper: make the namespace, return an fd to it.
fn make() -> Result<OwnedFd> {
    create()?;
    let fd = nix::fcntl::open(
        "/proc/self/ns/net",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .context("open the new network namespace")?;
    // SAFETY: open returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl PendingNetns {
    /// Fork the helper. Call from the single-threaded first process, in its new user
    /// namespace.
    pub fn start() -> Result<Self> {
        let (ours, theirs) = sync::pair()?;
        // SAFETY: the process is single-threaded; the helper only makes syscalls and exits.
        match unsafe { nix::unistd::fork() }.context("fork the network namespace helper")? {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl with constant arguments: the helper dies with us.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
                drop(ours);
                let fd = theirs.as_raw_fd();
                match make() {
                    Ok(ns) => {
                        let _ = sync::send_fd(fd, b'N', ns.as_raw_fd());
                    }
                    Err(e) => sync::send_failure(fd, 125, &format!("{e:#}")),
                }
                // SAFETY: leave without running destructors or atexit handlers of the copy.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => Ok(Self {
                helper: child,
                sock: ours,
            }),
        }
    }

    /// Wait for the namespace, join it and reap the helper.
    pub fn enter(self) -> Result<()> {
        let got = self.receive();
        let _ = nix::sys::wait::waitpid(self.helper, None);
        let ns = got?;
        // SAFETY: setns on a namespace fd we own.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("enter the container's network namespace");
        }
        Ok(())
    }

    fn receive(&self) -> Result<OwnedFd> {
        let (msg, passed) = sync::recv_message(self.sock.as_raw_fd())
            .context("wait for the network namespace helper")?;
        if let Some((_, message)) = sync::parse_failure(&msg) {
            bail!("{message}");
        }
        match passed {
            Some(ns) if msg == b"N" => Ok(ns),
            _ => bail!("the network namespace helper ended without a namespace"),
        }
    }
}
