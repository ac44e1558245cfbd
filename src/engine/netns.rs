//! The container's own network namespace with `--network none`, made by a short-lived
//! helper while the container's first process sets up its mounts.
//!
//! Creating a network namespace is the dearest step of a start here (0.3-0.5 ms: the
//! loopback device, per-namespace sysctl tables and proc entries). Nothing outside has to
//! join this one, so it need not exist before the process is released: a helper in the
//! first process's user namespace (which then owns the network namespace) creates it on
//! another CPU, and the first process joins it before it mounts sysfs, which shows the
//! mounter's network namespace.
//!
//! The helper shares the first process's memory and file table (clone(2) with CLONE_VM
//! and CLONE_FILES, on a stack of its own) and makes raw system calls only: no page
//! tables to copy and no copy-on-write faults afterwards, as a fork costs (0.1 ms here),
//! and its descriptor to the new namespace is already in the first process's table. It
//! is pinned to the CPUs other than the first process's: a new task starts on its
//! parent's CPU and would otherwise wait there until the first process blocks.
//! When newuidmap and newgidmap write the maps, the first process waits for them longer
//! than the namespace takes, so it makes the namespace itself meanwhile. With a network
//! helper or the bridge the namespace comes from clone(2), as they need it before the
//! container is released.

use anyhow::{bail, Context, Result};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

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

/// Whether this architecture has the helper (its raw system calls): elsewhere the first
/// process makes the namespace itself.
pub const HELPER_SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// A network namespace being made by a helper; `enter` joins it (once). Dropped without
/// `enter` (a failed start), it still waits for the helper: the helper writes into
/// `shared` and runs on `stack` until it exits.
pub struct PendingNetns {
    helper: libc::pid_t,
    reaped: bool,
    shared: Box<HelperResult>,
    stack: Vec<u8>,
}

/// What the helper leaves: the namespace's descriptor, or the step that failed and errno.
#[derive(Default)]
struct HelperResult {
    fd: AtomicI32,
    failed_step: AtomicI32,
    errno: AtomicI32,
}

const STEP_UNSHARE: i32 = 1;
const STEP_LOOPBACK: i32 = 2;
const STEP_OPEN: i32 = 3;
const HELPER_STACK: usize = 64 * 1024;

/// A system call that never touches errno: the helper shares the first process's memory,
/// thread-local errno included, so libc's wrappers must not run there. Returns the
/// kernel's result (negative errno on failure).
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall(nr: libc::c_long, a: usize, b: usize, c: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes a valid system call; rcx and r11 are clobbered by it.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a,
            in("rsi") b, in("rdx") c, lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn raw_syscall(nr: libc::c_long, a: usize, b: usize, c: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller passes a valid system call.
    unsafe {
        std::arch::asm!("svc 0", in("x8") nr, inlateout("x0") a as isize => ret,
            in("x1") b, in("x2") c, options(nostack));
    }
    ret
}

/// Other architectures have no helper (HELPER_SUPPORTED); this only keeps them building.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn raw_syscall(_nr: libc::c_long, _a: usize, _b: usize, _c: usize) -> isize {
    -(libc::ENOSYS as isize)
}

/// The helper's body: system calls only, nothing that allocates, locks or sets errno.
extern "C" fn helper_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the HelperResult the first process keeps alive until we exit.
    let out = unsafe { &*(arg as *const HelperResult) };
    let fail = |step: i32, r: isize| {
        out.errno.store(-r as i32, Ordering::Release);
        out.failed_step.store(step, Ordering::Release);
        0
    };
    // SAFETY: raw system calls with valid arguments; `ifr` and the path outlive them.
    unsafe {
        let r = raw_syscall(libc::SYS_unshare, libc::CLONE_NEWNET as usize, 0, 0);
        if r < 0 {
            return fail(STEP_UNSHARE, r);
        }
        let s = raw_syscall(
            libc::SYS_socket,
            libc::AF_INET as usize,
            (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as usize,
            0,
        );
        if s < 0 {
            return fail(STEP_LOOPBACK, s);
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        let ifr = &mut ifr as *mut libc::ifreq;
        let mut r = raw_syscall(
            libc::SYS_ioctl,
            s as usize,
            libc::SIOCGIFFLAGS as usize,
            ifr as usize,
        );
        if r >= 0 {
            (*ifr).ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = raw_syscall(
                libc::SYS_ioctl,
                s as usize,
                libc::SIOCSIFFLAGS as usize,
                ifr as usize,
            );
        }
        raw_syscall(libc::SYS_close, s as usize, 0, 0);
        if r < 0 {
            return fail(STEP_LOOPBACK, r);
        }
        let path = c"/proc/self/ns/net";
        let fd = raw_syscall(
            libc::SYS_openat,
            libc::AT_FDCWD as usize,
            path.as_ptr() as usize,
            (libc::O_RDONLY | libc::O_CLOEXEC) as usize,
        );
        if fd < 0 {
            return fail(STEP_OPEN, fd);
        }
        out.fd.store(fd as i32, Ordering::Release);
    }
    0
}

impl PendingNetns {
    /// Start the helper. Call from the single-threaded first process, in its new user
    /// namespace.
    pub fn start() -> Result<Self> {
        let shared = Box::new(HelperResult {
            fd: AtomicI32::new(-1),
            ..Default::default()
        });
        let mut stack = vec![0u8; HELPER_STACK];
        // The stack grows down from its 16-byte aligned top.
        let top = (stack.as_mut_ptr() as usize + HELPER_STACK) & !15;
        // SAFETY: the stack and `shared` stay alive until `enter` has reaped the helper,
        // which only runs helper_main (raw system calls) and exits.
        let pid = unsafe {
            libc::clone(
                helper_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD,
                &*shared as *const HelperResult as *mut libc::c_void,
            )
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error())
                .context("start the network namespace helper");
        }
        run_elsewhere(pid);
        Ok(Self {
            helper: pid,
            reaped: false,
            shared,
            stack,
        })
    }

    /// Wait until the helper has exited; false if it cannot be waited for.
    fn reap(&mut self) -> bool {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        while unsafe { libc::waitpid(self.helper, &mut status, 0) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return false;
            }
        }
        self.reaped = true;
        true
    }

    /// Wait for the namespace, join it and reap the helper.
    pub fn enter(mut self) -> Result<()> {
        if !self.reap() {
            bail!("the network namespace helper vanished");
        }
        let fd = self.shared.fd.swap(-1, Ordering::AcqRel);
        if fd < 0 {
            let err = std::io::Error::from_raw_os_error(self.shared.errno.load(Ordering::Acquire));
            return Err(match self.shared.failed_step.load(Ordering::Acquire) {
                STEP_UNSHARE => anyhow::anyhow!(
                    "cannot create the container's network namespace ({err}): {}",
                    crate::cli::userns_hint()
                ),
                STEP_LOOPBACK => anyhow::anyhow!("bring up the loopback interface: {err}"),
                STEP_OPEN => anyhow::anyhow!("open the new network namespace: {err}"),
                _ => anyhow::anyhow!("the network namespace helper died"),
            });
        }
        // SAFETY: the helper opened `fd` in our shared table and left it to us.
        let ns = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: setns on a namespace fd we own.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("enter the container's network namespace");
        }
        Ok(())
    }
}

impl Drop for PendingNetns {
    fn drop(&mut self) {
        if !self.reaped && !self.reap() {
            // Cannot happen (it is our child), but never free what it may still use.
            std::mem::forget(std::mem::take(&mut self.stack));
            std::mem::forget(std::mem::take(&mut self.shared));
            return;
        }
        let fd = self.shared.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: the helper's descriptor, left to us and not taken by `enter`.
            unsafe { libc::close(fd) };
        }
    }
}

/// Let `pid` run on any CPU we may use except the one we are on (no change when that is
/// the only one).
fn run_elsewhere(pid: libc::pid_t) {
    // SAFETY: raw getcpu and plain affinity calls on a zeroed cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // getcpu(2) itself, not glibc's sched_getcpu: that reads the rseq area in thread
        // storage, which a process borrowing the runtime's memory shares with the runtime
        // (and the kernel does not update it for us).
        let mut me: libc::c_uint = 0;
        let r = raw_syscall(
            libc::SYS_getcpu,
            &mut me as *mut libc::c_uint as usize,
            0,
            0,
        );
        if r < 0 || libc::sched_getaffinity(0, size, &mut set) != 0 {
            return;
        }
        libc::CPU_CLR(me as usize, &mut set);
        if libc::CPU_COUNT(&set) > 0 {
            libc::sched_setaffinity(pid, size, &set);
        }
    }
}
