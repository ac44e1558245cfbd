//! Process hardening just before exec: capabilities, user switch, no_new_privs, rlimits
//! and the file descriptors that may reach the container.

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::Spec;
use std::str::FromStr;

fn spec_bounding(spec: &Spec) -> CapsHashSet {
    let mut set = CapsHashSet::new();
    let bounding = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref());
    for c in bounding.into_iter().flatten() {
        // oci-spec prints SYS_ADMIN; the caps crate parses CAP_SYS_ADMIN.
        if let Ok(cap) = Capability::from_str(&format!("CAP_{c}")) {
            set.insert(cap);
        }
    }
    set
}

/// Drop every capability outside the spec's bounding set. After exec, root in the
/// container gets exactly the bounding set; any other user gets none.
pub fn limit_capabilities(spec: &Spec) -> Result<()> {
    let keep = spec_bounding(spec);
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Capabilities the running kernel does not know are not in the set.
            match caps::drop(None, CapSet::Bounding, cap) {
                Ok(()) => {}
                Err(_) if !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) => {}
                Err(e) => return Err(anyhow::anyhow!("drop {cap} from the bounding set: {e}")),
            }
        }
    }
    caps::clear(None, CapSet::Inheritable).context("clear inheritable capabilities")?;
    // The ambient set is cleared by the kernel when inheritable loses a capability, but be explicit.
    let _ = caps::clear(None, CapSet::Ambient);
    Ok(())
}

/// Become the spec's user. `setgroups_allowed` is false under a single-id map.
pub fn switch_user(spec: &Spec, setgroups_allowed: bool) -> Result<()> {
    let user = spec
        .process()
        .as_ref()
        .context("spec has no process")?
        .user();
    let gid = Gid::from_raw(user.gid());
    let uid = Uid::from_raw(user.uid());
    if setgroups_allowed {
        let extra: Vec<Gid> = user
            .additional_gids()
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|g| Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&extra).context("set supplementary groups")?;
    }
    nix::unistd::setresgid(gid, gid, gid).with_context(|| format!("switch to group {gid}"))?;
    nix::unistd::setresuid(uid, uid, uid).with_context(|| format!("switch to user {uid}"))?;
    Ok(())
}

pub fn set_no_new_privs() -> Result<()> {
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("set no_new_privs");
    }
    Ok(())
}

pub fn set_rlimits(spec: &Spec) -> Result<()> {
    let rlimits = spec.process().as_ref().and_then(|p| p.rlimits().as_ref());
    for r in rlimits.into_iter().flatten() {
        let res = match serde_json::to_value(r.typ())?.as_str().unwrap_or("") {
            "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
            "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
            "RLIMIT_CORE" => libc::RLIMIT_CORE,
            "RLIMIT_STACK" => libc::RLIMIT_STACK,
            "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
            "RLIMIT_AS" => libc::RLIMIT_AS,
            "RLIMIT_CPU" => libc::RLIMIT_CPU,
            "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
            "RLIMIT_NICE" => libc::RLIMIT_NICE,
            "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
            "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
            "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
            "RLIMIT_DATA" => libc::RLIMIT_DATA,
            "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
            "RLIMIT_RSS" => libc::RLIMIT_RSS,
            "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
            _ => continue,
        };
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(std::io::Error::last_os_error()).context("set resource limit");
        }
    }
    Ok(())
}

/// Mark every fd from `first` up close-on-exec, so only 0..first reach the command.
pub fn close_fds_from(first: u32) -> Result<()> {
    // SAFETY: close_range with CLOEXEC only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Linux < 5.11: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .context("list open files")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on an fd number; failure (already closed) is harmless.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Fds 3..3+n passed with --preserve-fds must survive exec.
pub fn keep_fds(n: u32) {
    for fd in 3..3 + n as i32 {
        // SAFETY: clearing FD_CLOEXEC on an fd number.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
}
