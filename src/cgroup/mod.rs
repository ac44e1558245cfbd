//! Resource limits. This version has the cgroupfs manager used in root mode (cgroup v2, or
//! the v1 hierarchies of a hybrid host like these machines); the systemd (D-Bus) manager
//! for rootless runs comes with its issue.

pub mod fs;
pub mod limits;

pub use fs::FsCgroup;
pub use limits::Limits;
