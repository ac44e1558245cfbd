//! Where state lives and the per-container runtime record.
//!
//! A running container owns `<run dir>/<id>/` and holds an exclusive flock on its `lock`
//! file for as long as the runtime process lives. A record whose lock is free belongs to a
//! runtime that died (even by SIGKILL); any later command may remove it.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The runtime's directories for the current user.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Runtime state (records, locks, mount points): tmpfs-backed where possible.
    pub run: PathBuf,
    /// Persistent data (writable layers of containers kept after exit).
    pub data: PathBuf,
}

fn mkdir_private(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("cannot create {}", p.display()))
}

impl Dirs {
    pub fn for_current_user() -> Result<Dirs> {
        let uid = nix::unistd::geteuid().as_raw();
        if uid == 0 {
            return Ok(Dirs {
                run: "/run/rootless_container".into(),
                data: "/var/lib/rootless_container".into(),
            });
        }
        let user_run = PathBuf::from(format!("/run/user/{uid}"));
        let run = match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            Some(d) if Path::new(&d).is_dir() => PathBuf::from(d).join("rootless_container"),
            _ if fs::metadata(&user_run).is_ok_and(|m| m.is_dir() && m.uid() == uid) => {
                user_run.join("rootless_container")
            }
            // Without a login session there is no XDG_RUNTIME_DIR. Runtime state belongs on a
            // tmpfs (gone at reboot, and several times faster to create and remove than on
            // disk): /dev/shm is the one every Linux system has. ensure_run refuses a
            // directory someone else made there.
            _ => PathBuf::from(format!("/dev/shm/rootless_container-run-{uid}")),
        };
        let data = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            Some(d) => PathBuf::from(d).join("rootless_container"),
            None => {
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .context("neither XDG_DATA_HOME nor HOME is set; set HOME")?;
                PathBuf::from(home).join(".local/share/rootless_container")
            }
        };
        Ok(Dirs { run, data })
    }

    /// Create the run directory and check that it is ours and private.
    pub fn ensure_run(&self) -> Result<()> {
        mkdir_private(&self.run)?;
        let md = fs::symlink_metadata(&self.run)?;
        let uid = nix::unistd::geteuid().as_raw();
        if !md.is_dir() || md.uid() != uid || md.mode() & 0o022 != 0 {
            bail!(
                "{} is not a private directory owned by uid {uid}; remove it or set XDG_RUNTIME_DIR",
                self.run.display()
            );
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Running,
    Exited,
}

/// What `state.json` holds for one container.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub pid: i32,
    pub rootfs: PathBuf,
    pub command: Vec<String>,
    pub created: u64,
    pub exit_code: Option<i32>,
    pub rootless: bool,
}

/// A container's live runtime record; dropping it without `keep` removes it.
pub struct Live {
    pub dir: PathBuf,
    name_link: Option<PathBuf>,
    _lock: File,
}

/// Whether the container `id` has a live runtime.
pub fn record_is_live(run: &Path, id: &str) -> bool {
    lock_is_held(&run.join(id).join("lock"))
}

fn lock_is_held(lock: &Path) -> bool {
    let Ok(f) = File::open(lock) else {
        return false;
    };
    // SAFETY: flock on an fd we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0
}

/// Remove records left by runtimes that died without cleaning up.
pub fn collect_stale(run: &Path) {
    let Ok(entries) = fs::read_dir(run) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "names" || !p.is_dir() {
            continue;
        }
        // A record still being built, unless its builder died long ago.
        if name.as_encoded_bytes().starts_with(b".") {
            let age = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a.as_secs() > 60) {
                let _ = fs::remove_dir_all(&p);
            }
            continue;
        }
        if p.join("lock").exists() && !lock_is_held(&p.join("lock")) {
            // A network helper that does not end with its namespace.
            crate::network::pasta::kill_orphan(&p);
            remove_record(&p);
        }
    }
    if let Ok(names) = fs::read_dir(run.join("names")) {
        for n in names.flatten() {
            let target = fs::read_link(n.path()).unwrap_or_default();
            if !run.join(&target).exists() {
                let _ = fs::remove_file(n.path());
            }
        }
    }
}

/// Atomically write `data` to `path` (temp file + rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(data)?;
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

impl Live {
    /// Claim the record directory (and the name) for a new container.
    pub fn create(run: &Path, id: &str, name: &str) -> Result<Live> {
        // Built under a dot name that collect_stale leaves alone, and renamed into place
        // with its lock already held: no other runtime ever sees an unlocked new record.
        let dir = run.join(id);
        let tmp = run.join(format!(".new-{id}"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        let lock = File::create(tmp.join("lock"))?;
        // SAFETY: flock on an fd we own; held until this process exits.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "container record {} is locked by another process",
                tmp.display()
            );
        }
        fs::rename(&tmp, &dir).with_context(|| format!("create {}", dir.display()))?;
        let mut live = Live {
            dir,
            name_link: None,
            _lock: lock,
        };
        let names = run.join("names");
        mkdir_private(&names)?;
        let link = names.join(name);
        for attempt in 0..2 {
            match std::os::unix::fs::symlink(id, &link) {
                Ok(()) => {
                    live.name_link = Some(link);
                    return Ok(live);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt == 0 => {
                    let other = fs::read_link(&link).unwrap_or_default();
                    let other_lock = run.join(&other).join("lock");
                    if lock_is_held(&other_lock) {
                        bail!(
                            "the container name \"{name}\" is already in use by container {}; choose another --name",
                            other.display()
                        );
                    }
                    let _ = fs::remove_dir_all(run.join(&other));
                    let _ = fs::remove_file(&link);
                }
                Err(e) => return Err(e).with_context(|| format!("claim name {name}")),
            }
        }
        unreachable!("the loop returns or bails")
    }

    pub fn write(&self, rec: &Record) -> Result<()> {
        write_atomic(&self.dir.join("state.json"), &serde_json::to_vec(rec)?)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(l) = &self.name_link {
            let _ = fs::remove_file(l);
        }
        remove_record(&self.dir);
    }
}

/// Remove a record: every entry but the lock, then the lock, then the directory. A
/// runtime killed half-way (or a race with another one collecting the same stale record)
/// leaves the lock behind, so that the next collect_stale finishes the job; a record
/// without its lock would never be collected.
fn remove_record(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.file_name() != "lock") {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
    let _ = fs::remove_file(dir.join("lock"));
    let _ = fs::remove_dir(dir);
}

/// A random 64-hex-digit container id (Docker's format).
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    // SAFETY: getrandom fills the buffer we own; 32 bytes never come back short.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        if let Ok(mut f) = File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut b);
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lifecycle_and_stale_collection() {
        let tmp = std::env::temp_dir().join(format!("rc-state-{}", std::process::id()));
        fs::create_dir_all(&tmp).unwrap();
        let live = Live::create(&tmp, "abc", "web").unwrap();
        assert!(
            Live::create(&tmp, "def", "web").is_err(),
            "a held name is refused"
        );
        let dir = live.dir.clone();
        drop(live);
        assert!(!dir.exists());
        // A record whose lock nobody holds is stale and collected.
        fs::create_dir_all(tmp.join("dead")).unwrap();
        File::create(tmp.join("dead/lock")).unwrap();
        collect_stale(&tmp);
        assert!(!tmp.join("dead").exists());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn ids_are_hex() {
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
