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

use super::{v2, Limits};
use crate::exit::ExitError;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
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
    /// Set by a watcher of memory.events: systemd removes the scope as soon as it is
    /// empty, possibly before the runtime has reaped the container and looked.
    oom: Arc<AtomicBool>,
    watcher: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
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
    let scope = Scope {
        dir: cgroup_of(pid)?,
        oom: Arc::new(AtomicBool::new(false)),
        watcher: Default::default(),
    };
    if let Err(e) = scope.set_up(pid, limits) {
        scope.remove();
        return Err(e);
    }
    if limits.memory.is_some() {
        let events = scope.limits().join("memory.events");
        let watcher = watch_oom(events, scope.oom.clone());
        *scope.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
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
        ("PIDs", Value::from(vec![pid as u32])),
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

    fn set_up(&self, pid: i32, limits: &Limits) -> Result<()> {
        let have = v2::controllers(&self.dir);
        let missing = limits.missing_controllers(&have);
        if !missing.is_empty() {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            bail!(not_delegated(uid, &missing, &have));
        }
        let leaf = self.leaf();
        std::fs::create_dir_all(&leaf).with_context(|| format!("create {}", leaf.display()))?;
        std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move the container into {}", leaf.display()))?;
        // Every delegated controller, not only the limited ones: the container may nest.
        v2::enable_controllers(&self.dir, &have)?;
        v2::enable_controllers(&self.limits(), &have)?;
        v2::apply(&self.limits(), limits)
    }

    pub fn oom_killed(&self) -> bool {
        if self.oom.load(Ordering::SeqCst) || v2::oom_killed(&self.limits()) {
            return true;
        }
        // The kernel counts the kill just after sending SIGKILL: give the watcher a moment
        // to see the event it may not have read yet.
        let watcher = self.watcher.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = watcher {
            let deadline = std::time::Instant::now() + Duration::from_millis(100);
            while !w.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.oom.load(Ordering::SeqCst)
    }

    /// Remove our cgroups. Usually systemd has already collected the emptied scope with
    /// everything below it; this covers a scope that outlives its container.
    pub fn remove(&self) {
        super::remove_dir_retrying(&self.leaf());
        super::remove_dir_retrying(&self.limits());
    }
}

/// Watch `memory.events` (the kernel signals every change as a modification) until it
/// counts an OOM kill or goes away with its cgroup.
fn watch_oom(events: PathBuf, oom: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    std::thread::spawn(move || {
        let Ok(ino) = Inotify::init(InitFlags::IN_CLOEXEC) else {
            return;
        };
        if ino.add_watch(&events, AddWatchFlags::IN_MODIFY).is_err() {
            return;
        }
        loop {
            if v2::events_count(&events, "oom_kill") > 0 {
                oom.store(true, Ordering::SeqCst);
                return;
            }
            match ino.read_events() {
                Ok(evs)
                    if evs
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED)) =>
                {
                    return
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
}
