//! The systemd manager: a transient scope with `Delegate=yes`, asked for over D-Bus (the
//! user's manager rootless, the system manager as root), holding the container's first
//! process. An unprivileged process cannot move itself out of its login session's cgroup
//! (cgroup v2 wants write access at the common ancestor, which root owns); systemd can,
//! which is why it is asked rather than written to.
//!
//! Inside the scope: `limits/` holds the limits and `limits/container/` the processes.
//! - Not on the scope itself: its own files are systemd's, and it writes its unit's values
//!   back over them on `daemon-reload` (Delegate= hands over the subtree, not the top).
//! - Not on the leaf: the container's cgroup namespace is rooted there, and a container
//!   that may mount cgroup2 could raise its own limits.
//! - No process in `limits/` or the scope, so controllers can be enabled below both and
//!   the container may delegate further.
//! - The runtime itself waits in `runtime/`, so that the scope outlives the container
//!   until the runtime has read its memory.events (systemd removes an emptied scope).

use super::{v2, Limits};
use crate::exit::ExitError;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use zbus::zvariant::{OwnedObjectPath, Value};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long systemd may take to start the scope (a busy or emulated machine is slow).
const JOB_TIMEOUT: Duration = Duration::from_secs(20);
/// The middle cgroup holding the limits, and the leaf the processes live in.
const LIMITS: &str = "limits";
const LEAF: &str = "container";
/// Where the runtime itself waits, beside `limits`.
const RUNTIME: &str = "runtime";

/// Which manager to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// The user's own manager (`systemd --user`), rootless.
    User,
    /// The system manager (PID 1), root mode.
    System,
}

/// The container's scope, once systemd placed the first process in it.
#[derive(Debug)]
pub struct Scope {
    /// /sys/fs/cgroup/... of the scope.
    pub dir: PathBuf,
}

/// The user's session bus address, when there is one to talk to.
pub fn user_bus_address() -> Option<String> {
    if let Some(a) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").filter(|a| !a.is_empty()) {
        return Some(a.to_string_lossy().into_owned());
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())?;
    let sock = Path::new(&runtime).join("bus");
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(&sock)
        .is_ok_and(|m| m.file_type().is_socket())
        .then(|| format!("unix:path={}", sock.display()))
}

/// Whether systemd runs this machine (PID 1 is systemd).
pub fn system_manager_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The controllers the user's manager has for its units: what a delegated scope can get.
/// None when the user's manager has no cgroup of the expected shape.
pub fn user_manager_controllers(uid: u32) -> Option<Vec<String>> {
    let dir = Path::new(v2::ROOT).join(format!(
        "user.slice/user-{uid}.slice/user@{uid}.service/cgroup.controllers"
    ));
    let text = std::fs::read_to_string(dir).ok()?;
    Some(text.split_whitespace().map(str::to_string).collect())
}

/// The one-line refusal for limits on controllers systemd does not delegate to the user.
pub fn not_delegated(uid: u32, missing: &[(&str, &str)], have: &[String]) -> ExitError {
    let what: Vec<String> = missing
        .iter()
        .map(|(c, flag)| format!("{flag} needs the {c} controller"))
        .collect();
    ExitError::new(
        125,
        format!(
            "{}, which systemd does not delegate to your user (user@{uid}.service has: {}); \
             as root, install contrib/systemd/user@.service.d/delegate.conf into \
             /etc/systemd/system/user@.service.d/, run `systemctl daemon-reload` and log in again",
            what.join(", "),
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(" ")
            }
        ),
    )
}

/// The unit name of a container's scope.
pub fn unit_name(id: &str) -> String {
    format!("rootless_container-{id}.scope")
}

/// Ask systemd for a transient scope holding `pid`, wait for the job, then move `pid` into
/// the scope's leaf, enable the scope's controllers below it and write the limits.
pub fn place(bus: Bus, id: &str, pid: i32, limits: &Limits) -> Result<Scope> {
    let unit = unit_name(id);
    // zbus runs its own threads; the D-Bus exchange gets one more so that a manager that
    // never answers costs a timeout, not a hang. Threads are safe here: the container's
    // process was cloned before any of them existed.
    let (tx, rx) = mpsc::channel();
    {
        let unit = unit.clone();
        std::thread::spawn(move || {
            let _ = tx.send(start_scope(bus, &unit, pid));
        });
    }
    let who = match bus {
        Bus::User => "your systemd user manager",
        Bus::System => "systemd",
    };
    match rx.recv_timeout(JOB_TIMEOUT) {
        Ok(r) => r.map_err(|e| {
            anyhow::Error::from(ExitError::new(
                125,
                format!("{who} could not create the container's cgroup scope {unit}: {e:#}; run without limits, or with --cgroup-manager cgroupfs"),
            ))
        })?,
        Err(_) => bail!(ExitError::new(
            125,
            format!(
                "{who} did not start the container's cgroup scope {unit} within {}s; check `systemctl{} status {unit}`, or run with --cgroup-manager cgroupfs",
                JOB_TIMEOUT.as_secs(),
                if bus == Bus::User { " --user" } else { "" }
            )
        )),
    }
    let dir = cgroup_of(pid)?;
    if !dir.ends_with(&unit) {
        bail!(ExitError::new(
            125,
            format!(
                "systemd started {unit} but the container's process is in {}; run with --cgroup-manager cgroupfs",
                dir.display()
            )
        ));
    }
    let scope = Scope { dir };
    if let Err(e) = scope.set_up(pid, bus, limits) {
        scope.remove();
        return Err(e);
    }
    Ok(scope)
}

/// StartTransientUnit, then wait for its job's JobRemoved (subscribed before the call, so
/// that a fast job is not missed).
fn start_scope(bus: Bus, unit: &str, pid: i32) -> Result<()> {
    let conn = match bus {
        Bus::User => zbus::blocking::Connection::session(),
        Bus::System => zbus::blocking::Connection::system(),
    }
    .context("connect to the D-Bus")?;
    let manager = zbus::blocking::Proxy::new(&conn, DEST, PATH, MANAGER)?;
    let jobs = manager
        .receive_signal("JobRemoved")
        .context("subscribe to JobRemoved")?;
    // systemd sends unit and job signals only while some client is subscribed.
    manager.call_method("Subscribe", &()).context("Subscribe")?;
    let slice = match bus {
        Bus::User => "user.slice",
        Bus::System => "machine.slice",
    };
    let properties: Vec<(&str, Value)> = vec![
        (
            "Description",
            Value::from(format!("rootless_container {unit}")),
        ),
        ("Slice", Value::from(slice)),
        ("Delegate", Value::from(true)),
        // The runtime too: see Scope::set_up.
        ("PIDs", Value::from(vec![pid as u32, std::process::id()])),
        // An OOM-killed container leaves a failed scope behind without this.
        ("CollectMode", Value::from("inactive-or-failed")),
        ("DefaultDependencies", Value::from(false)),
    ];
    let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
    let job: OwnedObjectPath = manager
        .call("StartTransientUnit", &(unit, "fail", properties, aux))
        .context("StartTransientUnit")?;
    for msg in jobs {
        let (_, path, _, result): (u32, OwnedObjectPath, String, String) =
            msg.body().deserialize().context("JobRemoved")?;
        if path == job {
            if result != "done" {
                bail!("its start job ended with {result:?}");
            }
            return Ok(());
        }
    }
    bail!("the bus connection closed before the start job ended")
}

/// The cgroup v2 directory of `pid`.
fn cgroup_of(pid: i32) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("read /proc/{pid}/cgroup"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("the container's process has no cgroup v2 path")?;
    Ok(Path::new(v2::ROOT).join(rel.trim_start_matches('/')))
}

impl Scope {
    fn limits(&self) -> PathBuf {
        self.dir.join(LIMITS)
    }

    fn leaf(&self) -> PathBuf {
        self.limits().join(LEAF)
    }

    fn runtime_leaf(&self) -> PathBuf {
        self.dir.join(RUNTIME)
    }

    fn set_up(&self, pid: i32, bus: Bus, limits: &Limits) -> Result<()> {
        let have = v2::controllers(&self.dir);
        let missing = limits.missing_controllers(&have);
        if !missing.is_empty() {
            if bus == Bus::System {
                bail!(ExitError::new(
                    125,
                    format!(
                        "systemd gives the container's scope no {} controller; enable it for machine.slice (DefaultXxxAccounting, or Delegate= of the slice), or run with --cgroup-manager cgroupfs",
                        missing.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
                    )
                ));
            }
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            bail!(not_delegated(uid, &missing, &have));
        }
        let leaf = self.leaf();
        std::fs::create_dir_all(&leaf).with_context(|| format!("create {}", leaf.display()))?;
        let move_container = || {
            std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("move the container into {}", leaf.display()))
        };
        move_container()?;
        // The runtime stays in the scope, in a leaf of its own, until it has read the
        // container's memory.events: systemd removes an empty scope with everything below
        // it at once, and the OOM kill of PID 1 empties it.
        let runtime = self.runtime_leaf();
        std::fs::create_dir(&runtime).with_context(|| format!("create {}", runtime.display()))?;
        let move_runtime = || {
            std::fs::write(runtime.join("cgroup.procs"), std::process::id().to_string())
                .with_context(|| format!("move the runtime into {}", runtime.display()))
        };
        move_runtime()?;
        // Every delegated controller, not only the limited ones: the container may nest.
        // The VM tier saw the scope busy now and then (about one start in ten of its
        // suite), though both processes had just left it: both are moved again and the
        // write retried for up to 0.1 s before the error, which names who is there.
        let mut tries = 0;
        v2::enable_controllers_or_else(&self.dir, &have, &mut || {
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(2));
            tries <= 50 && move_container().is_ok() && move_runtime().is_ok()
        })?;
        v2::enable_controllers(&self.limits(), &have)?;
        v2::apply(&self.limits(), limits)
    }

    pub fn oom_killed(&self) -> bool {
        v2::oom_killed(&self.limits())
    }

    /// Remove the container's cgroups; the scope goes once the runtime, the last process
    /// in it, exits.
    pub fn remove(&self) {
        super::remove_dir_retrying(&self.leaf());
        super::remove_dir_retrying(&self.limits());
    }
}
