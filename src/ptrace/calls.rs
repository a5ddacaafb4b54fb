//! Lists of syscalls for one task of a tracee, made once and run either one remote syscall at
//! a time in one task ([`Ctl::run`]) or, for many threads, each thread's whole list in one go
//! and all threads at once ([`run_in_threads`]): one stop per thread instead of two per
//! syscall, which is what restoring a process with many threads costs. What a list does must
//! not depend on what its own calls return: each result is only checked, by the check given
//! with its call. Typed constructors here, as in `sys`: call sites build no `[u64; 6]`.

use super::arch::{self, Regs};
use super::tracee::{Caught, Tracee};
use super::{Ctl, RemoteAddr, Scratch, mem};
use crate::crf::{Enc, PAGE_SIZE};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::ops::Range;

/// An argument of a call: a value, or the address the list's bytes at this offset land at.
#[derive(Clone, Copy)]
pub enum Arg {
    V(u64),
    At(usize),
}
use Arg::{At, V};

/// Checks a call's raw result (negative errno on failure) in the task `who` names.
type Check = Box<dyn Fn(i64, &str) -> Result<()>>;

struct Call {
    nr: i64,
    args: [Arg; 6],
    check: Check,
    /// Where its bytes end among the list's: each call's bytes are those kept after the
    /// previous call's and before it, so a run of calls has its bytes in one stretch.
    upto: usize,
    /// It writes an answer into its bytes (a query: see [`Calls::query`]).
    answers: bool,
}

/// The syscalls to run in one task, in order, and the bytes their pointer arguments point to.
#[derive(Default)]
pub struct Calls {
    calls: Vec<Call>,
    bytes: Vec<u8>,
    /// Pointers inside the bytes: (where, to which offset), made addresses once placed.
    fixups: Vec<(usize, usize)>,
}

/// A query of a list: its call's index, and where its answer lies among the list's bytes.
#[derive(Clone, Copy, Debug)]
pub struct Q {
    k: usize,
    at: usize,
}

/// What a list's calls answered: each call's raw result, and the list's bytes as the calls
/// left them (a query's answer among them).
pub struct Answers {
    results: Vec<i64>,
    bytes: Vec<u8>,
    pid: i32,
}

impl Answers {
    /// The raw result of query `q` (a negative errno on failure).
    pub fn raw(&self, q: Q) -> i64 {
        self.results.get(q.k).copied().unwrap_or(-(libc::EINVAL as i64))
    }

    /// The result of query `q`, which must have succeeded: a failure names `call`, the task
    /// and `what`.
    pub fn ok(&self, q: Q, call: &str, what: &str) -> Result<u64> {
        let r = self.raw(q);
        named(call, what.to_string())(r, &format!("pid {}", self.pid))?;
        Ok(r as u64)
    }

    /// The `N` bytes of query `q`'s answer.
    pub fn bytes<const N: usize>(&self, q: Q) -> [u8; N] {
        self.bytes.get(q.at..q.at + N).and_then(|b| b.try_into().ok()).unwrap_or([0; N])
    }

    /// Query `q`'s answer as an int.
    pub fn u32(&self, q: Q) -> u32 {
        u32::from_le_bytes(self.bytes(q))
    }

    /// Query `q`'s answer as two fds (pipe2, socketpair).
    pub fn fd_pair(&self, q: Q) -> (i32, i32) {
        fd_pair(&self.bytes::<8>(q))
    }

    /// Query `q`'s answer as `N` 64-bit words.
    pub fn words<const N: usize>(&self, q: Q) -> [u64; N] {
        let mut w = [0u64; N];
        for (i, x) in w.iter_mut().enumerate() {
            *x = self
                .bytes
                .get(q.at + 8 * i..q.at + 8 * i + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
        }
        w
    }
}

/// Two fds as the kernel writes them (pipe2, socketpair): two ints; -1 each if `b` is short.
pub fn fd_pair(b: &[u8]) -> (i32, i32) {
    let int = |i: usize| b.get(i..i + 4).and_then(|x| x.try_into().ok()).map_or(-1, i32::from_le_bytes);
    (int(0), int(4))
}

/// The usual check: a failure names the syscall (`call`), the task and the object (`what`).
fn named(call: &str, what: String) -> Check {
    let call = call.to_string();
    Box::new(move |r, who| {
        if (-4095..0).contains(&r) {
            return Err(Error::sys(format!("{call} (in {who})"), what.clone(), Errno::from_raw(-r as i32)));
        }
        Ok(())
    })
}

impl Calls {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// How many calls it holds: the index the next one gets in the results.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Adds `other`'s calls after these.
    pub fn append(&mut self, other: Calls) {
        let shift = self.bytes.len().next_multiple_of(8);
        self.bytes.resize(shift, 0);
        self.bytes.extend_from_slice(&other.bytes);
        self.fixups.extend(other.fixups.iter().map(|&(w, to)| (w + shift, to + shift)));
        for mut c in other.calls {
            c.args = c.args.map(|a| match a {
                At(off) => At(off + shift),
                v => v,
            });
            c.upto += shift;
            self.calls.push(c);
        }
    }

    /// Keeps `b` for a pointer argument; its offset among the list's bytes (8-aligned).
    fn keep(&mut self, b: &[u8]) -> usize {
        let at = self.bytes.len().next_multiple_of(8);
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(b);
        at
    }

    /// Keeps `s` with a NUL after it, for a pointer to a C string; its offset.
    fn keep_cstr(&mut self, s: &[u8]) -> usize {
        let at = self.keep(s);
        self.bytes.push(0);
        at
    }

    /// Adds a call whose result `check` judges.
    fn push(&mut self, nr: i64, args: [Arg; 6], check: Check) -> &mut Self {
        self.calls.push(Call { nr, args, check, upto: self.bytes.len(), answers: false });
        self
    }

    /// Adds a query: `len` zero bytes kept for its answer, pointed to by argument `out` (the
    /// others are `args`'s). Its raw result never stops the list: the caller judges it
    /// ([`Answers::ok`]).
    fn query(&mut self, nr: i64, mut args: [Arg; 6], out: Option<(usize, usize)>) -> Q {
        // (Whole words: the next call's bytes, from the word its own begin in, must not hold
        // a part of this answer.)
        let at = out.map_or(0, |(i, len)| {
            let at = self.keep(&vec![0u8; len.next_multiple_of(8)]);
            args[i] = At(at);
            at
        });
        let k = self.calls.len();
        self.push(nr, args, Box::new(|_, _| Ok(())));
        if let Some(c) = self.calls.last_mut() {
            c.answers = out.is_some();
        }
        Q { k, at }
    }

    /// The list's bytes, for its queries to answer into; none when it has no query (a list
    /// of many threads' or mappings' calls is not copied for nothing).
    fn answer_room(&self) -> Vec<u8> {
        if self.calls.iter().any(|c| c.answers) { self.bytes.clone() } else { Vec::new() }
    }

    /// prctl(option, arg): answered in its result.
    pub fn ask_prctl(&mut self, option: i32, arg: u64) -> Q {
        self.query(libc::SYS_prctl, [V(option as u64), V(arg), V(0), V(0), V(0), V(0)], None)
    }

    /// prctl(option, &out): answered in the `len` bytes it is pointed at.
    pub fn ask_prctl_out(&mut self, option: i32, len: usize) -> Q {
        self.query(libc::SYS_prctl, [V(option as u64), V(0), V(0), V(0), V(0), V(0)], Some((1, len)))
    }

    /// personality(0xffffffff): the persona, unchanged.
    pub fn ask_personality(&mut self) -> Q {
        self.query(libc::SYS_personality, [V(0xffff_ffff), V(0), V(0), V(0), V(0), V(0)], None)
    }

    /// sigaltstack(NULL, &old): the stack_t (24 bytes).
    pub fn ask_sigaltstack(&mut self) -> Q {
        self.query(libc::SYS_sigaltstack, [V(0), V(0), V(0), V(0), V(0), V(0)], Some((1, 24)))
    }

    /// rt_sigaction(sig, NULL, &old) with the kernel's 8-byte mask: its action (32 bytes).
    pub fn ask_rt_sigaction(&mut self, sig: usize) -> Q {
        self.query(libc::SYS_rt_sigaction, [V(sig as u64), V(0), V(0), V(8), V(0), V(0)], Some((2, 32)))
    }

    /// pipe2(&fds, flags): its two ends (two ints), once its result is checked.
    pub fn ask_pipe2(&mut self, flags: i32) -> Q {
        self.query(libc::SYS_pipe2, [V(0), V(flags as u64), V(0), V(0), V(0), V(0)], Some((0, 8)))
    }

    /// get_mempolicy(&mode, NULL, 0, 0, 0): the mode (an int).
    pub fn ask_mempolicy(&mut self) -> Q {
        self.query(libc::SYS_get_mempolicy, [V(0); 6], Some((0, 4)))
    }

    /// getitimer(which, &value): the itimerval (32 bytes).
    pub fn ask_getitimer(&mut self, which: i32) -> Q {
        self.query(libc::SYS_getitimer, [V(which as u64), V(0), V(0), V(0), V(0), V(0)], Some((1, 32)))
    }

    /// timer_gettime(id, &value): the itimerspec (32 bytes).
    pub fn ask_timer_gettime(&mut self, id: i32) -> Q {
        self.query(libc::SYS_timer_gettime, [V(id as u64), V(0), V(0), V(0), V(0), V(0)], Some((1, 32)))
    }

    /// brk(0): the current break.
    pub fn ask_brk(&mut self) -> Q {
        self.query(libc::SYS_brk, [V(0); 6], None)
    }

    /// membarrier(cmd, 0, 0): answered in its result.
    pub fn ask_membarrier(&mut self, cmd: u64) -> Q {
        self.query(libc::SYS_membarrier, [V(cmd), V(0), V(0), V(0), V(0), V(0)], None)
    }

    /// Adds a call that must succeed; a failure names `call` and `what`.
    fn must(&mut self, nr: i64, args: [u64; 6], call: &str, what: String) -> &mut Self {
        self.push(nr, args.map(V), named(call, what))
    }

    /// The stretch of the list's bytes the calls in `part` point into, from an 8-aligned
    /// offset.
    fn stretch(&self, part: &Range<usize>) -> Range<usize> {
        let lo = part.start.checked_sub(1).map_or(0, |k| self.calls[k].upto) & !7;
        let hi = part.end.checked_sub(1).map_or(0, |k| self.calls[k].upto);
        lo..hi.max(lo)
    }

    /// The arguments of call `i`, with the list's bytes from offset `lo` at `base`.
    fn args(&self, i: usize, base: u64, lo: usize) -> [u64; 6] {
        self.calls[i].args.map(|a| match a {
            V(v) => v,
            At(off) => base + (off - lo) as u64,
        })
    }

    /// The bytes in `stretch` as they are to lie at `base`, their pointers made addresses.
    fn bytes_at(&self, base: u64, stretch: &Range<usize>) -> Vec<u8> {
        let mut b = self.bytes[stretch.clone()].to_vec();
        for &(w, to) in self.fixups.iter().filter(|(w, _)| stretch.contains(w)) {
            let at = (base + (to - stretch.start) as u64).to_le_bytes();
            b[w - stretch.start..w - stretch.start + 8].copy_from_slice(&at);
        }
        b
    }

    /// Bytes of a batch slot for the calls in `part`: their bytes, then their entries for the
    /// batch code.
    fn part_len(&self, part: &Range<usize>) -> usize {
        self.stretch(part).len().next_multiple_of(8) + part.len() * arch::BATCH_ENTRY
    }

    /// Whether the whole list fits `area` beside the batch code, to run in one go.
    pub fn fits(&self, area: &Scratch) -> bool {
        PAGE_SIZE + self.slot_len() <= area.len
    }

    /// Bytes of a batch slot for the whole list.
    fn slot_len(&self) -> usize {
        self.part_len(&(0..self.calls.len()))
    }

    /// The batch slot as it is to lie at `base`, and where its entries start.
    fn slot_at(&self, base: u64) -> (Vec<u8>, u64) {
        self.part_at(base, 0..self.calls.len())
    }

    /// [`Calls::slot_at`] for the calls in `part` only: their bytes and entries.
    fn part_at(&self, base: u64, part: Range<usize>) -> (Vec<u8>, u64) {
        let stretch = self.stretch(&part);
        let mut s = self.bytes_at(base, &stretch);
        let first = s.len().next_multiple_of(8);
        s.resize(first, 0);
        for k in part {
            let words = [self.calls[k].nr as u64].into_iter().chain(self.args(k, base, stretch.start)).chain([0]);
            s.extend(words.flat_map(u64::to_le_bytes));
        }
        (s, base + first as u64)
    }

    pub fn fcntl(&mut self, fd: i32, cmd: i32, arg: u64, call: &str, what: &str) -> &mut Self {
        self.must(libc::SYS_fcntl, [fd as u64, cmd as u64, arg, 0, 0, 0], call, what.to_string())
    }

    pub fn dup3(&mut self, old: i32, new: i32, flags: i32, what: &str) -> &mut Self {
        self.must(libc::SYS_dup3, [old as u64, new as u64, flags as u64, 0, 0, 0], "dup3", what.to_string())
    }

    pub fn close(&mut self, fd: i32, what: &str) -> &mut Self {
        self.must(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0], "close", what.to_string())
    }

    pub fn prctl(&mut self, option: i32, args: [u64; 4], call: &str, what: &str) -> &mut Self {
        self.must(libc::SYS_prctl, [option as u64, args[0], args[1], args[2], args[3], 0], call, what.to_string())
    }

    /// prctl(option, args...) whose raw result `check` judges.
    pub fn prctl_checked(
        &mut self,
        option: i32,
        args: [u64; 4],
        check: impl Fn(i64, &str) -> Result<()> + 'static,
    ) -> &mut Self {
        self.push(libc::SYS_prctl, [option as u64, args[0], args[1], args[2], args[3], 0].map(V), Box::new(check))
    }

    /// prctl(PR_SET_NAME): the task's name (cut to 15 bytes, as the kernel keeps it).
    pub fn set_name(&mut self, name: &str) -> &mut Self {
        let at = self.keep_cstr(&name.as_bytes()[..name.len().min(15)]);
        let args = [V(libc::PR_SET_NAME as u64), At(at), V(0), V(0), V(0), V(0)];
        self.push(libc::SYS_prctl, args, named("prctl(PR_SET_NAME)", name.to_string()))
    }

    pub fn chdir(&mut self, path: &str) -> &mut Self {
        let at = self.keep_cstr(path.as_bytes());
        self.push(libc::SYS_chdir, [At(at), V(0), V(0), V(0), V(0), V(0)], named("chdir", path.to_string()))
    }

    pub fn umask(&mut self, mask: u32) -> &mut Self {
        self.must(libc::SYS_umask, [mask as u64, 0, 0, 0, 0, 0], "umask", format!("{mask:o}"))
    }

    /// rt_sigaction(sig, act, NULL, 8) with the struct sigaction `act` (handler, flags,
    /// restorer, mask: four u64).
    pub fn rt_sigaction(&mut self, sig: usize, act: &[u8]) -> &mut Self {
        let at = self.keep(act);
        let args = [V(sig as u64), At(at), V(0), V(8), V(0), V(0)];
        self.push(libc::SYS_rt_sigaction, args, named("rt_sigaction", format!("signal {sig}")))
    }

    /// personality(2).
    pub fn personality(&mut self, p: u32) -> &mut Self {
        self.must(libc::SYS_personality, [p as u64, 0, 0, 0, 0, 0], "personality", format!("{p:#x}"))
    }

    pub fn setgroups(&mut self, groups: &[u32]) -> &mut Self {
        let mut e = Enc::new();
        for g in groups {
            e.u32(*g);
        }
        let at = self.keep(e.as_slice());
        let args = [V(groups.len() as u64), At(at), V(0), V(0), V(0), V(0)];
        self.push(libc::SYS_setgroups, args, named("setgroups", format!("{} groups", groups.len())))
    }

    pub fn setresgid(&mut self, [r, e, s]: [u32; 3]) -> &mut Self {
        self.must(libc::SYS_setresgid, [r as u64, e as u64, s as u64, 0, 0, 0], "setresgid", format!("{r}/{e}/{s}"))
    }

    pub fn setresuid(&mut self, [r, e, s]: [u32; 3]) -> &mut Self {
        self.must(libc::SYS_setresuid, [r as u64, e as u64, s as u64, 0, 0, 0], "setresuid", format!("{r}/{e}/{s}"))
    }

    /// setfsgid and setfsuid report nothing; [`crate::res::creds::verify`] reads them back.
    pub fn setfs_ids(&mut self, uid: u32, gid: u32) -> &mut Self {
        self.must(libc::SYS_setfsgid, [gid as u64, 0, 0, 0, 0, 0], "setfsgid", gid.to_string());
        self.must(libc::SYS_setfsuid, [uid as u64, 0, 0, 0, 0, 0], "setfsuid", uid.to_string())
    }

    /// capset for the task itself, with the data as capget returns it.
    pub fn capset(&mut self, data: [u32; 6]) -> &mut Self {
        let mut e = Enc::new();
        e.u32(0x2008_0522).u32(0); // _LINUX_CAPABILITY_VERSION_3, pid 0: the caller
        for v in data {
            e.u32(v);
        }
        let hdr = self.keep(e.as_slice());
        let args = [At(hdr), At(hdr + 8), V(0), V(0), V(0), V(0)];
        self.push(libc::SYS_capset, args, named("capset", "its capabilities".into()))
    }

    /// keyctl(op, args...) whose raw result `check` judges.
    pub fn keyctl_checked(
        &mut self,
        op: u64,
        args: [u64; 4],
        check: impl Fn(i64, &str) -> Result<()> + 'static,
    ) -> &mut Self {
        self.push(libc::SYS_keyctl, [op, args[0], args[1], args[2], args[3], 0].map(V), Box::new(check))
    }

    pub fn set_tid_address(&mut self, at: RemoteAddr) -> &mut Self {
        self.must(libc::SYS_set_tid_address, [at.0, 0, 0, 0, 0, 0], "set_tid_address", at.to_string())
    }

    pub fn set_robust_list(&mut self, head: RemoteAddr, len: u64) -> &mut Self {
        self.must(libc::SYS_set_robust_list, [head.0, len, 0, 0, 0, 0], "set_robust_list", head.to_string())
    }

    /// rseq(area, len, flags, sig).
    pub fn rseq(&mut self, area: RemoteAddr, len: u32, flags: u64, sig: u32, call: &str) -> &mut Self {
        self.must(libc::SYS_rseq, [area.0, len as u64, flags, sig as u64, 0, 0], call, format!("area {area}"))
    }

    /// sigaltstack(new, NULL) with the stack_t {sp, flags, size}.
    pub fn sigaltstack(&mut self, (sp, flags, size): (u64, u32, u64), what: &str) -> &mut Self {
        let mut e = Enc::new();
        e.u64(sp).u32(flags).u32(0).u64(size);
        let at = self.keep(e.as_slice());
        self.push(libc::SYS_sigaltstack, [At(at), V(0), V(0), V(0), V(0), V(0)], named("sigaltstack", what.into()))
    }

    /// clone3 of a thread (`flags`, which the caller chooses, CLONE_THREAD among them) with
    /// its clear_child_tid address and, if given, its tid (set_tid); the result, its tid or a
    /// negative errno, is for the caller to judge.
    pub fn clone3_thread(&mut self, flags: u64, clear_tid: u64, tid: Option<i32>) -> &mut Self {
        let mut e = Enc::new();
        e.u64(flags).u64(0).u64(clear_tid).u64(0).u64(0); // pidfd, child_tid, parent_tid, exit_signal
        e.u64(0).u64(0).u64(0); // stack, stack_size, tls: set with the registers
        e.u64(0).u64(tid.map_or(0, |_| 1)); // set_tid (below), set_tid_size
        e.u64(0); // cgroup
        let at = self.keep(e.as_slice());
        if let Some(t) = tid {
            let to = self.keep(&(t as u32).to_le_bytes());
            self.fixups.push((at + 64, to));
        }
        let args = [At(at), V(e.as_slice().len() as u64), V(0), V(0), V(0), V(0)];
        self.push(libc::SYS_clone3, args, Box::new(|_, _| Ok(())))
    }

    /// mmap(at, len, prot, flags | MAP_ANONYMOUS, -1, 0) that must land at `at` (flags with
    /// MAP_FIXED_NOREPLACE: it fails rather than replace anything); `what` names the mapping.
    pub fn mmap_anon_at(&mut self, at: u64, len: u64, prot: u32, flags: i32, what: String) -> &mut Self {
        self.mmap_at(at, len, prot, flags | libc::MAP_ANONYMOUS, None, 0, what)
    }

    /// mmap(at, len, prot, flags, fd, off) (fd -1 for None) that must land at `at`, as
    /// [`Calls::mmap_anon_at`].
    #[allow(clippy::too_many_arguments)]
    pub fn mmap_at(
        &mut self,
        at: u64,
        len: u64,
        prot: u32,
        flags: i32,
        fd: Option<i32>,
        off: u64,
        what: String,
    ) -> &mut Self {
        let fd = fd.map_or(u64::MAX, |f| f as u64);
        let args = [at, len, prot as u64, flags as u64, fd, off].map(V);
        self.push(
            libc::SYS_mmap,
            args,
            Box::new(move |r, who| {
                if (-4095..0).contains(&r) {
                    return Err(Error::sys(format!("mmap (in {who})"), what.clone(), Errno::from_raw(-r as i32)));
                }
                if r as u64 != at {
                    return Err(Error::Proc(format!("mmap {what} in {who} landed elsewhere")));
                }
                Ok(())
            }),
        )
    }

    /// openat(AT_FDCWD, path, flags); a failure names `what`. Its result is the fd.
    pub fn open(&mut self, path: &str, flags: i32, what: &str) -> &mut Self {
        self.open_checked(path, flags, named("openat", what.to_string()))
    }

    /// [`Calls::open`] whose raw result `check` judges.
    pub fn open_checked(
        &mut self,
        path: &str,
        flags: i32,
        check: impl Fn(i64, &str) -> Result<()> + 'static,
    ) -> &mut Self {
        let at = self.keep_cstr(path.as_bytes());
        let args = [V(libc::AT_FDCWD as i64 as u64), At(at), V(flags as u32 as u64), V(0), V(0), V(0)];
        self.push(libc::SYS_openat, args, Box::new(check))
    }

    /// eventfd2(0, flags): a new eventfd, its counter 0.
    pub fn eventfd(&mut self, flags: i32, what: &str) -> &mut Self {
        self.must(libc::SYS_eventfd2, [0, flags as u64, 0, 0, 0, 0], "eventfd2", what.to_string())
    }

    /// epoll_create1(flags).
    pub fn epoll_create(&mut self, flags: i32, what: &str) -> &mut Self {
        self.must(libc::SYS_epoll_create1, [flags as u64, 0, 0, 0, 0, 0], "epoll_create1", what.to_string())
    }

    /// signalfd4(-1, mask, 8, flags): a new signalfd for the signals in `mask` (bit n-1 for
    /// signal n).
    pub fn signalfd(&mut self, mask: u64, flags: i32, what: &str) -> &mut Self {
        let at = self.keep(&mask.to_le_bytes());
        let args = [V(u64::MAX), At(at), V(8), V(flags as u64), V(0), V(0)];
        self.push(libc::SYS_signalfd4, args, named("signalfd4", what.to_string()))
    }

    /// timerfd_create(clock, flags): a new, disarmed timerfd.
    pub fn timerfd_create(&mut self, clock: u32, flags: i32, what: &str) -> &mut Self {
        self.must(
            libc::SYS_timerfd_create,
            [clock as u64, flags as u64, 0, 0, 0, 0],
            "timerfd_create",
            what.to_string(),
        )
    }

    /// inotify_init1(flags).
    pub fn inotify_init(&mut self, flags: i32, what: &str) -> &mut Self {
        self.must(libc::SYS_inotify_init1, [flags as u64, 0, 0, 0, 0, 0], "inotify_init1", what.to_string())
    }

    /// socket(AF_UNIX, ty | SOCK_CLOEXEC, 0).
    pub fn unix_socket(&mut self, ty: u32, what: &str) -> &mut Self {
        let ty = (ty as i32 | libc::SOCK_CLOEXEC) as u64;
        self.must(libc::SYS_socket, [libc::AF_UNIX as u64, ty, 0, 0, 0, 0], "socket", what.to_string())
    }

    /// write(fd, data): all of it, or the list fails.
    pub fn write_all(&mut self, fd: i32, data: &[u8], what: &str) -> &mut Self {
        let at = self.keep(data);
        let (len, what) = (data.len() as i64, what.to_string());
        let args = [V(fd as u64), At(at), V(data.len() as u64), V(0), V(0), V(0)];
        let failed = named("write", what.clone());
        self.push(
            libc::SYS_write,
            args,
            Box::new(move |r, who| {
                failed(r, who)?;
                match r == len {
                    true => Ok(()),
                    false => Err(Error::Proc(format!("{what}: {r} of {len} bytes written (in {who})"))),
                }
            }),
        )
    }

    pub fn lseek_set(&mut self, fd: i32, pos: u64, what: &str) -> &mut Self {
        self.must(libc::SYS_lseek, [fd as u64, pos, libc::SEEK_SET as u64, 0, 0, 0], "lseek", what.to_string())
    }

    /// mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to): moves a mapping, pages and
    /// all, over whatever lies at `to`.
    pub fn mremap(&mut self, from: u64, len: u64, to: u64) -> &mut Self {
        self.mremap_resized(from, len, len, to)
    }

    /// mremap of `len` bytes at `from` to `to`, made `size` bytes there (the pages past `len`
    /// are fresh; those past `size`, dropped).
    pub fn mremap_resized(&mut self, from: u64, len: u64, size: u64, to: u64) -> &mut Self {
        let what = format!("{from:#x}-{:#x} to {to:#x}-{:#x}", from + len, to + size);
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        self.must(libc::SYS_mremap, [from, len, size, flags, to, 0], "mremap", what)
    }

    pub fn munmap(&mut self, at: u64, len: u64) -> &mut Self {
        let what = format!("{at:#x}-{:#x}", at + len);
        self.must(libc::SYS_munmap, [at, len, 0, 0, 0, 0], "munmap", what)
    }

    pub fn mprotect(&mut self, at: RemoteAddr, len: u64, prot: u32) -> &mut Self {
        let what = format!("{at}-{:#x}", at.0 + len);
        self.must(libc::SYS_mprotect, [at.0, len, prot as u64, 0, 0, 0], "mprotect", what)
    }

    /// madvise(at, len, advice); `call` names the advice ("madvise(MADV_DONTDUMP)").
    pub fn madvise(&mut self, at: RemoteAddr, len: u64, advice: i32, call: &str) -> &mut Self {
        let what = format!("{at}-{:#x}", at.0 + len);
        self.must(libc::SYS_madvise, [at.0, len, advice as u64, 0, 0, 0], call, what)
    }

    /// prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, at, len, name); its result (EINVAL: a kernel
    /// without CONFIG_ANON_VMA_NAME) is for the caller to judge.
    pub fn set_anon_name(&mut self, at: RemoteAddr, len: u64, name: &str) -> &mut Self {
        const PR_SET_VMA: u64 = 0x53564d41;
        let p = self.keep_cstr(name.as_bytes());
        let args = [V(PR_SET_VMA), V(0), V(at.0), V(len), At(p), V(0)];
        self.push(libc::SYS_prctl, args, Box::new(|_, _| Ok(())))
    }

    /// epoll_ctl(epfd, EPOLL_CTL_ADD, fd, event) with the struct epoll_event `event`.
    pub fn epoll_ctl_add(&mut self, epfd: i32, fd: i32, event: &[u8], what: &str) -> &mut Self {
        let at = self.keep(event);
        let args = [V(epfd as u64), V(libc::EPOLL_CTL_ADD as u64), V(fd as u64), At(at), V(0), V(0)];
        self.push(libc::SYS_epoll_ctl, args, named("epoll_ctl(EPOLL_CTL_ADD)", what.to_string()))
    }

    /// mlock2(at, len, flags).
    pub fn mlock2(
        &mut self,
        at: RemoteAddr,
        len: u64,
        flags: u32,
        check: impl Fn(i64, &str) -> Result<()> + 'static,
    ) -> &mut Self {
        self.push(libc::SYS_mlock2, [at.0, len, flags as u64, 0, 0, 0].map(V), Box::new(check))
    }

    /// sched_setattr(0, attr, 0) with the struct sched_attr `attr`.
    pub fn sched_setattr(&mut self, attr: &[u8], check: impl Fn(i64, &str) -> Result<()> + 'static) -> &mut Self {
        let at = self.keep(attr);
        self.push(libc::SYS_sched_setattr, [V(0), At(at), V(0), V(0), V(0), V(0)], Box::new(check))
    }

    /// sched_setaffinity(0, mask).
    pub fn sched_setaffinity(&mut self, mask: &[u8], check: impl Fn(i64, &str) -> Result<()> + 'static) -> &mut Self {
        let at = self.keep(mask);
        let args = [V(0), V(mask.len() as u64), At(at), V(0), V(0), V(0)];
        self.push(libc::SYS_sched_setaffinity, args, Box::new(check))
    }

    /// ioprio_set(IOPRIO_WHO_PROCESS, 0, prio).
    pub fn ioprio_set(&mut self, prio: u32, check: impl Fn(i64, &str) -> Result<()> + 'static) -> &mut Self {
        self.push(libc::SYS_ioprio_set, [1, 0, prio as u64, 0, 0, 0].map(V), Box::new(check))
    }
}

impl Ctl<'_> {
    /// Runs `calls` here, one remote syscall each, stopping at the first that fails.
    pub fn run(&mut self, calls: &Calls) -> Result<()> {
        self.ask(calls).map(drop)
    }

    /// [`Ctl::run`], with the answers of the list's queries.
    pub fn ask(&mut self, calls: &Calls) -> Result<Answers> {
        let mut out = Vec::with_capacity(calls.len());
        let mut bytes = calls.answer_room();
        for k in 0..calls.len() {
            self.run_one(calls, k, &mut out, &mut bytes)?;
        }
        Ok(Answers { results: out, bytes, pid: self.pid() })
    }

    /// Runs call `k` of `calls` as a remote syscall, its bytes in the scratch area; its raw
    /// result goes to `out` once checked, and what a query wrote to `bytes`.
    fn run_one(&mut self, calls: &Calls, k: usize, out: &mut Vec<i64>, bytes: &mut [u8]) -> Result<()> {
        let base = self.scratch.addr.0;
        let stretch = calls.stretch(&(k..k + 1));
        if !stretch.is_empty() {
            self.scratch.put(self.pid(), 0, &calls.bytes_at(base, &stretch))?;
        }
        let c = &calls.calls[k];
        let r = self.r.raw(c.nr, calls.args(k, base, stretch.start))?;
        (c.check)(r, &format!("pid {}", self.pid()))?;
        if c.answers && !stretch.is_empty() {
            let b = self.scratch.get(self.pid(), 0, stretch.len())?;
            bytes[stretch].copy_from_slice(&b);
        }
        out.push(r);
        Ok(())
    }

    /// Runs `calls` here in one go (in parts, as many calls at a time as `area` holds), the
    /// code and the list in `area` (executable), where a trap is harmless (`stepping`);
    /// otherwise, or for a call too big for `area` alone, one remote syscall each, as
    /// [`Ctl::run`]. Their raw results.
    pub fn run_at_once(&mut self, calls: &Calls, area: &Scratch) -> Result<Vec<i64>> {
        self.ask_at_once(calls, area).map(|a| a.results)
    }

    /// [`Ctl::run_at_once`], with the answers of the list's queries.
    pub fn ask_at_once(&mut self, calls: &Calls, area: &Scratch) -> Result<Answers> {
        let pid = self.pid();
        let mut out = Vec::with_capacity(calls.len());
        let mut bytes = calls.answer_room();
        if !self.r.stepping || !area.exec || area.len <= PAGE_SIZE {
            for k in 0..calls.len() {
                self.run_one(calls, k, &mut out, &mut bytes)?;
            }
            return Ok(Answers { results: out, bytes, pid });
        }
        let code = arch::batch_code();
        let base = area.addr.0 + PAGE_SIZE as u64;
        area.put(pid, 0, code)?;
        let who = format!("pid {pid}");
        let room = area.len - PAGE_SIZE;
        let mut from = 0;
        while from < calls.len() {
            let mut to = from;
            while to < calls.len() && calls.part_len(&(from..to + 1)) <= room {
                to += 1;
            }
            if to == from {
                self.run_one(calls, from, &mut out, &mut bytes)?;
                from += 1;
                continue;
            }
            let (b, list) = calls.part_at(base, from..to);
            area.put(pid, PAGE_SIZE, &b)?;
            let n = to - from;
            self.r.run(area.addr.0, code.len(), |r| arch::set_batch(r, area.addr.0, list, n))?;
            let mut b = vec![0u8; b.len()];
            mem::read_runs(pid, &[(base, b.len())], &mut b)?;
            if !bytes.is_empty() {
                let stretch = calls.stretch(&(from..to));
                bytes[stretch.clone()].copy_from_slice(&b[..stretch.len()]);
            }
            for (k, c) in calls.calls[from..to].iter().enumerate() {
                let o = (list - base) as usize + k * arch::BATCH_ENTRY + 56;
                let r = i64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
                (c.check)(r, &who)?;
                out.push(r);
            }
            from = to;
        }
        Ok(Answers { results: out, bytes, pid })
    }
}

/// Runs `lists[i]` in thread `ts[i].0` (from its registers `ts[i].1`), each thread's whole list
/// in one go (the batch code), as many threads at once as their lists fit in `area` after its
/// first page, which takes the code. `area` is executable and shared by the threads (of
/// process `pid`); a forced SIGTRAP must be harmless to every one of them (see remote's
/// notes). Signals meanwhile go to `held`. The first failure, in thread order and then in
/// list order, is the error; the calls after it in that thread have run all the same.
pub fn run_in_threads(
    pid: i32,
    ts: &[(&Tracee, Regs)],
    lists: &[Calls],
    area: &Scratch,
    held: &mut Vec<Caught>,
) -> Result<()> {
    if ts.is_empty() {
        return Ok(());
    }
    if !area.exec || area.len <= PAGE_SIZE {
        return Err(Error::Proc("no executable area for the threads' syscalls".into()));
    }
    area.put(pid, 0, arch::batch_code())?;
    let mut i = 0;
    while i < ts.len().min(lists.len()) {
        // A group: the threads from i whose slots fit, at offsets from the second page.
        let mut slots = Vec::new();
        let mut end = PAGE_SIZE;
        for l in &lists[i..ts.len().min(lists.len())] {
            if end + l.slot_len() > area.len {
                break;
            }
            slots.push(end);
            end += l.slot_len();
        }
        if slots.is_empty() {
            return Err(Error::Proc(format!(
                "thread {}'s {} syscalls do not fit a scratch area of {} bytes",
                ts[i].0.pid,
                lists[i].calls.len(),
                area.len
            )));
        }
        let group = i..i + slots.len();
        let mut b = vec![0u8; end - PAGE_SIZE];
        let mut entries = Vec::with_capacity(slots.len());
        for (&off, l) in slots.iter().zip(&lists[group.clone()]) {
            let (s, list) = l.slot_at(area.addr.0 + off as u64);
            b[off - PAGE_SIZE..off - PAGE_SIZE + s.len()].copy_from_slice(&s);
            entries.push((list, l.calls.len()));
        }
        let at = area.addr.0 + PAGE_SIZE as u64;
        mem::write_runs(pid, &[(at, b.len())], &b)?;
        super::remote::batch_all(&ts[group.clone()], area.addr.0, &entries, held)?;
        mem::read_runs(pid, &[(at, b.len())], &mut b)?;
        for ((&(list, _), l), (t, _)) in entries.iter().zip(&lists[group.clone()]).zip(&ts[group.clone()]) {
            let who = format!("thread {}", t.pid);
            for (k, c) in l.calls.iter().enumerate() {
                let o = (list - at) as usize + k * arch::BATCH_ENTRY + 56;
                let r = i64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
                (c.check)(r, &who)?;
            }
        }
        i = group.end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries of a slot laid at `base`: (nr, args) of each.
    fn entries(l: &Calls, base: u64) -> (Vec<u8>, Vec<(u64, [u64; 6])>) {
        let (s, list) = l.slot_at(base);
        let first = (list - base) as usize;
        let w = |o: usize| u64::from_le_bytes(s[o..o + 8].try_into().unwrap());
        let e = (0..l.len())
            .map(|k| {
                let o = first + k * arch::BATCH_ENTRY;
                (w(o), std::array::from_fn(|j| w(o + 8 + 8 * j)))
            })
            .collect();
        (s[..first].to_vec(), e)
    }

    #[test]
    fn pointers_land_where_the_bytes_do_after_append() {
        let mut a = Calls::new();
        a.set_name("worker");
        let mut b = Calls::new();
        b.setgroups(&[7, 8]).clone3_thread(0x100, 0x5000, Some(1234));
        a.append(b);
        let base = 0x10_0000;
        let (bytes, e) = entries(&a, base);
        assert_eq!(e.len(), 3);
        let at = |p: u64| &bytes[(p - base) as usize..];
        // prctl(PR_SET_NAME, name)
        assert_eq!((e[0].0, e[0].1[0]), (libc::SYS_prctl as u64, libc::PR_SET_NAME as u64));
        assert!(at(e[0].1[1]).starts_with(b"worker\0"));
        // setgroups(2, list): after the name, 8-aligned.
        assert_eq!((e[1].0, e[1].1[0]), (libc::SYS_setgroups as u64, 2));
        assert_eq!(e[1].1[1] % 8, 0);
        assert_eq!(&at(e[1].1[1])[..8], &[7, 0, 0, 0, 8, 0, 0, 0]);
        // clone3(args, 88), whose set_tid points at the tid 1234.
        assert_eq!((e[2].0, e[2].1[1]), (libc::SYS_clone3 as u64, 88));
        let args = at(e[2].1[0]);
        let word = |i: usize| u64::from_le_bytes(args[8 * i..8 * i + 8].try_into().unwrap());
        assert_eq!((word(0), word(2), word(9)), (0x100, 0x5000, 1));
        assert_eq!(&at(word(8))[..4], &1234u32.to_le_bytes());
    }

    #[test]
    fn parts_hold_the_bytes_and_only_their_entries() {
        let mut l = Calls::new();
        l.set_name("x");
        for i in 0..5 {
            l.mprotect(RemoteAddr(0x1000 * i), 0x1000, 1);
        }
        let (s, list) = l.part_at(0x2000, 2..4);
        assert_eq!(s.len() as u64, list - 0x2000 + 2 * arch::BATCH_ENTRY as u64);
        let nr = u64::from_le_bytes(s[(list - 0x2000) as usize..][..8].try_into().unwrap());
        assert_eq!(nr, libc::SYS_mprotect as u64);
        let addr = u64::from_le_bytes(s[(list - 0x2000) as usize + 8..][..8].try_into().unwrap());
        assert_eq!(addr, 0x1000, "the part starts at call 2, the second mprotect");
    }

    /// A query's answer is its own: pointed to by its argument, in whole words, and in no
    /// other call's stretch, so that a part laid again after it (or a call run alone) cannot
    /// put the list's zeros back over it; and read by its place.
    #[test]
    fn answers_are_their_queries_own() {
        let mut l = Calls::new();
        let int = l.ask_prctl_out(libc::PR_GET_PDEATHSIG, 4);
        let stack = l.ask_sigaltstack();
        let plain = l.ask_prctl(libc::PR_GET_DUMPABLE, 0);
        l.set_name("x");
        assert_eq!(l.args(int.k, 0x9000, 0)[1], 0x9000 + int.at as u64);
        assert_eq!(l.args(stack.k, 0x9000, 0)[1], 0x9000 + stack.at as u64);
        // (An answer takes whole words: the next call's stretch begins past it.)
        for q in [int, stack] {
            assert!(q.at % 8 == 0 && l.stretch(&(q.k + 1..q.k + 2)).start >= q.at + 8);
        }
        let mut bytes = l.bytes.clone();
        bytes[int.at..int.at + 4].copy_from_slice(&9u32.to_le_bytes());
        bytes[stack.at + 8..stack.at + 16].copy_from_slice(&2u64.to_le_bytes());
        let a = Answers { results: vec![0, 0, 1, 0], bytes, pid: 7 };
        assert_eq!((a.u32(int), a.words::<3>(stack), a.raw(plain)), (9, [0, 2, 0], 1));
        let failed = Answers { results: vec![-(libc::EPERM as i64)], bytes: vec![], pid: 7 };
        let e = failed.ok(int, "prctl(PR_GET_PDEATHSIG)", "query").unwrap_err().to_string();
        assert!(e.contains("prctl(PR_GET_PDEATHSIG) (in pid 7)") && e.contains("query"), "{e}");
    }

    /// One call at a time needs room for its own bytes only, however long the list: 8192
    /// threads' clone3s would not fit a scratch area at once.
    #[test]
    fn each_call_carries_only_its_own_bytes() {
        let mut l = Calls::new();
        for t in 0..8192 {
            l.clone3_thread(0x100, 0, Some(t)).set_name("a thread's name");
        }
        assert!(l.bytes.len() > 512 << 10);
        for k in 0..l.len() {
            let r = k..k + 1;
            assert!(l.part_len(&r) <= 200, "call {k}: {} bytes", l.part_len(&r));
            // ...and the bytes it lays point where its arguments say.
            let (b, _) = l.part_at(0x9000, r.clone());
            let p = l.args(k, 0x9000, l.stretch(&r).start)[if k % 2 == 0 { 0 } else { 1 }];
            assert!(p >= 0x9000 && ((p - 0x9000) as usize) < b.len(), "call {k}");
        }
        let tid_at = |k: usize| {
            let (b, _) = l.part_at(0x9000, k..k + 1);
            let a = (l.args(k, 0x9000, l.stretch(&(k..k + 1)).start)[0] - 0x9000) as usize;
            let p = (u64::from_le_bytes(b[a + 64..a + 72].try_into().unwrap()) - 0x9000) as usize;
            u32::from_le_bytes(b[p..p + 4].try_into().unwrap())
        };
        assert_eq!((tid_at(0), tid_at(2 * 4000)), (0, 4000));
    }

    #[test]
    fn a_failure_names_the_call_and_the_task() {
        let mut l = Calls::new();
        l.setresuid([1, 2, 3]);
        let e = (l.calls[0].check)(-(libc::EPERM as i64), "thread 42").unwrap_err().to_string();
        assert!(e.contains("setresuid (in thread 42)") && e.contains("1/2/3"), "{e}");
        assert!((l.calls[0].check)(0, "thread 42").is_ok());
    }
}
