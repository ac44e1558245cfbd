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

/// Runs as PID 1 with `child` the command. Never returns.
pub fn run_init(child: Pid, mut set: SigSet) -> ! {
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
