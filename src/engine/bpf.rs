//! A small classic-BPF assembler for seccomp filters: instructions with symbolic jump
//! targets, laid out once the program is complete.
//!
//! Why not seccompiler: it builds one filter per return action (two here) from nested maps,
//! and its compile plus the larger programs cost about half a millisecond of every start.
//! The kernel runs a new filter once for every syscall number when it is installed (to
//! cache the numbers it always allows), so its length is paid about 450 times on every
//! container start: about 1.8 us per instruction of a linear program here.

use anyhow::{bail, Result};

/// `struct seccomp_data` offsets (include/uapi/linux/seccomp.h).
pub const OFF_NR: u32 = 0;
pub const OFF_ARCH: u32 = 4;
/// Low and high 32-bit words of syscall argument `i` (little-endian).
pub fn off_arg_lo(i: u8) -> u32 {
    16 + 8 * i as u32
}
pub fn off_arg_hi(i: u8) -> u32 {
    20 + 8 * i as u32
}

pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub fn ret_errno(errno: u32) -> u32 {
    0x0005_0000 | (errno & 0xffff)
}

const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
const JA: u16 = 0x05;

/// Conditional jumps on the accumulator against a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq = 0x15,
    Gt = 0x25,
    Ge = 0x35,
}

/// Where a conditional jump goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Next,
    Label(usize),
}

#[derive(Debug, Clone, Copy)]
enum Ins {
    Load(u32),
    And(u32),
    Jump(Cmp, u32, Target, Target),
    /// Unconditional, with a 32-bit offset: conditional jumps reach only 255 ahead.
    Always(usize),
    Ret(u32),
    Label(usize),
}

/// The kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

#[derive(Debug, Default)]
pub struct Program {
    ins: Vec<Ins>,
    labels: usize,
}

impl Program {
    pub fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }
    /// Place `label` before the next instruction.
    pub fn bind(&mut self, label: usize) {
        self.ins.push(Ins::Label(label));
    }
    pub fn load(&mut self, offset: u32) {
        self.ins.push(Ins::Load(offset));
    }
    pub fn and(&mut self, mask: u32) {
        self.ins.push(Ins::And(mask));
    }
    pub fn jump(&mut self, cmp: Cmp, k: u32, t: Target, f: Target) {
        self.ins.push(Ins::Jump(cmp, k, t, f));
    }
    pub fn jump_always(&mut self, label: usize) {
        self.ins.push(Ins::Always(label));
    }
    pub fn ret(&mut self, value: u32) {
        self.ins.push(Ins::Ret(value));
    }

    /// Resolve the labels; every jump must be forward and within 255 instructions.
    pub fn assemble(&self) -> Result<Vec<SockFilter>> {
        let mut at = vec![usize::MAX; self.labels];
        let mut n = 0usize;
        for i in &self.ins {
            match i {
                Ins::Label(l) => at[*l] = n,
                _ => n += 1,
            }
        }
        if n > u16::MAX as usize {
            bail!("seccomp filter too long ({n} instructions)");
        }
        let mut out = Vec::with_capacity(n);
        for i in &self.ins {
            let here = out.len();
            let distance = |l: usize| -> Result<usize> {
                let dest = at[l];
                if dest == usize::MAX || dest <= here {
                    bail!("seccomp filter: jump to an unplaced or earlier label");
                }
                Ok(dest - here - 1)
            };
            let offset = |t: Target| -> Result<u8> {
                match t {
                    Target::Next => Ok(0),
                    Target::Label(l) => u8::try_from(distance(l)?)
                        .map_err(|_| anyhow::anyhow!("seccomp filter: a jump spans more than 255 instructions; the profile has too many conditions for one syscall")),
                }
            };
            let f = match *i {
                Ins::Label(_) => continue,
                Ins::Load(k) => SockFilter {
                    code: LD_W_ABS,
                    jt: 0,
                    jf: 0,
                    k,
                },
                Ins::And(k) => SockFilter {
                    code: ALU_AND_K,
                    jt: 0,
                    jf: 0,
                    k,
                },
                Ins::Always(l) => SockFilter {
                    code: JA,
                    jt: 0,
                    jf: 0,
                    k: distance(l)? as u32,
                },
                Ins::Ret(k) => SockFilter {
                    code: RET_K,
                    jt: 0,
                    jf: 0,
                    k,
                },
                Ins::Jump(cmp, k, t, f) => SockFilter {
                    code: cmp as u16,
                    jt: offset(t)?,
                    jf: offset(f)?,
                    k,
                },
            };
            out.push(f);
        }
        Ok(out)
    }
}

/// A tiny interpreter of the subset above, for the unit tests: what the kernel would
/// return for syscall `nr` on `arch` with `args`.
#[cfg(test)]
pub fn run(prog: &[SockFilter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            OFF_NR => nr,
            OFF_ARCH => arch,
            o if o >= 16 => {
                let i = ((o - 16) / 8) as usize;
                if (o - 16) % 8 == 0 {
                    args[i] as u32
                } else {
                    (args[i] >> 32) as u32
                }
            }
            _ => 0,
        }
    };
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let f = prog[pc];
        pc += 1;
        match f.code {
            LD_W_ABS => acc = word(f.k),
            ALU_AND_K => acc &= f.k,
            RET_K => return f.k,
            JA => pc += f.k as usize,
            code => {
                let hit = match code {
                    0x15 => acc == f.k,
                    0x25 => acc > f.k,
                    0x35 => acc >= f.k,
                    _ => panic!("unknown opcode {code:#x}"),
                };
                pc += if hit { f.jt } else { f.jf } as usize;
            }
        }
    }
}
