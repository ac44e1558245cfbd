//! Path resolution inside a container's root that never escapes it (openat2 with
//! RESOLVE_IN_ROOT), and small helpers for mount targets.

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Set once openat2 answered ENOSYS (kernels before 5.6, seccomp filters of older
/// container engines, valgrind): the walk below is used from then on.
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Open `path` (absolute or relative; taken as relative to the container root) inside
/// `root` with every symlink and `..` resolved as if `root` were `/`.
pub fn open_in_root(root: &OwnedFd, path: &Path, flags: OFlag, mode: u32) -> nix::Result<OwnedFd> {
    use std::sync::atomic::Ordering::Relaxed;
    let rel = relative(path);
    if !NO_OPENAT2.load(Relaxed) {
        match openat2_in_root(root, &rel, flags, mode) {
            Err(nix::errno::Errno::ENOSYS) => NO_OPENAT2.store(true, Relaxed),
            r => return r,
        }
    }
    walk_in_root(root, &rel, flags, mode)
}

fn openat2_in_root(root: &OwnedFd, rel: &Path, flags: OFlag, mode: u32) -> nix::Result<OwnedFd> {
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

/// RESOLVE_IN_ROOT without openat2: one component at a time from `root`, never following
/// a symlink in the kernel (O_NOFOLLOW); a symlink's target is read and resolved here,
/// an absolute one from `root` again, and `..` never climbs above `root`. Magic links of
/// /proc are only text here, so they are never followed either.
fn walk_in_root(root: &OwnedFd, rel: &Path, flags: OFlag, mode: u32) -> nix::Result<OwnedFd> {
    use nix::errno::Errno;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|_| Errno::EMFILE);
    let open_path = |dir: &OwnedFd, name: &std::ffi::OsStr, f: OFlag| -> nix::Result<OwnedFd> {
        nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            name,
            f | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    };
    // The directories walked so far, innermost last: `..` pops one (not past the root).
    let mut stack: Vec<OwnedFd> = vec![dup(root)?];
    let mut todo: std::collections::VecDeque<std::ffi::OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        let cur = stack.last().expect("never empty");
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let last = todo.is_empty();
        // The final component gets the caller's flags; a symlink there fails with ELOOP
        // (or opens as the link itself with O_PATH), which we then resolve by hand.
        let fd = if last {
            match open_path(cur, &name, flags) {
                Err(Errno::ELOOP) => open_path(cur, &name, OFlag::O_PATH)?,
                r => r?,
            }
        } else {
            open_path(cur, &name, OFlag::O_PATH)?
        };
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if is_link && !(last && flags.contains(OFlag::O_NOFOLLOW)) {
            links += 1;
            if links > 40 {
                return Err(Errno::ELOOP);
            }
            let target = nix::fcntl::readlinkat(Some(fd.as_raw_fd()), "")?;
            let target = Path::new(&target);
            if target.is_absolute() {
                stack.truncate(1);
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => todo.push_front(n.to_os_string()),
                    Component::ParentDir => todo.push_front("..".into()),
                    _ => {}
                }
            }
            continue;
        }
        if last {
            return Ok(fd);
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        stack.push(fd);
    }
    // The root itself (or a path that resolved back to it).
    let dir = stack.pop().expect("never empty");
    if flags.contains(OFlag::O_PATH) {
        return Ok(dir);
    }
    open_path(&dir, std::ffi::OsStr::new("."), flags)
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
    // Mount points usually exist: one lookup, not one per component.
    if let Ok(fd) = open_in_root(root, path, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
        return Ok(fd);
    }
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

/// A mount target that is the directory `dir` itself: the process's working directory
/// moves there and the path is ".", resolved without any lookup (a /proc/self/fd/N
/// magic link costs a proc lookup of 3-6 us each time, some 30 times a start). Where
/// the directory cannot be entered (fuse-overlayfs answers EOPNOTSUPP to the permission
/// check), the magic link it is.
pub fn at_dir(dir: &OwnedFd) -> std::borrow::Cow<'static, Path> {
    match nix::unistd::fchdir(dir.as_raw_fd()) {
        Ok(()) => Path::new(".").into(),
        Err(_) => fd_path(dir).into(),
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

    /// The walk used without openat2 resolves like RESOLVE_IN_ROOT.
    #[test]
    fn walk_matches_openat2() {
        let tmp = std::env::temp_dir().join(format!("rc-walk-{}", std::process::id()));
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("etc/sub")).unwrap();
        std::fs::create_dir_all(tmp.join("etc")).unwrap();
        std::fs::write(tmp.join("etc/passwd"), "host").unwrap();
        std::fs::write(root.join("etc/passwd"), "inside").unwrap();
        let link = |to: &str, at: &str| std::os::unix::fs::symlink(to, root.join(at)).unwrap();
        link("/etc/passwd", "abs");
        link("../../../etc/passwd", "up");
        link("sub/../passwd", "etc/rel");
        link("/etc", "etcdir");
        link("loop2", "loop1");
        link("loop1", "loop2");
        let rfd = open_dir(&root).unwrap();
        let read = |p: &str, walk: bool| -> nix::Result<String> {
            let rel = relative(Path::new(p));
            let fd = if walk {
                walk_in_root(&rfd, &rel, OFlag::O_RDONLY, 0)?
            } else {
                openat2_in_root(&rfd, &rel, OFlag::O_RDONLY, 0)?
            };
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
            Ok(s)
        };
        for p in [
            "/abs",
            "/up",
            "/etc/rel",
            "/etcdir/passwd",
            "/../../etc/passwd",
            "/loop1",
            "/nope",
            "/etc/passwd/x",
        ] {
            assert_eq!(read(p, true), read(p, false), "{p}");
        }
        assert_eq!(read("/up", true).unwrap(), "inside");
        // O_NOFOLLOW on the last component gives the link itself (with O_PATH).
        let fd = walk_in_root(
            &rfd,
            &relative(Path::new("/abs")),
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            0,
        )
        .unwrap();
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        // Creating through a symlinked directory stays inside.
        walk_in_root(
            &rfd,
            &relative(Path::new("/etcdir/new")),
            OFlag::O_CREAT | OFlag::O_WRONLY,
            0o644,
        )
        .unwrap();
        assert!(root.join("etc/new").exists() && !tmp.join("etc/new").exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
