//! Assemble the container's filesystem view on the new root and pivot into it.

use super::fsutil::{at_dir, fd_path, mkdir_all_in_root, open_dir, open_in_root, touch_in_root};
use super::mounts::{bind, mount_fs, parse_options, remount_bind};
use super::Launch;
use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxNamespaceType, Mount};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Device nodes every container gets, bound from the host (a user namespace cannot mknod).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Bind `src` onto `dest` inside the root, then apply `flags` on the new mount (reached
/// by resolving `dest` again: the fd we mounted on still points below the new mount).
fn bind_into(
    root: &OwnedFd,
    src: &Path,
    dest: &Path,
    recursive: bool,
    flags: MsFlags,
) -> Result<()> {
    let is_dir = std::fs::metadata(src).map(|m| m.is_dir()).unwrap_or(true);
    if is_dir {
        let target = mkdir_all_in_root(root, dest)?;
        bind(src, &at_dir(&target), recursive, MsFlags::empty())?;
    } else {
        let target = touch_in_root(root, dest)?;
        bind(src, &fd_path(&target), recursive, MsFlags::empty())?;
    }
    apply_bind_flags(root, dest, flags)
}

fn apply_bind_flags(root: &OwnedFd, dest: &Path, flags: MsFlags) -> Result<()> {
    let wanted =
        flags & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    if wanted.is_empty() {
        return Ok(());
    }
    let top = open_in_root(root, dest, OFlag::O_PATH, 0)
        .with_context(|| format!("reopen {}", dest.display()))?;
    remount_bind(&fd_path(&top), wanted)
        .with_context(|| format!("apply mount options to {}", dest.display()))
}

/// Mount /dev: a tmpfs with the standard nodes, a private devpts, shm and mqueue.
fn mount_dev(root: &OwnedFd, l: &Launch) -> Result<()> {
    let dev = mkdir_all_in_root(root, Path::new("/dev"))?;
    if l.privileged {
        drop(dev);
        return bind_into(
            root,
            Path::new("/dev"),
            Path::new("/dev"),
            true,
            MsFlags::empty(),
        );
    }
    mount_fs(
        "tmpfs",
        "tmpfs",
        &at_dir(&dev),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        "mode=755,size=65536k",
    )
    .context("mount tmpfs on /dev")?;
    // Everything below is made in the tmpfs just mounted, which nothing else can have
    // touched: plain *at calls on its directory, no resolution through the root.
    let devfd = open_dir_in(root, "/dev")?;
    let at = |name: &str, flags: OFlag, mode: u32| -> Result<OwnedFd> {
        let fd = nix::fcntl::openat(
            Some(devfd.as_raw_fd()),
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(mode),
        )
        .with_context(|| format!("create /dev/{name}"))?;
        // SAFETY: openat returned a new fd that nothing else owns.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    };
    let subdir = |name: &str| -> Result<OwnedFd> {
        nix::sys::stat::mkdirat(
            Some(devfd.as_raw_fd()),
            name,
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        )
        .with_context(|| format!("create /dev/{name}"))?;
        at(name, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
    };
    // Device nodes by name in the fresh tmpfs (no symlink can be there), from inside it.
    nix::unistd::fchdir(devfd.as_raw_fd()).context("enter /dev")?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        // A host without the node (a minimal /dev) just does not pass it on.
        if nix::sys::stat::stat(&host).is_err() {
            continue;
        }
        drop(at(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
            0o644,
        )?);
        bind(&host, Path::new(name), false, MsFlags::empty())?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        nix::unistd::symlinkat(to, Some(devfd.as_raw_fd()), link)
            .with_context(|| format!("create /dev/{link}"))?;
    }
    let pts = subdir("pts")?;
    let ptsflags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    // gid=5 (tty) only exists when it is mapped; a single-id map has no group 5 (and a
    // failed attempt costs most of a millisecond).
    let tty_gid_mapped = l
        .spec
        .linux()
        .as_ref()
        .and_then(|x| x.gid_mappings().as_ref())
        .is_none_or(|maps| {
            maps.iter()
                .any(|m| (m.container_id()..m.container_id().saturating_add(m.size())).contains(&5))
        });
    if !tty_gid_mapped
        || mount_fs(
            "devpts",
            "devpts",
            &at_dir(&pts),
            ptsflags,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        )
        .is_err()
    {
        mount_fs(
            "devpts",
            "devpts",
            &at_dir(&pts),
            ptsflags,
            "newinstance,ptmxmode=0666,mode=0620",
        )
        .context("mount devpts on /dev/pts")?;
    }
    let shm = subdir("shm")?;
    mount_fs(
        "tmpfs",
        "shm",
        &at_dir(&shm),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "mode=1777,size=65536k",
    )
    .context("mount /dev/shm")?;
    let mq = subdir("mqueue")?;
    mount_fs(
        "mqueue",
        "mqueue",
        &at_dir(&mq),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "",
    )
    .context("mount /dev/mqueue")?;
    Ok(())
}

fn open_dir_in(root: &OwnedFd, p: &str) -> Result<OwnedFd> {
    open_in_root(root, Path::new(p), OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)
        .with_context(|| format!("open {p}"))
}

/// Mount one entry of the spec's mount list.
fn mount_entry(root: &OwnedFd, m: &Mount, l: &Launch) -> Result<()> {
    let dest = m.destination();
    let typ = m.typ().as_deref().unwrap_or("none");
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    if dest == Path::new("/dev") {
        return mount_dev(root, l);
    }
    if dest.starts_with("/dev/")
        && !l.privileged
        && ["/dev/pts", "/dev/shm", "/dev/mqueue"].contains(&dest.to_str().unwrap_or(""))
    {
        return Ok(()); // made by mount_dev
    }
    if opts.bind {
        let src = m.source().as_ref().context("bind mount without a source")?;
        std::fs::metadata(src).with_context(|| {
            format!(
                "volume source {} does not exist; create it or fix the -v path",
                src.display()
            )
        })?;
        bind_into(root, src, dest, opts.recursive, opts.flags)
            .with_context(|| format!("mount {} on {}", src.display(), dest.display()))?;
        if !opts.propagation.is_empty() {
            let top = open_in_root(root, dest, OFlag::O_PATH, 0)?;
            mount(
                None::<&str>,
                &fd_path(&top),
                None::<&str>,
                opts.propagation,
                None::<&str>,
            )?;
        }
        return Ok(());
    }
    let target = mkdir_all_in_root(root, dest)?;
    let src = m
        .source()
        .as_ref()
        .map(|p| p.to_string_lossy().to_string())
        .unwrap_or_else(|| typ.to_string());
    let data = opts.data.join(",");
    match mount_fs(typ, &src, &at_dir(&target), opts.flags, &data) {
        Ok(()) => Ok(()),
        // A user namespace without its own network namespace may not mount sysfs: show the
        // host's, read-only, as runc does.
        Err(_) if typ == "sysfs" => bind_into(root, Path::new("/sys"), dest, true, MsFlags::MS_RDONLY | opts.flags),
        // cgroup2 may be refused (no cgroup namespace, hybrid host); the container then just
        // sees an empty /sys/fs/cgroup.
        Err(_) if typ == "cgroup2" || typ == "cgroup" => Ok(()),
        Err(nix::errno::Errno::EPERM) if typ == "proc" => bail!(
            "the kernel refused to mount /proc (EPERM): parts of the host's /proc are hidden by other \
             mounts, as inside another container; run on a host with a fully visible /proc"
        ),
        Err(e) => Err(e).with_context(|| format!("mount {typ} on {}", dest.display())),
    }
}

/// runc's masked paths: files under /dev/null, directories under an empty read-only tmpfs.
/// Only the paths `which` selects; `empty_dir` carries the shared empty mount between calls.
fn mask_paths(
    root: &OwnedFd,
    l: &Launch,
    empty_dir: &mut Option<OwnedFd>,
    which: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let linux = l.spec.linux().as_ref();
    // The first masked directory gets an empty read-only tmpfs; the others are binds of
    // that mount (a bind is cheaper than a new superblock, and read-only all the same).
    for p in linux
        .and_then(|x| x.masked_paths().as_ref())
        .into_iter()
        .flatten()
        .filter(|p| which(p))
    {
        let fd = match open_in_root(root, Path::new(p), OFlag::O_PATH | OFlag::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(_) => continue,
        };
        let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let r = if let (true, Some(empty)) = (is_dir, &*empty_dir) {
            mount(
                Some(&fd_path(empty)),
                at_dir(&fd).as_ref(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        } else if is_dir {
            mount_fs("tmpfs", "tmpfs", &at_dir(&fd), MsFlags::MS_RDONLY, "size=0").and_then(|()| {
                // The fd is below the new mount: reach the tmpfs itself for the binds.
                let top = open_in_root(root, Path::new(p), OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
                *empty_dir = Some(top);
                Ok(())
            })
        } else {
            mount(
                Some("/dev/null"),
                &fd_path(&fd),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.with_context(|| format!("mask {p}"))?;
    }
    for p in linux
        .and_then(|x| x.readonly_paths().as_ref())
        .into_iter()
        .flatten()
        .filter(|p| which(p))
    {
        let fd = match open_in_root(root, Path::new(p), OFlag::O_PATH | OFlag::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(_) => continue,
        };
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        let path = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            at_dir(&fd).into_owned()
        } else {
            fd_path(&fd)
        };
        mount(
            Some(&path),
            &path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("bind {p}"))?;
        apply_bind_flags(
            root,
            Path::new(p),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    Ok(())
}

/// Build the whole filesystem view and pivot into it. On return `/` is the container's root.
/// `netns`, a network namespace still being made, is joined before sysfs is mounted
/// (sysfs shows the mounting process's network namespace).
pub fn setup(l: &Launch, netns: &mut Option<super::netns::PendingNetns>) -> Result<()> {
    // Nothing we mount may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("make the mount namespace private")?;
    let mounted = super::overlay::mount_root(l)?;
    if mounted.fuse {
        // pivot_root moves the root of every process of the mount namespace, the
        // fuse-overlayfs daemons included, which would then serve lookups through their own
        // mount and deadlock. Leave them behind in this namespace and pivot in a copy.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .context("new mount namespace for the container")?;
    }
    let new_root = mounted.path;
    let root = open_dir(&new_root)?;
    let under_sys = |p: &str| p == "/sys" || p.starts_with("/sys/");
    let mut empty_dir = None;
    let mut masked_early = false;
    for m in l.spec.mounts().as_deref().unwrap_or(&[]) {
        if m.typ().as_deref() == Some("sysfs") {
            if let Some(n) = netns.take() {
                // The namespace may still be in the making: mask /proc meanwhile.
                if !l.privileged {
                    mask_paths(&root, l, &mut empty_dir, &|p| !under_sys(p))?;
                    masked_early = true;
                }
                n.enter()?;
            }
        }
        if !l.creates_namespace(LinuxNamespaceType::Network)
            && m.typ().as_deref() == Some("sysfs")
            && l.rootless
        {
            bind_into(
                &root,
                Path::new("/sys"),
                m.destination(),
                true,
                MsFlags::MS_RDONLY,
            )?;
            continue;
        }
        mount_entry(&root, m, l)?;
    }
    if !l.privileged {
        mask_paths(&root, l, &mut empty_dir, &|p| !masked_early || under_sys(p))?;
    }
    // Docker creates a missing working directory.
    if let Some(p) = l.spec.process().as_ref() {
        mkdir_all_in_root(&root, p.cwd()).map_err(|e| {
            crate::exit::ExitError::new(
                125,
                format!(
                    "cannot create the working directory {} ({:#}): its parent may belong to an id that is not mapped in the container; choose another -w",
                    p.cwd().display(),
                    e
                ),
            )
        })?;
    }
    let readonly = l
        .spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    if readonly {
        remount_bind(&new_root, MsFlags::MS_RDONLY)
            .context("make the root filesystem read-only")?;
    }
    drop(root);
    pivot(&new_root)
}

/// pivot_root(".", ".") then detach the old root: needs no directory for the old root
/// inside the new one (runc's technique).
fn pivot(new_root: &Path) -> Result<()> {
    nix::unistd::chdir(new_root).context("enter the new root")?;
    nix::unistd::pivot_root(".", ".").context("pivot_root")?;
    // The old root is now stacked on top of the new one at "/": detach it.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    umount2(".", MntFlags::MNT_DETACH).context("detach the old root")?;
    nix::unistd::chdir("/")?;
    Ok(())
}
