//! Resource limits: the container's cgroup, from one of two managers. Rootless on a systemd
//! machine, and as root when systemd is PID 1: a delegated transient scope asked for over
//! D-Bus (`systemd`). Otherwise, as root: directories written under the runtime's own
//! cgroup (`cgroupfs`, cgroup v2 or the v1 hierarchies of a hybrid host like these machines).

pub mod fs;
pub mod limits;
pub mod systemd;
pub mod v2;

pub use fs::FsCgroup;
pub use limits::Limits;

use anyhow::Result;
use std::cell::OnceCell;
use std::path::Path;

/// The container's cgroup: where its first process goes before it runs anything.
#[derive(Debug)]
pub enum Cgroup {
    /// Created (limits written) before the process exists.
    Fs(FsCgroup),
    /// Asked of systemd once the process exists (systemd places it by pid).
    Systemd {
        bus: systemd::Bus,
        id: String,
        limits: Box<Limits>,
        scope: OnceCell<systemd::Scope>,
    },
}

impl Cgroup {
    pub fn systemd(bus: systemd::Bus, id: &str, limits: &Limits) -> Cgroup {
        Cgroup::Systemd {
            bus,
            id: id.to_string(),
            limits: Box::new(limits.clone()),
            scope: OnceCell::new(),
        }
    }

    /// Put the container's first process (still waiting for `go`) into its cgroup.
    pub fn place(&self, pid: i32) -> Result<()> {
        match self {
            Cgroup::Fs(fs) => fs.place(pid),
            Cgroup::Systemd {
                bus,
                id,
                limits,
                scope,
            } => {
                let s = systemd::place(*bus, id, pid, limits)?;
                let _ = scope.set(s);
                Ok(())
            }
        }
    }

    /// Whether the kernel's OOM killer killed a process of the container.
    pub fn oom_killed(&self) -> bool {
        match self {
            Cgroup::Fs(fs) => fs.oom_killed(),
            Cgroup::Systemd { scope, .. } => scope.get().is_some_and(|s| s.oom_killed()),
        }
    }

    /// Remove what the runtime created, once the container's processes are gone.
    pub fn remove(&self) {
        match self {
            Cgroup::Fs(fs) => fs.remove(),
            Cgroup::Systemd { scope, .. } => {
                if let Some(s) = scope.get() {
                    s.remove()
                }
            }
        }
    }
}

/// rmdir a cgroup, retrying while the kernel still counts exiting processes in it.
pub fn remove_dir_retrying(dir: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            _ => break,
        }
    }
}
