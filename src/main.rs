//! rootless_container: parse, run, print the error, exit with the right code.

// Our own C `main` instead of std's start-up (lang_start): that reads /proc/self/maps to
// place a guard page below the main thread's stack and sets up an alternate signal stack,
// 50 us of a 3 ms container start here. What of it matters is done in `main` below.
#![cfg_attr(not(test), no_main)]

mod cgroup;
mod cli;
mod engine;
mod exit;
mod network;
mod spec;
mod state;
mod util;

/// The process entry (glibc calls it after its own start-up; std's `env::args` still
/// works, glibc hands the arguments to std's initializer).
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    std_startup();
    std::process::exit(run())
}

/// What std's start-up does that the runtime relies on: fds 0-2 open (else the first
/// file we open would become someone's stdout), and SIGPIPE ignored (a write to a closed
/// pipe or socket then fails with EPIPE instead of killing the runtime mid-clean-up).
#[cfg(not(test))]
fn std_startup() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll over a valid array without waiting; fcntl, open and signal on
    // constants.
    unsafe {
        let closed: Vec<libc::c_int> = loop {
            match libc::poll(fds.as_mut_ptr(), 3, 0) {
                n if n >= 0 => {
                    break fds
                        .iter()
                        .filter(|p| p.revents & libc::POLLNVAL != 0)
                        .map(|p| p.fd)
                        .collect()
                }
                _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
                // As std does when poll is unavailable (ENOMEM, a sandbox): one by one.
                _ => {
                    break (0..3)
                        .filter(|&fd| libc::fcntl(fd, libc::F_GETFD) < 0)
                        .collect()
                }
            }
        };
        for fd in closed {
            // The lowest free number is the closed one.
            if libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) != fd {
                libc::_exit(exit::EXIT_RUNTIME);
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

#[cfg_attr(test, allow(dead_code))]
fn run() -> i32 {
    let cli = match <cli::Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        // --help and --version print and exit 0, as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // One line, exit 125 (Docker's code for the runtime's own errors).
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("rootless_container: {first}; see --help");
            std::process::exit(exit::EXIT_RUNTIME);
        }
    };
    if cli.needs_sealed_exe() {
        if let Err(e) = engine::seal::ensure_sealed_exe() {
            eprintln!("rootless_container: {e:#}");
            std::process::exit(exit::EXIT_RUNTIME);
        }
    }
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rootless_container: {e:#}");
            exit::code_of(&e)
        }
    }
}
