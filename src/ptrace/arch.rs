//! x86_64 specifics: the register file (as an array, for the REGS section), syscall restart rules, the syscall
//! gadget. Everything another architecture would replace lives here.

pub type Regs = libc::user_regs_struct;

/// NT_X86_XSTATE: the XSAVE area (x87, SSE, AVX, AVX-512, PKRU...) for PTRACE_GETREGSET.
pub const NT_X86_XSTATE: libc::c_int = 0x202;
/// Upper bound for the XSAVE area (AMX makes it ~11 KiB; 64 KiB leaves room).
pub const XSTATE_MAX: usize = 64 << 10;
/// The legacy FXSAVE area (x87 + SSE), what a CPU without XSAVE has.
pub const FXSAVE_LEN: usize = 512;

/// Whether the OS enabled XSAVE on this CPU (CPUID.1:ECX.OSXSAVE).
/// The XSAVE area the kernel shows through NT_X86_XSTATE: at most CPUID 0xD's size for every
/// feature this CPU supports (read once; a checkpoint reads it for every thread).
pub fn xstate_len() -> usize {
    static LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LEN.get_or_init(|| {
        // CPUID leaf 0xD exists wherever XSAVE does (the only caller checks).
        let max = core::arch::x86_64::__cpuid_count(0xd, 0).ecx as usize;
        max.clamp(FXSAVE_LEN + 64, XSTATE_MAX)
    })
}

pub fn has_xsave() -> bool {
    core::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0
}

/// Offset of XCR0 (the enabled feature mask) in the software-reserved bytes of the XSAVE area.
pub const XSTATE_XCR0_OFFSET: usize = 464;

/// Kernel-internal return values that ask for a syscall restart (include/linux/errno.h).
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// Registers as 27 u64 in `user_regs_struct` order.
pub fn regs_to_array(r: &Regs) -> [u64; 27] {
    [
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx, r.rsi, r.rdi,
        r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds, r.es, r.fs, r.gs,
    ]
}

pub fn regs_from_array(a: &[u64; 27]) -> Regs {
    Regs {
        r15: a[0],
        r14: a[1],
        r13: a[2],
        r12: a[3],
        rbp: a[4],
        rbx: a[5],
        r11: a[6],
        r10: a[7],
        r9: a[8],
        r8: a[9],
        rax: a[10],
        rcx: a[11],
        rdx: a[12],
        rsi: a[13],
        rdi: a[14],
        orig_rax: a[15],
        rip: a[16],
        cs: a[17],
        eflags: a[18],
        rsp: a[19],
        ss: a[20],
        fs_base: a[21],
        gs_base: a[22],
        ds: a[23],
        es: a[24],
        fs: a[25],
        gs: a[26],
    }
}

const EINTR: i64 = -(libc::EINTR as i64);
/// epoll_wait, epoll_pwait, epoll_pwait2, semop, semtimedop, rt_sigtimedwait, io_getevents.
const NEVER_RESTARTED: [i64; 7] = [
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    441,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_io_getevents,
];

/// The registers a process stopped inside an interrupted syscall must resume with, so that the
/// syscall is transparently re-issued. The kernel does this itself on the way out of a stop, but
/// only while `orig_rax` still names the syscall; we always return registers with
/// `orig_rax = -1` so that nothing else (our remote syscalls, a restore) can trigger it twice.
///
/// `restart_block` says whether the task still has its kernel restart block (the live process
/// does; a restored one does not): then ERESTART_RESTARTBLOCK resumes via restart_syscall,
/// otherwise the original syscall is re-issued. A relative nanosleep or clock_nanosleep given a
/// remaining-time pointer had the kernel write what was left there when our stop interrupted
/// it, so it is re-issued with that as its request: it sleeps the rest, not the whole again.
/// Without the pointer (usleep), or for poll and futex timeouts, the whole timeout starts over;
/// absolute sleeps are re-issued as they were.
///
/// A few syscalls the kernel never restarts: a stop alone makes them fail with EINTR (epoll_wait,
/// semop, sigtimedwait, io_getevents: see signal(7)). Our stop must not show, so a thread that
/// stopped right after one of them failed with EINTR makes it again too.
pub fn restart_regs(r: &Regs, restart_block: bool) -> Regs {
    let mut out = *r;
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                out.rax = r.orig_rax;
                out.rip -= 2;
            }
            EINTR if NEVER_RESTARTED.contains(&(r.orig_rax as i64)) => {
                out.rax = r.orig_rax;
                out.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => {
                out.rax = if restart_block { libc::SYS_restart_syscall as u64 } else { r.orig_rax };
                out.rip -= 2;
                if !restart_block {
                    resume_with_remaining(&mut out);
                }
            }
            _ => {}
        }
    }
    out.orig_rax = u64::MAX;
    out
}

/// For an interrupted relative sleep with a remaining-time pointer: makes that its request.
fn resume_with_remaining(r: &mut Regs) {
    const TIMER_ABSTIME: u64 = 1;
    match r.orig_rax as i64 {
        libc::SYS_nanosleep if r.rsi != 0 => r.rdi = r.rsi,
        libc::SYS_clock_nanosleep if r.rsi & TIMER_ABSTIME == 0 && r.r10 != 0 => r.rdx = r.r10,
        _ => {}
    }
}

/// Loads a remote syscall into a register set.
pub fn set_syscall(r: &mut Regs, gadget: u64, nr: i64, args: &[u64; 6]) {
    r.rip = gadget;
    r.rax = nr as u64;
    r.orig_rax = u64::MAX;
    r.rdi = args[0];
    r.rsi = args[1];
    r.rdx = args[2];
    r.r10 = args[3];
    r.r8 = args[4];
    r.r9 = args[5];
}

pub fn syscall_result(r: &Regs) -> i64 {
    r.rax as i64
}

/// The instruction bytes a remote syscall runs: `syscall; int3`.
pub const GADGET_CODE: [u8; 3] = [0x0f, 0x05, 0xcc];

std::arch::global_asm!(
    ".pushsection .text.crs_gadget,\"ax\",@progbits",
    ".globl crs_syscall_gadget",
    "crs_syscall_gadget:",
    "syscall",
    "int3",
    ".popsection"
);

unsafe extern "C" {
    fn crs_syscall_gadget();
}

/// Address of a `syscall` instruction in our own text. A forked child has it at the same address.
pub fn own_gadget() -> u64 {
    crs_syscall_gadget as *const () as usize as u64
}

// Runs a list of syscalls in one go inside a tracee, instead of one remote syscall (two stops)
// each: r12 entries of 8 u64 at r13, each {nr, a0..a5, result}; every result (the raw
// return) is stored in its entry; then int3. Position-independent, copied into the tracee;
// reentrant, so the threads of a process run one copy at once, each on its own list. Only
// rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11, r12 and r13 change.
std::arch::global_asm!(
    ".pushsection .text.crs_batch,\"ax\",@progbits",
    ".globl crs_batch_start",
    ".globl crs_batch_end",
    "crs_batch_start:",
    "2:",
    "test r12, r12",
    "jz 3f",
    "mov rax, qword ptr [r13]",
    "mov rdi, qword ptr [r13 + 8]",
    "mov rsi, qword ptr [r13 + 16]",
    "mov rdx, qword ptr [r13 + 24]",
    "mov r10, qword ptr [r13 + 32]",
    "mov r8, qword ptr [r13 + 40]",
    "mov r9, qword ptr [r13 + 48]",
    "syscall",
    "mov qword ptr [r13 + 56], rax",
    "add r13, 64",
    "dec r12",
    "jmp 2b",
    "3:",
    "int3",
    "crs_batch_end:",
    ".popsection"
);

unsafe extern "C" {
    fn crs_batch_start();
    fn crs_batch_end();
}

/// The code that runs a list of syscalls at once (see the global_asm above it).
pub fn batch_code() -> &'static [u8] {
    let start = crs_batch_start as *const () as usize;
    let end = crs_batch_end as *const () as usize;
    // SAFETY: both labels delimit our own global_asm text, which is mapped and never changes.
    unsafe { std::slice::from_raw_parts(start as *const u8, end - start) }
}

/// Bytes of one entry of a batch list.
pub const BATCH_ENTRY: usize = 64;

/// Points registers at a batch list of `n` entries at `list`, to run the batch code at `entry`.
pub fn set_batch(r: &mut Regs, entry: u64, list: u64, n: usize) {
    r.rip = entry;
    r.orig_rax = u64::MAX;
    r.r12 = n as u64;
    r.r13 = list;
}

/// Finds a `syscall` instruction (0f 05) in code bytes mapped at `base`.
pub fn find_syscall_insn(code: &[u8], base: u64) -> Option<u64> {
    code.windows(2).position(|w| w == [0x0f, 0x05]).map(|i| base + i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_array_round_trip() {
        let a: [u64; 27] = std::array::from_fn(|i| i as u64 * 3 + 1);
        assert_eq!(regs_to_array(&regs_from_array(&a)), a);
    }

    #[test]
    fn restart_rules() {
        let mut r = regs_from_array(&[0; 27]);
        r.orig_rax = libc::SYS_read as u64;
        r.rax = ERESTARTSYS as u64;
        r.rip = 0x1002;
        let o = restart_regs(&r, true);
        assert_eq!((o.rax, o.rip, o.orig_rax), (libc::SYS_read as u64, 0x1000, u64::MAX));
        r.orig_rax = libc::SYS_nanosleep as u64;
        r.rax = ERESTART_RESTARTBLOCK as u64;
        assert_eq!(restart_regs(&r, true).rax, libc::SYS_restart_syscall as u64);
        assert_eq!(restart_regs(&r, false).rax, libc::SYS_nanosleep as u64);
        // A relative sleep with a remaining-time pointer resumes with what was left.
        (r.rdi, r.rsi) = (0x5000, 0x6000);
        assert_eq!(restart_regs(&r, false).rdi, 0x6000);
        assert_eq!(restart_regs(&r, true).rdi, 0x5000);
        r.rsi = 0;
        assert_eq!(restart_regs(&r, false).rdi, 0x5000);
        r.orig_rax = libc::SYS_clock_nanosleep as u64;
        (r.rsi, r.rdx, r.r10) = (0, 0x5000, 0x6000);
        assert_eq!(restart_regs(&r, false).rdx, 0x6000);
        r.rsi = 1; // TIMER_ABSTIME: the same deadline
        assert_eq!(restart_regs(&r, false).rdx, 0x5000);
        r.orig_rax = u64::MAX;
        r.rax = 5;
        let o = restart_regs(&r, true);
        assert_eq!((o.rax, o.rip), (5, 0x1002));
    }

    #[test]
    fn own_gadget_is_syscall() {
        // The batch code ends in its int3 and is small enough for one scratch page.
        let code = batch_code();
        assert!(code.len() < 128 && code.ends_with(&[0xcc]), "{code:02x?}");
        // SAFETY: own_gadget() is the address of our own global_asm! text, 3 bytes long.
        let code = unsafe { std::slice::from_raw_parts(own_gadget() as *const u8, 3) };
        assert_eq!(code, GADGET_CODE);
    }
}
