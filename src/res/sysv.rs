//! SYSVIPC: the System V semaphore sets, message queues and shared memory segments the
//! processes use (a pre-forked server's lock, an old database's buffers), each with its key,
//! id, owner, mode and contents: every semaphore's value, every queued message with its type
//! in order, the segment's data (holes stay holes).
//!
//! Which objects are the processes': when they have an IPC namespace of their own, every
//! object in it (the image says so, and a restore makes a new namespace for them). Otherwise,
//! in the namespace they share with others: every segment a process maps or last attached or
//! created, every semaphore set a process last operated on (any semaphore's sempid), every
//! queue a process last sent to or received from. An object nobody of the tree ever touched is
//! not theirs.
//!
//! A restore makes each object again before the processes exist, as root, with its key and
//! its id (through /proc/sys/kernel/{sem,msg,shm}_next_id: programs keep ids), its owner and
//! mode; a segment's mappings are attached again with shmat at their addresses. An id or a key
//! in use here is refused, naming the object, unless `rstrt --ipcns` gives the tree a
//! namespace of its own. What is not kept, said in man/ckpt.1: the creator's ids (the
//! restorer's), times, the last pids, and SEM_UNDO adjustments (the kernel shows none).

use super::runs::Run;
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::os::fd::AsRawFd;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Perm {
    pub key: i32,
    pub id: i32,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits; a segment's also SHM_DEST (removed, still attached) and SHM_LOCKED.
    pub mode: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ipc {
    /// The processes had an IPC namespace of their own: these are all its objects.
    pub own_ns: bool,
    pub sems: Vec<(Perm, Vec<u16>)>,
    pub msgs: Vec<Queue>,
    pub shms: Vec<Segment>,
}

/// A message queue: (perm, msg_qbytes, its messages (type, text) in queue order).
pub type Queue = (Perm, u64, Vec<(i64, Vec<u8>)>);
/// A shared memory segment: (perm, size, its runs of data).
pub type Segment = (Perm, u64, Vec<Run>);

impl Ipc {
    pub fn is_empty(&self) -> bool {
        !self.own_ns && self.sems.is_empty() && self.msgs.is_empty() && self.shms.is_empty()
    }

    /// The data it carries, in bytes (counted against `ckpt --deleted-max`).
    pub fn data_len(&self) -> u64 {
        let m: usize = self.msgs.iter().flat_map(|q| q.2.iter()).map(|m| m.1.len()).sum();
        m as u64 + self.shms.iter().map(|s| super::runs::len(&s.2)).sum::<u64>()
    }
}

/// SHM_DEST and SHM_LOCKED as a segment's mode shows them.
const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;
const SEMVMX: u16 = 32767;

/// One line of /proc/sysvipc/{sem,msg,shm}, as numbers (keys and ids are signed).
fn table(kind: &str) -> Result<Vec<Vec<i64>>> {
    let path = format!("/proc/sysvipc/{kind}");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let mut row = Vec::new();
        for (i, w) in line.split_whitespace().enumerate() {
            // perms is octal; the rest decimal.
            let v = if i == 2 { i64::from_str_radix(w, 8) } else { w.parse() };
            row.push(v.map_err(|_| Error::Proc(format!("{path}: unexpected line {line:?}")))?);
        }
        out.push(row);
    }
    Ok(out)
}

fn perm(row: &[i64], uid_at: usize) -> Perm {
    let g = |i: usize| row.get(i).copied().unwrap_or(0);
    Perm { key: g(0) as i32, id: g(1) as i32, mode: g(2) as u32, uid: g(uid_at) as u32, gid: g(uid_at + 1) as u32 }
}

/// The objects processes `tree` use, with their contents (see the module's doc), refusing past
/// `limit` bytes of data. `attached`: the ids of the segments they map. Runs in the
/// processes' IPC namespace (a thread of ours joins it when it is not ours).
pub fn collect(tree: &[i32], attached: &[i32], limit: u64) -> Result<Ipc> {
    let Some(&first) = tree.first() else { return Ok(Ipc::default()) };
    let tree = started(tree)?;
    let theirs = format!("/proc/{first}/ns/ipc");
    let ns = std::fs::read_link(&theirs).map_err(|e| Error::io(&theirs, e))?;
    let ours = std::fs::read_link("/proc/self/ns/ipc").map_err(|e| Error::io("/proc/self/ns/ipc", e))?;
    if ns == ours {
        return collect_here(&tree, attached, limit, false);
    }
    let ns_file = std::fs::File::open(&theirs).map_err(|e| Error::io(&theirs, e))?;
    let attached = attached.to_vec();
    let t = std::thread::spawn(move || {
        // SAFETY: setns takes an fd we hold open and a flag; it moves only this thread, which
        // ends after the collection.
        if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWIPC) } != 0 {
            return Err(match Errno::last() {
                Errno::EPERM => Error::Permission(format!(
                    "pid {first} has an IPC namespace of its own, which only root may read (run ckpt as root)"
                )),
                e => Error::sys("setns(CLONE_NEWIPC)", format!("pid {first}"), e),
            });
        }
        collect_here(&tree, &attached, limit, true)
    });
    t.join().map_err(|_| Error::Proc("the System V IPC reader failed".into()))?
}

/// One of the tree's processes as System V objects name them: its pid, when it started (in
/// seconds since the epoch), and its ids (real, effective, saved, filesystem uid).
#[derive(Clone, Copy)]
struct Named {
    pid: i32,
    start: i64,
    uids: [u32; 4],
}

/// Processes `tree` as [`Named`]. A start is counted on the boot-time clock (suspends
/// included): the real-time clock now, less the time since. (/proc/stat's btime would move
/// with every suspend, and a segment a process made before one would seem older than it.)
fn started(tree: &[i32]) -> Result<Vec<Named>> {
    let now = |clock| {
        // SAFETY: a zeroed timespec is a valid value; clock_gettime writes into ours.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    };
    let (real, boot) = (now(libc::CLOCK_REALTIME), now(libc::CLOCK_BOOTTIME));
    // SAFETY: sysconf takes an integer and reads no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = Vec::with_capacity(tree.len());
    for &pid in tree {
        let ticks = crate::ptrace::procfs::read_stat(pid)?.starttime;
        let status = crate::ptrace::procfs::read_status(pid)?;
        let uids = crate::ptrace::procfs::status_ids(&status, "Uid")
            .ok_or_else(|| Error::Proc(format!("/proc/{pid}/status: no Uid line")))?;
        out.push(Named { pid, start: (real - boot + ticks as f64 / hz).floor() as i64, uids });
    }
    Ok(out)
}

/// Whether `pid`, last seen on an object at time `at` (seconds since the epoch, the latest of
/// the object's times) and made by user `cuid`, is one of processes `tree`. A pid an object
/// names may be a dead process's that one of the tree got again: the object is the tree's if
/// it was touched since that process started (a second's slack: both are rounded), or was
/// made by that process's own user (a clock set forward since would otherwise leave an
/// object it made and left alone out of its image).
fn ours(tree: &[Named], pid: i64, at: i64, cuid: i64) -> bool {
    let own = |n: &Named| n.uids.iter().any(|&u| i64::from(u) == cuid);
    pid > 0 && tree.iter().any(|n| i64::from(n.pid) == pid && (at + 1 >= n.start || own(n)))
}

fn collect_here(tree: &[Named], attached: &[i32], limit: u64, own_ns: bool) -> Result<Ipc> {
    let mut ipc = Ipc { own_ns, ..Default::default() };
    // key semid perms nsems uid gid cuid cgid otime ctime
    for row in table("sem")? {
        let p = perm(&row, 4);
        let n = row.get(3).copied().unwrap_or(0) as usize;
        let at = row.get(8).copied().unwrap_or(0).max(row.get(9).copied().unwrap_or(0));
        let what = format!("System V semaphore set {} (key {:#x})", p.id, p.key);
        let mut pids = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: semctl(GETPID) takes integers only.
            let pid = unsafe { libc::semctl(p.id, i as i32, libc::GETPID) };
            match Errno::last() {
                _ if pid >= 0 => pids.push(pid as i64),
                // Another user's, which the processes (ours, as crs is) could not use either.
                Errno::EACCES | Errno::EPERM => break,
                Errno::EINVAL | Errno::EIDRM => break, // removed meanwhile
                e => return Err(Error::sys("semctl(GETPID)", &what, e)),
            }
        }
        let cuid = row.get(6).copied().unwrap_or(-1);
        if !own_ns && !pids.into_iter().any(|pid| ours(tree, pid, at, cuid)) {
            continue;
        }
        let mut values = vec![0u16; n.max(1)];
        // SAFETY: GETALL writes nsems unsigned shorts into `values`, which holds that many.
        if unsafe { libc::semctl(p.id, 0, libc::GETALL, values.as_mut_ptr()) } < 0 {
            return Err(Error::sys("semctl(GETALL)", &what, Errno::last()));
        }
        values.truncate(n);
        ipc.sems.push((p, values));
    }
    let mut data = 0u64;
    let mut count = |n: usize, what: &str| {
        data += n as u64;
        if data > limit {
            return Err(Error::Refused(format!(
                "{what} holds more data than the {limit} bytes the image may still carry of deleted files, memfds and System V objects (ckpt --deleted-max)"
            )));
        }
        Ok(())
    };
    // key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime
    for row in table("msg")? {
        let p = perm(&row, 7);
        let g = |i: usize| row.get(i).copied().unwrap_or(0);
        let (at, cuid) = (g(11).max(g(12)).max(g(13)), g(9));
        if !own_ns && !ours(tree, g(5), at, cuid) && !ours(tree, g(6), at, cuid) {
            continue;
        }
        let what = format!("System V message queue {} (key {:#x})", p.id, p.key);
        // SAFETY: IPC_STAT fills the zeroed struct we own.
        let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::msgctl(p.id, libc::IPC_STAT, &mut ds) } != 0 {
            match Errno::last() {
                Errno::EACCES | Errno::EPERM | Errno::EINVAL | Errno::EIDRM => continue, // not readable: not theirs; or gone
                e => return Err(Error::sys("msgctl(IPC_STAT)", &what, e)),
            }
        }
        let mut msgs = Vec::new();
        let max = (ds.msg_qbytes as usize).max(1);
        let mut buf = vec![0u8; 8 + max];
        for i in 0..ds.msg_qnum as i64 {
            let flags = libc::IPC_NOWAIT | libc::MSG_COPY | libc::MSG_NOERROR;
            // SAFETY: msgrcv writes a long and at most `max` bytes into `buf`, which holds
            // both. With MSG_COPY the message stays queued; the type argument is its index.
            let n = unsafe { libc::msgrcv(p.id, buf.as_mut_ptr().cast(), max, i, flags) };
            if n < 0 {
                return Err(match Errno::last() {
                    Errno::ENOSYS => Error::not_here(
                        format!("{what} has messages queued, which this kernel cannot copy"),
                        "msgrcv(MSG_COPY) needs CONFIG_CHECKPOINT_RESTORE",
                    ),
                    e => Error::sys("msgrcv(MSG_COPY)", &what, e),
                });
            }
            let n = n as usize;
            count(n, &what)?;
            let mtype = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
            msgs.push((mtype, buf[8..8 + n].to_vec()));
        }
        ipc.msgs.push((p, ds.msg_qbytes, msgs));
    }
    // key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime rss swap
    for row in table("shm")? {
        let p = perm(&row, 7);
        let g = |i: usize| row.get(i).copied().unwrap_or(0);
        let (at, cuid) = (g(11).max(g(12)).max(g(13)), g(9));
        if !own_ns && !attached.contains(&p.id) && !ours(tree, g(4), at, cuid) && !ours(tree, g(5), at, cuid) {
            continue;
        }
        let size = g(3) as u64;
        let what = format!("System V shared memory {} (key {:#x})", p.id, p.key);
        if hugetlb(p.id) {
            return Err(Error::Refused(format!("{what} is of huge pages (SHM_HUGETLB), which crs does not restore")));
        }
        let runs = read_segment(p.id, size, &what, &mut count)?;
        ipc.shms.push((p, size, runs));
    }
    Ok(ipc)
}

/// Whether segment `id` is of huge pages (SHM_HUGETLB, which neither its mode nor its
/// shmid_ds shows): its file, through an attachment of ours, is on hugetlbfs.
fn hugetlb(id: i32) -> bool {
    let Some(a) = Attach::new(id, libc::SHM_RDONLY) else { return false };
    // SAFETY: statfs reads a NUL-terminated path and fills the zeroed struct we own.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    let link = std::ffi::CString::new(a.link()).unwrap_or_default();
    // SAFETY: as above.
    unsafe { libc::statfs(link.as_ptr(), &mut sfs) == 0 && sfs.f_type == libc::HUGETLBFS_MAGIC }
}

/// A segment attached in this process, detached when dropped.
struct Attach {
    at: *mut libc::c_void,
    len: u64,
}

impl Attach {
    fn new(id: i32, flags: i32) -> Option<Attach> {
        // SAFETY: shmat maps the segment where the kernel chooses; nothing else uses that range.
        let at = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if at as isize == -1 {
            return None;
        }
        // SAFETY: an all-zero shmid_ds is a valid value of this plain C struct.
        let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
        // SAFETY: IPC_STAT fills the zeroed struct we own.
        let len = if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == 0 { ds.shm_segsz as u64 } else { 0 };
        Some(Attach { at, len: len.div_ceil(4096) * 4096 })
    }

    /// Our mapping as a file (the segment's shmem file).
    fn link(&self) -> String {
        let a = self.at as u64;
        format!("/proc/self/map_files/{a:x}-{:x}", a + self.len)
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        // SAFETY: `at` is our attachment, which nothing refers to any more.
        unsafe { libc::shmdt(self.at) };
    }
}

/// The runs of data of segment `id` (`size` bytes), read through the file our own read-only
/// attachment maps: its holes are skipped without being touched. Without the privilege to
/// open that file (/proc/self/map_files needs CAP_SYS_ADMIN), read through the attachment,
/// page by page, pages of zeros left out (reading a hole gives it a page).
fn read_segment(id: i32, size: u64, what: &str, count: &mut dyn FnMut(usize, &str) -> Result<()>) -> Result<Vec<Run>> {
    let a = Attach::new(id, libc::SHM_RDONLY).ok_or_else(|| Error::sys("shmat", what, Errno::last()))?;
    let link = a.link();
    let f = match std::fs::File::open(&link) {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
            let mut runs: Vec<Run> = Vec::new();
            // SAFETY: the attachment maps `a.len` >= `size` readable bytes, ours until dropped.
            let all = unsafe { std::slice::from_raw_parts(a.at as *const u8, size as usize) };
            for (i, page) in all.chunks(4096).enumerate() {
                let off = (i * 4096) as u64;
                if page.iter().all(|&b| b == 0) {
                    continue;
                }
                count(page.len(), what)?;
                match runs.last_mut() {
                    Some((s, v)) if *s + v.len() as u64 == off => v.extend_from_slice(page),
                    _ => runs.push((off, page.to_vec())),
                }
            }
            return Ok(runs);
        }
        Err(e) => return Err(Error::io(&link, e)),
    };
    super::runs::read(&f, size, &link, &mut |n| count(n, what))
}

/// The objects a restore made, removed again if it fails (dropped before `keep`).
#[derive(Default)]
pub struct Made {
    /// (what, remove it): sems and queues, then segments.
    made: Vec<(char, i32)>,
    /// Segments removed already when checkpointed (SHM_DEST): removed once attached again.
    doomed: Vec<i32>,
}

impl Made {
    /// Every process is made and has attached its segments: those that were removed while
    /// attached are removed again (they live as long as they are attached), before any
    /// process runs and may look.
    pub fn remove_doomed(&mut self) {
        for id in std::mem::take(&mut self.doomed) {
            // SAFETY: shmctl(IPC_RMID) takes integers only.
            unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
            self.made.retain(|&(k, i)| (k, i) != ('m', id));
        }
    }

    /// The restore succeeded: the objects stay.
    pub fn keep(mut self) {
        self.made.clear();
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for &(k, id) in &self.made {
            // SAFETY: the *ctl(IPC_RMID) calls take integers only (no buffer for IPC_RMID).
            unsafe {
                match k {
                    's' => libc::semctl(id, 0, libc::IPC_RMID),
                    'q' => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                    _ => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                }
            };
        }
    }
}

/// Writes `/proc/sys/kernel/{kind}_next_id`, so the next object of that kind gets `id`.
fn next_id(kind: &str, id: i32) -> Result<()> {
    let path = format!("/proc/sys/kernel/{kind}_next_id");
    std::fs::write(&path, id.to_string()).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            Error::Permission(format!("System V IPC ids are kept only by root (writing {path}): run rstrt as root"))
        }
        _ => Error::io(&path, e),
    })
}

/// Refuses when `id` or `key` names an object of this kind here already.
fn free(kind: char, p: &Perm, what: &str) -> Result<()> {
    // SAFETY: the *ctl(IPC_STAT) calls fill zeroed structs we own; *get without IPC_CREAT
    // only looks the key up.
    let (id_used, key_used) = unsafe {
        match kind {
            's' => {
                let mut ds: libc::semid_ds = std::mem::zeroed();
                (libc::semctl(p.id, 0, libc::IPC_STAT, &mut ds) == 0, p.key != 0 && libc::semget(p.key, 0, 0) >= 0)
            }
            'q' => {
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                (libc::msgctl(p.id, libc::IPC_STAT, &mut ds) == 0, p.key != 0 && libc::msgget(p.key, 0) >= 0)
            }
            _ => {
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                (libc::shmctl(p.id, libc::IPC_STAT, &mut ds) == 0, p.key != 0 && libc::shmget(p.key, 0, 0) >= 0)
            }
        }
    };
    let (by_id, by_key) = match kind {
        's' => ("-s", "-S"),
        'q' => ("-q", "-Q"),
        _ => ("-m", "-M"),
    };
    if id_used || key_used {
        let (which, rm) = if id_used {
            (format!("its id {} is", p.id), format!("ipcrm {by_id} {}", p.id))
        } else {
            (format!("its key {:#x} is", p.key), format!("ipcrm {by_key} {:#x}", p.key))
        };
        return Err(Error::not_here(
            format!("{what} cannot be made again: {which} in use here"),
            format!(
                "if that is the checkpointed processes' own, left behind, remove it ({rm}); or restore with rstrt --ipcns"
            ),
        ));
    }
    Ok(())
}

/// Refuses an object an image gives an owner its process could not give it (another user's
/// key, squatted for them, is the danger), or more room than this node grants a queue: only
/// an image of root's may.
fn claims(ipc: &Ipc, h: &super::head::Header) -> Result<()> {
    if h.uids.iter().all(|&u| u == 0) {
        return Ok(());
    }
    let gids: Vec<u32> = h.gids.iter().chain(&h.groups).copied().collect();
    let perms = ipc.sems.iter().map(|s| &s.0).chain(ipc.msgs.iter().map(|q| &q.0)).chain(ipc.shms.iter().map(|s| &s.0));
    for p in perms {
        if !h.uids.contains(&p.uid) || !gids.contains(&p.gid) {
            return Err(Error::Permission(format!(
                "the image's System V object {} (key {:#x}) belongs to uid {} gid {}, which its process (uid {}) may not give",
                p.id, p.key, p.uid, p.gid, h.uids[0]
            )));
        }
    }
    let most = std::fs::read_to_string("/proc/sys/kernel/msgmnb").ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(q) = ipc.msgs.iter().find(|q| most.is_some_and(|m| q.1 > m)) {
        return Err(Error::Permission(format!(
            "the image's System V message queue {} holds up to {} bytes, more than this node grants (kernel.msgmnb) to a process that is not root's",
            q.0.id, q.1
        )));
    }
    Ok(())
}

/// Makes every object of `ipc` here, in this thread's IPC namespace (a new one first when the
/// processes had their own, or `new_ns`), with its id, key, owner, mode and contents, once `h`
/// (the first process's header, whose ids the caller has checked) allows each owner.
pub fn create_here(ipc: &Ipc, h: &super::head::Header, new_ns: bool) -> Result<Made> {
    claims(ipc, h)?;
    let mut made = Made::default();
    if ipc.own_ns || new_ns {
        // SAFETY: unshare takes flags only; it moves this thread, whose children the
        // processes will be, to a new IPC namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWIPC) } != 0 {
            return Err(match Errno::last() {
                Errno::EPERM => Error::Permission(
                    "a new IPC namespace (rstrt --ipcns, or the processes had one of their own) needs CAP_SYS_ADMIN: run rstrt as root, or add --pidns (a user namespace of its own)".into(),
                ),
                e => Error::sys("unshare(CLONE_NEWIPC)", "rstrt", e),
            });
        }
    }
    let set = |kind: char, p: &Perm, what: &str| -> Result<()> {
        // SAFETY: IPC_STAT then IPC_SET on zeroed structs we own, of the matching kind.
        let r = unsafe {
            match kind {
                's' => {
                    let mut ds: libc::semid_ds = std::mem::zeroed();
                    libc::semctl(p.id, 0, libc::IPC_STAT, &mut ds);
                    (ds.sem_perm.uid, ds.sem_perm.gid, ds.sem_perm.mode) = (p.uid, p.gid, (p.mode & 0o777) as u16);
                    libc::semctl(p.id, 0, libc::IPC_SET, &mut ds)
                }
                'q' => 0,
                _ => {
                    let mut ds: libc::shmid_ds = std::mem::zeroed();
                    libc::shmctl(p.id, libc::IPC_STAT, &mut ds);
                    (ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.mode) = (p.uid, p.gid, (p.mode & 0o777) as u16);
                    libc::shmctl(p.id, libc::IPC_SET, &mut ds)
                }
            }
        };
        if r != 0 {
            return Err(Error::sys("IPC_SET", what, Errno::last()));
        }
        Ok(())
    };
    let got = |id: i32, p: &Perm, call: &str, what: &str| -> Result<()> {
        if id < 0 {
            return Err(Error::sys(call, what, Errno::last()));
        }
        if id != p.id {
            return Err(Error::not_here(
                format!("{what} cannot be made again with its id"),
                format!("{call} gave id {id}: another process made one meanwhile"),
            ));
        }
        Ok(())
    };
    let create = libc::IPC_CREAT | libc::IPC_EXCL | 0o600;
    for (p, values) in &ipc.sems {
        let what = format!("System V semaphore set {} (key {:#x})", p.id, p.key);
        free('s', p, &what)?;
        next_id("sem", p.id)?;
        // SAFETY: semget takes integers only.
        let id = unsafe { libc::semget(p.key, values.len() as i32, create) };
        if id < 0 {
            // Not used: the node's next object must not get it.
            let _ = std::fs::write("/proc/sys/kernel/sem_next_id", "-1");
        }
        if id >= 0 {
            made.made.push(('s', id));
        }
        got(id, p, "semget", &what)?;
        if values.iter().any(|&v| v > SEMVMX) {
            return Err(Error::Refused(format!("{what}: a value past {SEMVMX}: the image is damaged")));
        }
        let mut v = values.clone();
        // SAFETY: SETALL reads nsems unsigned shorts from `v`, which holds that many.
        if !v.is_empty() && unsafe { libc::semctl(id, 0, libc::SETALL, v.as_mut_ptr()) } != 0 {
            return Err(Error::sys("semctl(SETALL)", &what, Errno::last()));
        }
        set('s', p, &what)?;
    }
    for (p, qbytes, msgs) in &ipc.msgs {
        let what = format!("System V message queue {} (key {:#x})", p.id, p.key);
        free('q', p, &what)?;
        next_id("msg", p.id)?;
        // SAFETY: msgget takes integers only.
        let id = unsafe { libc::msgget(p.key, create) };
        if id < 0 {
            // Not used: the node's next object must not get it.
            let _ = std::fs::write("/proc/sys/kernel/msg_next_id", "-1");
        }
        if id >= 0 {
            made.made.push(('q', id));
        }
        got(id, p, "msgget", &what)?;
        // Its size first (raising it past msgmnb needs CAP_SYS_RESOURCE: root's), then its
        // owner and mode, then the messages (as root: the mode may forbid writing).
        // SAFETY: IPC_STAT then IPC_SET on a zeroed struct we own.
        let r = unsafe {
            let mut ds: libc::msqid_ds = std::mem::zeroed();
            libc::msgctl(id, libc::IPC_STAT, &mut ds);
            ds.msg_qbytes = *qbytes;
            (ds.msg_perm.uid, ds.msg_perm.gid, ds.msg_perm.mode) = (p.uid, p.gid, (p.mode & 0o777) as u16);
            libc::msgctl(id, libc::IPC_SET, &mut ds)
        };
        if r != 0 {
            return Err(Error::sys("msgctl(IPC_SET)", &what, Errno::last()));
        }
        for (mtype, text) in msgs {
            if *mtype <= 0 {
                return Err(Error::Refused(format!("{what}: a message of type {mtype}: the image is damaged")));
            }
            let mut buf = mtype.to_ne_bytes().to_vec();
            buf.extend_from_slice(text);
            // SAFETY: msgsnd reads a long and `text.len()` bytes from `buf`, which holds both.
            if unsafe { libc::msgsnd(id, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) } != 0 {
                return Err(Error::sys("msgsnd", &what, Errno::last()));
            }
        }
    }
    for (p, size, runs) in &ipc.shms {
        let what = format!("System V shared memory {} (key {:#x})", p.id, p.key);
        free('m', p, &what)?;
        next_id("shm", p.id)?;
        // A segment removed while attached has key IPC_PRIVATE by then.
        // SAFETY: shmget takes integers only.
        let id = unsafe { libc::shmget(p.key, *size as usize, create) };
        if id < 0 {
            // Not used: the node's next object must not get it.
            let _ = std::fs::write("/proc/sys/kernel/shm_next_id", "-1");
        }
        if id >= 0 {
            made.made.push(('m', id));
        }
        got(id, p, "shmget", &what)?;
        if !runs.is_empty() {
            let a = Attach::new(id, 0).ok_or_else(|| Error::sys("shmat", &what, Errno::last()))?;
            for (at, data) in runs {
                if at + data.len() as u64 > a.len {
                    return Err(Error::Refused(format!("{what}: data past its end: the image is damaged")));
                }
                // SAFETY: the range lies inside our attachment (checked above), which is
                // ours alone until it is detached.
                unsafe {
                    std::ptr::copy_nonoverlapping(data.as_ptr(), (a.at as *mut u8).add(*at as usize), data.len())
                };
            }
        }
        if p.mode & SHM_LOCKED != 0 {
            // SAFETY: shmctl(SHM_LOCK) takes integers only.
            if unsafe { libc::shmctl(id, libc::SHM_LOCK, std::ptr::null_mut()) } != 0 {
                return Err(Error::sys("shmctl(SHM_LOCK)", &what, Errno::last()));
            }
        }
        set('m', p, &what)?;
        if p.mode & SHM_DEST != 0 {
            made.doomed.push(id);
        }
    }
    Ok(made)
}

pub fn encode(ipc: &Ipc) -> Vec<u8> {
    let mut e = Enc::new();
    let perm = |e: &mut Enc, p: &Perm| {
        e.u32(p.key as u32).u32(p.id as u32).u32(p.uid).u32(p.gid).u32(p.mode);
    };
    e.u8(ipc.own_ns as u8);
    e.u32(ipc.sems.len() as u32);
    for (p, values) in &ipc.sems {
        perm(&mut e, p);
        e.u32(values.len() as u32);
        for v in values {
            e.u32(*v as u32);
        }
    }
    e.u32(ipc.msgs.len() as u32);
    for (p, qbytes, msgs) in &ipc.msgs {
        perm(&mut e, p);
        e.u64(*qbytes).u32(msgs.len() as u32);
        for (t, text) in msgs {
            e.u64(*t as u64).bytes(text);
        }
    }
    e.u32(ipc.shms.len() as u32);
    for (p, size, runs) in &ipc.shms {
        perm(&mut e, p);
        e.u64(*size);
        super::runs::encode(&mut e, runs);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Ipc> {
    let mut d = Dec::new(b, at, "SYSVIPC");
    let perm = |d: &mut Dec| -> CrfResult<Perm> {
        Ok(Perm { key: d.u32()? as i32, id: d.u32()? as i32, uid: d.u32()?, gid: d.u32()?, mode: d.u32()? })
    };
    let mut ipc = Ipc { own_ns: d.u8()? != 0, ..Default::default() };
    let mut ids: Vec<(char, i32)> = Vec::new();
    let mut check = |d: &Dec, rec: u64, kind: char, p: &Perm, ok: bool| {
        let dup = ids.contains(&(kind, p.id));
        ids.push((kind, p.id));
        if !ok || dup || p.id < 0 || p.mode & !0o3777 != 0 {
            return Err(d.bad_at(rec, format!("System V object {} (key {:#x}) invalid or listed twice", p.id, p.key)));
        }
        Ok(())
    };
    for _ in 0..d.count(24)? {
        let rec = d.offset();
        let p = perm(&mut d)?;
        let n = d.count(4)?;
        let values = (0..n).map(|_| d.u32()).collect::<CrfResult<Vec<u32>>>()?;
        check(&d, rec, 's', &p, n > 0 && values.iter().all(|&v| v <= SEMVMX as u32))?;
        ipc.sems.push((p, values.into_iter().map(|v| v as u16).collect()));
    }
    for _ in 0..d.count(32)? {
        let rec = d.offset();
        let p = perm(&mut d)?;
        let qbytes = d.u64()?;
        let mut msgs = Vec::new();
        for _ in 0..d.count(12)? {
            msgs.push((d.u64()? as i64, d.bytes()?.to_vec()));
        }
        check(&d, rec, 'q', &p, msgs.iter().all(|m| m.0 > 0))?;
        ipc.msgs.push((p, qbytes, msgs));
    }
    for _ in 0..d.count(32)? {
        let rec = d.offset();
        let p = perm(&mut d)?;
        let size = d.u64()?;
        let runs = super::runs::decode(&mut d, size)?;
        check(&d, rec, 'm', &p, size > 0 && runs.is_some())?;
        ipc.shms.push((p, size, runs.unwrap_or_default()));
    }
    d.finish()?;
    Ok(ipc)
}

/// crfinfo's lines.
pub fn describe(ipc: &Ipc) -> Vec<String> {
    let mut out = Vec::new();
    if ipc.own_ns {
        out.push("sysv:      an IPC namespace of their own".into());
    }
    let head = |p: &Perm| format!("id {} key {:#x} uid {} gid {} mode {:o}", p.id, p.key, p.uid, p.gid, p.mode);
    for (p, v) in &ipc.sems {
        let vals: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        out.push(format!("sysv sem:  {}, values {}", head(p), vals.join(" ")));
    }
    for (p, q, m) in &ipc.msgs {
        let bytes: usize = m.iter().map(|x| x.1.len()).sum();
        out.push(format!("sysv msg:  {}, {} messages ({bytes} bytes), at most {q} bytes", head(p), m.len()));
    }
    for (p, size, runs) in &ipc.shms {
        out.push(format!("sysv shm:  {}, {size} bytes ({} of data)", head(p), super::runs::len(runs)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: usize = 1 << 20;

    #[test]
    fn round_trip() {
        let p = |id| Perm { key: 0x1234, id, uid: 1, gid: 2, mode: 0o640 };
        let ipc = Ipc {
            own_ns: true,
            sems: vec![(p(3), vec![1, 0, 32767])],
            msgs: vec![(p(4), 16384, vec![(1, b"one".to_vec()), (7, vec![])])],
            shms: vec![(p(5), 3 << 20, vec![(0, vec![9; 5]), (1 << 20, vec![8; CHUNK + 3])])],
        };
        assert_eq!(decode(&encode(&ipc), 0).unwrap(), ipc);
        let mut bad = ipc.clone();
        bad.sems.push((p(3), vec![1]));
        assert!(decode(&encode(&bad), 0).is_err());
    }

    #[test]
    fn a_users_image_gives_its_objects_only_its_own_ids() {
        let user = crate::res::head::Header { uids: [1; 4], gids: [2; 4], ..Default::default() };
        let mine = Perm { key: 7, id: 1, uid: 1, gid: 2, mode: 0o600 };
        let ipc = |p: Perm| Ipc { sems: vec![(p, vec![1])], ..Default::default() };
        assert!(claims(&ipc(mine.clone()), &user).is_ok());
        let e = claims(&ipc(Perm { uid: 0, ..mine.clone() }), &user).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 0 gid 2"), "{e}");
        let root = crate::res::head::Header { uids: [0; 4], ..Default::default() };
        assert!(claims(&ipc(Perm { uid: 5, gid: 5, ..mine }), &root).is_ok());
    }

    #[test]
    fn a_pid_on_an_object_is_the_trees_if_touched_since_it_started_or_made_by_its_user() {
        let tree = [Named { pid: 40, start: 1000, uids: [0; 4] }, Named { pid: 41, start: 2000, uids: [7; 4] }];
        assert!(ours(&tree, 40, 1500, 101));
        assert!(ours(&tree, 41, 1999, 101), "both are rounded: a second's slack");
        assert!(!ours(&tree, 41, 1500, 101), "another user's, from before: a dead process's, its pid given again");
        assert!(ours(&tree, 41, 1500, 7), "its own user's: kept, whatever the clock did");
        assert!(!ours(&tree, 42, 3000, 7));
        assert!(!ours(&tree, 0, 3000, 7));
    }

    #[test]
    fn a_segment_this_process_made_is_collected_as_its() {
        // SAFETY: shmget takes integers; shmctl(IPC_RMID) takes a null buffer.
        let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) };
        assert!(id >= 0, "shmget: {}", Errno::last());
        let ipc = collect(&[std::process::id() as i32], &[], 1 << 20);
        // SAFETY: as above.
        unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        assert!(ipc.unwrap().shms.iter().any(|(p, size, _)| p.id == id && *size == 4096));
    }
}
