//! Shared harness of the integration tests: the binary, running it as the rootless test
//! user, output capture with a timeout, skipping, and small host-inspection helpers.
//!
//! Environment:
//! - `RC_TEST_ROOTFS`: the busybox test root filesystem (default
//!   /var/tmp/rootless_container-test/rootfs, made by contrib/test-setup.sh)
//! - `RC_TEST_USER`: the rootless user when the tests run as root (default rctest)
//! - `RC_TEST_NOSUB_USER`: a user without /etc/subuid range (default rcnosub)
//! - `RC_TEST_STRICT=1`: a test that cannot run here fails instead of skipping
//! - `RC_TEST_BIN`: the runtime binary, instead of cargo's build of it

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long one runtime invocation may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// PATH given to every command the tests start.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
pub const DEFAULT_ROOTFS: &str = "/var/tmp/rootless_container-test/rootfs";
/// Docker's default capability set as /proc/<pid>/status prints it.
pub const DEFAULT_CAPS_HEX: &str = "00000000a80425fb";

/// Report that a test cannot run here: fails under RC_TEST_STRICT=1, else says so.
/// Callers return right after.
pub fn skip(reason: &str) {
    if std::env::var("RC_TEST_STRICT").as_deref() == Ok("1") {
        panic!("test could not run here: {reason}");
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    // Straight to fd 2: libtest captures eprintln! of passing tests, and a skip must show.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {test}: {reason}\n").as_bytes(),
    );
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The binary under test: as cargo built it, or `RC_TEST_BIN` (the VM tier runs the test
/// executables in a guest where the build path may differ).
pub fn bin() -> PathBuf {
    std::env::var_os("RC_TEST_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rootless_container")))
}

/// The binary for commands run as the unprivileged test users. When the tests run as root
/// the build directory may be out of their reach (a clone under /root): a root-owned
/// 0755 copy in a world-traversable directory of /tmp.
pub fn user_bin() -> PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    if !is_root() {
        return bin();
    }
    COPY.get_or_init(|| {
        remove_stale_bin_copies();
        let dir = PathBuf::from(format!(
            "/tmp/rootless_container-test-bin-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the binary copy's directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = dir.join("rootless_container");
        let tmp = dir.join("rootless_container.tmp");
        std::fs::copy(bin(), &tmp).expect("copy the binary");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
        dst
    })
    .clone()
}

/// Copies left by earlier test processes that are gone.
fn remove_stale_bin_copies() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(pid) = name.strip_prefix("rootless_container-test-bin-") {
            if let Ok(pid) = pid.parse::<u32>() {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// A unique token for names and marker files.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// An /etc/passwd entry.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl User {
    /// Where the runtime may keep its state for this user (no XDG_RUNTIME_DIR is passed):
    /// root's fixed directory, else a login session's /run/user/<uid>, a tmpfs under
    /// /dev/shm, or /tmp.
    pub fn run_dir_candidates(&self) -> Vec<PathBuf> {
        if self.uid == 0 {
            return vec![PathBuf::from("/run/rootless_container")];
        }
        vec![
            PathBuf::from(format!("/run/user/{}/rootless_container", self.uid)),
            PathBuf::from(format!("/dev/shm/rootless_container-run-{}", self.uid)),
            PathBuf::from(format!("/tmp/rootless_container-run-{}", self.uid)),
        ]
    }

    /// The run directory and record id of a running container called `name` (found by its
    /// `names/<name>` link).
    pub fn find_named(&self, name: &str) -> Option<(PathBuf, PathBuf)> {
        self.run_dir_candidates().into_iter().find_map(|d| {
            let id = std::fs::read_link(d.join("names").join(name)).ok()?;
            Some((d, id))
        })
    }

    /// Where kept writable layers go.
    pub fn data_dir(&self) -> PathBuf {
        if self.uid == 0 {
            PathBuf::from("/var/lib/rootless_container")
        } else {
            self.home.join(".local/share/rootless_container")
        }
    }
}

fn passwd_entry(pred: impl Fn(&[&str]) -> bool) -> Option<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || !pred(&f) {
            return None;
        }
        Some(User {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
        })
    })
}

pub fn lookup_user(name: &str) -> Option<User> {
    passwd_entry(|f| f[0] == name)
}

pub fn lookup_uid(uid: u32) -> Option<User> {
    let s = uid.to_string();
    passwd_entry(|f| f[2] == s)
}

/// The rootless test user: RC_TEST_USER (default rctest) when running as root, else
/// whoever runs the tests. Skips (returns None) when there is none.
pub fn test_user() -> Option<User> {
    if !is_root() {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let u = lookup_uid(uid);
        if u.is_none() {
            skip(&format!("uid {uid} has no /etc/passwd entry"));
        }
        return u;
    }
    let name = std::env::var("RC_TEST_USER").unwrap_or_else(|_| "rctest".into());
    let u = lookup_user(&name).filter(|u| u.uid != 0);
    if u.is_none() {
        skip(&format!(
            "the rootless test user {name:?} does not exist (run contrib/test-setup.sh as root)"
        ));
    }
    u
}

/// The user without subordinate ids (needs root to act as another user).
pub fn nosub_user() -> Option<User> {
    if !is_root() {
        skip("running as another user (the no-subuid user) needs root");
        return None;
    }
    let name = std::env::var("RC_TEST_NOSUB_USER").unwrap_or_else(|_| "rcnosub".into());
    let u = lookup_user(&name).filter(|u| u.uid != 0);
    if u.is_none() {
        skip(&format!(
            "the no-subuid test user {name:?} does not exist (run contrib/test-setup.sh as root)"
        ));
    }
    u
}

/// The busybox test root filesystem, or None (after skip) when it is missing.
pub fn rootfs() -> Option<PathBuf> {
    let p = std::env::var_os("RC_TEST_ROOTFS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTFS));
    if !p.join("bin/busybox").exists() {
        skip(&format!(
            "test rootfs {} is missing (contrib/make-test-rootfs.sh makes it)",
            p.display()
        ));
        return None;
    }
    Some(p)
}

/// The rootless test user and the test rootfs, or None after a skip.
pub fn user_and_rootfs() -> Option<(User, PathBuf)> {
    let u = test_user()?;
    let r = rootfs()?;
    Some((u, r))
}

/// Needs root for root-mode tests: None after a skip.
pub fn require_root() -> Option<()> {
    if !is_root() {
        skip("root-mode test: run the tests as root (sudo contrib/run-tests.sh)");
        return None;
    }
    Some(())
}

/// A command for `program` running as `user` with a login-like clean environment (no
/// XDG_RUNTIME_DIR). As root: drops to the user (groups, gid, uid) just before exec.
pub fn as_user(user: &User, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("PATH", PATH)
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .current_dir("/");
    if is_root() && user.uid != 0 {
        let (uid, gid) = (user.uid, user.gid);
        // SAFETY: only async-signal-safe syscalls between fork and exec. std applies its
        // own uid()/gid() before pre_exec hooks, so all three changes happen here, in the
        // order that keeps the privilege to make them.
        unsafe {
            c.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c
}

/// The runtime, run as the (rootless) `user`.
pub fn rootless(user: &User) -> Command {
    as_user(user, user_bin())
}

/// The host's root as a `User` (its records, names and kept layers).
pub fn root_user() -> User {
    User {
        name: "root".into(),
        uid: 0,
        gid: 0,
        home: "/root".into(),
    }
}

/// `run --rm --rootfs R ARGS...` as root (root mode; the default network is the bridge).
/// run_rootless.rs has a `brun` of its own (as a user), which shadows this one there.
pub fn brun(r: &Path, args: &[&str]) -> Command {
    let mut c = as_root();
    c.args(["run", "--rm", "--rootfs"]).arg(r).args(args);
    c
}

/// The runtime as root (root mode), clean environment.
pub fn as_root() -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env("USER", "root")
        .env("LOGNAME", "root")
        .current_dir("/");
    c
}

/// What a finished command produced.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    /// Exit code, or 128+N when killed by signal N.
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }

    /// Non-empty stderr lines.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// stdout as trimmed, non-empty lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

fn reader<R: Read + Send + 'static>(mut r: R) -> Receiver<Vec<u8>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

fn collect(rx: &Receiver<Vec<u8>>, what: &str, cmd: &str) -> String {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => panic!(
            "{what} of {cmd} is still open 10 s after the runtime exited: \
             a process outlived the container and holds it"
        ),
    }
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> (Option<ExitStatus>, Duration) {
    let start = Instant::now();
    let pid = child.id() as i32;
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(st) => (Some(st.expect("wait for the runtime")), start.elapsed()),
        Err(_) => {
            // SAFETY: kill on the pid of our own child, not yet reaped (the waiter holds it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            (None, start.elapsed())
        }
    }
}

/// Run to completion with stdin from /dev/null, capturing stdout and stderr; fails the
/// test if it takes longer than `timeout` (after killing it).
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> Out {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let out_rx = reader(child.stdout.take().unwrap());
    let err_rx = reader(child.stderr.take().unwrap());
    let (status, elapsed) = wait_with_timeout(child, timeout);
    let Some(status) = status else {
        let so = out_rx
            .recv_timeout(Duration::from_secs(2))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let se = err_rx
            .recv_timeout(Duration::from_secs(2))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        panic!("timed out after {timeout:?} (killed): {desc}\nstdout: {so}\nstderr: {se}");
    };
    Out {
        status,
        stdout: collect(&out_rx, "stdout", &desc),
        stderr: collect(&err_rx, "stderr", &desc),
        elapsed,
    }
}

pub fn output(cmd: &mut Command) -> Out {
    output_timeout(cmd, TIMEOUT)
}

/// Like `output`, with `input` on stdin (then end of file).
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Out {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &input);
    });
    let out_rx = reader(child.stdout.take().unwrap());
    let err_rx = reader(child.stderr.take().unwrap());
    let (status, elapsed) = wait_with_timeout(child, TIMEOUT);
    let Some(status) = status else {
        panic!("timed out after {TIMEOUT:?} (killed): {desc}");
    };
    Out {
        status,
        stdout: collect(&out_rx, "stdout", &desc),
        stderr: collect(&err_rx, "stderr", &desc),
        elapsed,
    }
}

/// Run, assert exit status 0, return stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let o = output(cmd);
    assert!(
        o.status.success(),
        "{desc} failed with {} (code {})\nstdout: {}\nstderr: {}",
        o.status,
        o.code(),
        o.stdout,
        o.stderr
    );
    o.stdout
}

/// Run and assert the exit code; returns the output.
pub fn run_code(cmd: &mut Command, want: i32) -> Out {
    let desc = format!("{cmd:?}");
    let o = output(cmd);
    assert_eq!(
        o.code(),
        want,
        "exit code of {desc}\nstdout: {}\nstderr: {}",
        o.stdout,
        o.stderr
    );
    o
}

/// A runtime started in the background with its stdout read line by line.
pub struct Running {
    pub child: Option<Child>,
    pub pid: i32,
    lines: Receiver<String>,
    stderr: Receiver<Vec<u8>>,
    pub desc: String,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = reader(child.stderr.take().unwrap());
        Running {
            pid: child.id() as i32,
            child: Some(child),
            lines,
            stderr,
            desc,
        }
    }

    /// Read stdout lines until one equals `want` (trimmed); fails on timeout or EOF.
    pub fn expect_line(&mut self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.trim() == want => return,
                Ok(l) => seen.push(l),
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "no line {want:?} within {timeout:?} from {}; got {seen:?}; stderr: {}",
                        self.desc,
                        self.stderr_now()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let st = self.wait(Duration::from_secs(10));
                    panic!(
                        "stdout closed before {want:?} ({st}) from {}; got {seen:?}; stderr: {}",
                        self.desc,
                        self.stderr_now()
                    )
                }
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        assert!(self.child.is_some(), "signal after wait");
        // SAFETY: kill on our own, not yet reaped child.
        let r = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(r, 0, "kill({}, {sig})", self.pid);
    }

    /// Wait for the runtime to exit; fails the test (after SIGKILL) on timeout.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.take().expect("waited twice");
        match wait_with_timeout(child, timeout) {
            (Some(st), _) => st,
            (None, _) => panic!("{} did not exit within {timeout:?} (killed)", self.desc),
        }
    }

    /// SIGKILL the runtime and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// stderr, once the runtime has exited.
    pub fn stderr_now(&self) -> String {
        self.stderr
            .recv_timeout(Duration::from_secs(5))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|_| "<stderr still open>".into())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A world-traversable scratch directory under /tmp, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = Path::new("/tmp").join(unique(prefix));
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A subdirectory owned by `user` (chown needs root; otherwise it is ours anyway).
    pub fn user_dir(&self, name: &str, user: &User) -> PathBuf {
        let d = self.0.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&d, Some(user.uid), Some(user.gid)).unwrap();
        }
        d
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process on the host.
#[derive(Debug)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
}

/// Every process visible in our /proc.
pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(md) = std::fs::metadata(e.path()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        // stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        out.push(Proc {
            pid,
            ppid,
            uid: md.uid(),
            comm: comm.trim().to_string(),
            cmdline: cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        });
    }
    out
}

/// Processes of `uid` matching `pred`.
pub fn processes_of(uid: u32, pred: impl Fn(&Proc) -> bool) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|p| p.uid == uid && pred(p))
        .collect()
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test process's own mount table.
pub fn host_mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo")
}

/// A field of a /proc/<pid>/status text ("CapEff" -> "00000000a80425fb").
pub fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Lines of `KEY=value` output as pairs (first '=' splits).
pub fn kv(stdout: &str, key: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

/// Whitespace-normalised lines of a uid_map/gid_map.
pub fn norm_map(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// The subordinate ranges of a user in /etc/subuid or /etc/subgid (by name or id).
pub fn subid_ranges(file: &str, user: &User, id: u32) -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let id = id.to_string();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split(':').collect();
            if f.len() != 3 || (f[0] != user.name && f[0] != id) {
                return None;
            }
            let (s, n) = (f[1].parse().ok()?, f[2].parse().ok()?);
            (n > 0).then_some((s, n))
        })
        .collect()
}

/// Find a program on the test PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Kept writable layers (data dir `containers/<id>`) whose config.json mentions `marker`.
pub fn kept_containers_with(user: &User, marker: &str) -> Vec<PathBuf> {
    let dir = user.data_dir().join("containers");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read_to_string(p.join("config.json"))
                .map(|c| c.contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// Remove the kept layers a test made (best effort: overlayfs' work dir is mode 000).
pub fn remove_kept(user: &User, marker: &str) {
    for p in kept_containers_with(user, marker) {
        let _ = Command::new("chmod")
            .args(["-R", "u+rwx"])
            .arg(&p)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&p);
        if p.exists() {
            // Not root: files owned by subordinate ids need the user namespace.
            let _ = rootless(user)
                .args(["unshare", "rm", "-rf"])
                .arg(&p)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Removes the kept layers mentioning a marker when dropped (also when the test fails).
pub struct KeptGuard<'a>(pub &'a User, pub String);

impl Drop for KeptGuard<'_> {
    fn drop(&mut self) {
        remove_kept(self.0, &self.1);
    }
}

/// Quote for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether a runtime record directory belongs to a live runtime: its `lock` file is
/// flock()ed (as /proc/locks tells, without touching the lock ourselves).
pub fn record_is_live(dir: &Path) -> bool {
    let Ok(md) = std::fs::metadata(dir.join("lock")) else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let ino = format!(":{} ", md.ino());
    locks
        .lines()
        .any(|l| l.contains("FLOCK") && l.contains(&ino))
}

/// Record directories in a run dir that no live runtime holds ("names" aside).
pub fn stale_records(run_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        // Records are directories; dot names are records still being built.
        .filter(|e| e.file_name() != "names" && !e.file_name().as_encoded_bytes().starts_with(b"."))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| p.exists() && !record_is_live(p))
        .collect()
}
