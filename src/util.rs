//! Small helpers shared by several modules.

use std::path::PathBuf;

/// Find an executable on the runtime's own PATH (not the container's).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Print a warning line with one write(2): stderr is unbuffered, and `eprintln!` writes
/// each piece of its format on its own.
pub fn warn(message: &str) {
    use std::io::Write;
    let line = format!("rootless_container: warning: {message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
