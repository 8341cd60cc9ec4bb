//! Every seccomp filter virtuos installs, built in this one module.
//!
//! * [`io_uring_filter`] (`run --enforce`): the io_uring calls fail with EPERM. Built with
//!   `seccompiler`, Firecracker's filter compiler.
//! * [`trap_filter`] (the preload shim's safety net): a routed call traps (SIGSYS) only when
//!   it is issued by one of the `syscall` instructions of libc or of the program.
//! * [`notify_filter`] (the supervised mode): a routed call becomes a user notification.
//!
//! `seccompiler` cannot express the last two: its conditions compare only system-call
//! arguments (`seccomp_data.args`), never `seccomp_data.instruction_pointer`, which the trap
//! filter must check so that the shim's own calls pass; and its actions stop at
//! `Trap`/`Trace`/`Log`, without `SECCOMP_RET_USER_NOTIF`. Those two are written here as
//! classic BPF, with the same conventions: an architecture check first (other architectures
//! pass untouched: both filters only redirect, they deny nothing), then a binary search over
//! the sorted call numbers.

use std::collections::BTreeMap;

/// One classic BPF instruction (the kernel's `struct sock_filter`).
pub type Insn = libc::sock_filter;

const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const SECCOMP_DATA_IP_LO: u32 = 8;
const SECCOMP_DATA_IP_HI: u32 = 12;
const SECCOMP_DATA_ARG3_LO: u32 = 16 + 3 * 8;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `SECCOMP_RET_ALLOW`.
pub const RET_ALLOW: u32 = 0x7fff_0000;
/// `SECCOMP_RET_TRAP`.
pub const RET_TRAP: u32 = 0x0003_0000;
/// `SECCOMP_RET_USER_NOTIF`.
pub const RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `SECCOMP_RET_DATA` of the shim's traps, seen as `si_errno` in its SIGSYS handler.
pub const TRAP_DATA: u32 = 0x5654; // "VT"
/// io_uring system call numbers (x86-64; the x32 ABI adds `X32_SYSCALL_BIT`).
pub const IO_URING_SYSCALLS: [i64; 3] = [425, 426, 427];
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
/// `BPF_JMP | BPF_JA`.
pub const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// Runs of consecutive call numbers in sorted, deduplicated `nrs`; with `anon_mmap_allowed`,
/// `mmap` is a run of its own (its arguments are checked).
fn runs(nrs: &[u32], anon_mmap_allowed: bool) -> Vec<(u32, u32)> {
    let mmap = libc::SYS_mmap as u32;
    let alone = |n: u32| anon_mmap_allowed && n == mmap;
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &n in nrs {
        match out.last_mut() {
            Some((a, b)) if *b + 1 == n && !alone(n) && !alone(*a) => *b = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// Runs per leaf of the call-number search.
const LEAF_RUNS: usize = 4;

/// Emits a binary search over sorted `runs` of call numbers (the accumulator holds the
/// number); a match jumps (`ja`) to the action block, anything else returns ALLOW. The `ja`
/// offsets are patched by the caller (`fixups`). With `anon_mmap_allowed`, `mmap` matches only
/// for file mappings (anonymous ones are malloc's hot path). Every conditional jump has one
/// branch falling through, which the kernel translates into a single instruction.
fn emit_runs(
    runs: &[(u32, u32)],
    prog: &mut Vec<Insn>,
    fixups: &mut Vec<usize>,
    anon_mmap_allowed: bool,
) {
    if runs.len() <= LEAF_RUNS {
        for &(a, b) in runs {
            if anon_mmap_allowed && a == libc::SYS_mmap as u32 {
                prog.push(jump(JEQ_K, a, 0, 4));
                prog.push(stmt(LD_W_ABS, SECCOMP_DATA_ARG3_LO));
                prog.push(jump(JSET_K, libc::MAP_ANONYMOUS as u32, 0, 1));
                prog.push(stmt(RET_K, RET_ALLOW));
            } else if a == b {
                prog.push(jump(JEQ_K, a, 0, 1));
            } else {
                // a <= nr <= b
                prog.push(jump(JGE_K, a, 0, 2));
                prog.push(jump(JGT_K, b, 1, 0));
            }
            fixups.push(prog.len());
            prog.push(stmt(JA, 0));
        }
        prog.push(stmt(RET_K, RET_ALLOW));
        return;
    }
    let mid = runs.len() / 2;
    let at = prog.len();
    prog.push(jump(JGT_K, runs[mid - 1].1, 0, 0));
    emit_runs(&runs[..mid], prog, fixups, anon_mmap_allowed);
    let left = prog.len() - at - 1;
    prog[at].jt = u8::try_from(left).expect("left subtree fits a conditional jump");
    emit_runs(&runs[mid..], prog, fixups, anon_mmap_allowed);
}

/// The architecture check and the search over `nrs`, followed by `action` for a match.
fn matching(nrs: &[u32], anon_mmap_allowed: bool, action: &[Insn]) -> Vec<Insn> {
    let mut sorted = nrs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut prog = vec![
        stmt(LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_ALLOW),
        stmt(LD_W_ABS, SECCOMP_DATA_NR),
    ];
    let mut fixups = Vec::new();
    emit_runs(
        &runs(&sorted, anon_mmap_allowed),
        &mut prog,
        &mut fixups,
        anon_mmap_allowed,
    );
    let action_at = prog.len();
    prog.extend_from_slice(action);
    for f in fixups {
        prog[f].k = (action_at - f - 1) as u32;
    }
    prog
}

/// Splits `[start, end)` so that no piece crosses a 4 GiB boundary (BPF compares 32 bits).
pub fn split_ranges(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut s, e) in ranges {
        while s < e {
            let boundary = ((s >> 32) + 1) << 32;
            let piece_end = e.min(boundary);
            out.push((s, piece_end));
            s = piece_end;
        }
    }
    out
}

/// Most `syscall` sites one trap filter names; a program with more is trapped by its code
/// ranges instead (see [`trap_filter`]).
pub const MAX_SITES: usize = 2400;

/// The kernel's limit on one classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// The preload shim's filter: a routed call (`nrs`) traps with [`TRAP_DATA`] when it is issued
/// by one of `sites` — the return addresses of the `syscall` instructions in libc's and the
/// program's code, which is what the kernel reports as `seccomp_data.instruction_pointer` — or
/// from anywhere inside one of `ranges` (code the shim could not scan); everything else,
/// including the shim's own trampoline, is allowed.
///
/// Checking where the call comes from, rather than allowing only the shim's trampoline, keeps
/// the filter harmless after `execve`: the filter outlives the program image, and the new
/// image's dynamic loader makes routed calls before any shim is loaded to handle a trap.
/// Checking exact instructions rather than whole code ranges is what makes that hold: ASLR
/// maps the new image's code at random, and with ranges its loader or its shim's trampoline
/// landed inside an old image's libc about once in 500,000 image pairs (a process several
/// execs deep, as under pyenv's shims, was then killed by SIGSYS before its shim had a
/// handler: exit status 159). An old site coincides with one of the new image's `syscall`
/// instructions only if the two page-aligned random bases differ by exactly the distance
/// between them: about 2^-40 per pair of instructions.
pub fn trap_filter(nrs: &[u32], sites: &[u64], ranges: &[(u64, u64)]) -> Vec<Insn> {
    let mut action = Vec::new();
    for (s, e) in split_ranges(ranges) {
        let hi = (s >> 32) as u32;
        let (lo_s, lo_e) = (s as u32, ((e - 1) as u32));
        // if ip_hi == hi && lo_s <= ip_lo <= lo_e: trap
        action.push(stmt(LD_W_ABS, SECCOMP_DATA_IP_HI));
        action.push(jump(JEQ_K, hi, 0, 4));
        action.push(stmt(LD_W_ABS, SECCOMP_DATA_IP_LO));
        action.push(jump(JGE_K, lo_s, 0, 2));
        action.push(jump(JGT_K, lo_e, 1, 0));
        action.push(stmt(RET_K, RET_TRAP | TRAP_DATA));
    }
    site_search(sites, &mut action);
    matching(nrs, true, &action)
}

/// Sites per leaf of the search: a leaf compares linearly, which costs fewer instructions than
/// more levels of the tree.
const LEAF_SITES: usize = 16;

/// `BPF_ALU | BPF_SUB | BPF_K`.
const SUB_K: u16 = (libc::BPF_ALU | libc::BPF_SUB | libc::BPF_K) as u16;

/// Where a jump of the site search goes: the shared ALLOW or TRAP at its end.
#[derive(Clone, Copy, PartialEq)]
enum Exit {
    Allow,
    Trap,
}

/// Emits "trap if the instruction pointer is one of `sites`, else allow": for each 4 GiB
/// window the sites fall in, a test of the high word, a bounds check of the low word, then a
/// binary search over the sites' offsets from the window's first site.
///
/// The filter must stay small: every image of an exec chain stacks one, and the kernel caps
/// all of a process's filters together at 32,768 of its own instructions. So every compared
/// constant is an offset below 2^31 and every conditional jump falls through on one branch,
/// each then one kernel instruction; the leaves end in jumps to one shared ALLOW and TRAP.
fn site_search(sites: &[u64], prog: &mut Vec<Insn>) {
    let mut sorted = sites.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut windows: Vec<(u32, Vec<u32>)> = Vec::new();
    for s in sorted {
        let (hi, lo) = ((s >> 32) as u32, s as u32);
        match windows.last_mut() {
            Some((h, los)) if *h == hi => los.push(lo),
            _ => windows.push((hi, vec![lo])),
        }
    }
    let mut exits: Vec<(usize, Exit)> = Vec::new();
    let goto = |prog: &mut Vec<Insn>, exits: &mut Vec<(usize, Exit)>, to: Exit| {
        exits.push((prog.len(), to));
        prog.push(stmt(JA, 0));
    };
    prog.push(stmt(LD_W_ABS, SECCOMP_DATA_IP_HI));
    let mut entries = Vec::new();
    for (hi, _) in &windows {
        prog.push(jump(JEQ_K, *hi, 0, 1));
        entries.push(prog.len());
        prog.push(stmt(JA, 0));
    }
    goto(prog, &mut exits, Exit::Allow);
    for ((_, los), entry) in windows.iter().zip(entries) {
        prog[entry].k = (prog.len() - entry - 1) as u32;
        let base = los[0];
        let offsets: Vec<u32> = los.iter().map(|&lo| lo - base).collect();
        let span = *offsets.last().expect("a window has a site");
        prog.push(stmt(LD_W_ABS, SECCOMP_DATA_IP_LO));
        // base <= lo <= base + span, then A = lo - base.
        prog.push(jump(JGE_K, base, 1, 0));
        goto(prog, &mut exits, Exit::Allow);
        prog.push(stmt(SUB_K, base));
        prog.push(jump(JGT_K, span, 0, 1));
        goto(prog, &mut exits, Exit::Allow);
        emit_offsets(&offsets, prog, &mut exits);
    }
    let allow = prog.len();
    prog.push(stmt(RET_K, RET_ALLOW));
    prog.push(stmt(RET_K, RET_TRAP | TRAP_DATA));
    for (at, to) in exits {
        let target = if to == Exit::Allow { allow } else { allow + 1 };
        prog[at].k = (target - at - 1) as u32;
    }
}

/// A binary search over sorted `offs` (the accumulator holds the instruction pointer's offset
/// from the window's first site): a match jumps to TRAP, anything else to ALLOW.
fn emit_offsets(offs: &[u32], prog: &mut Vec<Insn>, exits: &mut Vec<(usize, Exit)>) {
    if offs.len() <= LEAF_SITES {
        let n = offs.len();
        for (i, &v) in offs.iter().enumerate() {
            // A match jumps over the remaining tests and the jump to ALLOW.
            prog.push(jump(JEQ_K, v, (n - i) as u8, 0));
        }
        for to in [Exit::Allow, Exit::Trap] {
            exits.push((prog.len(), to));
            prog.push(stmt(JA, 0));
        }
        return;
    }
    let mid = offs.len() / 2;
    let mut left = Vec::new();
    let mut left_exits = Vec::new();
    emit_offsets(&offs[..mid], &mut left, &mut left_exits);
    match u8::try_from(left.len()) {
        // Above the split: jump over the left half.
        Ok(skip) => prog.push(jump(JGT_K, offs[mid - 1], skip, 0)),
        // Too far for a conditional jump: above the split takes an unconditional one.
        Err(_) => {
            prog.push(jump(JGT_K, offs[mid - 1], 0, 1));
            prog.push(stmt(JA, left.len() as u32));
        }
    }
    let at = prog.len();
    exits.extend(left_exits.into_iter().map(|(i, to)| (i + at, to)));
    prog.extend_from_slice(&left);
    emit_offsets(&offs[mid..], prog, exits);
}

/// The supervised mode's filter: every call in `nrs` becomes a user notification.
pub fn notify_filter(nrs: &[u32]) -> Vec<Insn> {
    matching(nrs, false, &[stmt(RET_K, RET_USER_NOTIF)])
}

/// Why a filter could not be built.
#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "building a seccomp filter: {}", self.0)
    }
}

impl std::error::Error for BuildError {}

/// `run --enforce`'s filter: `io_uring_setup`, `io_uring_enter` and `io_uring_register` (native
/// and x32 numbers) fail with EPERM, so the application cannot reach a device through io_uring
/// behind the shim's back. A call of another architecture kills the process (seccompiler's
/// rule: an i386 `int 0x80` would otherwise reach the same calls by their i386 numbers).
pub fn io_uring_filter() -> Result<Vec<Insn>, BuildError> {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = IO_URING_SYSCALLS
        .iter()
        .flat_map(|&n| [n, n | X32_SYSCALL_BIT])
        .map(|n| (n, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| BuildError(e.to_string()))?;
    let prog: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| BuildError(e.to_string()))?;
    Ok(prog
        .into_iter()
        .map(|i| Insn {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the subset the filters use, over a `seccomp_data`.
    fn run(prog: &[Insn], nr: u32, arch: u32, ip: u64, args: [u64; 6]) -> u32 {
        let mut data = [0u32; 16];
        data[0] = nr;
        data[1] = arch;
        data[2] = ip as u32;
        data[3] = (ip >> 32) as u32;
        for (i, a) in args.iter().enumerate() {
            data[4 + 2 * i] = *a as u32;
            data[5 + 2 * i] = (*a >> 32) as u32;
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            let class = i.code & 0x07;
            match class {
                0x00 => {
                    acc = data[(i.k / 4) as usize];
                    pc += 1;
                }
                0x05 => {
                    let op = i.code & 0xf0;
                    let src = i.code & 0x08;
                    assert_eq!(src, 0, "only K operands");
                    if op == 0x00 {
                        pc += 1 + i.k as usize;
                        continue;
                    }
                    let t = match op {
                        0x10 => acc == i.k,
                        0x20 => acc > i.k,
                        0x30 => acc >= i.k,
                        0x40 => acc & i.k != 0,
                        _ => panic!("jump op {op:#x}"),
                    };
                    pc += 1 + if t { i.jt } else { i.jf } as usize;
                }
                0x06 => return i.k,
                0x04 => {
                    assert_eq!(i.code, SUB_K, "only SUB K");
                    acc = acc.wrapping_sub(i.k);
                    pc += 1;
                }
                _ => panic!("class {class:#x} at {pc}"),
            }
        }
    }

    #[test]
    fn trap_filter_traps_routed_calls_from_libc_only() {
        let nrs: Vec<u32> =
            crate::table::numbers(&[crate::table::Class::Storage, crate::table::Class::Process]);
        let libc_range = (0x7f00_ffff_f000u64, 0x7f01_0000_2000u64);
        let prog = trap_filter(&nrs, &[], &[libc_range]);
        assert!(prog.len() < 4096);
        let open = libc::SYS_openat as u32;
        let inside = 0x7f01_0000_1000;
        assert_eq!(
            run(&prog, open, AUDIT_ARCH_X86_64, inside, [0; 6]),
            RET_TRAP | TRAP_DATA
        );
        assert_eq!(
            run(&prog, open, AUDIT_ARCH_X86_64, 0x5555_0000, [0; 6]),
            RET_ALLOW
        );
        assert_eq!(run(&prog, open, 0x4000_0003, inside, [0; 6]), RET_ALLOW);
        assert_eq!(
            run(
                &prog,
                libc::SYS_getpid as u32,
                AUDIT_ARCH_X86_64,
                inside,
                [0; 6]
            ),
            RET_ALLOW
        );
        // mmap: file mappings trap, anonymous ones pass.
        let mm = libc::SYS_mmap as u32;
        let anon = [0, 0, 0, libc::MAP_ANONYMOUS as u64, 0, 0];
        assert_eq!(run(&prog, mm, AUDIT_ARCH_X86_64, inside, anon), RET_ALLOW);
        assert_eq!(
            run(&prog, mm, AUDIT_ARCH_X86_64, inside, [0; 6]),
            RET_TRAP | TRAP_DATA
        );
        for nr in &nrs {
            assert_eq!(run(&prog, *nr, AUDIT_ARCH_X86_64, 1, [0; 6]), RET_ALLOW);
        }
        assert_eq!(split_ranges(&[(0xffff_f000, 0x1_0000_1000)]).len(), 2);
    }

    #[test]
    fn trap_filter_traps_exactly_the_sites() {
        let nrs: Vec<u32> = crate::table::numbers(&[
            crate::table::Class::Storage,
            crate::table::Class::Process,
            crate::table::Class::Net,
        ]);
        // As many sites as a libc and a large program have, spread over three 4 GiB windows
        // (one window's sites straddle its end), plus one scanned-out range.
        let mut sites: Vec<u64> = (0..MAX_SITES as u64 - 100)
            .map(|i| 0x7f12_0000_0000 + 0xffff_0000 + i * 37 % 0x2_0000 + (i & 1))
            .collect();
        sites.extend((0..100u64).map(|i| 0x5555_0000_1000 + i * 4099));
        let range = (0x6000_0000_0000u64, 0x6000_0000_4000u64);
        let prog = trap_filter(&nrs, &sites, &[range]);
        assert!(prog.len() <= MAX_INSNS, "{} instructions", prog.len());
        let open = libc::SYS_openat as u32;
        let set: std::collections::BTreeSet<u64> = sites.iter().copied().collect();
        let verdict = |ip: u64| run(&prog, open, AUDIT_ARCH_X86_64, ip, [0; 6]);
        for &s in &set {
            assert_eq!(verdict(s), RET_TRAP | TRAP_DATA, "site {s:#x}");
            for near in [s - 1, s + 1, s ^ (1 << 32), s + 0x1000] {
                if !set.contains(&near) {
                    assert_eq!(verdict(near), RET_ALLOW, "{near:#x} next to {s:#x}");
                }
            }
        }
        assert_eq!(verdict(range.0 + 0x123), RET_TRAP | TRAP_DATA);
        assert_eq!(verdict(range.1), RET_ALLOW);
        // A call that is not routed passes from a site too; so does anonymous mmap.
        let site = sites[7];
        assert_eq!(
            run(
                &prog,
                libc::SYS_getpid as u32,
                AUDIT_ARCH_X86_64,
                site,
                [0; 6]
            ),
            RET_ALLOW
        );
        let anon = [0, 0, 0, libc::MAP_ANONYMOUS as u64, 0, 0];
        let mm = libc::SYS_mmap as u32;
        assert_eq!(run(&prog, mm, AUDIT_ARCH_X86_64, site, anon), RET_ALLOW);
        assert_eq!(
            run(&prog, mm, AUDIT_ARCH_X86_64, site, [0; 6]),
            RET_TRAP | TRAP_DATA
        );
        // No sites at all: nothing traps.
        let none = trap_filter(&nrs, &[], &[]);
        assert_eq!(run(&none, open, AUDIT_ARCH_X86_64, site, [0; 6]), RET_ALLOW);
    }

    #[test]
    fn notify_filter_notifies_exactly_the_list() {
        let nrs = [2u32, 257, 3, 0, 1];
        let prog = notify_filter(&nrs);
        for nr in 0..600 {
            let want = if nrs.contains(&nr) {
                RET_USER_NOTIF
            } else {
                RET_ALLOW
            };
            assert_eq!(
                run(&prog, nr, AUDIT_ARCH_X86_64, 0, [0; 6]),
                want,
                "nr {nr}"
            );
        }
    }

    #[test]
    fn io_uring_filter_denies_io_uring_only() {
        let prog = io_uring_filter().unwrap();
        assert!(!prog.is_empty());
        // seccompiler's program uses instructions beyond the interpreter above (ALU, X);
        // its behaviour is checked by installing it (redirector/tests/bpf.rs runs it).
        assert!(prog.iter().any(|i| i.k == 0x0005_0000 | libc::EPERM as u32));
    }
}
