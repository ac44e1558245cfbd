//! Command-line definitions (clap) and dispatch to one module per command.

mod run;
mod unshare;

pub use run::userns_hint;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "rootless_container",
    version,
    about = "A container runtime whose normal user is not root",
    propagate_version = true
)]
pub struct Cli {
    /// How the copy-on-write root filesystem is made: kernel overlayfs, fuse-overlayfs,
    /// a plain copy, or the first that works (auto).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "ROOTLESS_CONTAINER_OVERLAY"
    )]
    pub overlay: OverlayMode,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command in a new container
    Run(Box<RunArgs>),
    /// Run a command (default: $SHELL) in a user namespace with your container id maps,
    /// e.g. to remove files owned by your subordinate ids
    Unshare {
        #[arg(trailing_var_arg = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OverlayMode {
    Auto,
    Kernel,
    Fuse,
    Copy,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum UsernsMode {
    /// Rootless: container 0 is you, 1.. your /etc/subuid range. Root: no user namespace.
    Auto,
    /// Your uid and gid are the same inside the container (and the default user).
    KeepId,
    /// No user namespace (root only).
    Host,
}

#[derive(clap::Args, Debug, Default)]
pub struct RunArgs {
    /// Directory holding the root filesystem (default: the host's own, read-only under a
    /// throw-away writable layer)
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<std::path::PathBuf>,

    /// Set an environment variable (K=V, or K to copy it from the host)
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,

    /// Read environment variables from a file (K=V lines)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<std::path::PathBuf>,

    /// Working directory inside the container
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// User to run as: NAME|UID[:GROUP|GID]
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// Container host name (default: the container id)
    #[arg(long)]
    pub hostname: Option<String>,

    /// Bind mount a host path: SRC:DST[:ro|rw]
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:OPTS]")]
    pub volumes: Vec<String>,

    /// Mount the container's root filesystem read-only
    #[arg(long = "read-only")]
    pub read_only: bool,

    /// Allocate a pseudo-terminal
    #[arg(short = 't', long)]
    pub tty: bool,

    /// Keep standard input open
    #[arg(short = 'i', long)]
    pub interactive: bool,

    /// Remove the container's writable layer when it exits
    #[arg(long)]
    pub rm: bool,

    /// Container name
    #[arg(long)]
    pub name: Option<String>,

    /// Run a minimal init as PID 1 that forwards signals and reaps zombies
    #[arg(long)]
    pub init: bool,

    /// Add a capability (e.g. NET_ADMIN, or ALL)
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,

    /// Drop a capability (e.g. CHOWN, or ALL)
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,

    /// Network: slirp4netns[:allow_host_loopback=true,mtu=N] (rootless default), pasta,
    /// bridge (root default), none (loopback only) or host
    #[arg(long, alias = "net")]
    pub network: Option<String>,

    /// Publish a container port on the host: [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    pub publish: Vec<String>,

    /// DNS server for the container's /etc/resolv.conf
    #[arg(long)]
    pub dns: Vec<String>,

    /// Add a line to the container's /etc/hosts: NAME:IP
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,

    /// MAC address of the container's interface (bridge, slirp4netns, pasta)
    #[arg(long = "mac-address", value_name = "MAC")]
    pub mac_address: Option<String>,

    /// All capabilities, host devices, no masked paths (root only)
    #[arg(long)]
    pub privileged: bool,

    /// User namespace mode (default: auto rootless, host as root)
    #[arg(long, value_enum)]
    pub userns: Option<UsernsMode>,

    /// Pass N extra file descriptors (3..3+N-1) into the container
    #[arg(long = "preserve-fds", value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,

    /// Security options: seccomp=unconfined turns the default seccomp profile off
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,

    /// Memory limit (bytes, or with k, m, g)
    #[arg(short = 'm', long)]
    pub memory: Option<String>,

    /// Memory plus swap limit (-1: unlimited swap)
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,

    /// Memory soft limit
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,

    /// Number of CPUs (decimal, e.g. 0.5)
    #[arg(long)]
    pub cpus: Option<String>,

    /// CPU shares (relative weight, 2..262144)
    #[arg(short = 'c', long = "cpu-shares")]
    pub cpu_shares: Option<u64>,

    /// CPU weight (cgroup v2's cpu.weight, 1..10000; instead of --cpu-shares)
    #[arg(long = "cpu-weight")]
    pub cpu_weight: Option<u64>,

    /// CPUs the container may use (e.g. 0-1, 0,2)
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,

    /// Maximum number of processes (-1: unlimited)
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,

    /// Block I/O weight (10..1000)
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,

    /// Cgroup manager: cgroupfs (root mode) or disabled
    #[arg(long = "cgroup-manager", value_name = "MANAGER")]
    pub cgroup_manager: Option<String>,

    /// Cgroup to create the container's cgroup under (instead of the runtime's own)
    #[arg(long = "cgroup-parent", value_name = "PATH")]
    pub cgroup_parent: Option<String>,

    /// Cgroup namespace: private (default) or host
    #[arg(long, value_name = "MODE")]
    pub cgroupns: Option<String>,

    /// Command and arguments (default: /bin/sh). A mistyped option before the command is an
    /// error, not the command; use `--` before a command that starts with '-'.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Parse the command line and run the command; returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => run::run(*args, cli.overlay),
        Command::Unshare { command } => unshare::unshare(command),
    }
}

impl Cli {
    /// Commands that start container processes run from a sealed copy of the binary.
    pub fn needs_sealed_exe(&self) -> bool {
        matches!(self.command, Command::Run(_))
    }
}
