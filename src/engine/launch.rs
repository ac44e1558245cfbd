//! The runtime's side of a container: clone into new namespaces, write the id maps,
//! release the child, relay the terminal and signals, and collect the exit status.

use super::init::FORWARDED;
use super::{sync, tty, userns, Launch, MapWriter};
use crate::exit::ExitError;
use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxNamespaceType;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// clone3's argument block (include/uapi/linux/sched.h).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// fork(2) into new namespaces. Returns 0 in the child, else the child's pid and a pidfd.
pub(crate) fn clone_into_namespaces(flags: u64) -> Result<(i32, Option<OwnedFd>)> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork(); we are
    // single-threaded here, so the child may keep running Rust code.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r >= 0 {
        let fd = (r > 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
        return Ok((r as i32, fd));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(clone_error(err));
    }
    // Linux < 5.3: plain clone, then pidfd_open where it exists.
    // SAFETY: as above, fork-like clone.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as u64,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if r < 0 {
        return Err(clone_error(std::io::Error::last_os_error()));
    }
    if r == 0 {
        return Ok((0, None));
    }
    // SAFETY: pidfd_open on our own child.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, r as i32, 0) };
    Ok((
        r as i32,
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) }),
    ))
}

fn clone_error(err: std::io::Error) -> anyhow::Error {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENOSPC) | Some(libc::EUSERS) => {
            anyhow::anyhow!(
                "cannot create the container's namespaces ({err}): {}",
                crate::cli::userns_hint()
            )
        }
        _ => anyhow::anyhow!("clone: {err}"),
    }
}

fn namespace_flags(l: &Launch) -> u64 {
    let mut flags = 0u64;
    let nss = l
        .spec
        .linux()
        .as_ref()
        .and_then(|x| x.namespaces().clone())
        .unwrap_or_default();
    for ns in nss.iter().filter(|n| n.path().is_none()) {
        flags |= match ns.typ() {
            LinuxNamespaceType::User => libc::CLONE_NEWUSER,
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Network if l.netns_in_child() => 0,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            // Created by the child once it is in its cgroup.
            LinuxNamespaceType::Cgroup | LinuxNamespaceType::Time => 0,
        } as u64;
    }
    flags
}

/// Kills the child if setup fails half-way.
struct ChildGuard(Option<Pid>);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// The spec's uid and gid maps.
pub(super) fn spec_maps(l: &Launch) -> Result<(Vec<userns::IdMap>, Vec<userns::IdMap>)> {
    let linux = l
        .spec
        .linux()
        .as_ref()
        .context("spec has no linux section")?;
    let conv = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<userns::IdMap> {
        m.iter()
            .flatten()
            .map(|x| userns::IdMap {
                inside: x.container_id(),
                outside: x.host_id(),
                count: x.size(),
            })
            .collect()
    };
    Ok((conv(linux.uid_mappings()), conv(linux.gid_mappings())))
}

fn write_maps(l: &Launch, pid: Pid, meanwhile: &mut dyn FnMut() -> Result<()>) -> Result<()> {
    let (uids, gids) = spec_maps(l)?;
    let root_inside = l
        .spec
        .process()
        .as_ref()
        .map(|p| (p.user().uid(), p.user().gid()))
        == Some((0, 0));
    write_id_maps(&l.maps, pid, &uids, &gids, root_inside, meanwhile)
}

/// How the first process starts.
pub(super) enum Start {
    /// A fork: the runtime writes its id maps (places it in its cgroup, attaches its
    /// network) and then sends `go`.
    Go,
    /// It runs in the runtime's memory until it executes the command (clone with CLONE_VM
    /// and CLONE_VFORK, as posix_spawn does), and the runtime is suspended meanwhile: no
    /// page tables to copy, no copy-on-write faults on either side afterwards (70 of them,
    /// 0.2 ms, per start here), no copy to tear down at execve. With `own_maps` it writes
    /// its own single-id maps, as `unshare -r` does; `winsize` is the terminal's size.
    Borrowed {
        winsize: Option<libc::winsize>,
        own_maps: bool,
    },
}

/// Whether nothing but the first process itself has to act between clone and execve, so
/// that it may borrow the runtime's memory (Start::Borrowed): no maps, or a single-id map
/// it can write itself; no cgroup to join, no network to attach, no init to stay behind
/// as PID 1.
/// (The runtime is single-threaded then: only the cgroup and bridge code start threads,
/// and a glibc credential change in the child would otherwise signal them.)
fn can_borrow(l: &Launch, userns: bool) -> bool {
    let maps_ok = !userns || (l.rootless && matches!(l.maps, MapWriter::Direct));
    maps_ok && l.cgroup.is_none() && l.network.is_none() && l.bridge.is_none() && !l.init
}

/// What the borrowing first process is handed.
struct BorrowedChild<'a> {
    l: &'a Launch,
    sock: RawFd,
    /// The runtime's end of the channel, closed in the child's own descriptor table.
    runtime_end: RawFd,
    sigs: SigSet,
    seccomp: &'a [super::bpf::SockFilter],
    start: Start,
}

extern "C" fn borrowed_child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the BorrowedChild on the suspended runtime's stack.
    let c = unsafe { &*(arg as *const BorrowedChild) };
    // SAFETY: our copy of the runtime's end; the runtime's own stays open.
    unsafe { libc::close(c.runtime_end) };
    super::child::main(c.l, c.sock, c.sigs, c.seccomp, &c.start)
}

/// The first process's stack while it borrows the runtime's memory: a main thread's
/// usual 8 MiB (only the pages it touches are allocated; setup needs a few).
const BORROWED_STACK: usize = 8 << 20;

/// clone into new namespaces with Start::Borrowed; returns once the child has executed
/// its command or died. The child's pid and a pidfd.
fn clone_borrowed(flags: u64, child: &BorrowedChild) -> Result<(i32, Option<OwnedFd>)> {
    let all =
        flags | (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD) as u64;
    let all = libc::c_int::try_from(all).context("clone flags beyond 32 bits")?;
    let page = 4096;
    // SAFETY: a fresh private mapping; its lowest page becomes a guard against overflow
    // (into the runtime's own memory otherwise).
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            BORROWED_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error()).context("allocate the container's stack");
    }
    // SAFETY: within the mapping just made (unmapped again if this fails).
    if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: the mapping made above, unused.
        unsafe { libc::munmap(base, BORROWED_STACK) };
        return Err(err).context("guard the container's stack");
    }
    let top = (base as usize + BORROWED_STACK) & !15;
    let mut pidfd: libc::c_int = -1;
    // Dumpability belongs to the memory, which the child shares until its execve: it
    // makes itself non-dumpable, and the runtime gets its own setting back afterwards.
    // SAFETY: prctl with constant arguments.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    // SAFETY: the child runs borrowed_child_main on its own stack while we are suspended
    // (CLONE_VFORK), and leaves our memory by execve or _exit before we continue.
    let r = unsafe {
        libc::clone(
            borrowed_child_main,
            top as *mut libc::c_void,
            all,
            child as *const BorrowedChild as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        )
    };
    let err = std::io::Error::last_os_error();
    if dumpable >= 0 {
        // SAFETY: prctl restoring the value read above.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, dumpable, 0, 0, 0) };
    }
    // SAFETY: the child no longer runs on it (it has executed or exited).
    unsafe { libc::munmap(base, BORROWED_STACK) };
    if r < 0 {
        return Err(clone_error(err));
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
    Ok((
        r,
        (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
    ))
}

/// Write the id maps of `pid`'s new user namespace. When a helper fails and only root is
/// needed inside (`single_ok`), fall back to the single mapping a user may write.
/// `meanwhile` runs while the helpers do (its error is returned once they are done).
pub(crate) fn write_id_maps(
    writer: &MapWriter,
    pid: Pid,
    uids: &[userns::IdMap],
    gids: &[userns::IdMap],
    single_ok: bool,
    meanwhile: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    match writer {
        MapWriter::Helpers {
            newuidmap,
            newgidmap,
        } => {
            // Both helpers at once: each is a setuid exec, the slowest part of start-up.
            let u = userns::spawn_map_helper(newuidmap, pid, uids)?;
            let g = userns::spawn_map_helper(newgidmap, pid, gids)?;
            let other = meanwhile();
            let ur = userns::finish_map_helper("newuidmap", u);
            let gr = userns::finish_map_helper("newgidmap", g);
            other?;
            if ur.is_ok() && gr.is_ok() {
                return Ok(());
            }
            let err = ur.as_ref().err().or(gr.as_ref().err()).expect("one failed");
            if !single_ok {
                bail!("{err:#}");
            }
            eprintln!("rootless_container: warning: {err:#}; running with a single id mapping (only root inside)");
            let own = |maps: &[userns::IdMap]| {
                vec![userns::IdMap {
                    inside: 0,
                    outside: maps[0].outside,
                    count: 1,
                }]
            };
            if gr.is_err() {
                userns::deny_setgroups(Some(pid))?;
                userns::write_map_direct(Some(pid), "gid_map", &own(gids))?;
            }
            if ur.is_err() {
                userns::write_map_direct(Some(pid), "uid_map", &own(uids))?;
            }
            Ok(())
        }
        MapWriter::Direct => {
            userns::deny_setgroups(Some(pid))?;
            userns::write_map_direct(Some(pid), "uid_map", uids)?;
            userns::write_map_direct(Some(pid), "gid_map", gids)?;
            meanwhile()
        }
    }
}

/// Start the network helper; the returned handle ends it when dropped.
fn attach_network(n: &super::NetworkPlan, pid: Pid) -> Result<Box<dyn std::any::Any>> {
    if n.pasta {
        let pasta = crate::network::pasta::start(pid.as_raw(), &n.slirp, &n.ports, &n.log)?;
        return Ok(Box::new(pasta));
    }
    let slirp =
        crate::network::slirp::start(pid.as_raw(), &n.slirp, n.api.as_deref(), &n.run, &n.log)?;
    if let Some(api) = &n.api {
        for p in &n.ports {
            crate::network::slirp::add_hostfwd(api, p)?;
        }
    }
    Ok(Box::new(slirp))
}

/// What the caller does at two points of a start.
pub trait Hooks {
    /// The container's process exists: runs while newuidmap and newgidmap write its id
    /// maps, or else once it is released, beside its setup (before it can exec), so that
    /// work kept off the start-up path before clone goes here.
    fn created(&mut self, pid: i32) -> Result<()>;
    /// The command runs (its exec succeeded).
    fn started(&mut self, pid: i32);
    /// Both, for a start whose process the runtime first sees after its execve (one that
    /// borrowed the runtime's memory): a caller may then do their work once.
    fn created_and_started(&mut self, pid: i32) -> Result<()> {
        self.created(pid)?;
        self.started(pid);
        Ok(())
    }
}

/// Run the container to completion.
pub fn run(l: &Launch, hooks: &mut dyn Hooks) -> Result<i32> {
    let terminal = l
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let seccomp = match l.spec.linux().as_ref().and_then(|x| x.seccomp().as_ref()) {
        Some(profile) => super::seccomp::compile(profile)?,
        None => Vec::new(),
    };
    let (parent_sock, child_sock) = sync::pair()?;
    let mut sigs = SigSet::empty();
    for s in FORWARDED {
        sigs.add(s);
    }
    sigs.add(Signal::SIGCHLD);
    // Blocked before clone, so that no signal and no exit is lost before the wait loop.
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&sigs), Some(&mut old))
        .context("block signals")?;
    let userns = namespace_flags(l) & libc::CLONE_NEWUSER as u64 != 0;
    let stdin_fd = std::io::stdin().as_raw_fd();
    let winsize = if terminal {
        tty::winsize_of(stdin_fd)
    } else {
        None
    };

    let borrowed = can_borrow(l, userns);
    let (pid, pidfd) = if borrowed {
        let child = BorrowedChild {
            l,
            sock: child_sock.as_raw_fd(),
            runtime_end: parent_sock.as_raw_fd(),
            sigs,
            seccomp: &seccomp,
            start: Start::Borrowed {
                winsize,
                own_maps: userns,
            },
        };
        clone_borrowed(namespace_flags(l), &child)?
    } else {
        let (pid, pidfd) = clone_into_namespaces(namespace_flags(l))?;
        if pid == 0 {
            drop(parent_sock);
            super::child::main(l, child_sock.as_raw_fd(), sigs, &seccomp, &Start::Go);
        }
        (pid, pidfd)
    };
    drop(child_sock);
    let pid = Pid::from_raw(pid);
    let guard = ChildGuard(Some(pid));
    if borrowed {
        // The child has executed its command (or failed) by now: its reports are waiting.
        return finish_start(
            l,
            pid,
            pidfd,
            parent_sock,
            guard,
            &sigs,
            terminal,
            hooks,
            true,
        );
    }
    // The caller's work goes where it costs nothing: while newuidmap and newgidmap run,
    // or else after `go`, beside the child's setup.
    let beside_helpers = userns && matches!(l.maps, MapWriter::Helpers { .. });
    let maps = if beside_helpers {
        write_maps(l, pid, &mut || hooks.created(pid.as_raw()))
    } else if userns {
        write_maps(l, pid, &mut || Ok(()))
    } else {
        Ok(())
    };
    if let Err(e) = maps {
        // The child may have failed first (it creates the network namespace meanwhile);
        // give its reason, not the missing /proc entry.
        if let Some((code, message)) = sync::reported_failure(&parent_sock) {
            return Err(ExitError::new(code, message).into());
        }
        return Err(e);
    }
    // Into its cgroup before it runs anything of its own: the cgroup namespace the child
    // creates after `go` is then rooted there.
    if let Some(cg) = &l.cgroup {
        cg.place(pid.as_raw())?;
    }
    // The helper lives as long as this function: dropping it closes its exit pipe.
    let _network = match &l.network {
        Some(n) => Some(attach_network(n, pid)?),
        None => None,
    };
    if let Some(ep) = &l.bridge {
        crate::network::bridge::attach(ep, pid.as_raw())?;
    }
    sync::send_go(&parent_sock, winsize)?;
    if !beside_helpers {
        hooks.created(pid.as_raw())?;
    }
    finish_start(
        l,
        pid,
        pidfd,
        parent_sock,
        guard,
        &sigs,
        terminal,
        hooks,
        false,
    )
}

/// From the child's reports to its exit: the terminal, exec or failure, then the wait.
/// `borrowed`: the hooks have not run yet (Start::Borrowed).
#[allow(clippy::too_many_arguments)]
fn finish_start(
    l: &Launch,
    pid: Pid,
    pidfd: Option<OwnedFd>,
    parent_sock: OwnedFd,
    mut guard: ChildGuard,
    sigs: &SigSet,
    terminal: bool,
    hooks: &mut dyn Hooks,
    borrowed: bool,
) -> Result<i32> {
    let stdin_fd = std::io::stdin().as_raw_fd();
    let mut master: Option<OwnedFd> = None;
    // End of file means executed only after the child's last word before execve.
    let mut executing = false;
    loop {
        match sync::recv_report(&parent_sock)? {
            sync::Report::Pty(fd) => master = Some(fd),
            sync::Report::Executing => executing = true,
            sync::Report::Executed if !executing => {
                let status = waitpid(pid, None);
                guard.0 = None;
                let how = match status {
                    Ok(WaitStatus::Signaled(_, s, _)) => format!("was killed by {s:?}"),
                    Ok(WaitStatus::Exited(_, c)) => format!("exited with {c}"),
                    _ => "vanished".to_string(),
                };
                return Err(ExitError::new(
                    crate::exit::EXIT_RUNTIME,
                    format!("the container's first process {how} while it set the container up"),
                )
                .into());
            }
            sync::Report::Executed => break,
            sync::Report::Failed { code, message } => {
                let _ = waitpid(pid, None);
                guard.0 = None;
                return Err(ExitError::new(code, message).into());
            }
        }
    }
    drop(parent_sock);
    if borrowed {
        hooks.created_and_started(pid.as_raw())?;
    } else {
        hooks.started(pid.as_raw());
    }
    guard.0 = None;

    let _raw = if terminal && l.interactive {
        Some(tty::RawMode::enter(stdin_fd)?)
    } else {
        None
    };
    let status = wait_loop(
        pid,
        pidfd.as_ref(),
        sigs,
        master.as_ref(),
        l.interactive && terminal,
    )?;
    Ok(status)
}

/// Forward signals, relay the terminal, and return the exit code (128+N for signal N).
fn wait_loop(
    pid: Pid,
    pidfd: Option<&OwnedFd>,
    sigs: &SigSet,
    master: Option<&OwnedFd>,
    relay_stdin: bool,
) -> Result<i32> {
    let sfd = SignalFd::with_flags(sigs, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    let stdin = 0;
    let stdout = 1;
    let mut stdin_open = relay_stdin;
    let mut master_open = master.is_some();
    loop {
        let mut fds = vec![libc::pollfd {
            fd: sfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(p) = pidfd {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let m_idx = fds.len();
        if let (Some(m), true) = (master, master_open) {
            fds.push(libc::pollfd {
                fd: m.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let s_idx = fds.len();
        if stdin_open {
            fds.push(libc::pollfd {
                fd: stdin,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: poll over a valid array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            bail!("poll: {}", std::io::Error::last_os_error());
        }
        let mut child_gone = pidfd.is_some() && fds[1].revents != 0;
        if fds[0].revents != 0 {
            while let Ok(Some(info)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                match sig {
                    Signal::SIGCHLD => child_gone |= pidfd.is_none(),
                    Signal::SIGWINCH => {
                        if let (Some(m), Some(ws)) = (master, tty::winsize_of(stdin)) {
                            tty::apply_winsize(m.as_raw_fd(), &ws);
                        }
                    }
                    s => {
                        let _ = nix::sys::signal::kill(pid, s);
                    }
                }
            }
        }
        if master_open && fds.len() > m_idx && fds[m_idx].revents != 0 {
            if let Some(m) = master {
                master_open = tty::pump(m.as_raw_fd(), stdout);
            }
        }
        if stdin_open && fds.len() > s_idx && fds[s_idx].revents != 0 {
            if let Some(m) = master {
                if !tty::pump(stdin, m.as_raw_fd()) {
                    stdin_open = false;
                    // End of input: the terminal's EOF character, as typing Ctrl-D would.
                    let _ = nix::unistd::write(m, &[4u8]);
                }
            }
        }
        if child_gone {
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => continue,
                Ok(st) => {
                    if let Some(m) = master {
                        drain(m.as_raw_fd(), stdout);
                    }
                    return Ok(match st {
                        WaitStatus::Exited(_, c) => c,
                        WaitStatus::Signaled(_, s, _) => 128 + s as i32,
                        _ => 125,
                    });
                }
                Err(e) => bail!("wait for the container: {e}"),
            }
        }
    }
}

/// Copy what the container wrote to its terminal after its last process exited.
fn drain(master: RawFd, out: RawFd) {
    // SAFETY: make the master non-blocking; reads end at EIO (no slave left) or EAGAIN.
    unsafe {
        let fl = libc::fcntl(master, libc::F_GETFL);
        libc::fcntl(master, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut buf = [0u8; 16384];
    loop {
        // SAFETY: read into a valid buffer.
        let n = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0
            || nix::unistd::write(
                unsafe { std::os::fd::BorrowedFd::borrow_raw(out) },
                &buf[..n as usize],
            )
            .is_err()
        {
            break;
        }
    }
}
