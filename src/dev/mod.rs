//! The thin layer over /dev/crd, the kernel backend (kmod/): what the paper calls crslib. It
//! opens the device, issues its ioctls and turns their failures into one-line messages; the
//! module writes the CRF image itself. The structs and numbers mirror kmod/crd.h
//! (tests/crd_abi.rs checks that they agree).

pub mod restart;

use crate::engine::checkpoint::{Options, Report};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

pub const PATH: &str = "/dev/crd";
pub const ABI_VERSION: u32 = 2;

/// crd_checkpoint.flags
pub const KILL: u32 = 1;
pub const NO_BINARY_FILE: u32 = 2;
pub const NO_SHARED_LIBRARIES: u32 = 4;
pub const STOP: u32 = 8;

/// struct crd_checkpoint
#[repr(C)]
#[derive(Debug, Default)]
pub struct CheckpointArg {
    pub size: u32,
    pub fd: i32,
    pub pid: i32,
    pub flags: u32,
    pub reason: u64,
    pub reason_len: u32,
    pub pad: u32,
    pub bytes: u64,
    pub pages: u64,
}

/// struct crd_restart
#[repr(C)]
#[derive(Debug)]
pub struct RestartArg {
    pub size: u32,
    pub fd: i32,
    pub notify_pid: i32,
    pub flags: u32,
    pub reason: u64,
    pub reason_len: u32,
    pub nmaps: u32,
    pub maps: u64,
    pub runs: u64,
    pub nruns: u32,
    pub pad: u32,
    pub mm: [u64; 11],
    pub auxv: [u64; 64],
    pub regs: [u64; 27],
    pub sigmask: u64,
    pub rseq: u64,
    pub rseq_len: u32,
    pub rseq_sig: u32,
    pub dumpable: u32,
    /// With RESTART_EXE: the index in `maps` of the mapping whose file becomes the
    /// executable.
    pub exe_map: u32,
}

impl Default for RestartArg {
    fn default() -> RestartArg {
        RestartArg {
            size: 0,
            fd: -1,
            notify_pid: 0,
            flags: 0,
            reason: 0,
            reason_len: 0,
            nmaps: 0,
            maps: 0,
            runs: 0,
            nruns: 0,
            pad: 0,
            mm: [0; 11],
            auxv: [0; 64],
            regs: [0; 27],
            sigmask: 0,
            rseq: 0,
            rseq_len: 0,
            rseq_sig: 0,
            dumpable: 0,
            exe_map: 0,
        }
    }
}

/// crd_restart.flags
pub const RESTART_NOTIFY: u32 = 1;
pub const RESTART_STOP: u32 = 2;
pub const RESTART_EXE: u32 = 4;

const MAGIC: u64 = 0xCD;
/// _IOC(dir, type, nr, size) of the kernel's asm-generic/ioctl.h.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (MAGIC << 8) | nr
}
const WRITE: u64 = 1;
const READ: u64 = 2;
pub const VERSION: u64 = ioc(0, 0, 0);
pub const CHECKPOINT: u64 = ioc(READ | WRITE, 1, std::mem::size_of::<CheckpointArg>());
pub const RESTART: u64 = ioc(WRITE, 2, std::mem::size_of::<RestartArg>());

/// Which engine checkpoints: the userspace one (ptrace), the kernel module (/dev/crd), or the
/// first when ptrace is permitted and the second otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    #[default]
    Auto,
    Ptrace,
    Crd,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Backend, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "ptrace" => Ok(Backend::Ptrace),
            "crd" => Ok(Backend::Crd),
            _ => Err(format!("--backend {s}: choose auto, ptrace or crd")),
        }
    }
}

/// The open device.
pub struct Crd(pub(crate) File);

impl Crd {
    pub fn open() -> Result<Crd> {
        match File::options().read(true).write(true).open(PATH) {
            Ok(f) => {
                let c = Crd(f);
                let v = c.version()?;
                if v != ABI_VERSION {
                    return Err(Error::Refused(format!(
                        "{PATH} speaks ABI version {v}, this crs version {ABI_VERSION}: load the crd.ko built with this crs"
                    )));
                }
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotHere {
                public: format!(
                    "{PATH} does not exist: load the module (insmod crd.ko, see kmod/README) or use --backend ptrace"
                ),
                detail: String::new(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::Permission(format!(
                "{PATH}: permission denied (the device is root's by default: see the module's mode parameter)"
            ))),
            Err(e) => Err(Error::io(PATH, e)),
        }
    }

    fn version(&self) -> Result<u32> {
        // SAFETY: CRD_VERSION takes no argument; the fd is ours and open.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), VERSION as _, 0) };
        if r < 0 {
            return Err(Error::sys("ioctl(CRD_VERSION)", PATH, Errno::last()));
        }
        Ok(r as u32)
    }

    /// CRD_CHECKPOINT: the module writes the CRF image of `pid` to `fd`; returns its size in
    /// bytes and the pages of memory in it.
    pub fn checkpoint(&self, fd: impl AsFd, pid: i32, flags: u32) -> Result<(u64, u64)> {
        let mut reason = [0u8; 256];
        let mut a = CheckpointArg {
            size: std::mem::size_of::<CheckpointArg>() as u32,
            fd: fd.as_fd().as_raw_fd(),
            pid,
            flags,
            reason: reason.as_mut_ptr() as u64,
            reason_len: reason.len() as u32,
            ..Default::default()
        };
        // SAFETY: `a` is a struct crd_checkpoint (repr(C), the layout of kmod/crd.h) that lives
        // across the call, and its reason buffer is `reason`, 256 bytes that outlive it too.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), CHECKPOINT as _, &mut a as *mut CheckpointArg) };
        if r == 0 {
            return Ok((a.bytes, a.pages));
        }
        let errno = Errno::last();
        let end = reason.iter().position(|&b| b == 0).unwrap_or(reason.len());
        let why = String::from_utf8_lossy(&reason[..end]).into_owned();
        let why = if why.is_empty() { format!("ioctl(CRD_CHECKPOINT) on {PATH} failed: {errno}") } else { why };
        Err(match errno {
            Errno::EPERM => Error::Permission(format!("{PATH}: {why}")),
            Errno::ESRCH => Error::Gone(pid),
            Errno::EOPNOTSUPP | Errno::EAGAIN | Errno::EBUSY => Error::Blocked { pid, reasons: vec![why] },
            _ => Error::Refused(format!("{PATH}: {why}")),
        })
    }
}

/// The CRD_* flags of a checkpoint's options, or why the crd backend cannot do it.
pub fn flags_of(o: &Options) -> Result<u32> {
    let mut unsupported = Vec::new();
    if o.shell_job {
        unsupported.push("--shell-job");
    }
    if o.tcp_established {
        unsupported.push("--tcp-established");
    }
    if o.unix_reconnect {
        unsupported.push("--unix-reconnect");
    }
    if !o.stubs.fds.is_empty() || o.stubs.outside {
        unsupported.push("--stub-fd");
    }
    if o.precopied.is_some() {
        unsupported.push("a live migration");
    }
    if o.postcopy.is_some() {
        unsupported.push("a post-copy migration");
    }
    if !unsupported.is_empty() {
        return Err(Error::Usage(format!(
            "the crd backend does not do {}: use --backend ptrace",
            unsupported.join(", ")
        )));
    }
    let mut f = 0;
    f |= if o.kill { KILL } else { 0 };
    f |= if o.stop { STOP } else { 0 };
    f |= if o.no_binary { NO_BINARY_FILE } else { 0 };
    f |= if o.no_libs { NO_SHARED_LIBRARIES } else { 0 };
    Ok(f)
}

/// Checkpoints `pid` through /dev/crd into `fd`. The module refuses a process with children
/// (it takes one process): the ptrace engine's tree is not cut silently.
pub fn checkpoint(fd: impl AsFd, pid: i32, o: &Options) -> Result<Report> {
    let flags = flags_of(o)?;
    let crd = Crd::open()?;
    refuse_children(pid, o)?;
    let t0 = Instant::now();
    let (bytes, pages) = crd.checkpoint(fd, pid, flags)?;
    Ok(report(pid, bytes, pages, t0.elapsed()))
}

/// Checkpoints `pid` through /dev/crd into any writer (a migration's connection): the module
/// writes into a pipe that this thread pumps into `out`, and leaves the process stopped
/// (CRD_STOP) until `commit` has the image safe; then it is killed (`o.kill`), left stopped
/// (`o.stop`) or continued. If anything fails, it is continued: it runs on as it was (its
/// parent may see it stop and continue, a job-control notice).
pub fn checkpoint_with<W: std::io::Write>(
    pid: i32,
    mut out: W,
    o: &Options,
    commit: impl FnOnce(W) -> Result<()>,
) -> Result<Report> {
    let flags = (flags_of(o)? & !(KILL | STOP)) | STOP;
    refuse_children(pid, o)?;
    let crd = Crd::open()?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", "image", e))?;
    crate::grow_pipe(&wr);
    let t0 = Instant::now();
    let (made, pumped) = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let r = crd.checkpoint(&wr, pid, flags);
            drop(wr);
            r
        });
        let mut from = File::from(rd);
        let pumped = std::io::copy(&mut from, &mut out).and_then(|_| out.flush());
        // A failed copy: the module's next write sees no reader (EPIPE) and lets go.
        drop(from);
        let made = writer.join().unwrap_or_else(|_| Err(Error::Proc("the crd writer thread died".into())));
        (made, pumped)
    });
    let resume = |sig: libc::c_int| {
        // SAFETY: kill takes a pid and a signal.
        unsafe { libc::kill(pid, sig) };
    };
    let (bytes, pages) = made?;
    let report = report(pid, bytes, pages, t0.elapsed());
    if let Err(e) = pumped {
        resume(libc::SIGCONT);
        return Err(Error::io("image", e));
    }
    if let Err(e) = commit(out) {
        resume(libc::SIGCONT);
        return Err(e);
    }
    if o.kill {
        resume(libc::SIGKILL);
    } else if !o.stop {
        resume(libc::SIGCONT);
    }
    Ok(report)
}

/// What a checkpoint through the module did: one process, `bytes` of image, `pages` of memory.
fn report(pid: i32, bytes: u64, pages: u64, frozen: std::time::Duration) -> Report {
    Report {
        pid,
        pages,
        image_bytes: bytes,
        frozen,
        stubs: Vec::new(),
        processes: 1,
        zombies: 0,
        notes: Vec::new(),
        tcp_lock: String::new(),
        ahead: None,
    }
}

/// The module takes one process: the ptrace engine's tree is not cut silently.
fn refuse_children(pid: i32, o: &Options) -> Result<()> {
    if o.alone {
        return Ok(());
    }
    let kids = crate::res::tree::children(pid);
    if kids.is_empty() {
        return Ok(());
    }
    Err(Error::Blocked {
        pid,
        reasons: vec![format!(
            "it has children ({}): the crd backend checkpoints one process; use --backend ptrace, or --alone",
            kids.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" ")
        )],
    })
}

/// Whether a checkpoint the ptrace engine could not do (`why`: PTRACE_SEIZE refused) goes
/// through /dev/crd instead: with the backend `Auto`, when the device is there (said at -v).
pub fn fallback(b: Backend, pid: i32, why: &str) -> bool {
    // Only PTRACE_SEIZE's own refusal (tracee::Tracee::seize), not any other permission.
    let yes = b == Backend::Auto && why.starts_with("may not trace pid") && usable();
    if yes {
        log::info!("ptrace refused on pid {pid} ({why}): checkpointing through {PATH}");
    }
    yes
}

/// The backend a checkpoint of `pid` starts with: `Auto` is crd when Yama forbids this caller
/// to ptrace `pid` (the ptrace engine would fail on its first look at the memory) and
/// /dev/crd is there, else ptrace (which still falls back when its PTRACE_SEIZE is refused).
pub fn choose(b: Backend, pid: i32) -> Backend {
    if b != Backend::Auto || !usable() {
        return b;
    }
    match yama_forbids(pid) {
        Some(why) => {
            log::info!("{why}: checkpointing pid {pid} through {PATH}");
            Backend::Crd
        }
        None => b,
    }
}

/// The backend a restart starts with: `Auto` is crd when Yama forbids us to trace even our own
/// child (the ptrace engine's restore traces the process it makes) and /dev/crd is there.
pub fn choose_restart(b: Backend) -> Backend {
    if b != Backend::Auto || !usable() {
        return if b == Backend::Auto { Backend::Ptrace } else { b };
    }
    // Scope 1 lets a child ask to be traced (PTRACE_TRACEME), as the restore's does.
    match yama_forbids(0) {
        Some(why) if !why.contains("scope is 1") => {
            log::info!("{why}: restarting through {PATH}");
            Backend::Crd
        }
        _ => Backend::Ptrace,
    }
}

/// /dev/crd is there and we may open it.
fn usable() -> bool {
    let Ok(p) = std::ffi::CString::new(PATH) else { return false };
    // SAFETY: access reads a NUL-terminated path.
    unsafe { libc::access(p.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

/// Why Yama (/proc/sys/kernel/yama/ptrace_scope) forbids this process to ptrace `pid`, if it
/// does: scope 3 forbids everyone, 2 whoever lacks CAP_SYS_PTRACE, 1 also unless `pid`
/// descends from us (a PR_SET_PTRACER exception is not looked for: then PTRACE_SEIZE decides).
fn yama_forbids(pid: i32) -> Option<String> {
    let scope: u32 = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok()?.trim().parse().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = crate::ptrace::procfs::status_field(&status, "CapEff")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0);
    const CAP_SYS_PTRACE: u32 = 19;
    let cap = eff & (1 << CAP_SYS_PTRACE) != 0;
    let ours = || {
        let me = std::process::id() as i32;
        let mut p = pid;
        for _ in 0..4096 {
            match crate::ptrace::procfs::read_stat(p).map(|s| s.ppid) {
                Ok(q) if q == me => return true,
                Ok(q) if q > 1 => p = q,
                _ => return false,
            }
        }
        false
    };
    match scope {
        3 => Some("Yama's ptrace_scope is 3: ptrace is forbidden".into()),
        2 if !cap => Some("Yama's ptrace_scope is 2: ptrace needs CAP_SYS_PTRACE".into()),
        1 if !cap && !ours() => Some(format!("Yama's ptrace_scope is 1: pid {pid} does not descend from crs")),
        _ => None,
    }
}
