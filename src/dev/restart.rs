//! `rstrt --backend crd`: a restart through /dev/crd. User space does what it can (the
//! paper's rule): it reads and checks the whole image with the one CRF codec, refuses what the
//! module does not restart, then in a child of its own sets up the credentials, fds 0-2, cwd,
//! limits, signal handlers, alternate stack, tid address and robust list, moves its vdso to the
//! image's place, loads the image's FPU state and calls CRD_RESTART with a plan: the mappings,
//! where each run of pages lies in the image file, the layout, the registers and the mask. The
//! module replaces the child's memory and registers with the image's (kmod/crd.h).

use super::{Crd, RESTART, RESTART_EXE, RESTART_NOTIFY, RESTART_STOP};
use crate::crf::{PAGE_SIZE, Reader, Stream, Tag, pages};
use crate::engine::restore::{Options, Restored};
use crate::error::{Error, Result};
use crate::ptrace::procfs::{self, MapEntry};
use crate::res::files::{KIND_DEV, KIND_FILE, KIND_STDIO};
use crate::res::head::Header;
use crate::res::image::{ProcessState, SectionReader};
use crate::res::memory::{self, Vma};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// struct crd_map
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapArg {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub flags: u32,
    pub fd: i32,
    pub pad: u32,
    pub pgoff: u64,
}

/// struct crd_run
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunArg {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
}

/// An image read whole and checked, with where its pages lie in the file.
struct Checked {
    st: ProcessState,
    runs: Vec<(u64, u64, u64, bool)>, // addr, len, file offset, a copy of a file's page
}

/// Reads the whole image from `f` (every checksum, the trailer), keeping the place of each run.
fn read_all(f: &File) -> Result<Checked> {
    let mut r = Reader::new(Stream(std::io::BufReader::with_capacity(1 << 20, f)))?;
    let mut st = ProcessState::default();
    let mut sections = SectionReader::new();
    let first = r.next_section()?;
    if first.is_some_and(|s| [Tag::PREAREAS, Tag::PREPAGES, Tag::PREMEMBER, Tag::PRESHM].contains(&s.tag)) {
        return Err(refused(
            "its memory was copied while the process ran (checkpoint it with ckpt --frozen for this backend)",
        ));
    }
    let mut next = sections.read_group(&mut r, &mut st, first, true, &mut |_, _| Ok(()))?;
    if st.tree.iter().filter(|m| m.zombie.is_none()).count() > 1 {
        return Err(refused("it holds several processes (a tree)"));
    }
    let mut runs = Vec::new();
    let mut buf = vec![0u8; pages::MAX_BATCH_PAGES * PAGE_SIZE];
    while let Some(s) = next.filter(|s| s.tag == Tag::PAGES) {
        let b = pages::read_batch_header(&mut r, &s)?;
        let mut at = r.offset();
        for run in &b.runs {
            if run.flags & pages::RUN_KEPT != 0 {
                return Err(refused("it has pages sent ahead by a live migration (kept runs)"));
            }
            let len = run.len() as u64;
            runs.push((run.addr, len, at, run.flags & pages::RUN_FILE_COPY != 0));
            at += len;
        }
        b.data(&mut r, &mut buf)?;
        next = r.next_section()?;
    }
    if sections.read_group(&mut r, &mut st, next, false, &mut |_, _| Ok(()))?.is_some() {
        return Err(refused("it holds several processes (a tree)"));
    }
    Ok(Checked { st, runs })
}

fn refused(what: &str) -> Error {
    Error::Refused(format!("the crd backend does not restart this image: {what}; use --backend ptrace"))
}

/// Everything the crd restart does not do, by name.
fn check(st: &ProcessState) -> Result<()> {
    let mut no = Vec::new();
    if st.threads.len() > 1 {
        no.push(format!("{} threads", st.threads.len()));
    }
    for f in &st.files {
        if f.fd > 2 || ![KIND_FILE, KIND_DEV, KIND_STDIO].contains(&f.kind) {
            no.push(format!("fd {} ({})", f.fd, f.id.path));
        }
    }
    let named = [
        (!st.pending.is_empty(), "queued signals"),
        (!st.itimers.is_empty(), "interval timers"),
        (!st.ptimers.is_empty(), "POSIX timers"),
        (st.mdwe != 0, "memory-deny-write-execute"),
        (st.seccomp.no_new_privs || !st.seccomp.filters.is_empty(), "seccomp or no_new_privs"),
        (st.caps.is_some(), "capabilities other than the default"),
        (st.terminal.is_some() || !st.ptys.is_empty(), "a terminal"),
        (!st.deleted.is_empty() || !st.memfds.is_empty(), "deleted files or memfds"),
        (!st.sysv.is_empty() || !st.tree_shm.is_empty(), "shared memory"),
        (!st.locks.is_empty(), "file locks"),
    ];
    no.extend(named.iter().filter(|(has, _)| *has).map(|(_, what)| what.to_string()));
    for v in &st.vmas {
        if v.kind == memory::KIND_SHMEM || v.flags & (memory::VMA_REMADE | memory::VMA_SYSV) != 0 {
            no.push(format!("the mapping at {:#x} ({})", v.start, v.name));
        }
    }
    if st.threads.first().is_some_and(|t| t.regs.gpr.gs_base != 0) {
        no.push("a gs base".into());
    }
    // What the module leaves as the restorer has it must be so in the image too.
    let me = nix::unistd::gettid().as_raw();
    if let Some(s) = &st.sched {
        // SAFETY: PR_GET_TIMERSLACK takes no pointer.
        let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) } as u64;
        if crate::res::sched::Sched::read(me, slack).ok().as_ref() != Some(s) {
            no.push("CPU or I/O scheduling other than rstrt's".into());
        }
    }
    let here = crate::res::knobs::thread_read(me);
    for (k, v) in &st.knobs {
        if here.iter().any(|(hk, hv)| hk == k && hv != v) {
            no.push(format!("a per-process setting other than rstrt's (knob {k})"));
        }
    }
    if no.is_empty() { Ok(()) } else { Err(refused(&no.join(", "))) }
}

/// The image as a file the module can pread: the file itself when only its owner (the caller)
/// may write it, so nobody changes it between the check and the restart; otherwise a private
/// copy. With the uid of the file's owner when that is not the caller: root restoring a user's
/// image lets the image claim that user only (as restart_path does for the ptrace engine).
fn stable(path: &str) -> Result<(File, Option<u32>)> {
    use std::os::unix::fs::MetadataExt;
    if path == "-" {
        // Whatever standard input is, the bytes checked are those of a private copy.
        let mut copy = memfd()?;
        std::io::copy(&mut std::io::stdin().lock(), &mut copy).map_err(|e| Error::io("standard input", e))?;
        copy.rewind().map_err(|e| Error::io("image copy", e))?;
        return Ok((copy, None));
    }
    let (mut f, md) = crate::open_image(path)?;
    let me = nix::unistd::geteuid();
    let owner = (md.uid() != me.as_raw()).then_some(md.uid());
    if md.is_file() && owner.is_none() && md.mode() & 0o022 == 0 {
        return Ok((f, None));
    }
    let mut copy = memfd()?;
    std::io::copy(&mut f, &mut copy).map_err(|e| Error::io(path, e))?;
    copy.rewind().map_err(|e| Error::io("image copy", e))?;
    Ok((copy, owner))
}

/// The mappings as the module makes them, and the runs it reads (the pages of a file mapped
/// from the file itself are not read).
fn plan(st: &ProcessState, runs: &[(u64, u64, u64, bool)]) -> Result<(Vec<memory::Plan>, Vec<RunArg>)> {
    let own = procfs::read_maps(std::process::id() as i32)?;
    let specials: Vec<MapEntry> = own.iter().filter(|m| m.is_vdso_or_vvar()).cloned().collect();
    let vdso = match own.iter().find(|m| m.name == "[vdso]") {
        Some(v) => {
            let mut b = vec![0u8; v.len() as usize];
            crate::ptrace::mem::read_runs(std::process::id() as i32, &[(v.start, b.len())], &mut b)?;
            b
        }
        None => Vec::new(),
    };
    let same_boot = st.head.boot_id == crate::res::fileid::boot_id();
    // The files the image names are looked at with its owner's rights, not ours.
    let as_owner = crate::res::creds::AsOwner::enter(&st.head)?;
    crate::res::files::check(&st.files, same_boot)?;
    let plans = memory::plan(&st.vmas, same_boot, &specials, &vdso)?;
    drop(as_owner);
    let mut out: Vec<RunArg> = Vec::with_capacity(runs.len());
    for &(addr, len, offset, file_copy) in runs {
        let i = plans.partition_point(|p| p.vma.end <= addr);
        let Some(p) = plans.get(i).filter(|p| p.vma.start <= addr && addr + len <= p.vma.end) else {
            return Err(Error::Refused(format!("the image's pages at {addr:#x} lie outside its mappings")));
        };
        if p.vma.is_special() || p.vma.flags & memory::VMA_SHARED != 0 && p.vma.file.is_some() {
            return Err(Error::Refused(format!("the image has pages for the mapping at {:#x}", p.vma.start)));
        }
        if file_copy && p.from_file {
            continue;
        }
        match out.last_mut() {
            Some(l)
                if l.addr + l.len == addr
                    && l.offset + l.len == offset
                    && plans.partition_point(|q| q.vma.end <= l.addr) == i =>
            {
                l.len += len
            }
            _ => out.push(RunArg { addr, len, offset }),
        }
    }
    Ok((plans, out))
}

fn map_arg(p: &memory::Plan) -> MapArg {
    let v: &Vma = &p.vma;
    let mut flags = if v.flags & memory::VMA_SHARED != 0 { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
    if v.flags & memory::VMA_GROWSDOWN != 0 {
        flags |= libc::MAP_GROWSDOWN;
    }
    if v.flags & memory::VMA_NORESERVE != 0 {
        flags |= libc::MAP_NORESERVE;
    }
    MapArg {
        start: v.start,
        end: v.end,
        prot: v.prot,
        flags: flags as u32,
        fd: -1,
        pad: 0,
        pgoff: if p.from_file { v.pgoff } else { 0 },
    }
}

/// Restarts the image at `path` ("-": standard input) through /dev/crd, as a child of ours.
pub fn restart(path: &str, opts: &Options) -> Result<Restored> {
    let (image, owner) = stable(path)?;
    let whose = format!("image file {path}");
    restart_checked(image, opts, &|h| match owner.filter(|_| crate::res::creds::is_root()) {
        Some(uid) => crate::res::creds::check_user_claims(h, uid, &whose),
        None => Ok(()),
    })
}

/// Restarts an image read from `input` (copied to memory first) through /dev/crd.
pub fn restart_from(mut input: impl Read, opts: &Options, policy: &dyn Fn(&Header) -> Result<()>) -> Result<Restored> {
    let mut copy = memfd()?;
    std::io::copy(&mut input, &mut copy).map_err(|e| Error::io("image", e))?;
    copy.rewind().map_err(|e| Error::io("image copy", e))?;
    restart_checked(copy, opts, policy)
}

fn memfd() -> Result<File> {
    let name = c"crs-image";
    // SAFETY: memfd_create reads a NUL-terminated name.
    let m = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if m < 0 {
        return Err(Error::sys("memfd_create", "image copy", nix::errno::Errno::last()));
    }
    // SAFETY: `m` is a new fd we own.
    Ok(unsafe { File::from_raw_fd(m) })
}

/// Restarts the image in `image` (a file nobody else may change) through /dev/crd, once the
/// caller may restore it and `policy` accepts its header (who it claims to be).
pub fn restart_checked(image: File, opts: &Options, policy: &dyn Fn(&Header) -> Result<()>) -> Result<Restored> {
    if opts.ipcns || opts.timens || opts.shell_job || opts.grant_caps || opts.hold {
        return Err(Error::Usage(
            "the crd backend does not do --ipcns, --timens, --shell-job, --user-caps, nor hold a process traced: use --backend ptrace"
                .into(),
        ));
    }
    let crd = Crd::open()?;
    let Checked { st, runs } = read_all(&image)?;
    crate::res::creds::check_caller(&st.head)?;
    policy(&st.head)?;
    check(&st)?;
    if let Some(t) = st.threads.first() {
        crate::res::regs::check_xstate(&t.regs)?;
        check_xrstor(&t.regs.xsave)?;
    }
    let (plans, runs) = plan(&st, &runs)?;
    let maps: Vec<MapArg> = plans.iter().filter(|p| !p.vma.is_special()).map(map_arg).collect();
    let (rd, wr) = nix::unistd::pipe().map_err(|e| Error::sys("pipe", "restart report", e))?;
    // The module says the process runs (CRD_RESTART_NOTIFY, to us): SIGUSR1 waits blocked.
    let mut usr1 = nix::sys::signal::SigSet::empty();
    usr1.add(nix::sys::signal::Signal::SIGUSR1);
    let before = usr1
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
        .map_err(|e| Error::sys("sigprocmask", "SIGUSR1", e))?;
    let r = spawn(&crd, &image, st, runs, plans, maps, opts, rd, wr, &usr1);
    let _ = before.thread_set_mask();
    r
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    crd: &Crd,
    image: &File,
    st: ProcessState,
    runs: Vec<RunArg>,
    plans: Vec<memory::Plan>,
    maps: Vec<MapArg>,
    opts: &Options,
    rd: OwnedFd,
    wr: OwnedFd,
    usr1: &nix::sys::signal::SigSet,
) -> Result<Restored> {
    let (pid, pid_note) = fork_as(st.head.pid, opts.require_pid)?;
    if pid == 0 {
        drop(rd);
        let why = child(crd, image, &st, &plans, maps, &runs, opts);
        let mut w = File::from(wr);
        let _ = writeln!(w, "{why}");
        // SAFETY: _exit ends the child at once, without running the parent's atexit handlers.
        unsafe { libc::_exit(1) };
    }
    drop(wr);
    // The child's report: a line if it failed before the module took it; nothing (the module
    // closed the pipe with every fd above 2) once it runs as the image's process. A child
    // stuck before either (a lock a thread of ours held at the fork) is killed after 60 s.
    let give_up = |why: String| {
        // SAFETY: kill takes a pid and a signal.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        Err(Error::Refused(why))
    };
    let mut pfd = libc::pollfd { fd: rd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes the one pollfd, alive across the call.
    if unsafe { libc::poll(&mut pfd, 1, 60_000) } <= 0 {
        return give_up("the restart child did not reach /dev/crd within 60 s: killed".into());
    }
    let mut said = String::new();
    let _ = File::from(rd).read_to_string(&mut said);
    if !said.trim().is_empty() {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(Error::Refused(said.trim().to_string()));
    }
    // Then the module's SIGUSR1 once the process has its registers; or it is gone: the module
    // killed it (the reason is in the kernel log), or its FPU state did not load.
    use nix::sys::wait::{WaitPidFlag, WaitStatus};
    let t = libc::timespec { tv_sec: 0, tv_nsec: 50_000_000 };
    for _ in 0..600 {
        let mut info: libc::siginfo_t = unsafe_zeroed();
        // SAFETY: sigtimedwait reads the set and the timeout and writes one siginfo_t.
        let s = unsafe { libc::sigtimedwait(usr1.as_ref(), &mut info, &t) };
        // SAFETY: si_pid is valid for a signal sent with kill (SI_USER), as the module's is.
        if s == libc::SIGUSR1 && unsafe { info.si_pid() } == pid {
            return Ok(restored(pid, st, opts, pid_note));
        }
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)) => {
                return Err(Error::Refused(
                    "the restart through /dev/crd failed after the process was taken apart; it was killed (see the kernel log)"
                        .into(),
                ));
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Err(Error::Refused(format!("the restarted process died at once of {sig}")));
            }
            Ok(WaitStatus::Exited(_, c)) => {
                return Err(Error::Refused(format!("the restarted process exited at once ({c})")));
            }
            _ => {}
        }
    }
    give_up("the process restarted through /dev/crd did not say it runs within 30 s: killed".into())
}

fn unsafe_zeroed() -> libc::siginfo_t {
    // SAFETY: siginfo_t is plain data; all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Forks the child that becomes the process, with the image's pid `want` when it is free and
/// we may (clone3 with set_tid); returns 0 in the child, as fork does, and in the parent the
/// child's pid and why it is not `want`.
fn fork_as(want: i32, require: bool) -> Result<(i32, Option<String>)> {
    let tid = [want];
    let args = crate::engine::spawn::CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork. The child only runs code of ours until it
    // calls CRD_RESTART or _exit (rstrt is single-threaded here), never the caller's.
    let r = unsafe {
        libc::syscall(libc::SYS_clone3, &args as *const _, std::mem::size_of::<crate::engine::spawn::CloneArgs>())
    };
    if r >= 0 {
        return Ok((r as i32, None));
    }
    let why = match nix::errno::Errno::last() {
        nix::errno::Errno::EEXIST => format!("pid {want} is in use"),
        nix::errno::Errno::EPERM => "restoring a pid needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN".to_string(),
        e => format!("clone3 with set_tid failed: {}", e.desc()),
    };
    if require {
        return Err(Error::Refused(format!("cannot restart as pid {want}: {why} (--require-pid)")));
    }
    // SAFETY: as above.
    let f = unsafe { libc::fork() };
    if f < 0 {
        return Err(Error::sys("fork", "restart child", nix::errno::Errno::last()));
    }
    Ok((f, (f > 0).then_some(why)))
}

fn restored(pid: i32, st: ProcessState, opts: &Options, pid_note: Option<String>) -> Restored {
    let original_pid = st.head.pid;
    // The module made the program the executable (CRD_RESTART_EXE) when the restore maps it
    // from a file here; otherwise it is still crs.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned());
    let exe_kept = st.mm.exe.as_ref().is_some_and(|x| exe.as_deref().ok() != Some(x.path.as_str()));
    Restored {
        pid,
        original_pid,
        pid_note,
        exe_kept,
        null_stdio: opts.null_stdio,
        notes: Vec::new(),
        state: st,
        members: vec![(original_pid, pid)],
        zombies: 0,
        held: None,
        lazy: None,
    }
}

/// In the child: everything user space can set, then CRD_RESTART. Returns only on failure.
fn child(
    crd: &Crd,
    image: &File,
    st: &ProcessState,
    plans: &[memory::Plan],
    mut maps: Vec<MapArg>,
    runs: &[RunArg],
    opts: &Options,
) -> String {
    match prepare(st, plans, &mut maps, opts) {
        Ok(()) => {}
        Err(e) => return e.to_string(),
    }
    let t = &st.threads[0];
    let mut a = super::RestartArg {
        size: std::mem::size_of::<super::RestartArg>() as u32,
        fd: image.as_raw_fd(),
        notify_pid: 0,
        flags: RESTART_NOTIFY | if opts.stop { RESTART_STOP } else { 0 },
        nmaps: maps.len() as u32,
        maps: maps.as_ptr() as u64,
        runs: runs.as_ptr() as u64,
        nruns: runs.len() as u32,
        regs: crate::ptrace::arch::regs_to_array(&t.regs.gpr),
        sigmask: st.signals.blocked,
        dumpable: st.task.dumpable.min(1),
        ..Default::default()
    };
    // The program, once more the executable (/proc/PID/exe), from the mapping of it the restore
    // opened here as the image's user (checked to be the image's very file): the module takes
    // only a file that user may execute.
    let program = st.mm.exe.as_ref().and_then(|x| {
        plans
            .iter()
            .filter(|p| !p.vma.is_special())
            .zip(&maps)
            .position(|(p, m)| m.fd >= 0 && p.from_file && p.vma.file.as_ref().is_some_and(|f| f.path == x.path))
    });
    if let Some(k) = program {
        a.flags |= RESTART_EXE;
        a.exe_map = k as u32;
    }
    let m = &st.mm;
    a.mm = [
        m.start_code,
        m.end_code,
        m.start_data,
        m.end_data,
        m.start_brk,
        m.brk,
        m.start_stack,
        m.arg_start,
        m.arg_end,
        m.env_start,
        m.env_end,
    ];
    for (i, w) in m.auxv.chunks_exact(8).take(64).enumerate() {
        a.auxv[i] = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
    }
    if let Some(r) = st.task.rseq {
        a.rseq = r.ptr;
        a.rseq_len = r.len;
        a.rseq_sig = r.sig;
    }
    let mut reason = [0u8; 256];
    a.reason = reason.as_mut_ptr() as u64;
    a.reason_len = reason.len() as u32;
    // The vdso moves last: from here on, nothing may ask it the time.
    if let Err(e) = move_vdso(&st.vmas) {
        return e.to_string();
    }
    let errno = jump(crd, &t.regs.xsave, &mut a);
    let end = reason.iter().position(|&b| b == 0).unwrap_or(reason.len());
    let why = String::from_utf8_lossy(&reason[..end]).into_owned();
    format!("ioctl(CRD_RESTART) on {}: {}", super::PATH, if why.is_empty() { errno.to_string() } else { why })
}

fn sys(call: &str, what: impl Into<String>) -> Error {
    Error::sys(call, what, nix::errno::Errno::last())
}

/// The child's own setup, in the order that keeps it safe: signals blocked first (a handler of
/// the image must never run in crs's memory), then the image's user (files are opened as that
/// user), its fds, cwd, limits and attributes, its handlers.
fn prepare(st: &ProcessState, plans: &[memory::Plan], maps: &mut [MapArg], opts: &Options) -> Result<()> {
    let all = nix::sys::signal::SigSet::all();
    all.thread_set_mask().map_err(|e| Error::sys("sigprocmask", "restart child", e))?;
    if opts.detach {
        nix::unistd::setsid().map_err(|e| Error::sys("setsid", "restart child", e))?;
    }
    let h = &st.head;
    // Root restoring another user's process gives it none of root's terminal (as the ptrace
    // engine does): its fds 0-2 that would be a terminal of ours are /dev/null.
    let foreign = crate::res::creds::is_root() && h.uids.iter().any(|&u| u != 0);
    let mut null_stdio = opts.null_stdio;
    if foreign {
        for n in 0..3 {
            // SAFETY: isatty only looks at our own fd n.
            if unsafe { libc::isatty(n) } == 1 {
                null_stdio |= 1 << n;
            }
        }
    }
    if crate::res::creds::is_root() && (h.uids != [0; 4] || h.gids != [0; 4]) {
        let groups: Vec<nix::unistd::Gid> = h.groups.iter().map(|&g| nix::unistd::Gid::from_raw(g)).collect();
        nix::unistd::setgroups(&groups).map_err(|e| Error::sys("setgroups", "restart child", e))?;
        // SAFETY: setresgid and setresuid take plain ids.
        if unsafe { libc::setresgid(h.gids[0], h.gids[1], h.gids[2]) } != 0 {
            return Err(sys("setresgid", "restart child"));
        }
        // SAFETY: as above.
        if unsafe { libc::setresuid(h.uids[0], h.uids[1], h.uids[2]) } != 0 {
            return Err(sys("setresuid", "restart child"));
        }
    }
    for f in &st.files {
        let null = f.kind == KIND_STDIO && null_stdio & (1 << f.fd) != 0;
        if f.kind == KIND_STDIO && !null {
            continue;
        }
        let (path, flags) = if null {
            ("/dev/null", libc::O_RDWR)
        } else {
            (f.id.path.as_str(), crate::res::files::reopen_flags(f.flags) as i32)
        };
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(flags & libc::O_ACCMODE != libc::O_WRONLY)
            .write(flags & libc::O_ACCMODE != libc::O_RDONLY)
            // Non-blocking, without taking a terminal: the path was checked, but may name a
            // FIFO by now, whose open would never return. Its own flags are set after.
            .custom_flags((flags & !libc::O_ACCMODE) | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        // SAFETY: F_SETFL on an fd we own takes an int.
        if crate::res::files::settable(flags as u32)
            && unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_ACCMODE) } < 0
        {
            return Err(sys("fcntl(F_SETFL)", path));
        }
        if f.kind == KIND_FILE && crate::res::files::settable(flags as u32) {
            // SAFETY: lseek on an fd we own.
            if unsafe { libc::lseek(file.as_raw_fd(), f.pos as i64, libc::SEEK_SET) } < 0 {
                return Err(sys("lseek", path));
            }
        }
        // SAFETY: dup2 onto fd 0-2 of this child; `file` is closed when dropped.
        if unsafe { libc::dup2(file.as_raw_fd(), f.fd) } < 0 {
            return Err(sys("dup2", path));
        }
    }
    // Fds 0-2 the image did not have open are closed.
    for fd in 0..3 {
        if !st.files.iter().any(|f| f.fd == fd) {
            // SAFETY: closing one of our own fds.
            unsafe { libc::close(fd) };
        }
    }
    // The files of the mappings that come from files, opened as the image's user.
    for (k, p) in plans.iter().filter(|p| !p.vma.is_special()).enumerate() {
        if p.from_file
            && let Some(id) = &p.vma.file
        {
            let write = p.vma.flags & memory::VMA_SHARED != 0 && p.vma.flags & memory::VMA_MAY_WRITE != 0;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(&id.path)
                .map_err(|e| Error::io(&id.path, e))?;
            // Left open: the module takes the file, then closes every fd above 2.
            maps[k].fd = std::os::fd::IntoRawFd::into_raw_fd(f);
        }
    }
    std::env::set_current_dir(&st.cwd).map_err(|e| Error::io(st.cwd.as_str(), e))?;
    // SAFETY: umask takes a mode.
    unsafe { libc::umask(st.task.umask) };
    for (i, &(soft, hard)) in st.rlimits.iter().enumerate() {
        let l = libc::rlimit { rlim_cur: soft, rlim_max: hard };
        // SAFETY: setrlimit reads one struct rlimit.
        if unsafe { libc::setrlimit(i as _, &l) } != 0 {
            return Err(sys("setrlimit", crate::res::rlimits::NAMES.get(i).copied().unwrap_or("?")));
        }
    }
    // SAFETY: personality takes a word; prctl options below take plain words.
    unsafe {
        libc::personality(st.task.personality as libc::c_ulong);
        // Detached, its parent is rstrt, which exits now: the signal would fire at once (as
        // the ptrace engine does).
        if !opts.detach {
            libc::prctl(libc::PR_SET_PDEATHSIG, st.task.pdeathsig as libc::c_ulong, 0, 0, 0);
        }
        if st.thp_disabled {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    // Dumpable only once it is the image's process (the module sets it): until then it holds
    // a copy of our memory and our /dev/crd fd, which its user must not ptrace out of it.
    set_comm(&st.head.comm);
    // The image's handlers, registered only (they run once the image is the process).
    for (i, a) in st.signals.actions.iter().enumerate() {
        let sig = i as i32 + 1;
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let k = [a.handler, a.flags, a.restorer, a.mask];
        // SAFETY: rt_sigaction reads a struct kernel_sigaction (handler, flags, restorer,
        // mask), the 4 words of `k`.
        if unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, k.as_ptr(), 0usize, 8usize) } != 0 {
            return Err(sys("rt_sigaction", format!("signal {sig}")));
        }
    }
    let s = &st.signals;
    let ss = libc::stack_t {
        ss_sp: s.altstack_sp as *mut libc::c_void,
        ss_flags: if s.altstack_flags & libc::SS_DISABLE as u32 != 0 { libc::SS_DISABLE } else { 0 },
        ss_size: s.altstack_size as usize,
    };
    // SAFETY: sigaltstack reads one stack_t; it only registers the address.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        return Err(sys("sigaltstack", "restart child"));
    }
    let (clear_tid, robust) = st.thread_info.first().map_or((0, (0, 0)), |t| (t.clear_tid, t.robust));
    // SAFETY: both only register addresses of the image, not touched until the process uses them.
    unsafe {
        libc::syscall(libc::SYS_set_tid_address, clear_tid);
        if robust.0 != 0 {
            libc::syscall(libc::SYS_set_robust_list, robust.0, robust.1);
        } else {
            libc::syscall(libc::SYS_set_robust_list, 0usize, 24usize);
        }
    }
    Ok(())
}

fn set_comm(comm: &str) {
    let mut b = [0u8; 16];
    let n = comm.len().min(15);
    b[..n].copy_from_slice(&comm.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads up to 16 bytes, NUL-terminated within them.
    unsafe { libc::prctl(libc::PR_SET_NAME, b.as_ptr(), 0, 0, 0) };
}

/// Moves our vdso and vvar where the image has them (the module keeps them, and unmaps the
/// rest): first out of the way if the places overlap, then into place. A place taken by crs's
/// own memory fails the restart (try again: the addresses are random).
fn move_vdso(vmas: &[Vma]) -> Result<()> {
    let own = procfs::read_maps(std::process::id() as i32)?;
    for v in vmas.iter().filter(|v| v.is_special()) {
        if let Some(m) = own.iter().find(|m| !m.is_vdso_or_vvar() && m.start < v.end && v.start < m.end) {
            return Err(Error::Refused(format!(
                "the image's {} at {:#x} is where rstrt has {} here; try again",
                v.name, v.start, m.name
            )));
        }
    }
    let used: Vec<(u64, u64)> = own.iter().map(|m| (m.start, m.end)).collect();
    for (from, to, len, name) in crate::engine::layout::special_moves(&own, vmas, &used)? {
        // SAFETY: moves a whole special mapping of ours to a range that holds nothing of ours
        // but the specials (checked above, or found free); nothing here uses the vdso any more.
        let r = unsafe {
            libc::mremap(
                from as *mut _,
                len as usize,
                len as usize,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(sys("mremap", format!("{name} {from:#x} to {to:#x}")));
        }
    }
    Ok(())
}

/// Refuses an FPU area that XRSTOR (or FXRSTOR) would fault on, or that would make it read
/// past the image's bytes: a header naming components the area is too short for or this CPU
/// lacks, a compacted form, reserved header bytes, an MXCSR with bits its mask forbids.
fn check_xrstor(x: &[u8]) -> Result<()> {
    let bad = |what: &str| Err(Error::Refused(format!("the image's FPU state cannot be loaded here: {what}")));
    let word = |o: usize| x.get(o..o + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if x.is_empty() {
        return Ok(());
    }
    if x.len() < crate::ptrace::arch::FXSAVE_LEN {
        return bad("a short area");
    }
    let mxcsr = word(24) as u32;
    let mask = (word(24) >> 32) as u32;
    let mask = if mask == 0 { 0xffbf } else { mask };
    if mxcsr & !mask != 0 {
        return bad(&format!("MXCSR {mxcsr:#x} has bits its mask {mask:#x} forbids"));
    }
    if x.len() == crate::ptrace::arch::FXSAVE_LEN {
        return Ok(());
    }
    // SAFETY: XGETBV(0) exists on a CPU with XSAVE (check_xstate saw it).
    let xcr0 = unsafe { core::arch::x86_64::_xgetbv(0) };
    let size = core::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize;
    let (bv, comp) = (word(512), word(520));
    if bv & !xcr0 != 0 {
        return bad(&format!("components {:#x} this CPU does not enable", bv & !xcr0));
    }
    if comp != 0 || x[528..576.min(x.len())].iter().any(|&b| b != 0) {
        return bad("a compacted or damaged XSAVE header");
    }
    if bv > 3 && x.len() < size {
        return bad(&format!("{} bytes for components that take {size} here", x.len()));
    }
    Ok(())
}

/// MXCSR's value at process start: every exception masked, round to nearest.
static MXCSR_DEFAULT: u32 = 0x1f80;

/// Loads the image's FPU state and calls CRD_RESTART in one stretch of code that touches no
/// FPU or vector register in between. Returns only if the ioctl failed, with its errno.
fn jump(crd: &Crd, xsave: &[u8], a: &mut super::RestartArg) -> nix::errno::Errno {
    // XRSTOR wants its area 64-byte aligned; zeros past the image's bytes (check_xrstor made
    // sure the header names none of them).
    let size = core::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize;
    let mut buf = vec![0u8; xsave.len().max(size) + 64];
    let off = buf.as_ptr().align_offset(64);
    buf[off..off + xsave.len()].copy_from_slice(xsave);
    let x = buf[off..].as_ptr();
    let fd = crd.0.as_raw_fd() as u64;
    let arg = a as *mut super::RestartArg as u64;
    let ret: i64;
    if xsave.len() > crate::ptrace::arch::FXSAVE_LEN {
        // SAFETY: the area is the image's XSAVE state, checked against this CPU (regs::
        // check_xstate, check_xrstor: components enabled here, standard form, long enough),
        // in a zeroed, 64-byte aligned buffer of the size this CPU's XSAVE takes; XRSTOR with
        // every bit requested loads what it holds. The ioctl that follows replaces this
        // process on success (no return); on failure the x87 state and MXCSR are reset before
        // Rust code runs again, and the vector registers are declared clobbered.
        unsafe {
            core::arch::asm!(
                "mov eax, 0xffffffff",
                "mov edx, 0xffffffff",
                "xrstor64 [{x}]",
                "mov rdx, {a}",
                "mov eax, 16",
                "syscall",
                // Only on failure: the x87 stack empty and MXCSR as the ABI wants them back.
                "fninit",
                "ldmxcsr [{m}]",
                x = in(reg) x,
                a = in(reg) arg,
                m = in(reg) &MXCSR_DEFAULT,
                in("rdi") fd,
                in("rsi") RESTART,
                inout("rax") 0i64 => ret,
                out("rdx") _,
                out("rcx") _,
                out("r11") _,
                clobber_abi("C"),
            );
        }
    } else if xsave.len() == crate::ptrace::arch::FXSAVE_LEN {
        // SAFETY: as above, with the 512-byte FXSAVE area every x86_64 CPU loads.
        unsafe {
            core::arch::asm!(
                "fxrstor64 [{x}]",
                "mov eax, 16",
                "syscall",
                "fninit",
                "ldmxcsr [{m}]",
                x = in(reg) x,
                m = in(reg) &MXCSR_DEFAULT,
                in("rdi") fd,
                in("rsi") RESTART,
                in("rdx") arg,
                inout("rax") 0i64 => ret,
                out("rcx") _,
                out("r11") _,
                clobber_abi("C"),
            );
        }
    } else {
        // SAFETY: the ioctl reads the struct `a` points to, alive across the call.
        ret = unsafe { libc::ioctl(fd as i32, RESTART as _, arg) } as i64;
        if ret < 0 {
            return nix::errno::Errno::last();
        }
    }
    nix::errno::Errno::from_raw(-ret as i32)
}
