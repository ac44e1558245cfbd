//! cgroup v2 files shared by the cgroupfs and systemd managers.

use super::Limits;
use crate::exit::ExitError;
use anyhow::{Context, Result};
use std::fs;
use std::path::Path;

pub const ROOT: &str = "/sys/fs/cgroup";

pub fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    fs::write(dir.join(file), value)
        .with_context(|| format!("write {value:?} to {}", dir.join(file).display()))
}

/// The controllers available in `dir` (its cgroup.controllers).
pub fn controllers(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Enable `list` for the children of `dir`. cgroup v2 allows it only where no process
/// lives ("no internal processes").
pub fn enable_controllers(dir: &Path, list: &[impl AsRef<str>]) -> Result<()> {
    enable_controllers_or_else(dir, list, &mut || false)
}

/// enable_controllers; while the kernel answers EBUSY (a process still lives in `dir`),
/// `again` may move it out and ask for another try (true) or give up (false).
pub fn enable_controllers_or_else(
    dir: &Path,
    list: &[impl AsRef<str>],
    again: &mut dyn FnMut() -> bool,
) -> Result<()> {
    let enable: Vec<String> = list.iter().map(|c| format!("+{}", c.as_ref())).collect();
    if enable.is_empty() {
        return Ok(());
    }
    let write = || fs::write(dir.join("cgroup.subtree_control"), enable.join(" "));
    let mut result = write();
    while matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EBUSY)) && again() {
        result = write();
    }
    result.map_err(|e| {
        ExitError::new(
            125,
            format!(
                "cannot enable {} in {}: {e} (cgroup v2 allows it only where no process lives{}; use --cgroup-parent)",
                enable.join(" "),
                dir.display(),
                processes_in(dir)
            ),
        )
        .into()
    })
}

/// ", and here lives PID (COMM) ...", or nothing when none is found.
fn processes_in(dir: &Path) -> String {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let who: Vec<String> = procs
        .split_whitespace()
        .map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{pid} ({})", comm.trim())
        })
        .collect();
    if who.is_empty() {
        String::new()
    } else {
        format!(", and here lives {}", who.join(", "))
    }
}

/// Write the limits as cgroup v2 files of `dir`.
pub fn apply(d: &Path, l: &Limits) -> Result<()> {
    if let Some(m) = l.memory {
        write(d, "memory.max", &m.to_string())?;
        let swap = match l.memory_swap {
            Some(-1) => "max".to_string(),
            Some(s) => (s as u64 - m).to_string(),
            // Docker: without --memory-swap, swap may be as large as memory.
            None => m.to_string(),
        };
        if d.join("memory.swap.max").exists() {
            write(d, "memory.swap.max", &swap)?;
        }
    }
    if let Some(r) = l.memory_reservation {
        write(d, "memory.low", &r.to_string())?;
    }
    if let Some((quota, period)) = l.cpu_quota_us() {
        write(d, "cpu.max", &format!("{quota} {period}"))?;
    }
    if let Some(w) = l.cpu_weight_v2() {
        write(d, "cpu.weight", &w.to_string())?;
    }
    if let Some(c) = &l.cpuset_cpus {
        write(d, "cpuset.cpus", c)?;
    }
    if let Some(p) = l.pids_max() {
        write(d, "pids.max", &p)?;
    }
    if let Some(w) = l.blkio_weight {
        if !d.join("io.weight").exists() {
            anyhow::bail!(ExitError::new(
                125,
                "--blkio-weight: this kernel has no io.weight (needs the io cost model or BFQ)"
            ));
        }
        write(
            d,
            "io.weight",
            &format!("default {}", 1 + (w as u32 - 10) * 9999 / 990),
        )?;
    }
    Ok(())
}

/// Whether the OOM killer killed a process in `dir` or below (memory.events is
/// hierarchical).
pub fn oom_killed(dir: &Path) -> bool {
    events_count(&dir.join("memory.events"), "oom_kill") > 0
}

/// A counter of a `key value` file such as memory.events or memory.oom_control.
pub fn events_count(file: &Path, key: &str) -> u64 {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}
