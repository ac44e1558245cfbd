//! Protect the runtime binary against being rewritten from inside a container
//! (CVE-2019-5736 class): run from a sealed memfd copy whenever the container's root could
//! otherwise write the file behind /proc/self/exe.

use anyhow::{Context, Result};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

const WANTED_SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

fn is_sealed(exe: &File) -> bool {
    // SAFETY: fcntl on an fd we own; F_GET_SEALS fails with EINVAL on non-memfd files.
    let seals = unsafe { libc::fcntl(exe.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & WANTED_SEALS == WANTED_SEALS
}

/// Whether container root could write the binary: as root always (container root is host
/// root); rootless when the file is writable by our own uid (container 0 maps to it).
fn exposed(exe_path: &str) -> bool {
    let c = CString::new(exe_path).expect("no NUL");
    // SAFETY: plain syscalls with valid pointers.
    unsafe { libc::geteuid() == 0 || libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Re-execute from a sealed memfd copy when needed. Returns normally when already safe.
pub fn ensure_sealed_exe() -> Result<()> {
    let exe = File::open("/proc/self/exe").context("open /proc/self/exe")?;
    if is_sealed(&exe) || !exposed("/proc/self/exe") {
        return Ok(());
    }
    let name = CString::new("rootless_container").expect("no NUL");
    // SAFETY: memfd_create with a valid name; the fd is owned by `memfd` below.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: fd was just created and is not owned elsewhere.
    let memfd = unsafe { File::from_raw_fd(fd) };
    let len = exe.metadata()?.len() as usize;
    let mut copied = 0usize;
    while copied < len {
        // SAFETY: both fds are valid; sendfile copies within the kernel.
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                exe.as_raw_fd(),
                std::ptr::null_mut(),
                len - copied,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("copy runtime binary into memfd");
        }
        if n == 0 {
            break;
        }
        copied += n as usize;
    }
    // SAFETY: fcntl on our memfd.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, WANTED_SEALS) } < 0 {
        return Err(std::io::Error::last_os_error()).context("seal memfd");
    }
    let args: Vec<CString> = std::env::args_os()
        .map(|a| {
            CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str()))
                .expect("argv has no NUL")
        })
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut b = std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()).to_vec();
            b.push(b'=');
            b.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
            CString::new(b).expect("env has no NUL")
        })
        .collect();
    let err = nix::unistd::fexecve(memfd.as_raw_fd(), &args, &env).unwrap_err();
    Err(err).context("re-execute the runtime from its sealed copy")
}
