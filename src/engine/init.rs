//! `--init`: a minimal PID 1 in front of the command. It forwards the signals a user or
//! runtime sends, reaps every orphan that is reparented to it, and exits with the
//! command's status.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals forwarded to the command (everything a user can meaningfully send).
pub const FORWARDED: [Signal; 13] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGALRM,
    Signal::SIGPIPE,
];

/// The init is a copy of the runtime: its command line (visible to `ps` inside the
/// container) would show the host's paths and flags. Overwrite it in place, as
/// setproctitle does; PR_SET_MM would need CAP_SYS_RESOURCE on the host.
fn hide_command_line() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // arg_start and arg_end are fields 48 and 49 of stat; `rest` starts at field 3.
    let (Some(start), Some(end)) = (
        fields.get(45).and_then(|v| v.parse::<usize>().ok()),
        fields.get(46).and_then(|v| v.parse::<usize>().ok()),
    ) else {
        return;
    };
    let title = b"rootless_container-init\0";
    if start == 0 || end <= start || end - start < title.len() {
        return;
    }
    // SAFETY: [arg_start, arg_end) is this process's own writable argument area, which
    // nothing reads any more (std copied argv at start-up).
    unsafe {
        std::ptr::write_bytes(start as *mut u8, 0, end - start);
        std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, title.len());
    }
}

/// Runs as PID 1 with `child` the command. Never returns.
pub fn run_init(child: Pid, mut set: SigSet) -> ! {
    hide_command_line();
    set.add(Signal::SIGCHLD);
    let exit_of = |st: WaitStatus| match st {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    };
    loop {
        let sig = match set.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            // The command may have made its own process group (a shell with job control);
            // it is its leader either way.
            let _ = nix::sys::signal::kill(child, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(st) => {
                    if st.pid() == Some(child) {
                        if let Some(code) = exit_of(st) {
                            // Let the rest go with us: the kernel kills the namespace when PID 1 exits.
                            std::process::exit(code);
                        }
                    }
                }
            }
        }
    }
}
