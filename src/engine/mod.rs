//! The engine runs one OCI spec: it forks the container's first process into new
//! namespaces, maps its ids, assembles its root filesystem and waits for it.

mod bpf;
mod child;
pub mod fsutil;
mod init;
mod launch;
mod mounts;
mod netns;
mod overlay;
mod rootfs;
pub mod seal;
pub mod seccomp;
mod security;
pub(crate) mod sync;
mod tty;
pub mod userns;

use oci_spec::runtime::Spec;
use std::path::PathBuf;

pub use crate::cli::OverlayMode;
pub(crate) use launch::{clone_into_namespaces, write_id_maps};
pub use launch::{run, Hooks};
pub use tty::require_terminal_stdin;

/// How the id maps of a new user namespace are written.
#[derive(Debug, Clone)]
pub enum MapWriter {
    /// Full maps through the setuid helpers from the uidmap package.
    Helpers {
        newuidmap: PathBuf,
        newgidmap: PathBuf,
    },
    /// A single line (container 0 = our uid) written by ourselves; setgroups denied.
    Direct,
}

/// Where the container's writable layer lives.
#[derive(Debug, Clone)]
pub enum WritableLayer {
    /// A tmpfs inside the container's mount namespace: gone with the container, even after
    /// a SIGKILL of the runtime.
    Tmpfs,
    /// Kept on disk after exit.
    Dir { upper: PathBuf, work: PathBuf },
}

/// A userspace network helper to attach to the container's network namespace.
#[derive(Debug, Clone)]
pub struct NetworkPlan {
    /// pasta instead of slirp4netns.
    pub pasta: bool,
    pub slirp: crate::network::SlirpOptions,
    pub ports: Vec<crate::network::PortMapping>,
    /// slirp4netns' API socket, when ports are published.
    pub api: Option<PathBuf>,
    /// The runtime's state directory (probe cache).
    pub run: PathBuf,
    /// Where the helper's messages go.
    pub log: PathBuf,
}

/// Everything the engine needs beyond the OCI spec.
#[derive(Debug, Clone)]
pub struct Launch {
    pub spec: Spec,
    /// The runtime itself is unprivileged.
    pub rootless: bool,
    /// Map writer when the spec asks for a user namespace.
    pub maps: MapWriter,
    /// The root filesystem is the host's own `/` (with its submounts).
    pub host_rootfs: bool,
    pub layer: WritableLayer,
    pub overlay: OverlayMode,
    /// An empty directory in the runtime's state, used as the mount point of the new root.
    pub mountpoint: PathBuf,
    /// Files to create in the writable layer when the rootfs lacks them (bind targets).
    pub precreate: Vec<PathBuf>,
    /// The cgroup the first process goes into before it may continue.
    pub cgroup: Option<std::rc::Rc<crate::cgroup::Cgroup>>,
    /// Where the kernel overlayfs whiteout probe caches its verdict.
    pub probe_cache: Option<PathBuf>,
    /// The network helper, if any.
    pub network: Option<NetworkPlan>,
    /// Root mode's bridge: the veth pair to create once the child exists.
    pub bridge: Option<crate::network::bridge::Endpoint>,
    /// Keep stdin connected.
    pub interactive: bool,
    /// Run the built-in init as PID 1.
    pub init: bool,
    pub preserve_fds: u32,
    pub privileged: bool,
}

impl Launch {
    /// The container's network namespace is made after clone, beside the first process's
    /// setup (netns.rs): it is a new one, and no helper or bridge has to join it before the
    /// process is released.
    pub fn netns_in_child(&self) -> bool {
        self.creates_namespace(oci_spec::runtime::LinuxNamespaceType::Network)
            && self.network.is_none()
            && self.bridge.is_none()
    }

    /// Whether the spec asks for a new namespace of type `t` (not one joined by path).
    pub fn creates_namespace(&self, t: oci_spec::runtime::LinuxNamespaceType) -> bool {
        self.spec
            .linux()
            .as_ref()
            .and_then(|x| x.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == t && n.path().is_none()))
    }
}
