//! Protect the runtime binary against being rewritten from inside a container
//! (CVE-2019-5736 class): run from a sealed memfd copy whenever the container's root could
//! otherwise write the file behind /proc/self/exe.

use anyhow::{Context, Result};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

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

/// Whether `exe` lies on a read-only overlayfs (the view readonly_overlay_view makes).
fn on_readonly_overlay(exe: &File) -> bool {
    const OVERLAYFS_SUPER_MAGIC: libc::c_long = 0x794c_7630;
    // SAFETY: fstatfs and fstatvfs into zeroed structs on an fd we own.
    let (mut fs, mut vfs): (libc::statfs, libc::statvfs) = unsafe { std::mem::zeroed() };
    let ok = unsafe {
        libc::fstatfs(exe.as_raw_fd(), &mut fs) == 0
            && libc::fstatvfs(exe.as_raw_fd(), &mut vfs) == 0
    };
    ok && fs.f_type as libc::c_long == OVERLAYFS_SUPER_MAGIC && vfs.f_flag & libc::ST_RDONLY != 0
}

/// Re-execute from a view of the binary that cannot be written when needed: a read-only
/// overlay of its own directory (root), else a sealed memfd copy. Returns normally when
/// already safe.
pub fn ensure_sealed_exe() -> Result<()> {
    let exe = File::open("/proc/self/exe").context("open /proc/self/exe")?;
    if is_sealed(&exe) || on_readonly_overlay(&exe) || !exposed("/proc/self/exe") {
        return Ok(());
    }
    let view = match readonly_overlay_view().filter(|v| same_file(v, &exe)) {
        Some(f) => f,
        None => sealed_copy(&exe)?,
    };
    reexec(&view)
}

/// Whether `view` shows the very file that runs (not one put in its place since, under the
/// same name): inode number, size and modification time.
fn same_file(view: &File, exe: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (view.metadata(), exe.metadata()) {
        (Ok(a), Ok(b)) => {
            (a.ino(), a.size(), a.mtime_nsec(), a.mtime())
                == (b.ino(), b.size(), b.mtime_nsec(), b.mtime())
        }
        _ => false,
    }
}

/// The lower layer under the binary's directory in readonly_overlay_view (root only).
const EMPTY_LOWER: &str = "/run/rootless_container-empty";

fn raw_fd_result(r: libc::c_long) -> Option<File> {
    // SAFETY: a new descriptor returned by the kernel, owned by the File from here on.
    (r >= 0).then(|| unsafe { File::from_raw_fd(r as i32) })
}

/// The binary through a detached overlayfs mount of its directory with no upper layer:
/// read-only (EROFS for any write through it), attached to no mount namespace, and no copy
/// of the 6 MB binary per start (that took 4 ms here). runc 1.2 protects itself the same
/// way. Needs the right to mount (root); None when anything refuses.
fn readonly_overlay_view() -> Option<File> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: libc::c_uint = 1;
    let path = std::fs::read_link("/proc/self/exe").ok()?;
    let dir = path.parent()?.to_str()?;
    // overlayfs splits its options on these.
    if dir.contains([',', ':', '\\']) {
        return None;
    }
    let name = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.file_name()?)).ok()?;
    // overlayfs wants two layers when there is no upper one: the binary's directory on top
    // (its name resolves there), an empty directory of root's runtime state below it.
    let empty = Path::new(EMPTY_LOWER);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(empty)
        .ok()?;
    if Path::new(dir).starts_with(empty) || empty.starts_with(dir) {
        return None;
    }
    let lower = CString::new(format!("{dir}:{EMPTY_LOWER}")).ok()?;
    let (fstype, key) = (c"overlay", c"lowerdir");
    // SAFETY: the new mount API with valid strings; every descriptor lands in a File.
    unsafe {
        let fs = raw_fd_result(libc::syscall(
            libc::SYS_fsopen,
            fstype.as_ptr(),
            FSOPEN_CLOEXEC,
        ))?;
        let fsfd = fs.as_raw_fd();
        let set = libc::syscall(
            libc::SYS_fsconfig,
            fsfd,
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            lower.as_ptr(),
            0,
        );
        let created = set == 0
            && libc::syscall(
                libc::SYS_fsconfig,
                fsfd,
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            ) == 0;
        if !created {
            return None;
        }
        let mnt = raw_fd_result(libc::syscall(
            libc::SYS_fsmount,
            fsfd,
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_RDONLY,
        ))?;
        let fd = libc::openat(
            mnt.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        let view = raw_fd_result(fd as libc::c_long)?;
        on_readonly_overlay(&view).then_some(view)
    }
}

/// A sealed memfd copy of the binary.
fn sealed_copy(exe: &File) -> Result<File> {
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
    Ok(memfd)
}

/// execve the binary behind `view` with our own arguments and environment.
fn reexec(view: &File) -> Result<()> {
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
    let err = nix::unistd::fexecve(view.as_raw_fd(), &args, &env).unwrap_err();
    Err(err).context("re-execute the runtime from its sealed copy")
}
