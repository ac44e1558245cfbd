//! The spec's seccomp profile (default action allow, listed syscalls refused with an errno)
//! compiled to BPF with seccompiler and installed just before exec.

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;

/// x86_64/aarch64 syscall numbers by name, for the syscalls profiles name. A name the
/// table lacks is skipped, as runc skips syscalls unknown to the architecture.
fn syscall_number(name: &str) -> Option<i64> {
    use libc::*;
    let n = match name {
        "acct" => SYS_acct,
        "add_key" => SYS_add_key,
        "bpf" => SYS_bpf,
        "clock_adjtime" => SYS_clock_adjtime,
        "clock_settime" => SYS_clock_settime,
        "clone" => SYS_clone,
        "clone3" => SYS_clone3,
        "delete_module" => SYS_delete_module,
        "fanotify_init" => SYS_fanotify_init,
        "finit_module" => SYS_finit_module,
        "fsconfig" => SYS_fsconfig,
        "fsmount" => SYS_fsmount,
        "fsopen" => SYS_fsopen,
        "fspick" => SYS_fspick,
        "init_module" => SYS_init_module,
        "kcmp" => SYS_kcmp,
        "kexec_file_load" => SYS_kexec_file_load,
        "kexec_load" => SYS_kexec_load,
        "keyctl" => SYS_keyctl,
        "mount" => SYS_mount,
        "mount_setattr" => SYS_mount_setattr,
        "move_mount" => SYS_move_mount,
        "name_to_handle_at" => SYS_name_to_handle_at,
        "open_by_handle_at" => SYS_open_by_handle_at,
        "open_tree" => SYS_open_tree,
        "perf_event_open" => SYS_perf_event_open,
        "pivot_root" => SYS_pivot_root,
        "quotactl" => SYS_quotactl,
        "reboot" => SYS_reboot,
        "request_key" => SYS_request_key,
        "setns" => SYS_setns,
        "settimeofday" => SYS_settimeofday,
        "swapoff" => SYS_swapoff,
        "swapon" => SYS_swapon,
        "syslog" => SYS_syslog,
        "umount2" => SYS_umount2,
        "unshare" => SYS_unshare,
        "userfaultfd" => SYS_userfaultfd,
        "vhangup" => SYS_vhangup,
        #[cfg(target_arch = "x86_64")]
        "iopl" => SYS_iopl,
        #[cfg(target_arch = "x86_64")]
        "ioperm" => SYS_ioperm,
        #[cfg(target_arch = "x86_64")]
        "uselib" => SYS_uselib,
        #[cfg(target_arch = "x86_64")]
        "ustat" => SYS_ustat,
        #[cfg(target_arch = "x86_64")]
        "sysfs" => SYS_sysfs,
        #[cfg(target_arch = "x86_64")]
        "lookup_dcookie" => SYS_lookup_dcookie,
        _ => return None,
    };
    Some(n)
}

/// Namespace-creating clone flags, refused by the default profile without CAP_SYS_ADMIN.
const NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// The default profile, close to Docker's in effect but written as a deny list: kernel
/// keyrings (not namespaced), module and kexec loading, clock setting, bpf, perf,
/// userfaultfd, handle-based opens, and, without CAP_SYS_ADMIN, mounts and new
/// namespaces. clone3 gets ENOSYS so that libc falls back to clone, whose flags a filter
/// can see.
pub fn default_profile(caps: &[String]) -> serde_json::Value {
    let mut denied: Vec<&str> = vec![
        "acct",
        "add_key",
        "bpf",
        "clock_adjtime",
        "clock_settime",
        "delete_module",
        "finit_module",
        "init_module",
        "iopl",
        "ioperm",
        "kcmp",
        "kexec_file_load",
        "kexec_load",
        "keyctl",
        "lookup_dcookie",
        "name_to_handle_at",
        "open_by_handle_at",
        "perf_event_open",
        "quotactl",
        "reboot",
        "request_key",
        "settimeofday",
        "swapoff",
        "swapon",
        "syslog",
        "sysfs",
        "uselib",
        "userfaultfd",
        "ustat",
        "vhangup",
    ];
    let sys_admin = caps.iter().any(|c| c == "SYS_ADMIN");
    let mut rules = vec![];
    if !sys_admin {
        denied.extend([
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "pivot_root",
            "setns",
            "umount2",
            "unshare",
        ]);
        for flag in NAMESPACE_FLAGS {
            rules.push(serde_json::json!({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }));
        }
        rules.push(serde_json::json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}));
    }
    rules.insert(
        0,
        serde_json::json!({"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM}),
    );
    serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
}

fn target_arch() -> seccompiler::TargetArch {
    #[cfg(target_arch = "aarch64")]
    return seccompiler::TargetArch::aarch64;
    #[cfg(not(target_arch = "aarch64"))]
    seccompiler::TargetArch::x86_64
}

/// Compile the profile into one BPF program per errno (a seccompiler filter has one
/// match action), in a stable order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>> {
    if profile.default_action() != LinuxSeccompAction::ScmpActAllow {
        bail!("unsupported seccomp profile: only defaultAction SCMP_ACT_ALLOW with SCMP_ACT_ERRNO rules is implemented");
    }
    // errno -> syscall -> conditional rules; None means "whatever the arguments".
    let mut by_errno: BTreeMap<u32, BTreeMap<i64, Option<Vec<SeccompRule>>>> = BTreeMap::new();
    for sc in profile.syscalls().as_deref().unwrap_or(&[]) {
        let errno = match sc.action() {
            LinuxSeccompAction::ScmpActErrno => sc.errno_ret().unwrap_or(libc::EPERM as u32),
            LinuxSeccompAction::ScmpActAllow => continue,
            other => bail!(
                "unsupported seccomp action {other:?}: only SCMP_ACT_ERRNO rules are implemented"
            ),
        };
        let mut conditions = Vec::new();
        for a in sc.args().as_deref().unwrap_or(&[]) {
            let op = match a.op() {
                LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
                LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
                LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
                LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
                LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
                LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
                LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(a.value()),
            };
            let value = if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                a.value_two().unwrap_or(0)
            } else {
                a.value()
            };
            conditions.push(
                SeccompCondition::new(a.index() as u8, SeccompCmpArgLen::Qword, op, value)
                    .map_err(|e| anyhow::anyhow!("seccomp condition: {e}"))?,
            );
        }
        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            let entry = by_errno
                .entry(errno)
                .or_default()
                .entry(nr)
                .or_insert_with(|| Some(Vec::new()));
            match (entry.as_mut(), conditions.is_empty()) {
                (_, true) => *entry = None,
                (Some(rules), false) => rules.push(
                    SeccompRule::new(conditions.clone())
                        .map_err(|e| anyhow::anyhow!("seccomp rule: {e}"))?,
                ),
                (None, false) => {}
            }
        }
    }
    by_errno
        .into_iter()
        .map(|(errno, rules)| {
            // seccompiler matches a syscall mapped to no rules whatever its arguments.
            let rules = rules
                .into_iter()
                .map(|(nr, r)| (nr, r.unwrap_or_default()))
                .collect();
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno),
                target_arch(),
            )
            .map_err(|e| anyhow::anyhow!("seccomp filter: {e}"))?;
            BpfProgram::try_from(filter).map_err(|e| anyhow::anyhow!("compile seccomp filter: {e}"))
        })
        .collect()
}

/// Install the compiled filters (the last step before exec; it also sets no_new_privs).
pub fn install(programs: &[BpfProgram]) -> Result<()> {
    for p in programs {
        seccompiler::apply_filter(p).context("install the seccomp filter")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles() {
        let p: LinuxSeccomp = serde_json::from_value(default_profile(&[])).unwrap();
        let progs = compile(&p).unwrap();
        assert_eq!(progs.len(), 2, "one filter for EPERM, one for ENOSYS");
        let with_admin: LinuxSeccomp =
            serde_json::from_value(default_profile(&["SYS_ADMIN".into()])).unwrap();
        assert_eq!(compile(&with_admin).unwrap().len(), 1);
    }
}
