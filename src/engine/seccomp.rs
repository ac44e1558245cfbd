//! The spec's seccomp profile (default action allow, listed syscalls refused with an errno)
//! compiled to one classic-BPF program (see bpf.rs) and installed just before exec.

use super::bpf::{off_arg_hi, off_arg_lo, ret_errno, Cmp, Program, SockFilter, Target};
use super::bpf::{OFF_ARCH, OFF_NR, RET_ALLOW, RET_KILL_PROCESS};
use anyhow::{bail, Context, Result};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
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

/// The audit architecture the filter accepts; a syscall made under another ABI (i386's
/// int 0x80 on x86_64) would bypass a deny list written in this ABI's numbers, so it kills
/// the process, as seccompiler did.
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(not(target_arch = "aarch64"))]
const AUDIT_ARCH: u32 = 0xc000_003e;

/// x86_64's x32 ABI shares the architecture but sets this bit in the syscall number: refused
/// outright (ENOSYS), so that x32 numbers cannot slip past the deny list.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// One argument comparison of a rule, on the full 64-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Condition {
    arg: u8,
    op: LinuxSeccompOperator,
    value: u64,
    /// For SCMP_CMP_MASKED_EQ: the mask (`value`) and the expected result (`valueTwo`).
    mask: u64,
}

/// What a syscall gets: refused whatever its arguments, or when one of the rules matches
/// (each rule an AND of conditions), with the rule's errno.
#[derive(Debug, Default)]
struct SyscallRules {
    always: Option<u32>,
    rules: Vec<(Vec<Condition>, u32)>,
}

/// Emit the test of one condition: falls through when it holds, jumps to `fail` when not.
fn emit_condition(p: &mut Program, c: &Condition, fail: usize) {
    let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
    let fail = Target::Label(fail);
    let ok = p.label();
    let okt = Target::Label(ok);
    let (ld_hi, ld_lo) = (off_arg_hi(c.arg), off_arg_lo(c.arg));
    use LinuxSeccompOperator as Op;
    match c.op {
        Op::ScmpCmpEq => {
            p.load(ld_hi);
            p.jump(Cmp::Eq, hi, Target::Next, fail);
            p.load(ld_lo);
            p.jump(Cmp::Eq, lo, Target::Next, fail);
        }
        Op::ScmpCmpNe => {
            p.load(ld_hi);
            p.jump(Cmp::Eq, hi, Target::Next, okt);
            p.load(ld_lo);
            p.jump(Cmp::Eq, lo, fail, Target::Next);
        }
        Op::ScmpCmpMaskedEq => {
            let (mhi, mlo) = ((c.mask >> 32) as u32, c.mask as u32);
            p.load(ld_hi);
            p.and(mhi);
            p.jump(Cmp::Eq, hi & mhi, Target::Next, fail);
            p.load(ld_lo);
            p.and(mlo);
            p.jump(Cmp::Eq, lo & mlo, Target::Next, fail);
        }
        // Unsigned 64-bit orderings: the high words decide unless they are equal. LT is
        // "not GE" and LE is "not GT": the same test with its outcomes swapped.
        Op::ScmpCmpGt | Op::ScmpCmpGe | Op::ScmpCmpLt | Op::ScmpCmpLe => {
            let (lo_cmp, yes, no) = match c.op {
                Op::ScmpCmpGt => (Cmp::Gt, okt, fail),
                Op::ScmpCmpGe => (Cmp::Ge, okt, fail),
                Op::ScmpCmpLt => (Cmp::Ge, fail, okt),
                _ => (Cmp::Gt, fail, okt),
            };
            p.load(ld_hi);
            p.jump(Cmp::Gt, hi, yes, Target::Next);
            p.jump(Cmp::Eq, hi, Target::Next, no);
            p.load(ld_lo);
            p.jump(lo_cmp, lo, yes, no);
        }
    }
    p.bind(ok);
}

/// Compile the profile into one BPF program: architecture check, then a binary search over
/// the listed syscalls, each refused with its errno (when its conditions hold), else allowed.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<SockFilter>> {
    if profile.default_action() != LinuxSeccompAction::ScmpActAllow {
        bail!("unsupported seccomp profile: only defaultAction SCMP_ACT_ALLOW with SCMP_ACT_ERRNO rules is implemented");
    }
    let mut by_nr: BTreeMap<u32, SyscallRules> = BTreeMap::new();
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
            if a.index() > 5 {
                bail!("seccomp rule on argument {}: syscalls have 6", a.index());
            }
            let masked = a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq;
            conditions.push(Condition {
                arg: a.index() as u8,
                op: a.op(),
                value: if masked {
                    a.value_two().unwrap_or(0)
                } else {
                    a.value()
                },
                mask: if masked { a.value() } else { u64::MAX },
            });
        }
        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            let entry = by_nr.entry(nr as u32).or_default();
            if conditions.is_empty() {
                // Refused whatever the arguments: the first such rule decides.
                entry.always.get_or_insert(errno);
            } else {
                entry.rules.push((conditions.clone(), errno));
            }
        }
    }
    let mut p = Program::default();
    let arch_ok = p.label();
    p.load(OFF_ARCH);
    p.jump(Cmp::Eq, AUDIT_ARCH, Target::Label(arch_ok), Target::Next);
    p.ret(RET_KILL_PROCESS);
    p.bind(arch_ok);
    p.load(OFF_NR);
    #[cfg(target_arch = "x86_64")]
    {
        let native = p.label();
        p.jump(
            Cmp::Ge,
            X32_SYSCALL_BIT,
            Target::Next,
            Target::Label(native),
        );
        p.ret(ret_errno(libc::ENOSYS as u32));
        p.bind(native);
    }
    let entries: Vec<(u32, &SyscallRules)> = by_nr.iter().map(|(n, r)| (*n, r)).collect();
    emit_tree(&mut p, &entries);
    p.assemble()
}

/// A binary search over the sorted syscall numbers, so that any number is decided in
/// about log2(n) comparisons (the kernel's cache pass runs the filter for every number).
/// The accumulator holds the syscall number throughout: every rule block returns.
fn emit_tree(p: &mut Program, entries: &[(u32, &SyscallRules)]) {
    if entries.len() <= 4 {
        for (nr, r) in entries {
            emit_syscall(p, *nr, r);
        }
        p.ret(RET_ALLOW);
        return;
    }
    let (left, right) = entries.split_at(entries.len() / 2);
    let upper = p.label();
    let lower = p.label();
    // jge -> the unconditional jump (any distance) to the upper half; else the lower.
    p.jump(Cmp::Ge, right[0].0, Target::Next, Target::Label(lower));
    p.jump_always(upper);
    p.bind(lower);
    emit_tree(p, left);
    p.bind(upper);
    emit_tree(p, right);
}

/// The test of one syscall number: falls through when `nr` is another syscall.
fn emit_syscall(p: &mut Program, nr: u32, r: &SyscallRules) {
    let after = p.label();
    if let Some(errno) = r.always {
        p.jump(Cmp::Eq, nr, Target::Next, Target::Label(after));
        p.ret(ret_errno(errno));
    } else {
        // The rules may be long: skip them with an unconditional jump.
        let block = p.label();
        p.jump(Cmp::Eq, nr, Target::Label(block), Target::Next);
        p.jump_always(after);
        p.bind(block);
        for (conds, errno) in &r.rules {
            let next_rule = p.label();
            for c in conds {
                emit_condition(p, c, next_rule);
            }
            p.ret(ret_errno(*errno));
            p.bind(next_rule);
        }
        p.ret(RET_ALLOW);
    }
    p.bind(after);
}

/// Install the compiled filter (the last step before exec). Sets no_new_privs, which an
/// unprivileged filter needs.
pub fn install(program: &[SockFilter]) -> Result<()> {
    if program.is_empty() {
        return Ok(());
    }
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with constant arguments; seccomp reads `prog`, which outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error()).context("set no_new_privs");
        }
        if libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("install the seccomp filter");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::bpf::run;
    use super::*;

    const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;

    fn nr(name: &str) -> u32 {
        syscall_number(name).unwrap() as u32
    }

    fn default_filter(caps: &[String]) -> Vec<SockFilter> {
        let p: LinuxSeccomp = serde_json::from_value(default_profile(caps)).unwrap();
        compile(&p).unwrap()
    }

    #[test]
    fn default_profile_refuses_what_it_lists() {
        let f = default_filter(&[]);
        assert!(f.len() < 200, "{} instructions", f.len());
        let call = |n: u32, a0: u64| run(&f, n, AUDIT_ARCH, [a0, 0, 0, 0, 0, 0]);
        assert_eq!(call(nr("mount"), 0), EPERM);
        assert_eq!(call(nr("keyctl"), 0), EPERM);
        assert_eq!(call(nr("unshare"), 0), EPERM);
        assert_eq!(call(libc::SYS_read as u32, 0), RET_ALLOW);
        assert_eq!(call(libc::SYS_openat as u32, 0), RET_ALLOW);
        // clone: refused with any namespace flag, allowed for fork and threads.
        assert_eq!(call(nr("clone"), libc::SIGCHLD as u64), RET_ALLOW);
        let thread =
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_THREAD) as u64;
        assert_eq!(call(nr("clone"), thread), RET_ALLOW);
        for flag in NAMESPACE_FLAGS {
            assert_eq!(call(nr("clone"), flag as u64 | libc::SIGCHLD as u64), EPERM);
            // Bits above 32 do not hide a namespace flag.
            assert_eq!(call(nr("clone"), (1u64 << 40) | flag as u64), EPERM);
        }
        assert_eq!(call(nr("clone3"), 0), ENOSYS);
        // Another ABI kills; x32 numbers are refused.
        assert_eq!(run(&f, 0, 0x4000_0003, [0; 6]), RET_KILL_PROCESS);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(call(X32_SYSCALL_BIT | nr("mount"), 0), ENOSYS);
    }

    /// Every syscall number gets what the profile says, and the search keeps the program
    /// short (the kernel runs it for each number when it is installed).
    #[test]
    fn every_number_is_decided_by_the_search() {
        let f = default_filter(&[]);
        let p: LinuxSeccomp = serde_json::from_value(default_profile(&[])).unwrap();
        let mut denied = std::collections::HashSet::new();
        for sc in p.syscalls().as_deref().unwrap() {
            if sc.args().as_deref().unwrap_or(&[]).is_empty()
                && sc.errno_ret() == Some(libc::EPERM as u32)
            {
                denied.extend(sc.names().iter().filter_map(|n| syscall_number(n)));
            }
        }
        assert!(denied.len() > 40, "{denied:?}");
        for n in 0..600u32 {
            let want = if n == nr("clone3") {
                ENOSYS
            } else if denied.contains(&(n as i64)) {
                EPERM
            } else {
                RET_ALLOW
            };
            assert_eq!(
                run(&f, n, AUDIT_ARCH, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
                want,
                "syscall {n}"
            );
        }
    }

    #[test]
    fn sys_admin_may_mount() {
        let f = default_filter(&["SYS_ADMIN".into()]);
        let call = |n: u32, a0: u64| run(&f, n, AUDIT_ARCH, [a0, 0, 0, 0, 0, 0]);
        assert_eq!(call(nr("mount"), 0), RET_ALLOW);
        assert_eq!(call(nr("clone"), libc::CLONE_NEWNS as u64), RET_ALLOW);
        assert_eq!(call(nr("keyctl"), 0), EPERM);
    }

    #[test]
    fn argument_comparisons_are_64_bit_and_unsigned() {
        let big = (5u64 << 32) | 7;
        for (op, cases) in [
            (
                "SCMP_CMP_EQ",
                [(big, true), (7, false), (5 << 32, false), (big + 1, false)],
            ),
            (
                "SCMP_CMP_NE",
                [(big, false), (7, true), (5 << 32, true), (big + 1, true)],
            ),
            (
                "SCMP_CMP_GT",
                [
                    (big, false),
                    (big + 1, true),
                    (6 << 32, true),
                    (u64::MAX, true),
                ],
            ),
            (
                "SCMP_CMP_GE",
                [
                    (big, true),
                    (big - 1, false),
                    (4 << 32 | 9, false),
                    (6 << 32, true),
                ],
            ),
            (
                "SCMP_CMP_LT",
                [
                    (big, false),
                    (big - 1, true),
                    (4 << 32 | 9, true),
                    (u64::MAX, false),
                ],
            ),
            (
                "SCMP_CMP_LE",
                [(big, true), (big + 1, false), (0, true), (6 << 32, false)],
            ),
        ] {
            let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["kcmp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                              "args": [{"index": 2, "value": big, "op": op}]}],
            }))
            .unwrap();
            let f = compile(&profile).unwrap();
            for (arg, refused) in cases {
                let got = run(&f, nr("kcmp"), AUDIT_ARCH, [0, 0, arg, 0, 0, 0]);
                assert_eq!(got == EPERM, refused, "{op} {arg:#x}");
                assert_eq!(
                    run(&f, nr("kcmp") + 1, AUDIT_ARCH, [0, 0, arg, 0, 0, 0]),
                    RET_ALLOW
                );
            }
        }
    }

    #[test]
    fn rules_of_one_entry_are_anded_entries_ored() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["kcmp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]},
                {"names": ["kcmp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                 "args": [{"index": 0, "value": 9, "op": "SCMP_CMP_EQ"}]},
            ],
        }))
        .unwrap();
        let f = compile(&profile).unwrap();
        let call = |a0: u64, a1: u64| run(&f, nr("kcmp"), AUDIT_ARCH, [a0, a1, 0, 0, 0, 0]);
        assert_eq!(call(1, 2), 0x0005_0001);
        assert_eq!(call(1, 3), RET_ALLOW);
        assert_eq!(call(9, 3), 0x0005_000d);
        assert_eq!(call(2, 2), RET_ALLOW);
    }

    #[test]
    fn only_allow_default_is_supported() {
        let profile: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO", "syscalls": [],
        }))
        .unwrap();
        assert!(compile(&profile).is_err());
    }
}
