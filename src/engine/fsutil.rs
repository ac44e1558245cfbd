//! Path resolution inside a container's root that never escapes it (openat2 with
//! RESOLVE_IN_ROOT), and small helpers for mount targets.

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Open `path` (absolute or relative; taken as relative to the container root) inside
/// `root` with every symlink and `..` resolved as if `root` were `/`.
pub fn open_in_root(root: &OwnedFd, path: &Path, flags: OFlag, mode: u32) -> nix::Result<OwnedFd> {
    let rel = relative(path);
    let c =
        CString::new(rel.as_os_str().as_encoded_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | OFlag::O_CLOEXEC).bits() as u64;
    how.mode = if flags.contains(OFlag::O_CREAT) {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, NUL-terminated path and a properly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: the kernel returned a new fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `path` without its leading `/` (an empty path means the root itself).
pub fn relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::from(".");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => out.push(".."),
            _ => {}
        }
    }
    out
}

pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    .with_context(|| format!("open {}", path.display()))
}

/// Make sure directory `path` exists inside `root` (creating missing components as
/// directories) and return an O_PATH fd to it.
pub fn mkdir_all_in_root(root: &OwnedFd, path: &Path) -> Result<OwnedFd> {
    let rel = relative(path);
    let mut cur = PathBuf::from(".");
    let mut parent = open_in_root(root, &cur, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
    for comp in rel.components().skip(1) {
        cur.push(comp);
        match open_in_root(root, &cur, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
            Ok(fd) => parent = fd,
            Err(nix::errno::Errno::ENOENT) => {
                let name = comp.as_os_str();
                match nix::sys::stat::mkdirat(
                    Some(parent.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("create directory {} in the container", path.display())
                        })
                    }
                }
                parent = open_in_root(root, &cur, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
                    .with_context(|| format!("open {} in the container", path.display()))?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("open {} in the container", path.display()))
            }
        }
    }
    Ok(parent)
}

/// Make sure a file exists at `path` inside `root` (to bind a file over) and return an O_PATH fd.
pub fn touch_in_root(root: &OwnedFd, path: &Path) -> Result<OwnedFd> {
    if let Some(p) = path.parent() {
        mkdir_all_in_root(root, p)?;
    }
    match open_in_root(root, path, OFlag::O_PATH, 0) {
        Ok(fd) => Ok(fd),
        Err(nix::errno::Errno::ENOENT) => {
            drop(open_in_root(
                root,
                path,
                OFlag::O_CREAT | OFlag::O_WRONLY,
                0o644,
            ));
            open_in_root(root, path, OFlag::O_PATH, 0)
                .with_context(|| format!("create {} in the container", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("open {} in the container", path.display())),
    }
}

/// The magic-link path through which a mount can target an fd without re-resolving.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Read a small file inside `root` (e.g. /etc/passwd of a root filesystem).
pub fn read_in_root(root: &Path, path: &Path) -> Result<String> {
    let rootfd = open_dir(root)?;
    let fd = open_in_root(&rootfd, path, OFlag::O_RDONLY, 0)
        .with_context(|| format!("open {}", path.display()))?;
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_stay_inside_the_root() {
        let tmp = std::env::temp_dir().join(format!("rc-fsutil-{}", std::process::id()));
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(tmp.join("secret"), "host").unwrap();
        std::fs::write(root.join("etc/passwd"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("escape")).unwrap();
        assert_eq!(read_in_root(&root, Path::new("/abs")).unwrap(), "inside");
        assert!(read_in_root(&root, Path::new("/escape")).is_err());
        let rfd = open_dir(&root).unwrap();
        mkdir_all_in_root(&rfd, Path::new("/escape/x/y")).ok();
        assert!(
            !tmp.join("x").exists(),
            "mkdir followed a symlink out of the root"
        );
        mkdir_all_in_root(&rfd, Path::new("/a/b/c")).unwrap();
        assert!(root.join("a/b/c").is_dir());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
