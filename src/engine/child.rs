//! The container's first process, from clone(2) to execve(2).

use super::bpf::SockFilter;
use super::launch::Start;
use super::{rootfs, security, sync, tty, userns, Launch};
use crate::exit::{ExitError, EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND, EXIT_RUNTIME};
use anyhow::{Context, Result};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use oci_spec::runtime::LinuxNamespaceType;
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Entry point after clone; never returns.
/// `seccomp` is the filter compiled by the runtime before clone (pages the child only
/// reads are not copied for it).
pub fn main(l: &Launch, sock: RawFd, sigs: SigSet, seccomp: &[SockFilter], start: &Start) -> ! {
    let err = match setup_and_exec(l, sock, sigs, seccomp, start) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let code = err
        .downcast_ref::<ExitError>()
        .map(|e| e.code)
        .unwrap_or(EXIT_RUNTIME);
    sync::send_failure(sock, code, &format!("{err:#}"));
    // SAFETY: leave without running the parent's atexit handlers or destructors twice.
    unsafe { libc::_exit(code) }
}

enum Never {}

fn setup_and_exec(
    l: &Launch,
    sock: RawFd,
    sigs: SigSet,
    seccomp: &[SockFilter],
    start: &Start,
) -> Result<Never> {
    // Die with the runtime; a runtime that died before this line is caught by wait_go (EOF)
    // or, borrowing its memory, by check_runtime_alive before execve.
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    // Our own network namespace, made after clone (see netns.rs): here, while the setuid
    // helpers write the maps, or else by a helper process while we set up, joined
    // before sysfs is mounted. A helper started before `go` while a cgroup waits for us
    // might be born in the container's scope after systemd moved us there and before the
    // runtime moved us on to our leaf: cgroup v2 then refuses to enable controllers in a
    // scope with a process in it. With a cgroup the helper starts after `go`.
    let mut netns = None;
    let helper = l.netns_in_child()
        && !matches!(l.maps, super::MapWriter::Helpers { .. })
        && super::netns::HELPER_SUPPORTED;
    if l.netns_in_child() && !helper {
        super::netns::create()?;
    }
    if helper && l.cgroup.is_none() {
        netns = Some(super::netns::PendingNetns::start()?);
    }
    let winsize = match start {
        Start::Go => sync::wait_go(sock)?,
        Start::Borrowed { winsize, own_maps } => {
            if *own_maps {
                write_own_maps(l)?;
            }
            winsize.map(|ws| (ws.ws_row, ws.ws_col))
        }
    };
    if helper && l.cgroup.is_some() {
        netns = Some(super::netns::PendingNetns::start()?);
    }
    // Not dumpable: container processes cannot open our /proc/<pid>/exe, mem or fds. Only
    // now: the runtime writes our id maps and setgroups file before `go`, which a
    // non-dumpable process's root-owned /proc entries would refuse.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if l.creates_namespace(LinuxNamespaceType::Cgroup) {
        // Only now, once the runtime has placed us in our cgroup, so that it becomes our root.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .context("create the cgroup namespace")?;
    }
    if l.creates_namespace(LinuxNamespaceType::Uts) {
        if let Some(h) = l.spec.hostname() {
            nix::unistd::sethostname(h).context("set the hostname")?;
        }
    }
    if l.creates_namespace(LinuxNamespaceType::Network) && !l.netns_in_child() {
        super::netns::loopback_up()?;
    }
    rootfs::setup(l, &mut netns)?;
    if let Some(n) = netns.take() {
        n.enter()?;
    }

    let process = l.spec.process().as_ref().context("spec has no process")?;
    if process.terminal().unwrap_or(false) {
        let master = tty::make_container_pty(winsize)?;
        sync::send_pty(sock, master.as_raw_fd())?;
    } else {
        // A process without a terminal must not share the caller's session: TIOCSTI.
        nix::unistd::setsid().context("setsid")?;
        if !l.interactive {
            let null = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDONLY,
                nix::sys::stat::Mode::empty(),
            )
            .context("open /dev/null")?;
            nix::unistd::dup2(null, 0)?;
            let _ = nix::unistd::close(null);
        }
    }
    security::set_rlimits(&l.spec)?;
    security::limit_capabilities(&l.spec)?;
    // Under a single-id map the runtime had to deny setgroups(2).
    let setgroups_ok = std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() != "deny")
        .unwrap_or(true);
    security::switch_user(&l.spec, setgroups_ok)?;
    // A credential change clears the parent-death signal: arm it again, then make sure
    // the runtime did not die in between (its end of the socket would be closed).
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    sync::check_runtime_alive(sock)?;
    if process.no_new_privileges().unwrap_or(true) {
        security::set_no_new_privs()?;
    }
    enter_workdir(process.cwd())?;
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let program = resolve_command(args.first().context("no command given")?, &env)?;

    security::keep_fds(l.preserve_fds);
    security::close_fds_from(3 + l.preserve_fds)?;
    // Last: from here on the filter also applies to what we do ourselves.
    super::seccomp::install(seccomp)?;
    if l.init {
        // SAFETY: single-threaded; the child continues to exec below, the parent becomes init.
        match unsafe { nix::unistd::fork() }.context("fork the command under --init")? {
            nix::unistd::ForkResult::Parent { child } => {
                // The runtime learns about exec through the command's copy of the socket.
                let _ = nix::unistd::close(sock);
                // SAFETY: installing a no-op handler is async-signal-safe.
                extern "C" fn noop(_: libc::c_int) {}
                for s in super::init::FORWARDED {
                    unsafe {
                        let _ = nix::sys::signal::signal(s, SigHandler::Handler(noop));
                    }
                }
                super::init::run_init(child, sigs);
            }
            nix::unistd::ForkResult::Child => {
                // The init dies only after the command; nothing to do here.
            }
        }
    }
    reset_signals(&sigs);
    // An end of the socket without this means we died before execve (a signal, a stack
    // guard page), not that the command ran.
    sync::send_executing(sock);
    exec(&program, &args, &env)
}

/// Our own single-id maps (the runtime is suspended, Start::Borrowed): setgroups denied,
/// then our uid and gid.
fn write_own_maps(l: &Launch) -> Result<()> {
    let (uids, gids) = super::launch::spec_maps(l)?;
    userns::deny_setgroups(None)?;
    userns::write_map_direct(None, "uid_map", &uids)?;
    userns::write_map_direct(None, "gid_map", &gids)
}

fn reset_signals(sigs: &SigSet) {
    for s in sigs.iter() {
        // SAFETY: restoring default dispositions before exec.
        unsafe {
            let _ = nix::sys::signal::signal(s, SigHandler::SigDfl);
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let _ = Signal::SIGCHLD; // kept in the forwarded set's type
}

/// chdir into the working directory and make sure it is inside the container's root
/// (a cwd reached through a leaked fd would not be: CVE-2024-21626).
fn enter_workdir(cwd: &Path) -> Result<()> {
    nix::unistd::chdir(cwd).map_err(|e| {
        ExitError::new(
            EXIT_RUNTIME,
            format!("cannot enter working directory {}: {e}", cwd.display()),
        )
    })?;
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        _ => Err(ExitError::new(
            EXIT_RUNTIME,
            format!(
                "working directory {} is outside the container",
                cwd.display()
            ),
        )
        .into()),
    }
}

/// Find the command as execvp would, with the container's PATH; classify failures with
/// Docker's exit codes (127 not found, 126 not executable).
fn resolve_command(cmd: &str, env: &[String]) -> Result<PathBuf> {
    let check = |p: &Path| -> std::result::Result<(), (i32, String)> {
        match std::fs::metadata(p) {
            Err(_) => Err((
                EXIT_NOT_FOUND,
                format!("{}: no such file or directory", p.display()),
            )),
            Ok(md) if md.is_dir() => Err((
                EXIT_CANNOT_INVOKE,
                format!("{}: is a directory", p.display()),
            )),
            Ok(md)
                if md.permissions().mode() & 0o111 == 0
                    || nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_err() =>
            {
                Err((
                    EXIT_CANNOT_INVOKE,
                    format!("{}: permission denied", p.display()),
                ))
            }
            Ok(_) => Ok(()),
        }
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return check(&p)
            .map(|_| p)
            .map_err(|(c, m)| ExitError::new(c, m).into());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut denied = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(cmd);
        match check(&p) {
            Ok(()) => return Ok(p),
            Err((EXIT_CANNOT_INVOKE, m)) if denied.is_none() && !p.is_dir() => denied = Some(m),
            Err(_) => {}
        }
    }
    Err(match denied {
        Some(m) => ExitError::new(EXIT_CANNOT_INVOKE, m),
        None => ExitError::new(
            EXIT_NOT_FOUND,
            format!("{cmd}: executable file not found in $PATH"),
        ),
    }
    .into())
}

fn exec(program: &Path, args: &[String], env: &[String]) -> Result<Never> {
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| anyhow::anyhow!("argument contains a NUL byte: {s:?}"))
    };
    let prog = cstr(program.to_str().context("command path is not UTF-8")?)?;
    let argv = args.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
    let envp = env.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
    let err = nix::unistd::execve(&prog, &argv, &envp).unwrap_err();
    let code = match err {
        nix::errno::Errno::ENOENT => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_INVOKE,
    };
    Err(ExitError::new(code, format!("exec {}: {}", program.display(), err.desc())).into())
}
