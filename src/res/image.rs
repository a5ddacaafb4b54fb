//! The image as a whole: the model every resource reads into and writes from
//! ([`ProcessState`]), and the one registry of sections ([`SECTIONS`]): per section its tag,
//! name, scope, whether every image has it, whether it belongs to the layout read before the
//! page batches, and how it is encoded, decoded and described. Checkpoint, restore and crfinfo
//! all go through it; src/crf/ only frames sections and knows none of them.
//!
//! An image reads, in order: the layout sections (HEAD first: who the process is, checked
//! before anything is created), the page batches (streamed into the process as they come), the
//! rest, the trailer; a tree's first process has the pages its processes share (TREEPAGES,
//! see treecow) between its layout and its own batches. A restore therefore creates the process and its mappings while the pages
//! still arrive. Adding a resource: a file in src/res/ with its model, collect, codec, apply
//! and a `SectionDef`; one line in `SECTIONS`; one field below; a section in man/crf.5.

use super::{
    caps, clocks, cwd, deleted, epoll, fdescs, files, head, inet, inotify, itimers, knobs, locks, mdwe, memfd, memory,
    pending, pipes, ptimers, ptys, regs, rlimits, sched, seccomp, signals, sysv, task, tcpconn, tcpqueue, terminal,
    thp, thread, timerfd, tree, treecow, treeshm, unixpairs,
};
use crate::crf::{self, FLAG_OPTIONAL, Input, Reader, Section, Tag, Writer};
use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Everything an image says about a process except its page contents (which stream through
/// the PAGES batches). Plain data, one field per resource.
#[derive(Debug, Default)]
pub struct ProcessState {
    pub head: head::Header,
    /// The processes of the image, when it holds more than one (the first process's block
    /// carries it; empty in the others' and in an image of one process).
    pub tree: Vec<tree::Member>,
    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME when the processes were frozen (the first
    /// process's block carries them; none in an image of an older crs).
    pub clocks: Option<clocks::Clocks>,
    /// The job's terminal (`ckpt --shell-job`; the first process's block carries it).
    pub terminal: Option<terminal::Terminal>,
    /// The pty pairs the image's processes hold whole (the first process's block carries
    /// them).
    pub ptys: Vec<ptys::Pty>,
    /// The pipes between processes of the tree, with their unread bytes (the first process's
    /// block carries them): a restore makes them before it creates the processes, which
    /// inherit them.
    pub tree_pipes: Vec<pipes::Pipe>,
    /// The open file descriptions more than one fd holds, in any process of the image (the
    /// first process's block carries them).
    pub fdescs: Vec<fdescs::Desc>,
    /// The files unlinked while open or mapped, with their contents (the first process's
    /// block carries them).
    pub deleted: Vec<deleted::Deleted>,
    /// The memfds the processes hold open or mapped, with their contents and seals (the first
    /// process's block carries them).
    pub memfds: Vec<memfd::Memfd>,
    /// The System V objects the processes use (the first process's block carries them).
    pub sysv: sysv::Ipc,
    /// The shared anonymous memory more than one process of the tree maps (the first
    /// process's block carries it).
    pub tree_shm: Vec<treeshm::Obj>,
    /// The private memory processes of the tree share since a fork (the first process's block
    /// carries it; its pages come in the TREEPAGES batches after that block's layout).
    pub tree_cow: Option<treecow::TreeCow>,
    /// The connected pairs of unix sockets whose both ends the image's processes hold (the
    /// first process's block carries them).
    pub unix_pairs: Vec<unixpairs::Pair>,
    /// The listening unix sockets the image's processes hold whole (the first process's block
    /// carries them).
    pub unix_listening: Vec<unixpairs::Listening>,
    /// The TCP and UDP sockets a restore makes again by itself (the first process's block
    /// carries them).
    pub inet_socks: Vec<inet::Sock>,
    /// The established TCP connections (ckpt --tcp-established; the first process's block
    /// carries them).
    pub tcp_conns: tcpconn::Conns,
    /// The connections TCP listeners had not accepted yet (ckpt --tcp-established; the first
    /// process's block carries them).
    pub tcp_queued: Vec<tcpqueue::Queued>,
    /// Which unix socket pairs are connections to those listeners, and the connections
    /// waiting on them (the first process's block carries them).
    pub unix_conns: Vec<unixpairs::Conn>,
    pub files: Vec<files::Fd>,
    /// no_new_privs and the seccomp filters (of the layout: a restore installs them before it
    /// drops its privileges).
    pub seccomp: seccomp::Seccomp,
    /// The capability sets and securebits, when not the default ones (of the layout: the
    /// bounding set is dropped before the credentials change).
    pub caps: Option<caps::Caps>,
    pub mm: memory::MmStruct,
    pub vmas: Vec<memory::Vma>,
    /// One per thread, the thread-group leader first.
    pub threads: Vec<ThreadState>,
    /// What else each thread has, in the same order (THREAD sections, of the layout: a
    /// restore creates the threads before the pages come); empty in an image of a crs before
    /// threads, which has one thread.
    pub thread_info: Vec<thread::ThreadInfo>,
    pub signals: signals::Signals,
    /// Signals queued and not yet delivered.
    pub pending: Vec<pending::Pending>,
    pub task: task::Task,
    pub cwd: String,
    /// PR_GET_MDWE's flags (memory-deny-write-execute), 0 when not set.
    pub mdwe: u64,
    /// PR_SET_THP_DISABLE is set.
    pub thp_disabled: bool,
    /// Resource limits (soft, hard), in RLIMIT_* order; empty in an image of an older crs.
    pub rlimits: Vec<rlimits::Limit>,
    /// CPU and I/O scheduling; None in an image of an older crs.
    pub sched: Option<sched::Sched>,
    /// Each thread's scheduling, in thread order, when one differs from the leader's
    /// (`sched`); empty when all have the leader's.
    pub thread_sched: Vec<sched::Sched>,
    /// (key, value) of every knob the checkpointing kernel could report.
    pub knobs: Vec<(u32, u64)>,
    /// The interval timers (REAL, VIRTUAL, PROF), empty when none is armed.
    pub itimers: Vec<itimers::Timer>,
    /// Its POSIX timers (timer_create), by id.
    pub ptimers: Vec<ptimers::PTimer>,
    /// The pipes whose ends are all in the process, with their unread bytes.
    pub pipes: Vec<pipes::Pipe>,
    /// The interest lists of its epoll fds.
    pub epolls: Vec<epoll::Epoll>,
    /// Its timerfds' timers.
    pub timerfds: Vec<timerfd::Timer>,
    /// The watches of its inotify instances.
    pub inotify: Vec<inotify::Inotify>,
    /// The file locks it holds.
    pub locks: Vec<locks::Lock>,
}

/// The registers of one thread.
#[derive(Debug)]
pub struct ThreadState {
    pub regs: regs::RegState,
}

/// Whom a section describes: the image as a whole (objects shared by its processes, written
/// once and referred to by id), one process, or one thread (repeated, one per thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Image,
    Process,
    Thread,
}

/// What crfinfo shows of an image: the model, and how many bytes of pages each mapping (by
/// start address) has in the image.
pub struct View<'a> {
    pub st: &'a ProcessState,
    pub stored: &'a BTreeMap<u64, u64>,
    pub page_bytes: u64,
}

/// One kind of section.
pub struct SectionDef {
    pub tag: Tag,
    pub name: &'static str,
    pub scope: Scope,
    /// Every image has it; otherwise it is written only when the process has something to say
    /// (and a reader that does not know it refuses the image rather than drop what it says).
    pub required: bool,
    /// Part of the layout, read before the page batches.
    pub layout: bool,
    /// Written with FLAG_OPTIONAL: a reader that does not know it may skip it (what it says
    /// only serves an option of the restore).
    pub skippable: bool,
    /// The section's payloads for this state: none (an optional section with nothing to say),
    /// one, or one per thread.
    pub encode: fn(&ProcessState) -> Vec<Vec<u8>>,
    /// Decodes one payload (at stream offset `at`) into the state.
    pub decode: fn(&[u8], u64, &mut ProcessState) -> crf::Result<()>,
    /// crfinfo's lines for it (none when the image has nothing of it).
    pub describe: fn(&View) -> Vec<String>,
}

/// The tags, by name.
pub mod tags {
    use crate::crf::Tag;
    pub const HEAD: Tag = Tag(1);
    pub const FILES: Tag = Tag(2);
    pub const MMSTRUCT: Tag = Tag(3);
    pub const VMAS: Tag = Tag(4);
    // 5 is PAGES (crf::Tag::PAGES), the page batches between the layout and the rest.
    pub const REGS: Tag = Tag(6);
    pub const SIGNALS: Tag = Tag(7);
    pub const TASK: Tag = Tag(8);
    pub const CWD: Tag = Tag(9);
    pub const MDWE: Tag = Tag(10);
    pub const PENDING: Tag = Tag(11);
    pub const THP: Tag = Tag(12);
    pub const RLIMITS: Tag = Tag(13);
    pub const SCHED: Tag = Tag(14);
    pub const KNOBS: Tag = Tag(15);
    pub const ITIMERS: Tag = Tag(16);
    pub const THREAD: Tag = Tag(17);
    pub const PIPES: Tag = Tag(18);
    pub const EPOLL: Tag = Tag(19);
    pub const TIMERFDS: Tag = Tag(20);
    pub const INOTIFY: Tag = Tag(21);
    pub const TSCHED: Tag = Tag(22);
    pub const PTIMERS: Tag = Tag(23);
    pub const TREE: Tag = Tag(24);
    pub const TREEPIPES: Tag = Tag(25);
    pub const FDESCS: Tag = Tag(26);
    pub const LOCKS: Tag = Tag(27);
    pub const DELETED: Tag = Tag(28);
    pub const TREESHM: Tag = Tag(29);
    pub const TREECOW: Tag = Tag(42);
    pub const UNIXPAIRS: Tag = Tag(30);
    pub const UNIXLISTEN: Tag = Tag(31);
    pub const MEMFDS: Tag = Tag(32);
    pub const SYSVIPC: Tag = Tag(33);
    pub const UNIXCONNS: Tag = Tag(34);
    pub const SECCOMP: Tag = Tag(35);
    pub const CAPS: Tag = Tag(36);
    pub const CLOCKS: Tag = Tag(37);
    pub const TERMINAL: Tag = Tag(38);
    pub const PTYS: Tag = Tag(39);
    pub const INETSOCKS: Tag = Tag(40);
    pub const TCPCONNS: Tag = Tag(41);
    pub const TCPQUEUED: Tag = Tag(47);
}

/// A section every image has, of the layout (read before the pages) or not.
const fn every(tag: Tag, name: &'static str, layout: bool) -> SectionDef {
    SectionDef {
        tag,
        name,
        scope: Scope::Process,
        required: true,
        layout,
        skippable: false,
        encode: |_| vec![],
        decode: |_, _, _| Ok(()),
        describe: |_| vec![],
    }
}

/// A section written only when the process has something to say (after the pages).
const fn only_if(tag: Tag, name: &'static str) -> SectionDef {
    SectionDef { required: false, ..every(tag, name, false) }
}

/// Every section, in image order (the page batches come between the layout and the rest):
/// the one registry. Each entry ties a resource's codec to its field of the model.
pub const SECTIONS: &[&SectionDef] = &[
    &SectionDef {
        encode: |st| vec![st.head.encode()],
        decode: |b, at, st| set(&mut st.head, head::Header::decode(b, at)),
        describe: |v| v.st.head.describe(),
        ..every(tags::HEAD, "HEAD", true)
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.tree.is_empty() { vec![] } else { vec![tree::encode(&st.tree)] },
        decode: |b, at, st| set(&mut st.tree, tree::decode(b, at)),
        describe: |v| tree::describe(&v.st.tree),
        ..only_if(tags::TREE, "TREE")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        skippable: true,
        encode: |st| st.clocks.iter().map(clocks::encode).collect(),
        decode: |b, at, st| set(&mut st.clocks, clocks::decode(b, at)),
        describe: |v| v.st.clocks.iter().flat_map(clocks::describe).collect(),
        ..only_if(tags::CLOCKS, "CLOCKS")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| st.terminal.iter().map(terminal::encode).collect(),
        decode: |b, at, st| set(&mut st.terminal, terminal::decode(b, at)),
        describe: |v| v.st.terminal.iter().flat_map(terminal::describe).collect(),
        ..only_if(tags::TERMINAL, "TERMINAL")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.ptys.is_empty() { vec![] } else { vec![ptys::encode(&st.ptys)] },
        decode: |b, at, st| set(&mut st.ptys, ptys::decode(b, at)),
        describe: |v| ptys::describe(&v.st.ptys),
        ..only_if(tags::PTYS, "PTYS")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.tree_pipes.is_empty() { vec![] } else { vec![pipes::encode(&st.tree_pipes)] },
        decode: |b, at, st| set(&mut st.tree_pipes, pipes::decode(b, at)),
        describe: |v| pipes::describe(&v.st.tree_pipes),
        ..only_if(tags::TREEPIPES, "TREEPIPES")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.fdescs.is_empty() { vec![] } else { vec![fdescs::encode(&st.fdescs)] },
        decode: |b, at, st| set(&mut st.fdescs, fdescs::decode(b, at)),
        describe: |v| fdescs::describe(&v.st.fdescs),
        ..only_if(tags::FDESCS, "FDESCS")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.deleted.is_empty() { vec![] } else { vec![deleted::encode(&st.deleted)] },
        decode: |b, at, st| set(&mut st.deleted, deleted::decode(b, at)),
        describe: |v| deleted::describe(&v.st.deleted),
        ..only_if(tags::DELETED, "DELETED")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.memfds.is_empty() { vec![] } else { vec![memfd::encode(&st.memfds)] },
        decode: |b, at, st| set(&mut st.memfds, memfd::decode(b, at)),
        describe: |v| memfd::describe(&v.st.memfds),
        ..only_if(tags::MEMFDS, "MEMFDS")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.sysv.is_empty() { vec![] } else { vec![sysv::encode(&st.sysv)] },
        decode: |b, at, st| set(&mut st.sysv, sysv::decode(b, at)),
        describe: |v| sysv::describe(&v.st.sysv),
        ..only_if(tags::SYSVIPC, "SYSVIPC")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.tree_shm.is_empty() { vec![] } else { vec![treeshm::encode(&st.tree_shm)] },
        decode: |b, at, st| set(&mut st.tree_shm, treeshm::decode(b, at)),
        describe: |v| treeshm::describe(&v.st.tree_shm),
        ..only_if(tags::TREESHM, "TREESHM")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| st.tree_cow.iter().map(treecow::encode).collect(),
        decode: |b, at, st| set(&mut st.tree_cow, treecow::decode(b, at).map(Some)),
        describe: |v| v.st.tree_cow.iter().flat_map(treecow::describe).collect(),
        ..only_if(tags::TREECOW, "TREECOW")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.unix_pairs.is_empty() { vec![] } else { vec![unixpairs::encode(&st.unix_pairs)] },
        decode: |b, at, st| set(&mut st.unix_pairs, unixpairs::decode(b, at)),
        describe: |v| unixpairs::describe(&v.st.unix_pairs),
        ..only_if(tags::UNIXPAIRS, "UNIXPAIRS")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| {
            if st.unix_listening.is_empty() { vec![] } else { vec![unixpairs::encode_listening(&st.unix_listening)] }
        },
        decode: |b, at, st| set(&mut st.unix_listening, unixpairs::decode_listening(b, at)),
        describe: |v| unixpairs::describe_listening(&v.st.unix_listening),
        ..only_if(tags::UNIXLISTEN, "UNIXLISTEN")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.unix_conns.is_empty() { vec![] } else { vec![unixpairs::encode_conns(&st.unix_conns)] },
        decode: |b, at, st| set(&mut st.unix_conns, unixpairs::decode_conns(b, at)),
        describe: |v| unixpairs::describe_conns(&v.st.unix_conns),
        ..only_if(tags::UNIXCONNS, "UNIXCONNS")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.inet_socks.is_empty() { vec![] } else { vec![inet::encode(&st.inet_socks)] },
        decode: |b, at, st| set(&mut st.inet_socks, inet::decode(b, at)),
        describe: |v| inet::describe(&v.st.inet_socks),
        ..only_if(tags::INETSOCKS, "INETSOCKS")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| {
            let c = &st.tcp_conns;
            if c.conns.is_empty() && c.lock.is_empty() { vec![] } else { vec![tcpconn::encode(c)] }
        },
        decode: |b, at, st| set(&mut st.tcp_conns, tcpconn::decode(b, at)),
        describe: |v| tcpconn::describe(&v.st.tcp_conns),
        ..only_if(tags::TCPCONNS, "TCPCONNS")
    },
    &SectionDef {
        scope: Scope::Image,
        layout: true,
        encode: |st| if st.tcp_queued.is_empty() { vec![] } else { vec![tcpqueue::encode(&st.tcp_queued)] },
        decode: |b, at, st| set(&mut st.tcp_queued, tcpqueue::decode(b, at)),
        describe: |v| tcpqueue::describe(&v.st.tcp_queued),
        ..only_if(tags::TCPQUEUED, "TCPQUEUED")
    },
    &SectionDef {
        encode: |st| vec![files::encode(&st.files)],
        decode: |b, at, st| set(&mut st.files, files::decode(b, at)),
        describe: |v| files::describe(&v.st.files),
        ..every(tags::FILES, "FILES", true)
    },
    &SectionDef {
        layout: true,
        encode: |st| if st.seccomp.is_empty() { vec![] } else { vec![seccomp::encode(&st.seccomp)] },
        decode: |b, at, st| set(&mut st.seccomp, seccomp::decode(b, at)),
        describe: |v| if v.st.seccomp.is_empty() { vec![] } else { seccomp::describe(&v.st.seccomp) },
        ..only_if(tags::SECCOMP, "SECCOMP")
    },
    &SectionDef {
        layout: true,
        encode: |st| st.caps.iter().map(caps::encode).collect(),
        decode: |b, at, st| set(&mut st.caps, caps::decode(b, at)),
        describe: |v| v.st.caps.iter().flat_map(caps::describe).collect(),
        ..only_if(tags::CAPS, "CAPS")
    },
    &SectionDef {
        encode: |st| vec![st.mm.encode()],
        decode: |b, at, st| set(&mut st.mm, memory::MmStruct::decode(b, at)),
        describe: |v| v.st.mm.describe(),
        ..every(tags::MMSTRUCT, "MMSTRUCT", true)
    },
    &SectionDef {
        encode: |st| vec![memory::encode_vmas(&st.vmas)],
        decode: |b, at, st| set(&mut st.vmas, memory::decode_vmas(b, at)),
        describe: |v| memory::describe_vmas(&v.st.vmas, v.stored, v.page_bytes),
        ..every(tags::VMAS, "VMAS", true)
    },
    &SectionDef {
        scope: Scope::Thread,
        layout: true,
        encode: |st| st.thread_info.iter().map(|i| i.encode()).collect(),
        decode: |b, at, st| thread::ThreadInfo::decode(b, at).map(|i| st.thread_info.push(i)),
        describe: |v| v.st.thread_info.iter().map(|i| i.describe()).collect(),
        ..only_if(tags::THREAD, "THREAD")
    },
    &SectionDef {
        scope: Scope::Thread,
        encode: |st| st.threads.iter().map(|t| t.regs.encode()).collect(),
        decode: |b, at, st| regs::RegState::decode(b, at).map(|regs| st.threads.push(ThreadState { regs })),
        describe: |v| v.st.threads.iter().map(|t| t.regs.describe()).collect(),
        ..every(tags::REGS, "REGS", false)
    },
    &SectionDef {
        encode: |st| vec![st.signals.encode()],
        decode: |b, at, st| set(&mut st.signals, signals::Signals::decode(b, at)),
        describe: |v| v.st.signals.describe(),
        ..every(tags::SIGNALS, "SIGNALS", false)
    },
    &SectionDef {
        encode: |st| vec![st.task.encode()],
        decode: |b, at, st| set(&mut st.task, task::Task::decode(b, at)),
        describe: |v| v.st.task.describe(),
        ..every(tags::TASK, "TASK", false)
    },
    &SectionDef {
        encode: |st| vec![cwd::encode(&st.cwd)],
        decode: |b, at, st| set(&mut st.cwd, cwd::decode(b, at)),
        describe: |v| cwd::describe(&v.st.cwd),
        ..every(tags::CWD, "CWD", false)
    },
    &SectionDef {
        encode: |st| if st.mdwe == 0 { vec![] } else { vec![mdwe::encode(st.mdwe)] },
        decode: |b, at, st| set(&mut st.mdwe, mdwe::decode(b, at)),
        describe: |v| mdwe::describe(v.st.mdwe),
        ..only_if(tags::MDWE, "MDWE")
    },
    &SectionDef {
        encode: |st| if st.pending.is_empty() { vec![] } else { vec![pending::encode(&st.pending)] },
        decode: |b, at, st| set(&mut st.pending, pending::decode(b, at)),
        describe: |v| pending::describe(&v.st.pending),
        ..only_if(tags::PENDING, "PENDING")
    },
    &SectionDef {
        encode: |st| if st.thp_disabled { vec![thp::encode()] } else { vec![] },
        decode: |b, at, st| set(&mut st.thp_disabled, thp::decode(b, at).map(|()| true)),
        describe: |v| thp::describe(v.st.thp_disabled),
        ..only_if(tags::THP, "THP")
    },
    &SectionDef {
        // Written by every crs since 2026-12-04; an image of an older one has none, and its
        // process keeps the restorer's limits, as it always did.
        encode: |st| if st.rlimits.is_empty() { vec![] } else { vec![rlimits::encode(&st.rlimits)] },
        decode: |b, at, st| set(&mut st.rlimits, rlimits::decode(b, at)),
        describe: |v| rlimits::describe(&v.st.rlimits),
        ..only_if(tags::RLIMITS, "RLIMITS")
    },
    &SectionDef {
        // Like RLIMITS: every crs since 2026-12-04 writes them.
        encode: |st| st.sched.iter().map(|s| s.encode()).collect(),
        decode: |b, at, st| set(&mut st.sched, sched::Sched::decode(b, at).map(Some)),
        describe: |v| v.st.sched.as_ref().map_or(vec![], |s| s.describe()),
        ..only_if(tags::SCHED, "SCHED")
    },
    &SectionDef {
        scope: Scope::Thread,
        encode: |st| st.thread_sched.iter().map(|s| s.encode()).collect(),
        decode: |b, at, st| sched::Sched::decode(b, at).map(|s| st.thread_sched.push(s)),
        describe: |v| sched::describe_threads(&v.st.thread_sched, &v.st.thread_info),
        ..only_if(tags::TSCHED, "TSCHED")
    },
    &SectionDef {
        encode: |st| if st.knobs.is_empty() { vec![] } else { vec![knobs::encode(&st.knobs)] },
        decode: |b, at, st| set(&mut st.knobs, knobs::decode(b, at)),
        describe: |v| knobs::describe(&v.st.knobs),
        ..only_if(tags::KNOBS, "KNOBS")
    },
    &SectionDef {
        encode: |st| if st.itimers.is_empty() { vec![] } else { vec![itimers::encode(&st.itimers)] },
        decode: |b, at, st| set(&mut st.itimers, itimers::decode(b, at)),
        describe: |v| itimers::describe(&v.st.itimers),
        ..only_if(tags::ITIMERS, "ITIMERS")
    },
    &SectionDef {
        encode: |st| if st.ptimers.is_empty() { vec![] } else { vec![ptimers::encode(&st.ptimers)] },
        decode: |b, at, st| set(&mut st.ptimers, ptimers::decode(b, at)),
        describe: |v| ptimers::describe(&v.st.ptimers),
        ..only_if(tags::PTIMERS, "PTIMERS")
    },
    &SectionDef {
        encode: |st| if st.pipes.is_empty() { vec![] } else { vec![pipes::encode(&st.pipes)] },
        decode: |b, at, st| set(&mut st.pipes, pipes::decode(b, at)),
        describe: |v| pipes::describe(&v.st.pipes),
        ..only_if(tags::PIPES, "PIPES")
    },
    &SectionDef {
        encode: |st| if st.epolls.is_empty() { vec![] } else { vec![epoll::encode(&st.epolls)] },
        decode: |b, at, st| set(&mut st.epolls, epoll::decode(b, at)),
        describe: |v| epoll::describe(&v.st.epolls),
        ..only_if(tags::EPOLL, "EPOLL")
    },
    &SectionDef {
        encode: |st| if st.timerfds.is_empty() { vec![] } else { vec![timerfd::encode(&st.timerfds)] },
        decode: |b, at, st| set(&mut st.timerfds, timerfd::decode(b, at)),
        describe: |v| timerfd::describe(&v.st.timerfds),
        ..only_if(tags::TIMERFDS, "TIMERFDS")
    },
    &SectionDef {
        encode: |st| if st.inotify.is_empty() { vec![] } else { vec![inotify::encode(&st.inotify)] },
        decode: |b, at, st| set(&mut st.inotify, inotify::decode(b, at)),
        describe: |v| inotify::describe(&v.st.inotify),
        ..only_if(tags::INOTIFY, "INOTIFY")
    },
    &SectionDef {
        encode: |st| if st.locks.is_empty() { vec![] } else { vec![locks::encode(&st.locks)] },
        decode: |b, at, st| set(&mut st.locks, locks::decode(b, at)),
        describe: |v| locks::describe(&v.st.locks),
        ..only_if(tags::LOCKS, "LOCKS")
    },
];

/// Stores a decoded value in its field of the model.
fn set<T>(field: &mut T, v: crf::Result<T>) -> crf::Result<()> {
    *field = v?;
    Ok(())
}

/// Writes the layout sections (`layout`) or the rest, in registry order.
pub fn write<W: std::io::Write>(w: &mut Writer<W>, st: &ProcessState, layout: bool) -> Result<()> {
    for d in SECTIONS.iter().filter(|d| d.layout == layout) {
        let flags = if d.skippable { FLAG_OPTIONAL } else { 0 };
        for p in (d.encode)(st) {
            w.section(d.tag, flags, &[&p]).map_err(|e| Error::io("image", e))?;
        }
    }
    Ok(())
}

/// Reads sections into a [`ProcessState`] in registry order, refusing a section out of
/// order, a missing one that every image has, and an unknown one that is not optional.
#[derive(Default)]
pub struct SectionReader {
    /// Index in SECTIONS of the next section that may come (a thread section may repeat).
    next: usize,
    seen: Vec<bool>,
    last: &'static str,
    /// Another process's block may follow this one's (its HEAD ends this one's rest).
    pub more: bool,
    /// The PAGEPLAN read after the layout, if any: its payload and stream offset (see
    /// crf::pages::read_plan).
    pub plan: Option<(Vec<u8>, u64)>,
}

fn bad(offset: u64, what: String) -> Error {
    Error::Image(crf::CrfError::Bad { offset, what })
}

impl SectionReader {
    pub fn new() -> Self {
        SectionReader { next: 0, seen: vec![false; SECTIONS.len()], last: "the preamble", more: false, plan: None }
    }

    /// Where the page batches that follow lie (a PAGEPLAN, `next` if it is one, before the
    /// first batch: after the layout, or after a tree's TREEPAGES): kept, for a reader that
    /// passes over them. Returns the section after it (`next` if it is not one).
    pub fn take_plan<R: Input>(&mut self, rd: &mut Reader<R>, next: Option<Section>) -> Result<Option<Section>> {
        match next {
            Some(sec) if sec.tag == Tag::PAGEPLAN && self.plan.is_none() => {
                self.plan = Some((rd.payload(&sec, "PAGEPLAN")?, sec.offset));
                Ok(rd.next_section()?)
            }
            next => Ok(next),
        }
    }

    /// Reads the layout sections (`layout`) or the rest into `st`, starting with `first` if
    /// given, calling `after` once each section is decoded (a restore checks the header there,
    /// before anything else is read). Returns the section that ends the group: after the
    /// layout, the first page batch (or, without pages, the first section of the rest); after
    /// the rest, the next process's HEAD (when `more`), or None at the trailer.
    pub fn read_group<R: Input>(
        &mut self,
        rd: &mut Reader<R>,
        st: &mut ProcessState,
        first: Option<Section>,
        layout: bool,
        after: &mut dyn FnMut(&SectionDef, &ProcessState) -> Result<()>,
    ) -> Result<Option<Section>> {
        let mut next = first;
        loop {
            let sec = match next.take() {
                Some(s) => Some(s),
                None => rd.next_section()?,
            };
            let Some(sec) = sec else {
                self.missing(layout, rd.offset(), "the end")?;
                return Ok(None);
            };
            if sec.tag == Tag::PAGEPLAN && layout && self.plan.is_none() {
                self.missing(true, sec.offset, "a page plan")?;
                next = self.take_plan(rd, Some(sec))?;
                continue;
            }
            if sec.tag == Tag::PAGES || sec.tag == Tag::TREEPAGES {
                if !layout {
                    return Err(bad(sec.offset, format!("unexpected page batch after {}", self.last)));
                }
                self.missing(true, sec.offset, "a page batch")?;
                return Ok(Some(sec));
            }
            // HEAD comes first, before anything else is even read: the caller checks it.
            if !self.seen[0] && sec.tag != SECTIONS[0].tag {
                return Err(bad(sec.offset, format!("expected a HEAD section first, found {}", sec.tag)));
            }
            let Some(i) = SECTIONS.iter().position(|d| d.tag == sec.tag) else {
                if sec.flags & FLAG_OPTIONAL != 0 {
                    rd.skip(&sec)?;
                    continue;
                }
                return Err(bad(
                    sec.offset,
                    format!("unknown section {} after {}: the image needs a newer crs", sec.tag, self.last),
                ));
            };
            let d = SECTIONS[i];
            if !layout && self.more && i == 0 {
                self.missing(false, sec.offset, "the next process")?;
                return Ok(Some(sec));
            }
            if layout && !d.layout {
                // An image without pages: the rest begins.
                self.missing(true, sec.offset, d.name)?;
                return Ok(Some(sec));
            }
            let repeat = i + 1 == self.next && d.scope == Scope::Thread && self.seen[i];
            if (i < self.next && !repeat) || d.layout != layout {
                return Err(bad(sec.offset, format!("unexpected {} section after {}", d.name, self.last)));
            }
            if let Some(m) = SECTIONS[self.next.min(i)..i].iter().find(|d| d.required) {
                return Err(bad(sec.offset, format!("expected a {} section, found {}", m.name, d.name)));
            }
            let payload = rd.payload(&sec, d.name)?;
            (d.decode)(&payload, sec.offset, st)?;
            self.seen[i] = true;
            self.next = i + 1;
            self.last = d.name;
            after(d, st)?;
        }
    }

    /// Fails if a section every image has is still to come in this group.
    fn missing(&self, layout: bool, offset: u64, found: &str) -> Result<()> {
        let rest = SECTIONS.iter().enumerate().skip(self.next);
        if let Some((_, m)) = rest.filter(|(_, d)| d.layout == layout).find(|(i, d)| d.required && !self.seen[*i]) {
            return Err(bad(offset, format!("expected a {} section, found {found}", m.name)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crf::pages;

    fn state() -> ProcessState {
        let mut st = ProcessState::default();
        st.head.pid = 42;
        st.cwd = "/".into();
        st.signals.actions = vec![Default::default(); signals::NSIG];
        st.threads.push(ThreadState {
            regs: regs::RegState { gpr: crate::ptrace::arch::regs_from_array(&[0; 27]), xsave: vec![] },
        });
        st
    }

    /// An image of `st` with one page batch, and `extra` sections spliced in before END.
    fn image(st: &ProcessState, extra: &[(Tag, u32)]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        write(&mut w, st, true).unwrap();
        pages::write_batch(&mut w, &[pages::Run { addr: 0x1000, npages: 1, flags: 0 }], &[0; 4096]).unwrap();
        write(&mut w, st, false).unwrap();
        for &(tag, flags) in extra {
            w.section(tag, flags, &[b"?"]).unwrap();
        }
        w.finish().unwrap().0
    }

    fn read(b: &[u8]) -> Result<ProcessState> {
        let mut rd = Reader::new(b)?;
        let mut st = ProcessState::default();
        let mut sr = SectionReader::new();
        let mut next = sr.read_group(&mut rd, &mut st, None, true, &mut |_, _| Ok(()))?;
        while let Some(s) = next.filter(|s| s.tag == Tag::PAGES) {
            rd.skip(&s)?;
            next = rd.next_section()?;
        }
        sr.read_group(&mut rd, &mut st, next, false, &mut |_, _| Ok(()))?;
        Ok(st)
    }

    #[test]
    fn a_state_round_trips_through_the_registry() {
        let mut st = state();
        st.mdwe = 1;
        let back = read(&image(&st, &[])).unwrap();
        assert_eq!((back.head.pid, back.cwd.as_str(), back.mdwe, back.threads.len()), (42, "/", 1, 1));
    }

    #[test]
    fn unknown_sections_are_skipped_when_optional_and_refused_when_not() {
        assert!(read(&image(&state(), &[(Tag(0x1234), FLAG_OPTIONAL)])).is_ok());
        let e = read(&image(&state(), &[(Tag(0x1234), 0)])).unwrap_err().to_string();
        assert!(e.contains("unknown section tag 0x1234 after CWD: the image needs a newer crs"), "{e}");
    }

    #[test]
    fn head_comes_before_anything_even_an_optional_section() {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.section(Tag(0x1234), FLAG_OPTIONAL, &[b"?"]).unwrap();
        write(&mut w, &state(), true).unwrap();
        write(&mut w, &state(), false).unwrap();
        let e = read(&w.finish().unwrap().0).unwrap_err().to_string();
        assert!(e.contains("expected a HEAD section first"), "{e}");
    }

    #[test]
    fn sections_out_of_order_or_missing_are_refused() {
        // HEAD again at the end.
        let e = read(&image(&state(), &[(tags::HEAD, 0)])).unwrap_err().to_string();
        assert!(e.contains("unexpected HEAD section after CWD"), "{e}");
        // No REGS: the image goes from the pages to SIGNALS.
        let mut w = Writer::new(Vec::new()).unwrap();
        let st = state();
        write(&mut w, &st, true).unwrap();
        for d in SECTIONS.iter().filter(|d| !d.layout && d.tag != tags::REGS) {
            for p in (d.encode)(&st) {
                w.section(d.tag, 0, &[&p]).unwrap();
            }
        }
        let e = read(&w.finish().unwrap().0).unwrap_err().to_string();
        assert!(e.contains("expected a REGS section, found SIGNALS"), "{e}");
    }

    #[test]
    fn the_registry_is_consistent() {
        for (i, d) in SECTIONS.iter().enumerate() {
            assert!(d.tag != Tag::PAGES && d.tag != Tag::TREEPAGES && d.tag != Tag::END, "{}", d.name);
            assert!(SECTIONS[i + 1..].iter().all(|e| e.tag != d.tag && e.name != d.name), "{} twice", d.name);
            // The layout comes first.
            assert!(d.layout || SECTIONS[i + 1..].iter().all(|e| !e.layout), "{} before a layout section", d.name);
        }
        assert_eq!(SECTIONS[0].name, "HEAD");
    }
}
