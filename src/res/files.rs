//! FILES: the open file descriptors. Supported: regular files opened by path (number, access
//! mode and flags, close-on-exec, offset), directories, /dev/null, /dev/zero, /dev/random,
//! /dev/urandom, fds 0-2 on a terminal or a pipe (which the restored process gets from
//! rstrt), fds on the job's terminal with --shell-job (res::terminal) and both ends of pty
//! pairs the tree holds whole (res::ptys). Fds the user names as stubs (typically a pipe a launcher leaked into the process)
//! come back as /dev/null or as a pipe with no peer. Anything else, and any fd holding a file
//! lock or lease, is refused by name before the process is touched.

use super::endpoints;
use super::fileid::FileId;
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use crate::ptrace::calls::Calls;
use crate::ptrace::procfs;
use nix::errno::Errno;
use std::fs;

pub const KIND_FILE: u8 = 1;
pub const KIND_DIR: u8 = 2;
pub const KIND_DEV: u8 = 3;
pub const KIND_STDIO: u8 = 4;
/// A stub opened on /dev/null, with the fd's access mode.
pub const KIND_STUB_NULL: u8 = 5;
/// A stub with no peer: a pipe's read end (reads see end of file), a pipe's write end (writes
/// fail with EPIPE) or, for an fd open for both, a socket whose peer is closed.
pub const KIND_STUB_PIPE: u8 = 6;
/// An end of a pipe whose ends are all in the process: `id.ino` names the pipe (see PIPES).
pub const KIND_PIPE: u8 = 7;
/// An eventfd: `pos` is its counter, `id.mode` 1 for EFD_SEMAPHORE.
pub const KIND_EVENTFD: u8 = 8;
/// An epoll instance (its interest list: EPOLL).
pub const KIND_EPOLL: u8 = 9;
/// A signalfd: `pos` is its signal mask (bit n-1 for signal n).
pub const KIND_SIGNALFD: u8 = 10;
/// A timerfd: `id.mode` is its clock (its timer: TIMERFDS).
pub const KIND_TIMERFD: u8 = 11;
/// An inotify instance (its watches: INOTIFY).
pub const KIND_INOTIFY: u8 = 12;
/// A FIFO (named pipe) by path whose every end the process holds; its unread bytes are the
/// PIPES record `fifo_key(id.ino)`.
pub const KIND_FIFO: u8 = 13;
/// The last kind this crs knows.
/// A regular file unlinked while open: the image carries it (DELETED, by `id.dev`/`id.ino`);
/// `id.path` is the name it had.
pub const KIND_DELETED: u8 = 14;
/// One end of a connected pair of unix sockets the checkpoint holds whole (UNIXPAIRS, by
/// `id.ino`, the socket's inode).
pub const KIND_UNIXPAIR: u8 = 15;
/// A named unix socket listening, held whole by the checkpoint (UNIXLISTEN, by `id.ino`).
pub const KIND_UNIXLISTEN: u8 = 16;
/// A memfd: the image carries it (MEMFDS, by `id.dev`/`id.ino`); `id.path` is its link,
/// "/memfd:NAME (deleted)".
pub const KIND_MEMFD: u8 = 17;
/// A unix socket made and nothing more (unbound, unconnected, not listening): made again of
/// its type, `id.mode`.
pub const KIND_UNIXNEW: u8 = 18;
/// An fd on the job's controlling terminal (`ckpt --shell-job`; its state: TERMINAL):
/// `id.path` is its /proc link (/dev/pts/3, or /dev/tty), `id.rdev` the terminal's device.
pub const KIND_TTY: u8 = 19;
/// The master of a pty pair the checkpoint holds whole (PTYS, by its number `id.ino`).
pub const KIND_PTMX: u8 = 20;
/// The slave of a pty pair the checkpoint holds whole: `id.path` its link (/dev/pts/N, or
/// /dev/tty), `id.rdev` its device (whose minor is the pair's number).
pub const KIND_PTS: u8 = 21;
/// A TCP or UDP socket a restore makes again by itself: listening, bound or new, or UDP
/// connected (INETSOCKS, by `id.ino`, the socket's inode).
pub const KIND_INET: u8 = 22;
/// A unix socket connected to a peer outside the checkpoint, connected again to the same name
/// on restore (ckpt --unix-reconnect): `id.path` the peer's name (sun_path as bound; an
/// abstract one begins with a NUL byte), `id.mode` the socket's type.
pub const KIND_UNIXCONNECT: u8 = 23;
/// A NETLINK_ROUTE socket made again (res::netlink): `id.mode` its type, `id.ino` its port id,
/// `id.rdev` its multicast groups (bit i: group i + 1), `id.dev` its netlink flags, `pos` its
/// SO_RCVBUF.
pub const KIND_NETLINK: u8 = 24;
const KIND_LAST: u8 = KIND_NETLINK;

/// The PIPES key of a FIFO: its inode number with bit 63 set (a pipe's is its pipefs inode).
pub fn fifo_key(ino: u64) -> u64 {
    ino | 1 << 63
}

/// Which fds to carry as stubs rather than refuse, and as what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stubs {
    /// These fds, whatever they are.
    pub fds: Vec<i32>,
    /// Every pipe, FIFO, socket or terminal (beyond fds 0-2 on a terminal or pipe): every fd
    /// whose other end is outside the checkpoint.
    pub outside: bool,
    /// As a pipe with no peer rather than /dev/null.
    pub pipe: bool,
}

impl Stubs {
    /// From the command line: each of `fds` a number or "outside"; `kind` "null" or "pipe".
    pub fn parse(fds: &[String], kind: &str) -> std::result::Result<Stubs, String> {
        let pipe = match kind {
            "null" => false,
            "pipe" => true,
            k => return Err(format!("--stub-as {}: say null or pipe", crate::text::printable(k))),
        };
        let mut s = Stubs { pipe, ..Default::default() };
        for f in fds {
            match f.parse::<i32>() {
                _ if f == "outside" => s.outside = true,
                Ok(fd) if fd >= 0 => s.fds.push(fd),
                _ => return Err(format!("--stub-fd {}: give an fd number or \"outside\"", crate::text::printable(f))),
            }
        }
        Ok(s)
    }

    fn kind(&self) -> u8 {
        if self.pipe { KIND_STUB_PIPE } else { KIND_STUB_NULL }
    }
}

/// (major, minor) of the character devices we reopen by path.
const DEVICES: [(&str, u64); 4] =
    [("/dev/null", 0x103), ("/dev/zero", 0x105), ("/dev/random", 0x108), ("/dev/urandom", 0x109)];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    pub kind: u8,
    /// open(2) flags as in fdinfo, without O_CLOEXEC.
    pub flags: u32,
    pub cloexec: bool,
    pub pos: u64,
    pub id: FileId,
}

pub fn kind_name(k: u8) -> &'static str {
    match k {
        KIND_FILE => "file",
        KIND_DIR => "dir",
        KIND_DEV => "device",
        KIND_STDIO => "stdio",
        KIND_STUB_NULL | KIND_STUB_PIPE => "stub",
        KIND_PIPE => "pipe",
        KIND_EVENTFD => "eventfd",
        KIND_EPOLL => "epoll",
        KIND_SIGNALFD => "signalfd",
        KIND_TIMERFD => "timerfd",
        KIND_INOTIFY => "inotify",
        KIND_FIFO => "fifo",
        KIND_DELETED => "deleted",
        KIND_UNIXPAIR => "unix pair",
        KIND_UNIXLISTEN => "listening",
        KIND_MEMFD => "memfd",
        KIND_UNIXNEW => "new socket",
        KIND_TTY => "terminal",
        KIND_PTMX => "pty master",
        KIND_PTS => "pty slave",
        KIND_INET => "inet socket",
        KIND_UNIXCONNECT => "unix reconnect",
        KIND_NETLINK => "netlink route",
        _ => "?",
    }
}

fn is_tty_or_pipe(target: &str) -> bool {
    target.starts_with("pipe:")
        || target.starts_with("/dev/pts/")
        || target.starts_with("/dev/tty")
        || target == "/dev/console"
}

/// What a stub says it was: "pipe:[123]: a pipe's read end, its write end held by pid 9 (sh)".
fn stub_of(pid: i32, fd: i32, target: &str, flags: u32) -> String {
    let what = match target.split(':').next() {
        Some("pipe") => endpoints::pipe(pid, fd, target, flags),
        Some("socket") => endpoints::socket(pid, fd, &format!("/proc/{pid}/fd/{fd}")),
        _ => target.to_string(),
    };
    if what == target { what } else { format!("{target}: {what}") }
}

/// What a checkpoint carries beyond what it always does.
#[derive(Clone, Copy, Debug, Default)]
pub struct Carry {
    /// Fds on the job's terminal (the controlling one of the tree's first process), as such
    /// (`KIND_TTY`; ckpt --shell-job).
    pub shell_job: bool,
    /// Established TCP connections (`KIND_INET`, res::tcpconn; ckpt --tcp-established).
    pub tcp_established: bool,
    /// Unix sockets connected to a peer outside, connected again to its name on restore
    /// (`KIND_UNIXCONNECT`; ckpt --unix-reconnect).
    pub unix_reconnect: bool,
}

/// Lists the process's fds and classifies them; refuses, naming every unsupported one, unless
/// `stubs` says to carry it as a stub.
pub fn scan(pid: i32, stubs: &Stubs, tree: &[i32], carry: Carry) -> Result<Vec<Fd>> {
    let (fds, blocked) = scan_all(pid, stubs, tree, carry, false)?;
    Error::blocked(pid, blocked)?;
    Ok(fds)
}

/// [`scan`], returning the fds crs can restore and, apart, why each other one cannot be: a
/// precheck goes on to look into the ones it can (epoll sets, inotify watches). `tree` holds
/// the processes checkpointed with `pid`: a pipe between them is theirs (a FIFO only when
/// `pid` holds it whole). `running`: the process runs (a precheck), and an fd that changes as we
/// look at it is passed over.
pub fn scan_all(pid: i32, stubs: &Stubs, tree: &[i32], carry: Carry, running: bool) -> Result<(Vec<Fd>, Vec<String>)> {
    let shell_job = carry.shell_job;
    let job = super::terminal::controlling(tree.first().copied().unwrap_or(pid));
    // The numbers of the ptys whose masters the tree holds, looked up at the first slave.
    let masters = std::cell::OnceCell::new();
    // The sockets processes outside the checkpoint hold, looked up at the first TCP or UDP one.
    let outside_sockets = std::cell::OnceCell::new();
    let dir = format!("/proc/{pid}/fd");
    let rd = fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut nums: Vec<i32> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    nums.sort_unstable();
    let mut out = Vec::with_capacity(nums.len());
    let mut blocked = Vec::new();
    for fd in nums {
        let link = format!("{dir}/{fd}");
        let target = match fs::read_link(&link) {
            Ok(t) => t.to_string_lossy().into_owned(),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // closed meanwhile
            Err(e) => return Err(Error::io(&link, e)),
        };
        let info_path = format!("/proc/{pid}/fdinfo/{fd}");
        let info = match fs::read_to_string(&info_path) {
            Ok(i) => i,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // closed since its link was read
            Err(e) => return Err(Error::io(&info_path, e)),
        };
        let (had, refused) = (out.len(), blocked.len());
        'fd: {
            // Running, the fd may be closed and its number taken again between its link, its
            // fdinfo and what we look at next: passed over unless its file is the one its
            // fdinfo names (that file's identity then serves below).
            let seen = match running {
                true => match FileId::stat(&link) {
                    Ok(id) if procfs::status_field(&info, "ino").is_none_or(|i| i == id.ino.to_string()) => Some(id),
                    _ => break 'fd,
                },
                false => None,
            };
            let (pos, raw_flags) =
                procfs::parse_fdinfo(&info).ok_or_else(|| Error::Proc(format!("{info_path}: unexpected format")))?;
            let cloexec = raw_flags & libc::O_CLOEXEC as u32 != 0;
            let flags = raw_flags & !(libc::O_CLOEXEC as u32);
            let refuse = |what: &str| format!("fd {fd} is {what} ({target}; ckpt --stub-fd {fd} carries it as a stub)");
            // Locks are taken again (LOCKS); a lease, a delegation or a mandatory lock is not.
            if let Err(why) = super::locks::parse(fd, &info) {
                blocked.push(format!("fd {fd} ({target}) {why}"));
                break 'fd;
            }
            // A unix socket the checkpoint holds whole: one end of a pair, or a listener.
            let socket = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')?.parse::<u64>().ok());
            // Its protocol first: the unix checks read /proc/PID/net/unix, which a process of a
            // thousand TCP connections should not pay a thousand times.
            let proto = socket.and_then(|_| endpoints::sock_proto(pid, fd)).unwrap_or_default();
            let unix = proto.starts_with("UNIX");
            let socket_unix = socket.filter(|_| unix);
            if let Some(ty) = socket_unix.and_then(|ino| endpoints::unix_fresh(pid, ino)) {
                let id = FileId { path: target.clone(), mode: ty, ..Default::default() };
                out.push(Fd { fd, kind: KIND_UNIXNEW, flags, cloexec, pos: 0, id });
                break 'fd;
            }
            // Or a TCP or UDP socket a restore makes again by itself (or why it cannot).
            let mut inet_refused = None;
            let mut reconnect = None;
            let whole = match socket {
                Some(ino) if unix && endpoints::unix_pair(tree, pid, fd, ino).is_some() => Some((ino, KIND_UNIXPAIR)),
                Some(ino) if unix && endpoints::unix_listener(tree, pid, fd, ino).is_some() => {
                    Some((ino, KIND_UNIXLISTEN))
                }
                Some(ino) if unix && carry.unix_reconnect => match endpoints::unix_reconnectable(pid, fd, ino) {
                    Ok((ty, name)) => {
                        reconnect = Some((ty, name));
                        None
                    }
                    Err(why) => {
                        inet_refused = Some(format!("which --unix-reconnect cannot connect again: {why}"));
                        None
                    }
                },
                Some(ino) if unix => {
                    if endpoints::unix_reconnectable(pid, fd, ino).is_ok() {
                        inet_refused =
                            Some("which ckpt --unix-reconnect would connect again to its peer's name".into());
                    }
                    None
                }
                Some(ino) => match super::inet::classify(pid, fd, ino, carry.tcp_established, &|ino| {
                    outside_sockets.get_or_init(|| endpoints::sockets_held_outside(tree, pid)).get(&ino).cloned()
                }) {
                    Some(Ok(())) => Some((ino, KIND_INET)),
                    Some(Err(why)) => {
                        inet_refused = Some(why);
                        None
                    }
                    None => None,
                },
                None => None,
            };
            // A NETLINK_ROUTE socket with nothing waiting: made again.
            if let Some(ino) = socket.filter(|_| proto == "NETLINK" && !stubs.fds.contains(&fd)) {
                match super::netlink::classify(pid, fd, ino) {
                    Some(Ok(r)) => {
                        let id = FileId {
                            path: target.clone(),
                            mode: r.ty,
                            ino: r.port as u64,
                            rdev: r.groups,
                            dev: r.flags,
                            ..Default::default()
                        };
                        out.push(Fd { fd, kind: KIND_NETLINK, flags, cloexec, pos: r.rcvbuf as u64, id });
                        break 'fd;
                    }
                    Some(Err(why)) => inet_refused = Some(format!("NETLINK_ROUTE {why}")),
                    None => {}
                }
            }
            if let Some((ty, name)) = reconnect.filter(|_| !stubs.fds.contains(&fd)) {
                let id = FileId { path: name, mode: ty, ino: socket.unwrap_or(0), ..Default::default() };
                out.push(Fd { fd, kind: KIND_UNIXCONNECT, flags, cloexec, pos: 0, id });
                break 'fd;
            }
            // Whose other end is outside: a pipe, socket, terminal, or a FIFO or socket by path.
            // (A pipe or FIFO whose every end the process holds is not: it is restored whole.)
            let outside = || {
                let ty = FileId::stat(&link).map(|id| id.file_type()).unwrap_or(0);
                let pipe = target.starts_with("pipe:") || ty == libc::S_IFIFO;
                let within: &[i32] = if target.starts_with("pipe:") { tree } else { &[] };
                (pipe && !endpoints::pipe_inside(within, pid, fd, &target))
                    || (target.starts_with("socket:") && whole.is_none())
                    || (is_tty_or_pipe(&target) && !pipe)
                    || (ty == libc::S_IFSOCK && !target.starts_with("socket:"))
            };
            // A pipe between processes of the tree is theirs, even on fds 0-2 (a pipeline).
            let tree_pipe =
                || tree.len() > 1 && target.starts_with("pipe:") && endpoints::pipe_inside(tree, pid, fd, &target);
            let stdio = fd <= 2 && is_tty_or_pipe(&target) && !tree_pipe();
            // A terminal: the job's (the controlling one of the tree's first process) or another.
            let tty = super::terminal::named_like_one(&target)
                .then(|| FileId::stat(&link).ok())
                .flatten()
                .filter(|id| id.file_type() == libc::S_IFCHR)
                .map(|id| FileId { rdev: super::terminal::device(pid, fd, &target, id.rdev), ..id });
            // A pty pair whose master the tree holds: its own, whatever the job's terminal is.
            let ptmx = super::ptys::is_master(&target).then(|| super::ptys::master_index(&info)).flatten();
            // (The same pair: the same number in the same devpts instance, its slave's st_dev.)
            let pts = tty.as_ref().and_then(|id| super::ptys::slave_index(id.rdev).map(|n| (id.dev, n))).filter(|p| {
                let tree = if tree.is_empty() { std::slice::from_ref(&pid) } else { tree };
                masters.get_or_init(|| super::ptys::masters(tree)).contains(p)
            });
            if !stubs.fds.contains(&fd) {
                if let Some(n) = ptmx {
                    let dev = super::ptys::master_id(pid, fd).map_or(0, |p| p.0);
                    let id = FileId { path: target.clone(), ino: n as u64, dev, ..Default::default() };
                    out.push(Fd { fd, kind: KIND_PTMX, flags, cloexec, pos: 0, id });
                    break 'fd;
                }
                if let (Some(_), Some(id)) = (pts, tty.clone()) {
                    out.push(Fd {
                        fd,
                        kind: KIND_PTS,
                        flags,
                        cloexec,
                        pos: 0,
                        id: FileId { path: target.clone(), ..id },
                    });
                    break 'fd;
                }
            }
            let on_job = tty.as_ref().is_some_and(|id| Some(id.rdev) == job);
            if stubs.fds.contains(&fd) || (stubs.outside && !stdio && !(on_job && shell_job) && outside()) {
                let id = FileId { path: stub_of(pid, fd, &target, flags), ..Default::default() };
                out.push(Fd { fd, kind: stubs.kind(), flags, cloexec, pos: 0, id });
                break 'fd;
            }
            if let Some(id) = tty.clone().filter(|_| on_job && shell_job) {
                let id = FileId { path: target.clone(), ..id };
                out.push(Fd { fd, kind: KIND_TTY, flags, cloexec, pos: 0, id });
                break 'fd;
            }
            if stdio {
                out.push(Fd {
                    fd,
                    kind: KIND_STDIO,
                    flags,
                    cloexec,
                    pos: 0,
                    id: FileId { path: target.clone(), ..Default::default() },
                });
                break 'fd;
            }
            if super::memfd::name_of(&target).is_some() {
                // Carried in the image (MEMFDS).
                match FileId::of(&link, &target, false) {
                    Ok(id) if id.file_type() == libc::S_IFREG => {
                        out.push(Fd { fd, kind: KIND_MEMFD, flags, cloexec, pos, id });
                    }
                    _ => blocked.push(refuse("a memfd crs cannot read")),
                }
                break 'fd;
            }
            if target.ends_with(" (deleted)") {
                // A regular file unlinked while open: carried in the image (DELETED).
                let id = super::deleted::unlinked(&target).and_then(|p| FileId::of(&link, p, false).ok());
                match id {
                    Some(id) if id.file_type() == libc::S_IFREG => {
                        out.push(Fd { fd, kind: KIND_DELETED, flags, cloexec, pos, id });
                    }
                    _ => blocked.push(refuse("a deleted file that is not a regular one")),
                }
                break 'fd;
            }
            let anon = |id: u64| FileId { path: target.clone(), ino: id, ..Default::default() };
            if target.starts_with("pipe:") && endpoints::pipe_inside(tree, pid, fd, &target) {
                let ino = target.trim_start_matches("pipe:[").trim_end_matches(']').parse().unwrap_or(0);
                out.push(Fd { fd, kind: KIND_PIPE, flags, cloexec, pos: 0, id: anon(ino) });
                break 'fd;
            }
            if target == "anon_inode:[eventfd]" {
                let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
                // (In hex: "%16llx".)
                let Some(count) = field("eventfd-count:").and_then(|v| u64::from_str_radix(v, 16).ok()) else {
                    blocked.push(refuse("an eventfd whose counter its fdinfo does not show"));
                    break 'fd;
                };
                let mut id = anon(0);
                id.mode = field("eventfd-semaphore:").map_or(0, |v| (v == "1") as u32);
                out.push(Fd { fd, kind: KIND_EVENTFD, flags, cloexec, pos: count, id });
                break 'fd;
            }
            if target == "anon_inode:[eventpoll]" {
                out.push(Fd { fd, kind: KIND_EPOLL, flags, cloexec, pos: 0, id: anon(0) });
                break 'fd;
            }
            if target == "anon_inode:[signalfd]" {
                let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
                let Some(mask) = field("sigmask:").and_then(|v| u64::from_str_radix(v, 16).ok()) else {
                    blocked.push(refuse("a signalfd whose mask its fdinfo does not show"));
                    break 'fd;
                };
                out.push(Fd { fd, kind: KIND_SIGNALFD, flags, cloexec, pos: mask, id: anon(0) });
                break 'fd;
            }
            if target == "anon_inode:[timerfd]" {
                let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
                let Some(clock) = field("clockid:").and_then(|v| v.parse::<u32>().ok()) else {
                    blocked.push(refuse("a timerfd whose clock its fdinfo does not show"));
                    break 'fd;
                };
                let mut id = anon(0);
                id.mode = clock;
                out.push(Fd { fd, kind: KIND_TIMERFD, flags, cloexec, pos: 0, id });
                break 'fd;
            }
            if target == "anon_inode:inotify" {
                out.push(Fd { fd, kind: KIND_INOTIFY, flags, cloexec, pos: 0, id: anon(0) });
                break 'fd;
            }
            if let Some((ino, kind)) = whole {
                out.push(Fd { fd, kind, flags, cloexec, pos: 0, id: anon(ino) });
                break 'fd;
            }
            if target == "anon_inode:[io_uring]" {
                // (Its rings are mapped too: a stub for the fd would not do.)
                blocked.push(format!(
                    "fd {fd} is an io_uring instance ({target}), which crs does not restore: run the program without io_uring, if it has a setting for that (mariadbd: --innodb-use-native-aio=0)"
                ));
                break 'fd;
            }
            if !target.starts_with('/') {
                let what = match target.split(':').next() {
                    Some("pipe") => endpoints::pipe(pid, fd, &target, flags),
                    Some("socket") => match &inet_refused {
                        Some(why) => format!("{}, {why}", endpoints::socket(pid, fd, &target)),
                        None => endpoints::socket(pid, fd, &target),
                    },
                    Some("anon_inode") => match target.trim_start_matches("anon_inode:") {
                        "[pidfd]" => "a pidfd, which crs does not restore".into(),
                        "[userfaultfd]" => "a userfaultfd, which crs does not restore".into(),
                        "[perf_event]" => "a perf event, which crs does not restore".into(),
                        "[fanotify]" => "a fanotify instance, which crs does not restore".into(),
                        k if k.starts_with("bpf") => "a BPF object, which crs does not restore".into(),
                        _ => format!("an anonymous inode of a kind crs does not restore yet ({target})"),
                    },
                    _ => "not a file".into(),
                };
                blocked.push(refuse(&what));
                break 'fd;
            }
            let id = match seen.map_or_else(|| FileId::stat(&link), Ok) {
                Ok(id) => id,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break 'fd, // closed since its fdinfo was read
                Err(e) => return Err(Error::io(&link, e)),
            };
            let id = FileId { path: target.clone(), ..id };
            let kind = match id.file_type() {
                libc::S_IFREG => Ok(KIND_FILE),
                libc::S_IFDIR => Ok(KIND_DIR),
                libc::S_IFCHR if DEVICES.iter().any(|&(p, rdev)| p == target && rdev == id.rdev) => Ok(KIND_DEV),
                libc::S_IFCHR if on_job => Err(refuse("its controlling terminal, which only ckpt --shell-job carries")),
                libc::S_IFCHR if tty.is_some() && shell_job => Err(refuse(
                    "a terminal other than the job's (crs restores one: the controlling terminal of the first process)",
                )),
                libc::S_IFCHR if tty.is_some() => {
                    Err(refuse("a terminal that is not the job's (ckpt --shell-job carries the job's terminal only)"))
                }
                libc::S_IFCHR if target == "/dev/ptmx" || target.starts_with("/dev/pts/ptmx") => {
                    Err(refuse("a pseudo-terminal master, which crs does not restore yet"))
                }
                libc::S_IFCHR => Err(refuse("a character device")),
                libc::S_IFIFO if endpoints::pipe_inside(&[], pid, fd, &target) => Ok(KIND_FIFO),
                libc::S_IFIFO => Err(refuse("a named pipe with an end in another process")),
                libc::S_IFSOCK => Err(refuse("a socket")),
                _ => Err(refuse("a special file")),
            };
            let kind = match kind {
                Ok(k) => k,
                Err(why) => {
                    blocked.push(why);
                    break 'fd;
                }
            };
            out.push(Fd { fd, kind, flags, cloexec, pos, id });
        }
        // Seen running, the fd may have been closed and its number taken again as we looked
        // (its link, fdinfo and identity then of different files): what was found of it goes,
        // for the checkpoint to look at again frozen.
        if running && fs::read_link(&link).ok().is_none_or(|t| t.as_os_str() != target.as_str()) {
            out.truncate(had);
            blocked.truncate(refused);
        }
    }
    Ok((out, blocked))
}

/// The fdinfo of fd `fd` of process `pid`, as `parse` reads it (None: not of `what` kind).
/// `running`: the process runs (a precheck), and may close the fd, or open another file at its
/// number, as we read: then None, for the caller to pass it over (the checkpoint reads it
/// again frozen); frozen, either is an error.
pub fn fdinfo<T>(
    pid: i32,
    fd: i32,
    running: bool,
    what: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let info = match fs::read_to_string(&path) {
        Ok(i) => i,
        Err(e) if running && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    match parse(&info) {
        Some(v) => Ok(Some(v)),
        None if running => Ok(None),
        None => Err(Error::Proc(format!("{path}: unexpected {what} format"))),
    }
}

/// The stubs among `fds`, one line each: "fd 7 (pipe:[12]: a pipe's ...) as /dev/null".
pub fn stubs(fds: &[Fd]) -> Vec<String> {
    fds.iter()
        .filter(|f| matches!(f.kind, KIND_STUB_NULL | KIND_STUB_PIPE))
        .map(|f| {
            let what = if f.kind == KIND_STUB_NULL { "/dev/null" } else { "a pipe with no peer" };
            format!("fd {} ({}) as {what}", f.fd, crate::text::printable(&f.id.path))
        })
        .collect()
}

/// crfinfo's lines.
pub fn describe(fds: &[Fd]) -> Vec<String> {
    let mut out = vec![format!("files:     {}", fds.len())];
    for x in fds {
        out.push(format!(
            "  fd {:<3} {:<6} flags {:#o}{} pos {} {}",
            x.fd,
            kind_name(x.kind),
            x.flags,
            if x.cloexec { " cloexec" } else { "" },
            x.pos,
            x.id.path
        ));
    }
    out
}

pub fn encode(fds: &[Fd]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(fds.len() as u32);
    for f in fds {
        encode_one(&mut e, f);
    }
    e.into_bytes()
}

/// One FILES record (also FDESCS's).
pub fn encode_one(e: &mut Enc, f: &Fd) {
    e.u32(f.fd as u32).u8(f.kind).u32(f.flags).u8(f.cloexec as u8).u64(f.pos);
    f.id.encode(e);
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Fd>> {
    let mut d = Dec::new(b, at, "FILES");
    let n = d.count(18)?;
    let mut out: Vec<Fd> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let f = decode_one(&mut d)?;
        if out.last().is_some_and(|p| p.fd >= f.fd) {
            return Err(d.bad_at(rec, format!("invalid fd record (fd {}, kind {})", f.fd, f.kind)));
        }
        out.push(f);
    }
    d.finish()?;
    Ok(out)
}

/// One FILES record, checked.
pub fn decode_one(d: &mut Dec) -> CrfResult<Fd> {
    let rec = d.offset();
    let f = Fd {
        fd: d.u32()? as i32,
        kind: d.u8()?,
        flags: d.u32()?,
        cloexec: d.u8()? != 0,
        pos: d.u64()?,
        id: FileId::decode(d)?,
    };
    if f.fd < 0
        || f.fd > 1 << 20
        || !(KIND_FILE..=KIND_LAST).contains(&f.kind)
        || (f.kind == KIND_EVENTFD && (f.id.mode > 1 || f.pos == u64::MAX))
        || (f.kind == KIND_STDIO && f.fd > 2)
        || ((f.kind <= KIND_DEV || f.kind == KIND_FIFO) && !f.id.path.starts_with('/'))
        || (f.kind == KIND_TTY && !super::terminal::named_like_one(&f.id.path))
        || (f.kind == KIND_PTMX && (!super::ptys::is_master(&f.id.path) || f.id.ino >= 1 << 20))
        || (f.kind == KIND_PTS
            && (super::ptys::slave_index(f.id.rdev).is_none()
                || !(f.id.path == "/dev/tty" || f.id.path.starts_with("/dev/pts/"))))
    {
        return Err(d.bad_at(rec, format!("invalid fd record (fd {}, kind {})", f.fd, f.kind)));
    }
    Ok(f)
}

/// Checks on this node that every file is still there and usable, before anything is created.
/// Nothing is opened: a stat of each path, with the caller's rights (a restore checks with the
/// image owner's, see creds::AsOwner).
pub fn check(fds: &[Fd], same_boot: bool) -> Result<()> {
    for f in fds.iter().filter(|f| f.kind <= KIND_DEV || f.kind == KIND_FIFO) {
        let what = format!("fd {}: {}", f.fd, f.id.path);
        let now = FileId::stat(&f.id.path).map_err(|e| {
            Error::not_here(
                format!("{what} cannot be used here"),
                format!("{e}; restore it where it is, or use another image"),
            )
        })?;
        // The kind must match what is there now: an image may not name /dev/kmsg as "a file".
        let fits = match f.kind {
            KIND_FILE => now.file_type() == libc::S_IFREG,
            KIND_DIR => now.file_type() == libc::S_IFDIR,
            KIND_FIFO => now.file_type() == libc::S_IFIFO,
            _ => {
                now.file_type() == libc::S_IFCHR && DEVICES.iter().any(|&(p, rdev)| p == f.id.path && rdev == now.rdev)
            }
        };
        if !fits {
            return Err(Error::not_here(
                format!("{what} is not the file the process had"),
                format!("it is not the {} the image says", kind_name(f.kind)),
            ));
        }
        f.id.still_usable(&now, same_boot)
            .map_err(|why| Error::not_here(format!("{what} is not the file the process had"), why))?;
    }
    Ok(())
}

/// Which socket a restore makes again by itself fd `f` is, so that the process's other fds of
/// it get the same: a unix socket connected again by its inode, a bound NETLINK_ROUTE socket by
/// its port id; u64::MAX for any other fd.
fn made_key(f: &Fd) -> u64 {
    match f.kind {
        KIND_UNIXCONNECT => f.id.ino & !(1 << 63),
        KIND_NETLINK if f.id.ino != 0 => f.id.ino | 1 << 63,
        _ => u64::MAX,
    }
}

/// Rebuilds the fd table inside the restored child, which starts with rstrt's own fds and by
/// now has the image's credentials (`uid` its fs uid, for messages).
/// `null_stdio`: bit n set gives fd n /dev/null instead of ours (fd 0 when rstrt reads the
/// image from its stdin; all three for restartd, whose stdio is not the process's business).
/// What a restored process inherited from the restorer, for the fds that held it.
pub struct Inherited<'a> {
    /// The tree's pipes: (pipe, read end, write end).
    pub pipes: &'a [(u64, i32, i32)],
    /// File descriptions more than one fd held: (the image's fd, the inherited fd).
    pub descs: &'a [(i32, i32)],
    /// Deleted files and memfds made again: (dev, ino in the image, the inherited fd).
    pub deleted: &'a [(u64, u64, i32)],
    /// Unix socket pairs' ends, listening unix sockets and TCP and UDP sockets: (the
    /// socket's inode in the image, the inherited fd).
    pub sockets: &'a [(u64, i32)],
    /// Where an fd on the job's terminal is opened (rstrt --shell-job: rstrt's terminal).
    pub terminal: Option<&'a str>,
    /// The pty pairs made again: (the image's number, the inherited master, the slave's path).
    pub ptys: &'a [(u32, i32, String)],
}

impl Inherited<'_> {
    /// Where the slave of the image's pty `n` is here.
    pub fn pts(&self, n: u32) -> Result<&str> {
        let p = self.ptys.iter().find(|p| p.0 == n);
        p.map(|p| p.2.as_str()).ok_or_else(|| Error::Refused(format!("the image holds no pty {n}: it is damaged")))
    }
}

pub fn restore(
    c: &mut Ctl,
    fds: &[Fd],
    pipes: &[super::pipes::Pipe],
    inherited: &Inherited,
    null_stdio: u8,
    uid: u32,
) -> Result<()> {
    let pid = c.pid();
    let keep = |n: i32| fds.iter().any(|f| f.fd == n && f.kind == KIND_STDIO && null_stdio & (1 << n) == 0);
    let dir = format!("/proc/{pid}/fd");
    let rd = fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let have: Vec<i32> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    let access = libc::O_ACCMODE as u32;
    // The pipes first, their ends moved above every fd the image has (a later dup3 must not
    // land on one), dup'ed to their fds below and closed at the end: those shared with other
    // processes of the tree as inherited from the restorer (`inherited`: pipe, read end, write
    // end), the process's own made here and filled.
    let above = fds.iter().map(|f| f.fd).max().unwrap_or(2) as u64 + 1;
    let mut made: Vec<(u64, i32, i32)> = Vec::new();
    for &(ino, r, w) in inherited.pipes {
        if !fds.iter().any(|f| f.kind == KIND_PIPE && f.id.ino == ino) {
            continue;
        }
        let what = format!("pipe:[{ino}]");
        let hr = c.fcntl(r, libc::F_DUPFD_CLOEXEC, above, "fcntl(F_DUPFD_CLOEXEC)", &what)? as i32;
        let hw = c.fcntl(w, libc::F_DUPFD_CLOEXEC, above, "fcntl(F_DUPFD_CLOEXEC)", &what)? as i32;
        made.push((ino, hr, hw));
    }
    // A shared description, each end of a unix socket pair, a socket, each pty master: dup'ed
    // above for each fd that held it, in one go (a service's thousand connections are a
    // thousand fds: one remote syscall each would be most of its restore).
    let mut up = Calls::new();
    let mut ups: Vec<i32> = Vec::new();
    let mut copy_up = |raw: i32, fd: i32, what: String| {
        up.fcntl(raw, libc::F_DUPFD_CLOEXEC, above, "fcntl(F_DUPFD_CLOEXEC)", &what);
        ups.push(fd);
    };
    for &(fd, raw) in inherited.descs {
        copy_up(raw, fd, format!("fd {fd} (a shared file description)"));
    }
    for f in fds.iter().filter(|f| matches!(f.kind, KIND_UNIXPAIR | KIND_UNIXLISTEN | KIND_INET)) {
        let &(_, raw) = inherited.sockets.iter().find(|s| s.0 == f.id.ino).ok_or_else(|| {
            Error::Refused(format!(
                "fd {} is socket {} of which the image holds nothing: it is damaged",
                f.fd, f.id.ino
            ))
        })?;
        copy_up(raw, f.fd, format!("fd {} (socket:[{}])", f.fd, f.id.ino));
    }
    for f in fds.iter().filter(|f| f.kind == KIND_PTMX) {
        let p = inherited.ptys.iter().find(|p| p.0 as u64 == f.id.ino);
        let &(_, raw, _) = p.ok_or_else(|| {
            Error::Refused(format!("fd {} is pty {} of which the image holds nothing: it is damaged", f.fd, f.id.ino))
        })?;
        copy_up(raw, f.fd, format!("fd {} (pty master {})", f.fd, f.id.ino));
    }
    // The files made again (deleted while open, memfds) that a fd of its own (not a shared
    // description) reopens through /proc/self/fd, below: copied above too, past the closing
    // of what it inherited, and closed at the end.
    let remade_at = ups.len();
    let mut remade: Vec<i32> = Vec::new();
    let own = |f: &&Fd| matches!(f.kind, KIND_DELETED | KIND_MEMFD) && !inherited.descs.iter().any(|d| d.0 == f.fd);
    for f in fds.iter().filter(own) {
        if let Some(&(_, _, raw)) = inherited.deleted.iter().find(|d| (d.0, d.1) == (f.id.dev, f.id.ino))
            && !remade.contains(&raw)
        {
            up.fcntl(
                raw,
                libc::F_DUPFD_CLOEXEC,
                above,
                "fcntl(F_DUPFD_CLOEXEC)",
                &format!("fd {} {}", f.fd, f.id.path),
            );
            remade.push(raw);
        }
    }
    // Everything else it inherited goes (the copies above were not there yet).
    let mut gone = Calls::new();
    for n in have.into_iter().filter(|&n| !keep(n)) {
        gone.close(n, &format!("fd {n}"));
    }
    up.append(gone);
    let area = c.scratch.clone();
    let got = c.run_at_once(&up, &area)?;
    let descs: Vec<(i32, i32)> = ups.iter().zip(&got).map(|(&fd, &r)| (fd, r as i32)).collect();
    let remade: Vec<(i32, i32)> =
        remade.iter().zip(got.iter().skip(remade_at)).map(|(&raw, &r)| (raw, r as i32)).collect();
    // Each fd of those, put in place at the end, in one go: their copies lie above every fd
    // of the image, and each of its fds is one of them or made below, so no move there
    // lands on another.
    let mut placed = Calls::new();
    // The process's own pipes, made in one go and moved above in another (see `own_pipes`).
    let mut own: Vec<&super::pipes::Pipe> = Vec::new();
    for f in fds.iter().filter(|f| f.kind == KIND_PIPE) {
        if made.iter().any(|m| m.0 == f.id.ino) || own.iter().any(|p| p.ino == f.id.ino) {
            continue;
        }
        let p = pipes.iter().find(|p| p.ino == f.id.ino).ok_or_else(|| {
            Error::Refused(format!("fd {} is pipe {} of which the image holds nothing: it is damaged", f.fd, f.id.ino))
        })?;
        own.push(p);
    }
    made.extend(own_pipes(c, &own, above)?);
    // Each FIFO opened once for both ends and filled, before its fds are opened by path (a
    // reader or writer then always finds the other end); closed at the end.
    let mut keepers: Vec<(u64, i32)> = Vec::new();
    // Sockets made again, by made_key: (key, the fd the first is at by now).
    let mut reconnected: Vec<(u64, i32)> = Vec::new();
    for f in fds.iter().filter(|f| f.kind == KIND_FIFO) {
        let key = fifo_key(f.id.ino);
        if keepers.iter().any(|k| k.0 == key) {
            continue;
        }
        let what = format!("fifo {}", f.id.path);
        let flags = libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC;
        let opened = c.open(&f.id.path, flags, &what)?;
        let k = c.fcntl(opened, libc::F_DUPFD_CLOEXEC, above, "fcntl(F_DUPFD_CLOEXEC)", &what)? as i32;
        c.close(opened, &what)?;
        if let Some(p) = pipes.iter().find(|p| p.ino == key) {
            super::pipes::fill(c, k, p, &what)?;
        }
        keepers.push((key, k));
    }
    // Those opened by path or made anew, at the end in one go: (fd, how, open flags, what).
    let mut by_path: Vec<(&Fd, Make, u32, String)> = Vec::new();
    for f in fds.iter().filter(|f| !keep(f.fd)) {
        let (path, flags) = match f.kind {
            KIND_STDIO => ("/dev/null", libc::O_RDWR as u32),
            KIND_STUB_NULL => ("/dev/null", f.flags & (access | libc::O_NONBLOCK as u32)),
            KIND_STUB_PIPE => ("a pipe", f.flags & (access | libc::O_NONBLOCK as u32)),
            KIND_PIPE | KIND_EVENTFD | KIND_EPOLL | KIND_SIGNALFD | KIND_TIMERFD | KIND_INOTIFY | KIND_UNIXNEW => {
                (kind_name(f.kind), f.flags)
            }
            KIND_TTY | KIND_PTS if f.id.path == "/dev/tty" => ("/dev/tty", f.flags),
            KIND_PTS => (inherited.pts(super::ptys::slave_index(f.id.rdev).unwrap_or(u32::MAX))?, f.flags),
            KIND_TTY => (
                inherited.terminal.ok_or_else(|| {
                    Error::Refused(format!("fd {} is on its terminal, and the restore has none to give it", f.fd))
                })?,
                f.flags,
            ),
            _ => (f.id.path.as_str(), f.flags),
        };
        let open_flags = reopen_flags(flags);
        let what = format!("fd {} {path}", f.fd);
        let shared = descs.iter().find(|d| d.0 == f.fd).map(|d| d.1);
        let tmp = if let Some(t) = shared {
            t
        } else if matches!(f.kind, KIND_DELETED | KIND_MEMFD) {
            // Reopened through the file the restorer made again, with the fd's own flags.
            let damaged = || Error::Refused(format!("{what}: the image does not hold {}: it is damaged", f.id.path));
            let &(_, _, raw) =
                inherited.deleted.iter().find(|d| (d.0, d.1) == (f.id.dev, f.id.ino)).ok_or_else(damaged)?;
            let &(_, copy) = remade.iter().find(|r| r.0 == raw).ok_or_else(damaged)?;
            by_path.push((f, Make::Path(format!("/proc/self/fd/{copy}")), open_flags, what));
            continue;
        } else if f.kind == KIND_STUB_PIPE {
            peerless(c, open_flags & access, &what)?
        } else if f.kind == KIND_PIPE {
            // Put in place from its end above, with the others at the end: each end lies
            // above every fd of the image until then.
            let &(_, r, w) = made.iter().find(|m| m.0 == f.id.ino).ok_or_else(|| Error::Proc(what.clone()))?;
            let end = if open_flags & access == libc::O_RDONLY as u32 { r } else { w };
            placed.dup3(end, f.fd, if f.cloexec { libc::O_CLOEXEC } else { 0 }, &what);
            if settable(open_flags) {
                placed.fcntl(f.fd, libc::F_SETFL, open_flags as u64, "fcntl(F_SETFL)", &what);
            }
            continue;
        } else if matches!(
            f.kind,
            KIND_EVENTFD | KIND_EPOLL | KIND_SIGNALFD | KIND_TIMERFD | KIND_UNIXNEW | KIND_INOTIFY
        ) {
            // Made anew, in one go with the others (see `make`).
            by_path.push((f, Make::New, open_flags, what));
            continue;
        } else if f.kind == KIND_NETLINK {
            let r = super::netlink::Route {
                ty: f.id.mode,
                port: f.id.ino as u32,
                groups: f.id.rdev,
                flags: f.id.dev,
                rcvbuf: f.pos as u32,
            };
            if r.port != 0 {
                reconnected.push((made_key(f), f.fd));
            }
            super::netlink::restore(c, &r, &what)?
        } else if let Some(&(_, first)) = reconnected.iter().find(|r| r.0 == made_key(f)) {
            // Another fd of the same socket: the same connection.
            c.fcntl(first, libc::F_DUPFD_CLOEXEC, 0, "fcntl(F_DUPFD_CLOEXEC)", &what)? as i32
        } else if f.kind == KIND_UNIXCONNECT {
            reconnected.push((made_key(f), f.fd));
            let s = c.unix_socket(f.id.mode, &what)?;
            c.unix_connect(s, f.id.path.as_bytes(), &what).map_err(|e| match e {
                Error::Sys { errno, .. } => Error::Refused(format!(
                    "fd {} could not connect again to {} ({}): is what it talked to running here?",
                    f.fd,
                    crate::text::printable(&f.id.path.replace('\0', "@")),
                    errno.desc()
                )),
                e => e,
            })?;
            s
        } else {
            by_path.push((f, Make::Path(path.to_string()), open_flags, what));
            continue;
        };
        if shared.is_some() {
            if settable(open_flags) {
                placed.fcntl(tmp, libc::F_SETFL, open_flags as u64, "fcntl(F_SETFL)", &what);
            }
            placed.dup3(tmp, f.fd, if f.cloexec { libc::O_CLOEXEC } else { 0 }, &what);
            placed.close(tmp, &what);
            continue;
        }
        // The fd's own status flags, non-blocking or not.
        if settable(open_flags) {
            c.fcntl(tmp, libc::F_SETFL, open_flags as u64, "fcntl(F_SETFL)", &what)?;
        }
        if tmp != f.fd {
            c.dup3(tmp, f.fd, if f.cloexec { libc::O_CLOEXEC } else { 0 }, &what)?;
            c.close(tmp, &what)?;
        } else {
            let fd_flags = if f.cloexec { libc::FD_CLOEXEC as u64 } else { 0 };
            c.fcntl(f.fd, libc::F_SETFD, fd_flags, "fcntl(F_SETFD)", &what)?;
        }
        if f.pos > 0 && matches!(f.kind, KIND_FILE | KIND_DIR | KIND_DELETED | KIND_MEMFD) && shared.is_none() {
            c.lseek_set(f.fd, f.pos, &what)?;
        }
    }
    open_by_path(c, &by_path, above, uid, &mut placed)?;
    if !placed.is_empty() {
        let area = c.scratch.clone();
        c.run_at_once(&placed, &area)?;
    }
    for (_, copy) in remade {
        c.close(copy, "a file made again")?;
    }
    for (ino, r, w) in made {
        c.close(r, &format!("pipe:[{ino}]"))?;
        c.close(w, &format!("pipe:[{ino}]"))?;
    }
    for (_, k) in keepers {
        c.close(k, "fifo")?;
    }
    Ok(())
}

/// Makes the pipes of `own` inside the restored process, each of its capacity and filled with
/// its bytes, its ends moved above every fd of the image (`above`): in one go for all, and one
/// more to move them (each remote syscall costs two context switches; a runtime's event loop
/// holds several pipes, each end an fd). Returns (pipe, read end, write end) each, for the
/// caller to dup to its fds and close.
fn own_pipes(c: &mut Ctl, own: &[&super::pipes::Pipe], above: u64) -> Result<Vec<(u64, i32, i32)>> {
    if own.is_empty() {
        return Ok(Vec::new());
    }
    let mut l = Calls::new();
    let qs: Vec<_> = own.iter().map(|_| l.ask_pipe2(libc::O_CLOEXEC)).collect();
    let area = c.scratch.clone();
    let a = c.ask_at_once(&l, &area)?;
    let mut ends = Vec::with_capacity(own.len());
    for (&q, p) in qs.iter().zip(own) {
        let what = format!("pipe:[{}]", p.ino);
        a.ok(q, "pipe2", &what)?;
        ends.push(a.fd_pair(q));
    }
    let mut up = Calls::new();
    for (&(r, w), p) in ends.iter().zip(own) {
        let what = format!("pipe:[{}]", p.ino);
        if p.capacity != 65536 {
            up.fcntl(w, libc::F_SETPIPE_SZ, p.capacity as u64, "fcntl(F_SETPIPE_SZ)", &what);
        }
        up.fcntl(r, libc::F_DUPFD_CLOEXEC, above, "fcntl(F_DUPFD_CLOEXEC)", &what);
        up.fcntl(w, libc::F_DUPFD_CLOEXEC, above, "fcntl(F_DUPFD_CLOEXEC)", &what);
        up.close(r, &what).close(w, &what);
    }
    let got = c.run_at_once(&up, &area)?;
    // Each pipe's results: its F_SETPIPE_SZ (when made), its two copies, its two closes.
    let mut k = 0;
    let mut made = Vec::with_capacity(own.len());
    for p in own {
        k += usize::from(p.capacity != 65536);
        let (hr, hw) = match (got.get(k), got.get(k + 1)) {
            (Some(&hr), Some(&hw)) => (hr as i32, hw as i32),
            _ => return Err(Error::Proc(format!("pipe:[{}]: not moved above the image's fds", p.ino))),
        };
        k += 4;
        if !p.data.is_empty() {
            super::pipes::write_all(c, hw, p, &format!("pipe:[{}]", p.ino))?;
        }
        made.push((p.ino, hr, hw));
    }
    Ok(made)
}

/// How [`open_by_path`] makes an fd: opened by its path, or made anew as its kind is (an
/// eventfd, epoll instance, signalfd, timerfd, inotify instance or unix socket not yet bound
/// nor connected: [`make`]).
enum Make {
    Path(String),
    New,
}

/// The call that makes fd `f` anew (see [`Make::New`]), added to `l`: as its kind is, with
/// what it was made with; what it holds comes later (an eventfd's counter, see
/// [`open_by_path`]; a timerfd's time, an epoll instance's registrations, an inotify
/// instance's watches: TIMERFDS, EPOLLS, INOTIFY).
fn make(l: &mut Calls, f: &Fd, what: &str) -> Result<()> {
    match f.kind {
        KIND_EVENTFD => l.eventfd(libc::EFD_CLOEXEC | if f.id.mode == 1 { libc::EFD_SEMAPHORE } else { 0 }, what),
        KIND_EPOLL => l.epoll_create(libc::EPOLL_CLOEXEC, what),
        KIND_SIGNALFD => l.signalfd(f.pos, libc::SFD_CLOEXEC, what),
        // Disarmed: TIMERFDS arms it once every fd exists.
        KIND_TIMERFD => l.timerfd_create(f.id.mode, libc::TFD_CLOEXEC, what),
        KIND_UNIXNEW => l.unix_socket(f.id.mode, what),
        KIND_INOTIFY => l.inotify_init(libc::IN_CLOEXEC, what),
        k => return Err(Error::Proc(format!("{what}: an fd of kind {k} is not made anew"))),
    };
    Ok(())
}

/// Opens or makes the fds of `by_path` (fd, how, its open flags, what) in one go, moves them
/// above every fd of the image (`above`) in another (an open lands on the lowest free fd,
/// maybe one another of them is to go to), and adds to `placed` the calls that put each in
/// place with its flags and offset (an eventfd's counter). Each is opened non-blocking,
/// without taking a terminal: the path was checked, but may name a FIFO by now, whose open
/// would never return. (Each remote syscall costs two context switches: a runtime's event
/// loop holds a dozen such fds, made in 2-3 ms one call at a time.)
fn open_by_path(
    c: &mut Ctl,
    by_path: &[(&Fd, Make, u32, String)],
    above: u64,
    uid: u32,
    placed: &mut Calls,
) -> Result<()> {
    if by_path.is_empty() {
        return Ok(());
    }
    let nonblock = (libc::O_NONBLOCK | libc::O_NOCTTY) as u32;
    let mut opens = Calls::new();
    for (f, how, flags, what) in by_path {
        let p = match how {
            Make::Path(p) => p,
            Make::New => {
                make(&mut opens, f, what)?;
                continue;
            }
        };
        let (fd, path, what, mine) = (f.fd, p.clone(), what.clone(), matches!(f.kind, KIND_DELETED | KIND_MEMFD));
        opens.open_checked(p, (flags | nonblock) as i32, move |r, who| match r {
            0.. => Ok(()),
            e if !mine && (e == -(libc::EACCES as i64) || e == -(libc::EPERM as i64)) => {
                Err(Error::Permission(format!(
                    "the image's fd {fd} ({path}) cannot be reopened as uid {uid}: {} (opened with privileges the process dropped since, or its mode changed): give uid {uid} access to it, and restore again",
                    Errno::from_raw(-e as i32).desc()
                )))
            }
            e => Err(Error::sys(format!("openat (in {who})"), what.clone(), Errno::from_raw(-e as i32))),
        });
    }
    let area = c.scratch.clone();
    let tmps = c.run_at_once(&opens, &area)?;
    let mut up = Calls::new();
    for (&t, (_, _, _, what)) in tmps.iter().zip(by_path) {
        up.fcntl(t as i32, libc::F_DUPFD_CLOEXEC, above, "fcntl(F_DUPFD_CLOEXEC)", what);
        up.close(t as i32, what);
    }
    let got = c.run_at_once(&up, &area)?;
    for (k, (f, _, flags, what)) in by_path.iter().enumerate() {
        let u = *got.get(2 * k).ok_or_else(|| Error::Proc(format!("{what}: not opened")))? as i32;
        if settable(*flags) {
            placed.fcntl(u, libc::F_SETFL, *flags as u64, "fcntl(F_SETFL)", what);
        }
        placed.dup3(u, f.fd, if f.cloexec { libc::O_CLOEXEC } else { 0 }, what);
        placed.close(u, what);
        if f.pos > 0 && matches!(f.kind, KIND_FILE | KIND_DIR | KIND_DELETED | KIND_MEMFD) {
            placed.lseek_set(f.fd, f.pos, what);
        }
        if f.pos > 0 && f.kind == KIND_EVENTFD {
            placed.write_all(f.fd, &f.pos.to_le_bytes(), &format!("{what} (its counter, {})", f.pos));
        }
    }
    Ok(())
}

/// The flags that open an fd of status flags `flags` again: without those that create or
/// empty a file, and for a file made with O_TMPFILE (a database's scratch file; its flags keep
/// O_TMPFILE, which includes O_DIRECTORY), without that: the restore opens the file it made
/// again, not a new one in a directory.
pub fn reopen_flags(flags: u32) -> u32 {
    const TMPFILE_ONLY: u32 = (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32;
    let mut f = flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) as u32);
    if f & TMPFILE_ONLY != 0 {
        f &= !(libc::O_TMPFILE as u32);
    }
    f
}

/// Whether an fd opened with `flags` takes them again with F_SETFL after its open: not an
/// O_PATH one (a directory held to work relative to, as rsync does), whose open gave it all
/// the flags it has, and which F_SETFL refuses (EBADF).
pub fn settable(flags: u32) -> bool {
    flags & libc::O_PATH as u32 == 0
}

/// One end of something whose other end is closed at once: a pipe's read end (end of file), a
/// pipe's write end (EPIPE), a stream socket (both) for an fd open for both.
fn peerless(c: &mut Ctl, access: u32, what: &str) -> Result<i32> {
    let (keep, drop) = match access as i32 {
        libc::O_RDONLY => c.pipe(what)?,
        libc::O_WRONLY => {
            let (r, w) = c.pipe(what)?;
            (w, r)
        }
        _ => c.socketpair(what)?,
    };
    c.close(drop, what)?;
    Ok(keep)
}

/// Whether a user (`uid`, and its groups `gids`) may access a file of metadata `m` as `want`
/// asks (4 read, 2 write, 1 search), by its permission bits (root: always; ACLs aside).
fn may(m: &fs::Metadata, uid: u32, gids: &[u32], want: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let bits = if uid == 0 {
        7
    } else if m.uid() == uid {
        m.mode() >> 6
    } else if gids.contains(&m.gid()) {
        m.mode() >> 3
    } else {
        m.mode()
    };
    bits & want == want
}

/// The regular files processes `pids` hold open by a path their own user could not open them
/// by again (opened with privileges the process dropped since, or whose mode changed): a
/// restore reopens each as its process's user, and refuses the image there. One line each,
/// for the user to act on before the checkpoint is needed.
pub fn unreopenable(pids: &[i32]) -> Vec<String> {
    let mut out = Vec::new();
    for &pid in pids {
        let Ok(status) = procfs::read_status(pid) else { continue };
        let ids = |key: &str| -> Vec<u32> {
            procfs::status_field(&status, key)
                .map_or(Vec::new(), |v| v.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        };
        let (uids, mut gids) = (ids("Uid"), ids("Gid"));
        let (Some(&uid), Some(&gid)) = (uids.get(3), gids.get(3)) else { continue };
        gids = [vec![gid], ids("Groups")].concat();
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            let Ok(target) = fs::read_link(e.path()) else { continue };
            let path = target.to_string_lossy().into_owned();
            if !path.starts_with('/') || path.ends_with(" (deleted)") {
                continue;
            }
            let Ok(m) = fs::metadata(e.path()) else { continue };
            if !m.is_file() {
                continue;
            }
            // Each directory on the way is searched, then the file opened. (How it is open
            // matters only when the user may not both read and write it.)
            // (As the process sees them: through its root, which may be another mount
            // namespace's.)
            let seen = |d: &std::path::Path| fs::metadata(format!("/proc/{pid}/root{}", d.display()));
            let dirs = target.ancestors().skip(1).all(|d| seen(d).is_ok_and(|m| may(&m, uid, &gids, 1)));
            if dirs && may(&m, uid, &gids, 6) {
                continue;
            }
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            let Some((_, flags)) = procfs::parse_fdinfo(&info) else { continue };
            let want = match flags & libc::O_ACCMODE as u32 {
                0 => 4,
                1 => 2,
                _ => 6,
            };
            if dirs && may(&m, uid, &gids, want) {
                continue;
            }
            let how = if want == 4 { "reading" } else { "writing" };
            out.push(format!(
                "pid {pid}'s fd {fd} is {}, which its user (uid {uid}) may not open for {how}: a restore reopens it as that user, and refuses the image; give uid {uid} access to it",
                crate::text::printable(&path)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let fds = vec![
            Fd {
                fd: 0,
                kind: KIND_STDIO,
                flags: 2,
                cloexec: false,
                pos: 0,
                id: FileId { path: "pipe:[1]".into(), ..Default::default() },
            },
            Fd {
                fd: 3,
                kind: KIND_FILE,
                flags: libc::O_WRONLY as u32 | libc::O_APPEND as u32,
                cloexec: true,
                pos: 77,
                id: FileId { path: "/tmp/log".into(), size: 77, ..Default::default() },
            },
        ];
        assert_eq!(decode(&encode(&fds), 0).unwrap(), fds);
    }

    #[test]
    fn scan_self_sees_our_files() {
        let f = fs::File::open("/dev/null").unwrap();
        let fds = scan(std::process::id() as i32, &Stubs::default(), &[], Carry::default());
        // The test harness may hold sockets or pipes of its own: then scan refuses, by name.
        match fds {
            Ok(v) => assert!(v.iter().any(|x| x.kind == KIND_DEV && x.id.path == "/dev/null")),
            Err(e) => assert!(e.to_string().contains("fd "), "{e}"),
        }
        drop(f);
    }
}
