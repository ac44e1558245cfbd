//! The cgroupfs manager: the container's cgroup nested in the runtime's own (a runtime that
//! runs confined keeps its containers confined), on cgroup v2 or on the v1 hierarchies of
//! a legacy/hybrid host.

use super::Limits;
use crate::exit::ExitError;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

use super::v2::{self, write, ROOT};

/// One directory per hierarchy the container's limits need.
#[derive(Debug)]
pub struct FsCgroup {
    dirs: Vec<(String, PathBuf)>,
    v2: bool,
}

/// The runtime's own cgroup path in the hierarchy whose /proc/self/cgroup line matches.
fn own_path(hierarchy_matches: impl Fn(&str) -> bool) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        hierarchy_matches(ctrls).then(|| path.to_string())
    })
}

/// Mount point of the v1 hierarchy holding `controller`.
fn v1_mount(controller: &str) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        let (fstype, _src, opts) = (post.next()?, post.next()?, post.next()?);
        if fstype == "cgroup" && opts.split(',').any(|o| o == controller) {
            pre.split(' ').nth(4).map(PathBuf::from)
        } else {
            None
        }
    })
}

/// The runtime's own cgroup on a cgroup v2 host.
pub fn own_v2_dir() -> Option<PathBuf> {
    let own = own_path(|c| c.is_empty())?;
    Some(Path::new(ROOT).join(own.trim_start_matches('/')))
}

pub fn is_unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// Controllers the limits need, in v1 naming.
fn needed(l: &Limits) -> Vec<&'static str> {
    let mut v = Vec::new();
    if l.memory.is_some() || l.memory_reservation.is_some() || l.memory_swap.is_some() {
        v.push("memory");
    }
    if l.cpus.is_some() || l.cpu_shares.is_some() || l.cpu_weight.is_some() {
        v.push("cpu");
    }
    if l.cpuset_cpus.is_some() {
        v.push("cpuset");
    }
    if l.pids.is_some() {
        v.push("pids");
    }
    if l.blkio_weight.is_some() {
        v.push("blkio");
    }
    v
}

/// cpuset v1 starts a new cgroup with no cpus and no memory nodes: inherit the parent's.
fn init_cpuset_v1(dir: &Path) -> Result<()> {
    let parent = dir.parent().context("cpuset cgroup has no parent")?;
    for f in ["cpuset.cpus", "cpuset.mems"] {
        if fs::read_to_string(dir.join(f))
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            let v = fs::read_to_string(parent.join(f)).unwrap_or_default();
            write(dir, f, v.trim())?;
        }
    }
    Ok(())
}

impl FsCgroup {
    /// Create the container's cgroups and write the limits (before any process is in them).
    /// `parent` replaces the runtime's own cgroup as the base (--cgroup-parent).
    pub fn create(id: &str, parent: Option<&str>, limits: &Limits) -> Result<FsCgroup> {
        let v2 = is_unified();
        let mut cg = FsCgroup {
            dirs: Vec::new(),
            v2,
        };
        let rel = |own: Option<String>| -> PathBuf {
            containers_rel(parent.map(str::to_string).or(own).as_deref().unwrap_or("/")).join(id)
        };
        if v2 {
            let dir = Path::new(ROOT).join(rel(own_path(|c| c.is_empty())));
            let available = v2::controllers(Path::new(ROOT));
            let want: Vec<&str> = limits.controllers().iter().map(|(c, _)| *c).collect();
            for c in &want {
                if !available.iter().any(|a| a == c) {
                    bail!(ExitError::new(
                        125,
                        format!("the {c} controller is not available in this cgroup v2 hierarchy")
                    ));
                }
            }
            fs::create_dir_all(&dir).with_context(|| format!("create cgroup {}", dir.display()))?;
            cg.dirs.push(("unified".into(), dir.clone()));
            // Enable the controllers on the way down (the base must have no processes of its
            // own for this, as cgroup v2 demands).
            let parent_rel = dir
                .parent()
                .and_then(|p| p.strip_prefix(ROOT).ok())
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let set_up = || -> Result<()> {
                let mut cur = PathBuf::from(ROOT);
                v2::enable_controllers(&cur, &want)?;
                for comp in parent_rel.components() {
                    cur.push(comp);
                    v2::enable_controllers(&cur, &want)?;
                }
                v2::apply(&dir, limits)
            };
            if let Err(e) = set_up() {
                cg.remove();
                return Err(e);
            }
        } else {
            for c in needed(limits) {
                let mount = v1_mount(c).ok_or_else(|| {
                    anyhow::Error::from(ExitError::new(
                        125,
                        format!("the {c} cgroup controller is not mounted on this host"),
                    ))
                })?;
                let own = own_path(|ctrls| ctrls.split(',').any(|x| x == c));
                let dir = mount.join(rel(own));
                // Each level: create, and for cpuset give it cpus and memory nodes.
                let mut cur = mount.clone();
                for comp in dir.strip_prefix(&mount).unwrap_or(&dir).components() {
                    cur.push(comp);
                    if !cur.exists() {
                        fs::create_dir(&cur)
                            .with_context(|| format!("create cgroup {}", cur.display()))?;
                    }
                    if c == "cpuset" {
                        init_cpuset_v1(&cur)?;
                    }
                }
                cg.dirs.push((c.to_string(), dir));
            }
            if let Err(e) = cg.apply_v1(limits) {
                cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }

    fn dir(&self, c: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(n, _)| n == c || n == "unified")
            .map(|(_, d)| d.as_path())
    }

    fn apply_v1(&self, l: &Limits) -> Result<()> {
        if let Some(d) = self.dir("memory") {
            if let Some(m) = l.memory {
                write(d, "memory.limit_in_bytes", &m.to_string())?;
                // Docker: without --memory-swap, swap may be as large as memory.
                let sw = l.memory_swap.unwrap_or((m * 2) as i64);
                if d.join("memory.memsw.limit_in_bytes").exists() {
                    write(d, "memory.memsw.limit_in_bytes", &sw.to_string())?;
                } else if l.memory_swap.is_some() {
                    bail!(ExitError::new(125, "--memory-swap: this kernel has no swap accounting (memory.memsw.*); boot with swapaccount=1"));
                }
            }
            if let Some(r) = l.memory_reservation {
                write(d, "memory.soft_limit_in_bytes", &r.to_string())?;
            }
        }
        if let Some(d) = self.dir("cpu") {
            if let Some((quota, period)) = l.cpu_quota_us() {
                write(d, "cpu.cfs_period_us", &period.to_string())?;
                write(d, "cpu.cfs_quota_us", &quota.to_string())?;
            }
            if let Some(s) = l.cpu_shares_v1() {
                write(d, "cpu.shares", &s.to_string())?;
            }
        }
        if let (Some(d), Some(c)) = (self.dir("cpuset"), &l.cpuset_cpus) {
            write(d, "cpuset.cpus", c)?;
        }
        if let (Some(d), Some(p)) = (self.dir("pids"), l.pids_max()) {
            write(d, "pids.max", &p)?;
        }
        if let (Some(d), Some(w)) = (self.dir("blkio"), l.blkio_weight) {
            if !d.join("blkio.weight").exists() {
                bail!(ExitError::new(
                    125,
                    "--blkio-weight: this kernel's I/O scheduler has no blkio.weight (needs BFQ)"
                ));
            }
            write(d, "blkio.weight", &w.to_string())?;
        }
        Ok(())
    }

    /// Put `pid` into the container's cgroups (every hierarchy).
    pub fn place(&self, pid: i32) -> Result<()> {
        for (_, d) in &self.dirs {
            let procs = d.join("cgroup.procs");
            fs::write(&procs, pid.to_string())
                .with_context(|| format!("move the container into {}", procs.display()))?;
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer killed a process of the container.
    pub fn oom_killed(&self) -> bool {
        match self.dir("memory") {
            Some(d) if self.v2 => v2::oom_killed(d),
            Some(d) => v2::events_count(&d.join("memory.oom_control"), "oom_kill") > 0,
            None => false,
        }
    }

    /// Remove the cgroups (all processes are gone once the container's PID 1 is reaped).
    pub fn remove(&self) {
        for (_, d) in &self.dirs {
            super::remove_dir_retrying(d);
        }
    }
}

/// Where containers' cgroups go below `base` (the runtime's own cgroup or --cgroup-parent),
/// relative to a hierarchy's mount point.
fn containers_rel(base: &str) -> PathBuf {
    PathBuf::from(base.trim_start_matches('/')).join("rootless_container")
}

/// Remove cgroups of containers whose runtime died (SIGKILL) and whose processes are gone,
/// under the runtime's own cgroup or `parent` (--cgroup-parent).
pub fn collect_stale(parent: Option<&str>, is_live: impl Fn(&str) -> bool) {
    let base = |own: Option<String>| -> Option<String> { parent.map(str::to_string).or(own) };
    let mut parents: Vec<PathBuf> = Vec::new();
    if is_unified() {
        if let Some(b) = base(own_path(|c| c.is_empty())) {
            parents.push(Path::new(ROOT).join(containers_rel(&b)));
        }
    } else {
        for c in ["memory", "cpu", "cpuset", "pids", "blkio"] {
            if let (Some(m), Some(b)) = (
                v1_mount(c),
                base(own_path(|x| x.split(',').any(|y| y == c))),
            ) {
                parents.push(m.join(containers_rel(&b)));
            }
        }
    }
    for p in parents {
        let Ok(entries) = fs::read_dir(&p) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if e.path().is_dir() && name.len() == 64 && !is_live(&name) {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
}
