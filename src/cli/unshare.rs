//! `unshare`: run a command in a user namespace with the same id maps as a rootless
//! container, so that the user can reach files owned by their subordinate ids (e.g. a kept
//! writable layer under ~/.local/share/rootless_container). As root it just runs the command.

use super::UsernsMode;
use crate::engine::{clone_into_namespaces, sync, write_id_maps};
use anyhow::{Context, Result};
use nix::sys::signal::{SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::ffi::CString;
use std::os::fd::AsRawFd;

pub fn unshare(command: Vec<String>) -> Result<i32> {
    let command = if command.is_empty() {
        vec![std::env::var("SHELL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/bin/sh".into())]
    } else {
        command
    };
    let argv: Vec<CString> = command
        .iter()
        .map(|a| {
            CString::new(a.as_str())
                .map_err(|_| anyhow::anyhow!("argument contains a NUL byte: {a:?}"))
        })
        .collect::<Result<_>>()?;
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 {
        let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
        return Err(
            crate::exit::ExitError::new(127, format!("{}: {}", command[0], err.desc())).into(),
        );
    }
    let (uids, gids, writer) =
        super::run::plan_maps(UsernsMode::Auto, euid, nix::unistd::getegid().as_raw())?;
    let (parent_sock, child_sock) = sync::pair()?;
    let (pid, _pidfd) = clone_into_namespaces((libc::CLONE_NEWUSER | libc::CLONE_NEWNS) as u64)?;
    if pid == 0 {
        drop(parent_sock);
        // SAFETY: prctl with constant arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        if sync::wait_go(child_sock.as_raw_fd()).is_err() {
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(125) };
        }
        let err = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
        eprintln!("rootless_container: {}: {}", command[0], err.desc());
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe {
            libc::_exit(if err == nix::errno::Errno::ENOENT {
                127
            } else {
                126
            })
        };
    }
    drop(child_sock);
    let pid = Pid::from_raw(pid);
    if let Err(e) = write_id_maps(&writer, pid, &uids, &gids, true, &mut || Ok(())) {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(e);
    }
    // Like system(3): the terminal's signals reach the command, which shares our process group.
    // SAFETY: ignoring signals is async-signal-safe.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = nix::sys::signal::signal(Signal::SIGQUIT, SigHandler::SigIgn);
    }
    sync::send_go(&parent_sock, None)?;
    loop {
        match waitpid(pid, None).context("wait for the command")? {
            WaitStatus::Exited(_, c) => return Ok(c),
            WaitStatus::Signaled(_, s, _) => return Ok(128 + s as i32),
            _ => continue,
        }
    }
}
