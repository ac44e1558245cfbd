//! Mount option parsing and the mount primitives the root filesystem is assembled from.

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use std::path::Path;

/// Flags and filesystem data from an OCI mount's option list.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub clear: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
    pub bind: bool,
    pub recursive: bool,
}

pub fn parse_options(opts: &[String]) -> MountOptions {
    let mut m = MountOptions {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
        bind: false,
        recursive: false,
    };
    for o in opts {
        let (set, clear): (MsFlags, MsFlags) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "bind" => {
                m.bind = true;
                continue;
            }
            "rbind" => {
                m.bind = true;
                m.recursive = true;
                continue;
            }
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable"
            | "runbindable" => {
                let base = match o.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "slave" => MsFlags::MS_SLAVE,
                    "shared" => MsFlags::MS_SHARED,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                m.propagation = if o.starts_with('r') {
                    base | MsFlags::MS_REC
                } else {
                    base
                };
                continue;
            }
            _ => {
                m.data.push(o.clone());
                continue;
            }
        };
        m.flags |= set;
        m.flags &= !clear;
        m.clear |= clear;
    }
    m
}

/// Flags of the mount holding `path` that a user namespace may not clear on remount.
pub fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Bind `src` onto `target` and apply `flags` (ro, nosuid, ...) with a remount, keeping
/// the flags the source mount already has so the kernel accepts it in a user namespace.
pub fn bind(src: &Path, target: &Path, recursive: bool, flags: MsFlags) -> Result<()> {
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND | rec,
        None::<&str>,
    )
    .with_context(|| format!("bind mount {}", src.display()))?;
    let wanted =
        flags & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    if !wanted.is_empty() {
        remount_bind(target, wanted)
            .with_context(|| format!("apply options to bind mount of {}", src.display()))?;
    }
    Ok(())
}

pub fn remount_bind(target: &Path, flags: MsFlags) -> nix::Result<()> {
    let keep = locked_flags(target);
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags | keep,
        None::<&str>,
    )
}

pub fn mount_fs(
    fstype: &str,
    source: &str,
    target: &Path,
    flags: MsFlags,
    data: &str,
) -> nix::Result<()> {
    let data = (!data.is_empty()).then_some(data);
    mount(Some(source), target, Some(fstype), flags, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_and_data() {
        let o = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "mode=755".into(),
            "rbind".into(),
            "rprivate".into(),
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_RDONLY);
        assert_eq!(o.data, vec!["mode=755".to_string()]);
        assert!(o.bind && o.recursive);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(
            parse_options(&["ro".into(), "rw".into()]).flags,
            MsFlags::empty()
        );
    }
}
