//! The copy-on-write root: kernel overlayfs in the user namespace, then fuse-overlayfs,
//! then a plain copy, in that order (or the one asked for).

use super::mounts::{bind, mount_fs, remount_bind};
use super::{Launch, OverlayMode, WritableLayer};
use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Paths of one overlay: where lower, upper and work live and where it is mounted.
struct Layers {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    target: PathBuf,
}

fn mkdirs(p: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .with_context(|| format!("create {}", p.display()))
}

/// overlayfs splits its options on ',' and ':'; such paths cannot be passed safely.
fn check_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))?;
    if s.contains([',', ':', '\\']) {
        bail!("path {s} contains ',', ':' or '\\', which overlayfs cannot take; move it");
    }
    Ok(s.to_string())
}

fn kernel_overlay(l: &Layers, rootless: bool) -> Result<()> {
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        check_path(&l.lower)?,
        check_path(&l.upper)?,
        check_path(&l.work)?
    );
    if rootless {
        // Inside a user namespace trusted.* xattrs are unavailable; overlayfs keeps its
        // metadata in user.* instead (Linux 5.11+).
        data.push_str(",userxattr");
    }
    mount_fs("overlay", "overlay", &l.target, MsFlags::empty(), &data)
        .map_err(|e| anyhow::anyhow!("kernel overlayfs refused the mount ({e})"))
}

/// Whether kernel overlayfs in this user namespace can also delete (whiteouts): some
/// kernels mount it unprivileged but refuse the whiteout device it then needs. Probed on
/// a throw-away overlay once per kernel and cached in the runtime's state (a tmpfs, so a
/// reboot into another kernel probes again).
fn whiteouts_work(scratch: &Path, cache: Option<&Path>) -> Result<()> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().to_string())
        .unwrap_or_default();
    if let Some(c) = cache {
        if let Ok(text) = fs::read_to_string(c) {
            match text.trim().split_once(' ') {
                Some((r, "ok")) if r == release => return Ok(()),
                Some((r, why)) if r == release => bail!("{why}"),
                _ => {}
            }
        }
    }
    let d = scratch.join(format!(".overlay-probe-{}", std::process::id()));
    let probe = || -> Result<()> {
        for sub in ["lower", "upper", "work", "merged"] {
            mkdirs(&d.join(sub), 0o755)?;
        }
        fs::write(d.join("lower/f"), "")?;
        let layers = Layers {
            lower: d.join("lower"),
            upper: d.join("upper"),
            work: d.join("work"),
            target: d.join("merged"),
        };
        kernel_overlay(&layers, true)?;
        let unlinked = fs::remove_file(d.join("merged/f"));
        let _ = nix::mount::umount2(&d.join("merged"), nix::mount::MntFlags::MNT_DETACH);
        unlinked.map_err(|e| anyhow::anyhow!("kernel overlayfs cannot create whiteouts here ({e})"))
    };
    let result = probe();
    let _ = fs::remove_dir_all(&d);
    if let Some(c) = cache {
        let verdict = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{e:#}").replace('\n', " "),
        };
        let _ = crate::state::write_atomic(c, format!("{release} {verdict}\n").as_bytes());
    }
    result
}

fn fuse_overlay(l: &Layers) -> Result<()> {
    let Some(bin) = crate::util::find_in_path("fuse-overlayfs") else {
        bail!("fuse-overlayfs is not installed (apt install fuse-overlayfs)");
    };
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        bail!(
            "cannot open /dev/fuse ({e}): hosts without udev leave it mode 0600; as root run \
             `chmod 0666 /dev/fuse` (what a distribution's udev rules do)"
        );
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        check_path(&l.lower)?,
        check_path(&l.upper)?,
        check_path(&l.work)?
    );
    // fuse-overlayfs daemonizes once the mount is in place, so its exit status tells.
    let out = std::process::Command::new(bin)
        .arg("-o")
        .arg(opts)
        .arg(&l.target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .context("start fuse-overlayfs")?;
    if !out.status.success() {
        bail!(
            "fuse-overlayfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Copy a directory tree, keeping owners, modes, symlinks and device numbers where allowed.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let md = fs::symlink_metadata(src)?;
    let ft = md.file_type();
    if ft.is_dir() {
        if !dst.exists() {
            fs::create_dir(dst).with_context(|| format!("create {}", dst.display()))?;
        }
        for e in fs::read_dir(src).with_context(|| format!("read {}", src.display()))? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_file() {
        fs::copy(src, dst).with_context(|| format!("copy {}", src.display()))?;
    } else {
        // Device nodes, fifos and sockets: recreate when permitted (root), else skip.
        let _ = nix::sys::stat::mknod(
            dst,
            nix::sys::stat::SFlag::from_bits_truncate(md.mode()),
            nix::sys::stat::Mode::from_bits_truncate(md.mode()),
            md.rdev(),
        );
        return Ok(());
    }
    let _ = std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()));
    Ok(())
}

fn copy_root(l: &Layers) -> Result<()> {
    copy_tree(&l.lower, &l.upper)?;
    bind(&l.upper, &l.target, false, MsFlags::empty())
}

/// Mount one overlay following the chain; returns the mode that worked.
fn mount_layers(
    l: &Layers,
    mode: OverlayMode,
    rootless: bool,
    copy_ok: bool,
    probe_cache: Option<&Path>,
) -> Result<OverlayMode> {
    match mode {
        OverlayMode::Kernel => kernel_overlay(l, rootless).map(|_| OverlayMode::Kernel),
        OverlayMode::Fuse => fuse_overlay(l).map(|_| OverlayMode::Fuse),
        OverlayMode::Copy => copy_root(l).map(|_| OverlayMode::Copy),
        OverlayMode::Auto => {
            let probed = match (rootless, l.work.parent()) {
                (true, Some(scratch)) => whiteouts_work(scratch, probe_cache),
                _ => Ok(()),
            };
            let kernel_err = match probed.and_then(|_| kernel_overlay(l, rootless)) {
                Ok(()) => return Ok(OverlayMode::Kernel),
                Err(e) => e,
            };
            let fuse_err = match fuse_overlay(l) {
                Ok(()) => {
                    eprintln!("rootless_container: warning: {kernel_err:#}; using fuse-overlayfs");
                    return Ok(OverlayMode::Fuse);
                }
                Err(e) => e,
            };
            if !copy_ok {
                bail!("{kernel_err:#}, and {fuse_err:#}");
            }
            eprintln!(
                "rootless_container: warning: {kernel_err:#} and {fuse_err:#}; copying the root filesystem instead (slow)"
            );
            copy_root(l).map(|_| OverlayMode::Copy)
        }
    }
}

/// Host mount points below `/`, except the pseudo filesystems the container gets its own of.
fn host_submounts() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for line in info.lines() {
        let Some(mp) = line.split(' ').nth(4) else {
            continue;
        };
        let p = PathBuf::from(mp.replace("\\040", " "));
        if p != Path::new("/")
            && !HOST_SKIPPED.iter().any(|s| p.starts_with(s))
            && !out.contains(&p)
        {
            out.push(p);
        }
    }
    out
}

/// Top-level host directories the container gets its own (empty or pseudo) version of.
const HOST_SKIPPED: [&str; 5] = ["/proc", "/sys", "/dev", "/run", "/tmp"];

/// The host's own root as the container's: a tmpfs root with one overlay per top-level
/// directory. One overlay of `/` itself is refused in a user namespace (its locked
/// submounts make overlayfs' private clone of the lower layer fail), but a directory
/// without submounts below it is accepted.
fn mount_host_root(l: &Launch, scratch: &Path, mode: OverlayMode) -> Result<MountedRoot> {
    let target = scratch.join("merged");
    mkdirs(&target, 0o755)?;
    mount_fs(
        "tmpfs",
        "rootless_container",
        &target,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755",
    )
    .context("mount the container's root tmpfs")?;
    let submounts = host_submounts();
    let requested = mode;
    let mut mode = mode;
    let mut fuse = false;
    for (i, entry) in fs::read_dir("/").context("read /")?.flatten().enumerate() {
        let host = entry.path();
        let dst = target.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&host)?, &dst)?;
            continue;
        }
        if !ft.is_dir() {
            // Top-level files are rare and small: a copy keeps them writable.
            let _ = fs::copy(&host, &dst);
            continue;
        }
        let md = entry.metadata()?;
        mkdirs(&dst, md.mode() & 0o7777)?;
        if HOST_SKIPPED.iter().any(|s| host == Path::new(s)) {
            continue;
        }
        let nested: Vec<&PathBuf> = submounts.iter().filter(|m| m.starts_with(&host)).collect();
        let s = scratch.join(format!("layer{i}"));
        let layers = Layers {
            lower: host.clone(),
            upper: s.join("upper"),
            work: s.join("work"),
            target: dst.clone(),
        };
        mkdirs(&layers.upper, 0o755)?;
        mkdirs(&layers.work, 0o755)?;
        // In a user namespace the kernel refuses a lower layer with mounts below it (they are
        // locked, so overlayfs cannot clone it privately): that directory alone goes to
        // fuse-overlayfs, which says nothing about the others. A directory that is itself a
        // mount point is an ordinary lower layer.
        let below = nested.iter().any(|m| **m != host);
        let dir_mode = if requested == OverlayMode::Auto && below && l.rootless {
            OverlayMode::Fuse
        } else {
            mode
        };
        let mounted = mount_layers(
            &layers,
            dir_mode,
            l.rootless,
            false,
            l.probe_cache.as_deref(),
        );
        match mounted {
            Ok(used) => {
                // Later directories need not retry a method that failed.
                if dir_mode == mode {
                    mode = used;
                }
                fuse |= used == OverlayMode::Fuse;
                // overlayfs does not cross mount points: lay the host's submounts over it.
                for sub in nested.into_iter().filter(|m| **m != host) {
                    let sd = target.join(super::fsutil::relative(sub));
                    if sd.is_dir() {
                        let _ = bind(sub, &sd, true, MsFlags::MS_RDONLY);
                    }
                }
            }
            // Still show the files, read-only, rather than an empty directory.
            Err(e) => {
                eprintln!(
                    "rootless_container: warning: the host's {} is read-only in the container: {e:#}",
                    host.display()
                );
                bind(&host, &dst, true, MsFlags::MS_RDONLY).with_context(|| {
                    format!("show the host's {} in the container", host.display())
                })?
            }
        }
    }
    Ok(MountedRoot { path: target, fuse })
}

/// The mounted root: where it is, and whether fuse-overlayfs daemons serve it.
pub struct MountedRoot {
    pub path: PathBuf,
    pub fuse: bool,
}

/// Create mount targets the root filesystem lacks (e.g. /etc/resolv.conf in a minimal
/// rootfs) directly in the writable layer before it is mounted: inside the container,
/// root may not be allowed to create them when the rootfs belongs to unmapped ids.
fn precreate_in_upper(lower: &Path, upper: &Path, files: &[PathBuf]) -> Result<()> {
    for f in files {
        let rel = super::fsutil::relative(f);
        if fs::symlink_metadata(lower.join(&rel)).is_ok() {
            continue;
        }
        let Some(parent) = rel.parent() else { continue };
        // Only where the parent is a real directory of the rootfs (no symlink games).
        if !fs::symlink_metadata(lower.join(parent)).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let mut cur = upper.to_path_buf();
        for comp in parent.components().skip(1) {
            cur.push(comp);
            if !cur.exists() {
                let mode = fs::metadata(lower.join(cur.strip_prefix(upper).unwrap_or(&cur)))
                    .map(|m| m.mode() & 0o7777)
                    .unwrap_or(0o755);
                mkdirs(&cur, mode)?;
            }
        }
        fs::File::create(upper.join(&rel))
            .with_context(|| format!("create {} in the writable layer", f.display()))?;
    }
    Ok(())
}

/// Mount the container's root filesystem.
pub fn mount_root(l: &Launch) -> Result<MountedRoot> {
    let lower = l
        .spec
        .root()
        .as_ref()
        .context("spec has no root")?
        .path()
        .clone();
    let (upper, work, target) = match &l.layer {
        WritableLayer::Tmpfs => {
            mount_fs(
                "tmpfs",
                "rootless_container",
                &l.mountpoint,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                "mode=0755",
            )
            .context("mount the tmpfs that holds the writable layer")?;
            let s = &l.mountpoint;
            (s.join("upper"), s.join("work"), s.join("merged"))
        }
        WritableLayer::Dir { upper, work } => (upper.clone(), work.clone(), l.mountpoint.clone()),
    };
    if l.host_rootfs {
        if l.overlay == OverlayMode::Copy {
            // Copying the host is out of the question: show it read-only instead.
            mkdirs(&target, 0o755)?;
            bind(Path::new("/"), &target, true, MsFlags::empty())?;
            remount_bind(&target, MsFlags::MS_RDONLY).context("make the host root read-only")?;
            return Ok(MountedRoot {
                path: target,
                fuse: false,
            });
        }
        return mount_host_root(l, &l.mountpoint, l.overlay);
    }
    for d in [&upper, &work, &target] {
        mkdirs(d, 0o755)?;
    }
    precreate_in_upper(&lower, &upper, &l.precreate)?;
    let layers = Layers {
        lower,
        upper,
        work,
        target: target.clone(),
    };
    let used = mount_layers(
        &layers,
        l.overlay,
        l.rootless,
        true,
        l.probe_cache.as_deref(),
    )?;
    Ok(MountedRoot {
        path: target,
        fuse: used == OverlayMode::Fuse,
    })
}
