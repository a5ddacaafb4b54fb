//! Restore: read an image strictly in order and rebuild the process in a child of ours.
//!
//! The child is a clone3 of rstrt (with the image's pid when it is free and we may), which stops
//! itself under PTRACE_TRACEME. From then on it only ever executes single `syscall` instructions
//! we point it at, in the numbered steps of `restore_checked`: a gadget (one page of code, three
//! of scratch) where neither it nor the image has anything; everything rstrt left in it
//! unmapped; the mm layout and exe link; the credentials, so that all it opens from then on is
//! opened as the image's user; the vdso where the image had it, the mappings and their pages;
//! files, cwd, signals, session, task attributes, THP, resource limits, scheduling, knobs,
//! the mappings' madvise/mlock flags, MDWE and pending signals; finally the
//! gadget unmapped from within (stopping at that syscall's exit) and the image's registers. Nothing of the image runs
//! before its trailer has been read and checked: a corrupt image kills the child, never runs it.

use super::family::{self, Family};
use super::inherit::Made;
use super::layout::{find_free, move_specials, stretches};
use super::precopy::{self, Copied, Keep, Offsets, Part, Store, Stores};

/// The pages a running checkpoint copied before the freeze, where the image holds them, and,
/// for a lazy restore, the PREPAGES batches they are in (see precopy::read_ahead).
type InImage<'a> = (&'a Offsets, Option<&'a [crate::crf::pages::Deferred]>);
/// The same, owned, per process (its pid in the image).
type AllInImage = Vec<(i32, (Offsets, Option<Vec<crate::crf::pages::Deferred>>))>;
use super::urgent::Urgent;
use crate::crf::pages;
use crate::crf::{Input, PAGE_SIZE, Reader, SECTION_HEADER_LEN, Tag};
use crate::error::{Error, Result};
use crate::ptrace::arch::{self, Regs};
use crate::ptrace::calls::{self, Calls};
use crate::ptrace::procfs::{self, MapEntry};
use crate::ptrace::remote::Remote;
use crate::ptrace::tracee::{Caught, Tracee, redeliver};
use crate::ptrace::{Ctl, RemoteAddr, Scratch, mem};
use crate::res::fileid;
use crate::res::head::Header;
use crate::res::image::{ProcessState, SectionReader};
use crate::res::memory;
use crate::res::regs;
use crate::res::signals::Signals;
use crate::res::task;
use crate::res::thread::ThreadInfo;
use crate::res::tree::Member;
use crate::res::{caps, creds, cwd, files, itimers, knobs, mdwe, pending, rlimits, thp};
use log::debug;
use nix::errno::Errno;
use nix::sys::signal::Signal;
use std::os::fd::AsRawFd;

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Put the process in a session of its own (it outlives rstrt).
    pub detach: bool,
    /// Leave it stopped (RESTART_STOP).
    pub stop: bool,
    /// Fail if the original pid cannot be had.
    pub require_pid: bool,
    /// Keep the process traced and stopped, ready to go: the caller releases it (or kills it)
    /// through `Restored::held`. Should the caller die first, the kernel kills the process.
    pub hold: bool,
    /// Fds 0-2 (bit n for fd n) that were a terminal or pipe get /dev/null instead of ours:
    /// fd 0 when the image comes on our stdin, all three for restartd.
    pub null_stdio: u8,
    /// Give the processes a new IPC namespace, where the System V objects get their ids
    /// whatever this one holds (rstrt --ipcns).
    pub ipcns: bool,
    /// Give the processes a time namespace in which CLOCK_MONOTONIC and CLOCK_BOOTTIME go on
    /// from where they were frozen (rstrt --timens).
    pub timens: bool,
    /// Make the job a member of our session and process group, on our terminal, with the
    /// image's terminal modes (rstrt --shell-job; see res::terminal).
    pub shell_job: bool,
    /// Root may give a user's process the capabilities its image says it had (rstrt
    /// --user-caps: root vouches for the image; never restartd, whose peers are trusted with
    /// uids, not with privilege).
    pub grant_caps: bool,
    /// An address this node does not have yet (migrate --move-address puts it on before the
    /// processes run): sockets bound to it are bound with IP_FREEBIND.
    pub free_bind: Option<std::net::IpAddr>,
    /// Which engine restarts (see crate::dev): this one, /dev/crd, or `Auto`: this one unless
    /// Yama forbids it to trace its child and /dev/crd is there.
    pub backend: crate::dev::Backend,
}

#[derive(Debug)]
pub struct Restored {
    pub pid: i32,
    pub original_pid: i32,
    /// Why the original pid could not be had, when it could not.
    pub pid_note: Option<String>,
    /// The exe link could not be set (needs CAP_CHECKPOINT_RESTORE).
    pub exe_kept: bool,
    /// Fds 0-2 (bit n for fd n) that were a terminal or a pipe and got /dev/null: those of
    /// `Options::null_stdio`, and those on a terminal when root restores another user's
    /// process (which must get none of root's terminal).
    pub null_stdio: u8,
    /// What the processes did not get back exactly, and why (said by rstrt, logged by
    /// restartd).
    pub notes: Vec<String>,
    /// The first process's state.
    pub state: ProcessState,
    /// Every live process restored, (pid in the image, pid here), the first one first.
    pub members: Vec<(i32, i32)>,
    /// How many zombies were restored, for their parents to reap.
    pub zombies: usize,
    /// With `Options::hold`: the processes, still traced, not yet running.
    pub held: Option<Held>,
    /// A lazy restore's page server ([`restore_lazy`]): the processes run, and not all their
    /// pages are in yet. Dropping it waits until they are.
    pub lazy: Option<super::lazy::Server>,
}

/// Restored processes that have not run yet. `release` lets them run; dropping it kills them.
pub struct Held {
    family: Family,
    /// The System V objects made for them: removed if they are killed (dropped after them).
    ipc: Option<crate::res::sysv::Made>,
    /// Their established TCP connections, in repair mode until they run (closed silently,
    /// their packets still blocked, if they are killed).
    tcp: Option<crate::res::tcpconn::Repaired>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({:?})", self.family.procs.iter().map(|p| p.t.pid).collect::<Vec<_>>())
    }
}

impl Held {
    /// Detaches: the processes run from where they were checkpointed, children first (a parent
    /// that runs first finds them there either way).
    pub fn release(mut self) -> Result<()> {
        if let Some(tcp) = self.tcp.take() {
            tcp.release()?;
        }
        if let Some(ipc) = self.ipc.as_mut() {
            ipc.remove_doomed();
        }
        self.family.armed = false;
        let procs = std::mem::take(&mut self.family.procs);
        // Each thread let go may otherwise run first, for a whole slice, while the rest wait.
        let mut urgent = Urgent::raise();
        if procs.iter().any(|p| !p.others.is_empty()) {
            urgent.real_time(true);
        }
        let mut out = Ok(());
        for p in procs.into_iter().rev() {
            let pid = p.t.pid;
            let r = (|| {
                // Pending as it is let go, it stops before it runs.
                if p.stop {
                    p.t.kill(Signal::SIGSTOP)?;
                }
                for o in p.others {
                    o.detach()?;
                }
                p.t.detach()
            })();
            redeliver(pid, &p.held);
            out = out.and(r);
        }
        if let Some(ipc) = self.ipc.take() {
            ipc.keep();
        }
        out
    }
}

/// Restores the image read from `input`. Returns once the processes run (or are stopped, with
/// `stop`); the first is our child and none is traced any more.
pub fn restore<R: Input>(input: R, opts: &Options) -> Result<Restored> {
    restore_checked(input, opts, &|_| Ok(()))
}

/// What every process's restore shares: rstrt's own vdso and specials, the signal actions the
/// children inherited from us, the options.
struct Shared<'a> {
    opts: &'a Options,
    /// What every process inherited from us.
    made: Made,
    specials: Vec<MapEntry>,
    vdso: Vec<u8>,
    inherited_signals: Signals,
    /// A lazy restore's page server: the pages of private anonymous mappings stay in the
    /// image until touched.
    lazy: Option<&'a super::lazy::Server>,
}

/// [`restore`], with `policy` deciding from each process's header, before anything of it is
/// created, whether it may be restored here (restartd's uid rules).
pub fn restore_checked<R: Input>(input: R, opts: &Options, policy: &dyn Fn(&Header) -> Result<()>) -> Result<Restored> {
    restore_live(input, opts, None, policy)
}

/// [`restore_checked`] of the image of a live migration, whose processes' pages sent ahead
/// are in `stores` (see engine::precopy).
pub fn restore_live<R: Input>(
    input: R,
    opts: &Options,
    store: Option<&mut Stores>,
    policy: &dyn Fn(&Header) -> Result<()>,
) -> Result<Restored> {
    restore_all(input, opts, store, None, policy)
}

/// [`restore_checked`] that leaves the pages of private anonymous mappings in the image file
/// `pages` (which `input` reads) until the processes touch them, or a thread of ours copies them
/// in: they run at once (see engine::lazy). `input` must be able to pass over page data
/// unread (a file: crf::Seekable).
pub fn restore_lazy<R: Input>(
    input: R,
    pages: super::lazy::Source,
    opts: &Options,
    policy: &dyn Fn(&Header) -> Result<()>,
) -> Result<Restored> {
    if opts.hold {
        return Err(Error::Usage("a lazy restore cannot hold the processes back: they run at once".into()));
    }
    let mut server = super::lazy::Server::start(pages)?;
    let mut r = restore_all(input, opts, None, Some(&server), policy)?;
    server.running();
    r.lazy = Some(server);
    Ok(r)
}

/// [`restore_checked`] of the image of a post-copy migration: its kept runs are pages the
/// source sends once the processes run, through the returned `Restored::lazy`, to which the
/// caller hands the connection (`lazy::Server::link`) once it released them (`opts.hold`).
/// The server may wait `silence` at most for the source. After a pre-copy (the hybrid mode),
/// `store` holds the pages sent ahead, as for [`restore_live`].
pub fn restore_postcopy<R: Input>(
    input: R,
    opts: &Options,
    store: Option<&mut Stores>,
    silence: std::time::Duration,
    policy: &dyn Fn(&Header) -> Result<()>,
) -> Result<Restored> {
    let server = super::lazy::Server::remote(silence)?;
    let mut r = restore_all(input, opts, store, Some(&server), policy)?;
    server.restored();
    r.lazy = Some(server);
    Ok(r)
}

fn restore_all<R: Input>(
    input: R,
    opts: &Options,
    store: Option<&mut Stores>,
    lazy: Option<&super::lazy::Server>,
    policy: &dyn Fn(&Header) -> Result<()>,
) -> Result<Restored> {
    let mut rd = Reader::new(input)?;
    // An image of a running checkpoint: the pages copied before the freeze, held as a live
    // migration's destination holds those sent ahead.
    // (A lazy restore from a file leaves them there until the processes touch them.)
    let how = if lazy.is_some_and(|l| !l.is_remote()) { Keep::Later } else { Keep::Auto };
    let (ahead, first) = super::precopy::read_ahead(&mut rd, how)?;
    let (copied, mut shm_ahead) = (ahead.copied, ahead.shm);
    if (!copied.is_empty() || !shm_ahead.is_empty()) && store.is_some() {
        return Err(Error::Refused(
            "the image of a live migration holds pages copied before the freeze too, which no crs writes: it is damaged"
                .into(),
        ));
    }
    // Per process (its pid in the image; 0: the first process).
    let mut held: Vec<(i32, Store)> = Vec::new();
    let mut offsets: AllInImage = Vec::new();
    for (pid, c) in copied {
        match c {
            Copied::Held(s) => held.push((pid, s)),
            Copied::InImage(o) => offsets.push((pid, (o, None))),
            Copied::Later(o, d) => offsets.push((pid, (o, Some(d)))),
        }
    }
    // Their checksums, checked beside the restore (a mapped image), before anything runs.
    let unchecked: Vec<_> = offsets.iter_mut().flat_map(|(_, o)| std::mem::take(&mut o.0.unchecked)).collect();
    let checker = match unchecked.is_empty() {
        false => {
            let (lo, image) = lasting_span(&rd, unchecked.iter().map(|s| (s.0, s.1)))?;
            // SAFETY: a lasting input's memory outlives this restore; the checker is finished
            // or dropped (joined) before it returns.
            Some(unsafe { super::precopy::Checker::start(image, lo, unchecked) }?)
        }
        true => None,
    };
    let mut st = ProcessState::default();
    // The layout, read into the model; the header is checked as soon as it is in, before
    // anything else is read or created.
    let check = |d: &crate::res::image::SectionDef, st: &ProcessState| {
        if d.tag != crate::res::image::tags::HEAD {
            return Ok(());
        }
        creds::check_caller(&st.head)?;
        policy(&st.head)
    };
    let mut sections = SectionReader::new();
    let mut batch = sections.read_group(&mut rd, &mut st, first, true, &mut |d, st| check(d, st))?;
    // (Pages copied ahead of no named process are the first process's.)
    let first_pid = st.head.pid;
    held.iter_mut().filter(|h| h.0 == 0).for_each(|h| h.0 = first_pid);
    offsets.iter_mut().filter(|o| o.0 == 0).for_each(|o| o.0 = first_pid);
    let mut own = (!held.is_empty()).then(|| Stores::held(held));
    let mut store = store.or(own.as_mut());
    // The pages the processes share since a fork, held here before they are made: each
    // inherits them and moves them into place.
    let mut cow = match &st.tree_cow {
        Some(_) if store.is_some() || !offsets.is_empty() || !shm_ahead.is_empty() => {
            return Err(Error::Refused(format!(
                "the image of pid {} shares pages between its processes and has pages copied ahead (a live migration's, or a running checkpoint's), which no crs writes together: it is damaged",
                st.head.pid
            )));
        }
        Some(c) => Some(shared_pages(&mut rd, c, &mut batch)?),
        None => None,
    };
    // (The first process's page plan comes after the shared pages.)
    batch = sections.take_plan(&mut rd, batch)?;
    if let Some(s) = batch.as_ref().filter(|s| s.tag == Tag::TREEPAGES && cow.is_none()) {
        return Err(Error::Image(crate::crf::CrfError::Bad {
            offset: s.offset,
            what: "shared pages (TREEPAGES) without a TREECOW section".into(),
        }));
    }
    let tree = if st.tree.is_empty() {
        let h = &st.head;
        vec![Member { pid: h.pid, ppid: h.ppid, pgid: h.pgid, sid: h.sid, zombie: None, comm: String::new() }]
    } else {
        std::mem::take(&mut st.tree)
    };
    let live: Vec<i32> = tree.iter().filter(|m| m.zombie.is_none()).map(|m| m.pid).collect();
    if live.first() != Some(&st.head.pid) {
        return Err(Error::Refused("the image's TREE does not begin with its first process: it is damaged".into()));
    }
    let me = std::process::id() as i32;
    let own = procfs::read_maps(me)?;
    let specials: Vec<MapEntry> = own.iter().filter(|m| m.is_vdso_or_vvar()).cloned().collect();
    let vdso = match own.iter().find(|m| m.name == "[vdso]") {
        Some(v) => {
            let mut b = vec![0u8; v.len() as usize];
            mem::read_runs(me, &[(v.start, b.len())], &mut b)?;
            b
        }
        None => Vec::new(),
    };
    let mut shared = Shared { opts, made: Made::default(), specials, vdso, inherited_signals: Signals::own(), lazy };
    // Root restoring another user's process gives it a session of its own (no controlling
    // terminal of root's); so does -d; and so it is when it led its session.
    let foreign = creds::is_root() && st.head.uids.iter().any(|&u| u != 0);
    let here = shell_job(opts, foreign, &st.head)?;
    if here.is_none() {
        // Without --shell-job, fds 0-2 on the job's terminal are stdio (see `no_terminal`).
        st.fdescs.retain(|d| d.file.kind != files::KIND_TTY);
    }
    // A shell job joins our session (and group): the terminal's and the shell's job control
    // reach it.
    let own_session = here.is_none() && (opts.detach || foreign || st.head.sid == st.head.pid);
    let mut notes = Vec::new();
    // The pages sent ahead, out of the way of the process's mappings before it is forked.
    if let Some(s) = store.as_deref_mut().and_then(|s| s.get_mut(st.head.pid)) {
        s.clear_of(&st.vmas)?;
    }
    let grant = opts.grant_caps && creds::is_root();
    // The tree's shared memory sent ahead (a live migration's) or copied ahead (PRESHM).
    shm_ahead.extend(store.as_deref_mut().map(Stores::take_shm).unwrap_or_default());
    let t0 = std::time::Instant::now();
    let made = Made::make(&mut st, opts, (here.as_ref().map(|h| h.path.as_str()), grant), shm_ahead, &mut notes)?;
    debug!("what the processes inherit made in {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    if opts.timens {
        let c = st.clocks.ok_or_else(|| {
            Error::Refused(
                "the image does not say its clocks (a crs before --timens wrote it): restore it without --timens"
                    .into(),
            )
        })?;
        crate::res::clocks::enter_namespace(&c)?;
    }
    // The sessions whose terminal is a pty the restorer made again.
    let ctty: Vec<family::Ctty> = st
        .ptys
        .iter()
        .filter(|p| p.session != 0)
        .filter_map(|p| {
            let made = made.ptys.iter().find(|m| m.0 == p.index)?;
            Some(family::Ctty { session: p.session, path: made.2.clone(), foreground: p.foreground })
        })
        .collect();
    // Without the privilege to set the exe link (CAP_CHECKPOINT_RESTORE), the first process
    // executes the image's program before anything else, so that /proc/PID/exe names it:
    // only the very file the image maps (same content), one its owner may execute.
    // (Driven then through a syscall instruction of its vdso: without one, not at all.)
    // (Not when pages are held here for the processes: an execve would drop them.)
    // (In a user namespace of its own, rstrt --pidns as an ordinary user may set the link.)
    let privileged = creds::is_root() || creds::user_with_caps();
    let program = if privileged || shared.vdso.is_empty() { None } else { own_program(&st) };
    // (Nor when pages are held here for the processes, shared or copied ahead: the same.)
    let held_here = cow.is_some() || store.is_some();
    if program.is_some() && held_here {
        notes.push(
            "the first process names crs as its program (/proc/PID/exe): executing its own would lose the pages held for it (its tree's shared ones, or those copied while it ran)"
                .into(),
        );
    }
    let program = program.filter(|_| !held_here);
    let exec = program.as_ref().map(super::spawn::Exec::of);
    let t0 = std::time::Instant::now();
    let family = family::create(&tree, opts.require_pid, own_session, &ctty, exec.as_ref(), &mut notes);
    debug!("{} processes created in {:.1} ms", tree.len(), t0.elapsed().as_secs_f64() * 1e3);
    shared.made = made;
    shared.made.close_ours();
    let mut family = family?;
    // Every process has the pages held for it (it inherited them): ours go.
    if let Some(s) = store.as_deref_mut() {
        s.leave();
    }
    if let Some(c) = cow.as_mut() {
        c.leave();
    }

    let ipc = shared.made.ipc.take();
    let tcp = Some(std::mem::take(&mut shared.made.repaired));
    let mut first: Option<(ProcessState, bool, u8)> = None;
    // The unmodified pages of files that changed here, for the processes whose mappings left
    // them to an earlier one's.
    let mut copies = memory::FileCopies::default();
    for (i, &original) in live.iter().enumerate() {
        if i > 0 {
            // The next process's block: its HEAD is checked before anything of it is read.
            st = ProcessState::default();
            sections = SectionReader::new();
            batch = sections.read_group(&mut rd, &mut st, batch, true, &mut |d, st| check(d, st))?;
            if st.head.pid != original || !st.tree.is_empty() {
                return Err(Error::Refused(format!(
                    "the image's process {i} is pid {}, where its TREE says {original}: it is damaged",
                    st.head.pid
                )));
            }
            shared.made.give_files(&st.head, &mut notes);
        }
        sections.more = i + 1 < live.len();
        let p = family
            .procs
            .iter_mut()
            .find(|p| p.original == original)
            .ok_or_else(|| Error::Proc(format!("pid {original} was not created")))?;
        // (With the earlier processes' pages sent ahead, which it may share: see restore_one.)
        let held = match (cow.as_mut(), store.as_deref_mut()) {
            (Some(c), _) => {
                c.rearm();
                (Some(c), Vec::new())
            }
            (None, Some(s)) => s.with_earlier(original, &live[..i]),
            (None, None) => (None, Vec::new()),
        };
        let (next, exe_set, null_stdio) = restore_one(
            &mut rd,
            &mut sections,
            batch,
            &mut st,
            (p, held, offsets.iter().find(|o| o.0 == original).map(|(_, (o, d))| (o, d.as_deref())), &mut copies),
            &shared,
            &mut notes,
        )?;
        batch = next;
        if i == 0 {
            first = Some((std::mem::take(&mut st), exe_set, null_stdio));
        }
    }
    if let Some(s) = batch {
        return Err(Error::Image(crate::crf::CrfError::Bad {
            offset: s.offset,
            what: format!("a section ({}) after the last process", s.tag),
        }));
    }
    shared.made.unowned_notes(&mut notes);
    if let Some(c) = checker {
        c.finish()?;
    }
    // Every process has its copies of the shared pages: ours go.
    drop(cow);
    // The whole image is in and checked: the processes may run.
    let (st, exe_set, null_stdio) = first.ok_or_else(|| Error::Refused("the image holds no process".into()))?;
    let root = &family.procs[0];
    let (pid, pid_note) = (root.t.pid, root.pid_note.clone());
    let members = family.procs.iter().map(|p| (p.original, p.t.pid)).collect();
    let exe_kept = !exe_set && st.mm.exe.is_some();
    let zombies = tree.iter().filter(|m| m.zombie.is_some()).count();
    let mut restored = Restored {
        pid,
        original_pid: st.head.pid,
        pid_note,
        exe_kept,
        null_stdio,
        notes,
        state: st,
        members,
        zombies,
        held: None,
        lazy: None,
    };
    // The terminal's modes, before the job runs on it.
    if let (Some(h), Some(t)) = (&here, &restored.state.terminal) {
        h.apply(t)?;
    }
    // A lazy restore's processes die with us until every page is in.
    if let Some(l) = lazy {
        l.guard(&family.procs.iter().map(|p| p.t.pid).collect::<Vec<_>>())?;
    }
    if opts.hold {
        // From here the Held kills them if it is dropped unreleased.
        restored.held = Some(Held { family, ipc, tcp });
        return Ok(restored);
    }
    if opts.stop {
        for p in &family.procs {
            p.t.kill(Signal::SIGSTOP)?;
        }
    }
    let pids: Vec<i32> = family.procs.iter().map(|p| p.t.pid).collect();
    Held { family, ipc, tcp }.release()?;
    if let (Some(h), Some(_)) = (&here, &restored.state.terminal) {
        crate::res::terminal::winch(h, &pids);
    }
    if opts.stop {
        for p in pids {
            procfs::wait_stopped(p);
        }
    }
    debug!("restored pid {} as pid {pid}", restored.original_pid);
    Ok(restored)
}

/// Reads the TREEPAGES batches that follow the first process's layout (`batch`, the first
/// section after it, is left at the next one) into a Store of ours, which every process of
/// the tree inherits; moved out of the way of every range the processes map.
fn shared_pages<R: Input>(
    rd: &mut Reader<R>,
    cow: &crate::res::treecow::TreeCow,
    batch: &mut Option<crate::crf::Section>,
) -> Result<Store> {
    let mut held = Store::shared(&cow.areas)?;
    let mut buf = vec![0u8; pages::MAX_BATCH_PAGES * PAGE_SIZE];
    while let Some(sec) = batch.take_if(|s| s.tag == Tag::TREEPAGES) {
        let b = pages::read_batch_header(rd, &sec)?;
        let runs = b.runs.clone();
        let data = b.data(rd, &mut buf)?;
        held.put(&runs, data, sec.offset)?;
        *batch = rd.next_section()?;
    }
    held.clear_of_ranges(&cow.busy)?;
    Ok(held)
}

/// rstrt's terminal, for `--shell-job` (None without it), once it is known that it may be
/// given to the image's processes.
fn shell_job(opts: &Options, foreign: bool, head: &Header) -> Result<Option<crate::res::terminal::Here>> {
    if !opts.shell_job {
        return Ok(None);
    }
    if opts.detach {
        return Err(Error::Refused(
            "--shell-job puts the job on rstrt's terminal, -d in a session without one: choose one".into(),
        ));
    }
    if foreign {
        return Err(Error::Refused(format!(
            "--shell-job would give root's terminal to uid {}'s process: run rstrt --shell-job as that user",
            head.uids[0]
        )));
    }
    crate::res::terminal::Here::find().map(Some)
}

/// Without --shell-job: the image's fds 0-2 on its terminal are stdio, like those of an image
/// taken without it; any other fd on it is refused, naming the option.
fn no_terminal(fds: &mut [files::Fd], pid: i32) -> Result<()> {
    for f in fds.iter_mut().filter(|f| f.kind == files::KIND_TTY) {
        if f.fd > 2 {
            return Err(Error::Refused(format!(
                "fd {} of pid {pid} is on its terminal ({}): rstrt --shell-job puts it on rstrt's",
                f.fd,
                crate::text::printable(&f.id.path)
            )));
        }
        f.kind = files::KIND_STDIO;
    }
    Ok(())
}

/// The image's executable, opened, when a process that does not have our privileges may
/// execute it to be restored: the image maps it, and it is the same file here.
fn own_program(st: &ProcessState) -> Option<std::fs::File> {
    let x = st.mm.exe.as_ref()?;
    if !st.vmas.iter().any(|v| v.file.as_ref().is_some_and(|f| f.path == x.path)) {
        return None;
    }
    let f = fileid::open_regular(&x.path).ok()?;
    let now = fileid::FileId::of(&format!("/proc/self/fd/{}", f.as_raw_fd()), &x.path, true).ok()?;
    x.same_content(&now, st.head.boot_id == fileid::boot_id()).ok()?;
    fileid::may_execute(&f).then_some(f)
}

/// The image's bytes from the first of `spans` (stream offset, length) to the end of the last,
/// where the image lies in memory for the whole restore (crf::Whole): the first offset, and
/// the bytes.
fn lasting_span<R: Input>(rd: &Reader<R>, spans: impl Iterator<Item = (u64, usize)> + Clone) -> Result<(u64, &[u8])> {
    let lo = spans.clone().map(|s| s.0).min().unwrap_or(0);
    let hi = spans.map(|s| s.0 + s.1 as u64).max().unwrap_or(0);
    let bytes = rd
        .window(lo, (hi - lo) as usize)
        .filter(|_| rd.lasting())
        .ok_or_else(|| Error::Proc(format!("image bytes {lo}-{hi}: not in memory for the whole restore")))?;
    Ok((lo, bytes))
}

/// Writes `pieces` (address, length, stream offset) of a running checkpoint's pages from where
/// the image lies in memory (crf::Whole): handed to the page writers.
fn write_in_place<R: Input>(rd: &Reader<R>, pieces: &[precopy::Piece], w: &mut memory::Writers) -> Result<()> {
    let (lo, data) = lasting_span(rd, pieces.iter().map(|p| (p.2, p.1)))?;
    let targets = pieces.iter().map(|&(a, n, off)| (a, n, (off - lo) as usize)).collect();
    // SAFETY: borrowed from an input whose data lives as long as its memory (Input::lasting),
    // which outlives this restore; the writers finish before it ends.
    w.write(targets, memory::Data::Lasting(unsafe { memory::Lasting::of(data) }))
}

/// A lazy restore's `pieces` of a running checkpoint's pages: those that may wait (`later`)
/// are left to the server, in their PREPAGES batch (`batches`, given to `deferred` from id
/// `base` on); the others are read now, each batch whole and checked, and written.
fn write_later<R: Input>(
    rd: &Reader<R>,
    pieces: &[precopy::Piece],
    batches: &[crate::crf::pages::Deferred],
    base: u32,
    deferred: &mut super::lazy::Lazy,
    (pid, fill): (i32, Option<&memory::Fill>),
    later: impl Fn(&(u64, usize, usize)) -> bool,
) -> Result<()> {
    let mut now: std::collections::BTreeMap<usize, Vec<(u64, usize, usize)>> = Default::default();
    for &(addr, len, off) in pieces {
        let i = batches.partition_point(|d| d.data_at <= off);
        let d =
            i.checked_sub(1).and_then(|i| batches.get(i)).filter(|d| off + len as u64 <= d.data_at + d.data_len as u64);
        let Some(d) = d else {
            return Err(Error::Proc(format!("pages at image offset {off} lie in no PREPAGES")));
        };
        let at = (off - d.data_at) as usize;
        if later(&(addr, len, at)) {
            deferred.defer_piece(base + (i - 1) as u32, addr, len as u64, at as u64);
        } else {
            now.entry(i - 1).or_default().push((addr, len, at));
        }
    }
    for (i, targets) in now {
        let d = &batches[i];
        let mut buf = vec![0u8; d.data_len];
        let read = rd.read_at(d.data_at, &mut buf);
        if !read.map_err(|e| Error::io(format!("the image's pages at offset {}", d.data_at), e))? {
            return Err(Error::Proc(format!("the image's pages at offset {}: the input cannot reread", d.data_at)));
        }
        d.check(&buf)?;
        memory::write_batch(pid, fill, &targets, &buf)?;
    }
    Ok(())
}

/// The pages held here for a process: its own (sent ahead, or the tree's shared ones), and the
/// earlier processes' sent ahead, in the image's order, which it may share (see
/// memory::VMA_KEPT_FIRST).
type HeldHere<'a> = (Option<&'a mut Store>, Vec<&'a mut Store>);

/// Restores one process, `p` (created, still a copy of rstrt), from its image: the layout `st`
/// read so far, its page batches from `first_batch` on and the rest of its sections. Leaves it
/// stopped, ready to run. Returns the section after its own (the next process's HEAD, None at
/// the trailer), whether its exe link was set, and the stdio fds that got /dev/null.
fn restore_one<R: Input>(
    rd: &mut Reader<R>,
    sections: &mut SectionReader,
    first_batch: Option<crate::crf::Section>,
    st: &mut ProcessState,
    (p, (mut store, earlier), offsets, copies): (&mut family::Proc, HeldHere, Option<InImage>, &mut memory::FileCopies),
    shared: &Shared,
    notes: &mut Vec<String>,
) -> Result<(Option<crate::crf::Section>, bool, u8)> {
    let opts = shared.opts;
    let same_boot = st.head.boot_id == fileid::boot_id();
    // The files the image names are looked at with its owner's rights, not ours.
    if !opts.shell_job {
        no_terminal(&mut st.files, st.head.pid)?;
    }
    let as_owner = creds::AsOwner::enter(&st.head)?;
    files::check(&st.files, same_boot)?;
    let mut plans = memory::plan(&st.vmas, same_boot, &shared.specials, &shared.vdso)?;
    // Mappings whose pages are partly an earlier process's (a live migration's tree, which
    // shares them since a fork): the held area of the first earlier process that holds one
    // that becomes the mapping (its base; the source made sure it holds the very same range)
    // goes into place, this one's own kept pages over it (precopy::Part).
    let mut based: Vec<Vec<u64>> = vec![Vec::new(); earlier.len()];
    for p in plans.iter().filter(|p| p.vma.flags & memory::VMA_KEPT_FIRST != 0) {
        match earlier.iter().position(|s| s.becomes(p)).filter(|_| store.is_some()) {
            Some(k) => based[k].push(p.vma.start),
            None => {
                return Err(Error::Refused(format!(
                    "the image of pid {} takes pages of {:#x}-{:#x} as an earlier process's, which were not sent ahead of both (by a live migration, or in the image): it is damaged, or restores only at the destination of that migration",
                    st.head.pid, p.vma.start, p.vma.end
                )));
            }
        }
    }
    let mut bases: Vec<(&mut Store, Vec<u64>)> =
        earlier.into_iter().zip(based).filter(|(_, b)| !b.is_empty()).collect();
    bases.iter_mut().for_each(|(s, _)| s.rearm());
    // A mapping of a deleted file, a memfd or the tree's shared memory maps the one the
    // restorer made again, as inherited.
    for p in plans.iter_mut().filter(|p| p.vma.flags & memory::VMA_REMADE != 0) {
        p.reopen = p.vma.file.as_ref().and_then(|f| shared.made.remade(f.dev, f.ino));
    }
    // The executable, for the exe link, which must be set while the child still has our
    // privileges: opened here, as the owner, only if it is a regular file that one of the
    // image's mappings is mapped from (an image cannot point the link at a program it does
    // not run).
    let runs = |path: &str| plans.iter().any(|p| p.from_file && p.vma.file.as_ref().is_some_and(|f| f.path == path));
    let exe = st.mm.exe.as_ref().filter(|x| runs(&x.path)).and_then(|x| fileid::open_regular(&x.path).ok());
    // ...and one the owner may execute (the kernel checks that with the child's rights, root's).
    let exe = exe.filter(fileid::may_execute);
    drop(as_owner);
    // Root restoring another user's process: it gets no mapping below vm.mmap_min_addr (root
    // could map there, the user could not) and none of root's terminal.
    let foreign = creds::is_root() && st.head.uids.iter().any(|&u| u != 0);
    if foreign {
        let min = memory::mmap_min_addr();
        if let Some(v) = st.vmas.iter().find(|v| v.start < min) {
            return Err(Error::Refused(format!(
                "the image maps {} at {:#x}, below vm.mmap_min_addr ({min:#x}), which its user may not",
                v.name, v.start
            )));
        }
    }
    let mut null_stdio = opts.null_stdio;
    if foreign {
        for n in 0..3 {
            // SAFETY: isatty only looks at our own fd n.
            if unsafe { libc::isatty(n) } == 1 {
                null_stdio |= 1 << n;
            }
        }
    }
    debug!(
        "restoring pid {} ({}) from {}: {} mappings, {} fds",
        st.head.pid,
        st.head.comm,
        st.head.hostname,
        plans.len(),
        st.files.len()
    );

    let inherited = &shared.inherited_signals;
    let t = &p.t;
    let pid = t.pid;
    let t0 = std::time::Instant::now();
    let step = |n: &str| debug!("pid {pid}: step {n} at {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let base = t.regs()?;
    let inherited_rseq = t.rseq()?;
    let mut c = Ctl { r: Remote::new(t, p.gadget, base), scratch: Scratch::default() };
    // Every signal blocked but SIGTRAP, and SIGTRAP as the child inherited it from us: single
    // steps are harmless as long as that stays unignored (see ptrace::remote).
    let trap = |s: &Signals| s.actions.get(libc::SIGTRAP as usize - 1).map_or(0, |a| a.handler);
    let all_but_trap = !(1u64 << (libc::SIGTRAP - 1));
    t.set_sigmask(all_but_trap)?;
    c.r.stepping = trap(inherited) != libc::SIG_IGN as u64;
    let child_maps = procfs::read_maps(pid)?;

    // 1. The gadget page, where neither the child nor the image has anything, its scratch
    //    area, and one for the other threads' lists of syscalls (step 7).
    let glen = GADGET_LEN + threads_area(st.thread_info.len());
    let mut avoid: Vec<(u64, u64)> =
        st.vmas.iter().map(|v| (v.start, v.end)).chain(child_maps.iter().map(|m| (m.start, m.end))).collect();
    let g =
        find_free(&avoid, glen).ok_or_else(|| Error::Refused("no free address range for the restore gadget".into()))?;
    let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    let fl = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
    c.mmap(RemoteAddr(g), glen, rwx, fl, None, 0, "restore gadget")?;
    mem::write_runs(pid, &[(g, arch::GADGET_CODE.len())], &arch::GADGET_CODE)?;
    c.r.gadget = g;
    c.scratch = Scratch { addr: RemoteAddr(g + PAGE_SIZE as u64), len: GADGET_LEN as usize - PAGE_SIZE, exec: true };
    let threads_area = Scratch { addr: RemoteAddr(g + GADGET_LEN), len: (glen - GADGET_LEN) as usize, exec: true };
    avoid.push((g, g + glen));

    step("2");
    // 2. Empty the child: rseq first (the kernel writes to its area), then every mapping, one
    //    munmap for each stretch between what stays (each remote call costs two context
    //    switches, which a busy node makes slow).
    if let Some(r) = inherited_rseq {
        task::unregister_rseq(&mut c, r)?;
    }
    let special = |m: &MapEntry| m.is_vdso_or_vvar() || m.name == "[vsyscall]";
    // (And the pages sent ahead, until step 5 moves them into place.)
    let mut ahead: Vec<(u64, u64)> =
        store.iter().map(|s| &**s).chain(bases.iter().map(|b| &*b.0)).flat_map(|s| s.ranges()).collect();
    ahead.sort_unstable();
    let keep: Vec<(u64, u64)> = child_maps
        .iter()
        .filter(|m| special(m))
        .map(|m| (m.start, m.end))
        .chain([(g, g + glen)])
        .chain(ahead.iter().copied())
        .collect();
    let used: Vec<(u64, u64)> = child_maps.iter().filter(|m| !special(m)).map(|m| (m.start, m.end)).collect();
    let used = super::layout::minus(&used, &ahead);
    for (start, end) in stretches(&used, &keep) {
        c.munmap(RemoteAddr(start), end - start, &format!("{start:#x}-{end:#x}"))?;
    }
    // A tree's process after the first has the pages sent ahead of it where they were in
    // rstrt when it was forked, before its mappings were known: out of their way first.
    let ranges: Vec<(u64, u64)> = st.vmas.iter().map(|v| (v.start, v.end)).collect();
    if let Some(s) = store.as_deref_mut() {
        s.clear_there(&mut c, (&ranges, &plans, Part::Own), &mut avoid)?;
    }
    for (s, b) in bases.iter_mut() {
        s.clear_there(&mut c, (&ranges, &plans, Part::Base(b)), &mut avoid)?;
    }

    step("3");
    // 3. The mm layout and the exe link, which need privilege (CAP_CHECKPOINT_RESTORE).
    //    The child opens the executable we opened as the owner through our fd: the very file
    //    checked above, whatever its path names by now.
    let exe_fd = match &exe {
        Some(f) => {
            let ours = format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd());
            Some(c.open(&ours, libc::O_RDONLY | libc::O_CLOEXEC, "the executable")?)
        }
        None => None,
    };
    let mut exe_set = st.mm.restore(&mut c, exe_fd)?;
    // A process that executed the image's program (see own_program) names it already: the
    // same inode as the file opened here (a forked member has its parent's program).
    if p.executed && !exe_set {
        use std::os::unix::fs::MetadataExt;
        let linked = std::fs::metadata(format!("/proc/{pid}/exe")).ok().map(|m| (m.dev(), m.ino()));
        exe_set = exe.as_ref().and_then(|f| f.metadata().ok()).is_some_and(|m| linked == Some((m.dev(), m.ino())));
    }
    if let Some(fd) = exe_fd {
        c.close(fd, "the executable")?;
    }
    drop(exe);

    // The bounding set, while the child may still drop from it (CAP_SETPCAP), and before the
    // other threads exist: they inherit it.
    // A user's process that had capabilities gets them back from root's rstrt --user-caps only.
    let grant = opts.grant_caps && creds::is_root();
    let kept = st.caps.as_ref().is_some_and(|caps| caps::claims(caps, &st.head)) && grant;
    if let Some(caps) = &st.caps {
        caps::check_claims(caps, &st.head, grant)?;
        caps::restore_bounding(&mut c, caps)?;
    }

    // Its own session keyring, which the other threads share by being made after it.
    let join = !creds::is_root() || !creds::session_keyring(&mut c, &st.head)?;

    step("3b");
    // 3b. The other threads, created while the child still has our privileges (a thread keeps
    //     its tid only through clone3's set_tid, which needs them), each stopped before it runs
    //     anything. From here on every per-thread step is taken in each of them too.
    let others = create_threads(&mut c, t, st, pid == st.head.pid, &threads_area, notes)?;
    let ctl = |o| thread_ctl(o, g);
    // 3c. no_new_privs and the seccomp filters, in the leader for all its threads (TSYNC),
    //     while the child may still install any (the filters are suspended for our syscalls
    //     as long as we trace it: they apply once it runs).
    crate::res::seccomp::restore(&mut c, &st.seccomp, !others.is_empty())?;

    // A lazy restore's userfaultfd, made while the child still has our privileges (see
    // engine::lazy).
    let uffd = shared.lazy.map(|_| super::lazy::uffd_of(&mut c)).transpose()?;
    let mut deferred = super::lazy::Lazy::default();

    step("4");
    // 4. Credentials, before anything is opened: from here on the child is the image's user,
    //    with no capability unless that user is root, so every file it opens (mappings, fds,
    //    cwd) is opened as that user, with what that user may have and nothing more (an open
    //    file keeps the credentials it was opened with).
    //    The other threads take the same ids at step 7, in one go with the rest of theirs:
    //    until then they run nothing.
    let mut keepers = None;
    if creds::is_root() {
        keepers = creds::restore(&mut c, &st.head, kept, join)?;
    } else {
        // In a user namespace of its own (rstrt --pidns), the child and its threads had our
        // capabilities there: they go, as an ordinary user's restore never had them.
        if creds::user_with_caps() {
            for tid in std::iter::once(pid).chain(others.iter().map(|o| o.pid)) {
                let mut l = Calls::new();
                l.capset([0; 6]);
                match others.iter().find(|o| o.pid == tid) {
                    Some(o) => {
                        let mut oc = ctl(o)?;
                        oc.run(&l)?;
                        c.r.held.append(&mut oc.r.held);
                    }
                    None => c.run(&l)?,
                }
            }
        }
        for tid in std::iter::once(pid).chain(others.iter().map(|o| o.pid)) {
            creds::verify(tid, &st.head, creds::Stage::Inherited)?;
        }
    }

    step("5");
    // 5. Memory: the vdso where the image had it (moved as the image's user: the kernel
    //    checks where it may go), then every mapping and its pages.
    move_specials(&mut c, &child_maps, &st.vmas, &avoid)?;
    let mut moved = store.as_ref().map(|s| s.moved(&plans, Part::Own)).unwrap_or_default();
    moved.extend(bases.iter().flat_map(|(s, b)| s.moved(&plans, Part::Base(b))));
    moved.sort_unstable();
    memory::map_all(&mut c, &plans, &moved)?;
    step("5 (mapped)");
    if let Some(st) = store.as_deref_mut() {
        st.move_into(&mut c, &plans, Part::Own)?;
    }
    for (s, b) in bases.iter_mut() {
        s.move_into(&mut c, &plans, Part::Base(b))?;
    }
    copies.write_into(pid, &plans)?;
    // Pages of fresh private anonymous mappings go in with UFFDIO_COPY (not with a lazy
    // restore's userfaultfd, which registers its own ranges afterwards). Dropped once they
    // are written: nothing else may touch those ranges meanwhile.
    let fill = if uffd.is_none() { memory::Fill::new(&mut c, &plans, &moved) } else { None };
    let mut npages = 0u64;
    let mut s = first_batch;
    let mut not = memory::NotWritten::default();
    // The id of the first PREPAGES batch in `deferred`, once given.
    let mut prepages: Option<u32> = None;
    let remote = uffd.is_some() && shared.lazy.is_some_and(|l| l.is_remote());
    // A lazy restore leaves in the image the batches all of whose pages go to private
    // anonymous mappings (no pages held for them here: a page there would hide the image's).
    // (Not with pages held here, a tree's shared ones: one there would hide the image's.
    // Not wiped on fork: a child forked before they came would get them.)
    let lazy_target = |&(a, _, _): &(u64, usize, usize)| {
        let i = plans.partition_point(|p| p.vma.end <= a);
        plans
            .get(i)
            .is_some_and(|p| memory::private_anon(&p.vma) && !p.from_file && p.vma.flags & memory::VMA_WIPEONFORK == 0)
    };
    // The batches are written by threads of ours while this one reads and checks the next.
    let lasting = rd.lasting();
    std::thread::scope(|scope| -> Result<()> {
        let mut w = memory::Writers::start(scope, pid, fill.as_ref());
        // Batches in address order: no page is written twice, so the order the writers take
        // them in cannot matter.
        let mut order = pages::InOrder::default();
        // A lazy restore from a file passes over the batches a PAGEPLAN announces that go
        // whole to the server, without reading one (a page of headers a MiB, scattered through
        // the image): each is read, and found the one announced, when the server serves it.
        // The others are read here, each found the one announced.
        let plan = sections.plan.take().filter(|_| uffd.is_some() && !remote && store.is_none());
        if let Some((_, at)) = plan.as_ref().filter(|_| s.is_none_or(|s| s.tag != Tag::PAGES)) {
            return Err(Error::Image(crate::crf::CrfError::Bad {
                offset: *at,
                what: "a PAGEPLAN without the page batches it announces".into(),
            }));
        }
        let mut plan = match (plan, s.filter(|s| s.tag == Tag::PAGES)) {
            (Some((payload, at)), Some(first)) => {
                Some(pages::Plan::read(&payload, at, first.offset - SECTION_HEADER_LEN as u64)?)
            }
            _ => None,
        };
        // Per batch of the plan, where its pages go if they all go to the server.
        let mut lazy: Vec<Option<Vec<(u64, usize, usize)>>> = Vec::new();
        for b in plan.iter().flat_map(|p| &p.batches) {
            not.clear();
            let at = b.at + SECTION_HEADER_LEN as u64;
            let targets = memory::batch_targets(&plans, &b.runs, at, &mut not)?;
            let whole = b.runs.iter().all(|r| r.flags == 0) && targets.len() == b.runs.len();
            lazy.push((whole && targets.iter().all(lazy_target)).then_some(targets));
        }
        while let Some(sec) = s.filter(|s| s.tag == Tag::PAGES) {
            if let Some(p) = plan.as_mut() {
                p.place(&sec)?;
                let (k, j) = (p.next, p.next + lazy[p.next..].iter().take_while(|t| t.is_some()).count());
                let to = p.batches.get(j).map_or(p.end, |b| b.at);
                // (This one's header is read already.)
                if j > k && rd.pass_sections(to, (j - k - 1) as u64)? {
                    for (b, targets) in p.batches[k..j].iter().zip(&mut lazy[k..j]) {
                        order.next(&b.runs, b.at)?;
                        deferred.defer(b.deferred(), &targets.take().unwrap_or_default());
                    }
                    p.next = j;
                    s = rd.next_section()?;
                    continue;
                }
            }
            let b = pages::read_batch_header(rd, &sec)?;
            if let Some(p) = plan.as_mut() {
                p.came(&sec, &b.runs)?;
            }
            order.next(&b.runs, sec.offset)?;
            not.clear();
            let targets = memory::batch_targets(&plans, &b.runs, sec.offset, &mut not)?;
            // Kept in the tree's shared memory: only where its object holds what was sent.
            for &(s, e) in &not.in_object {
                let i = plans.partition_point(|p| p.vma.end <= s);
                let f = plans.get(i).and_then(|p| p.vma.file.as_ref());
                if !f.is_some_and(|f| shared.made.sent_ahead(f.dev, f.ino)) {
                    return Err(Error::Refused(format!(
                        "the image keeps pages {s:#x}-{e:#x} of pid {} in the tree's shared memory, which was not sent ahead: it restores only at the destination of that live migration",
                        st.head.pid
                    )));
                }
            }
            let (ahead, later, as_earlier) = (&not.kept, &not.later, &not.shared);
            // (Each lies in a mapping marked so, whose base was found above.)
            for (s, b) in bases.iter_mut() {
                let base_of = |r: &&(u64, u64)| {
                    let i = plans.partition_point(|p| p.vma.end <= r.0);
                    plans.get(i).is_some_and(|p| b.contains(&p.vma.start))
                };
                let runs: Vec<(u64, u64)> = as_earlier.iter().filter(base_of).copied().collect();
                s.keep(&runs).map_err(|_| {
                    let (s, e) = runs.first().copied().unwrap_or_default();
                    Error::Refused(format!(
                        "the image takes pages {s:#x}-{e:#x} of pid {} as an earlier process's, which were not sent ahead of that one: it is damaged",
                        st.head.pid
                    ))
                })?;
                s.written(&targets);
            }
            if !later.is_empty() {
                if !remote {
                    return Err(Error::Refused(format!(
                        "the image leaves out pages {:#x}-{:#x} of pid {}, which the source of a post-copy migration sends later: it restores only there",
                        later[0].0, later[0].1, st.head.pid
                    )));
                }
                deferred.remote(later, st.head.pid);
            }
            match store.as_deref_mut() {
                Some(st) => {
                    st.keep(ahead)?;
                    st.written(&targets);
                }
                None if !ahead.is_empty() && offsets.is_some() => {
                    let (o, later) = offsets.ok_or_else(|| Error::Proc("no offsets".into()))?;
                    let pieces = o.pieces(ahead).map_err(|(s, e)| {
                        Error::Image(crate::crf::CrfError::Bad {
                            offset: sec.offset,
                            what: format!("pid {} keeps pages {s:#x}-{e:#x}, which no PREPAGES holds", st.head.pid),
                        })
                    })?;
                    npages += pieces.iter().map(|p| p.1 as u64).sum::<u64>() / PAGE_SIZE as u64;
                    match later {
                        None => write_in_place(rd, &pieces, &mut w)?,
                        Some(batches) => {
                            let base = *prepages.get_or_insert_with(|| deferred.add_batches(batches));
                            let lazy = uffd.is_some() && !remote;
                            write_later(rd, &pieces, batches, base, &mut deferred, (pid, fill.as_ref()), |p| {
                                lazy && lazy_target(p)
                            })?;
                        }
                    }
                }
                None if !ahead.is_empty() => {
                    return Err(Error::Refused(format!(
                        "the image leaves out pages {:#x}-{:#x} of pid {}, sent ahead in a live migration: it restores only there",
                        ahead[0].0, ahead[0].1, st.head.pid
                    )));
                }
                None => {}
            }
            if uffd.is_some()
                && !remote
                && store.is_none()
                && b.runs.iter().all(|r| r.flags == 0)
                && targets.len() == b.runs.len()
                && targets.iter().all(lazy_target)
                && let Some(d) = b.pass(rd)?
            {
                deferred.defer(d, &targets);
                s = rd.next_section()?;
                continue;
            }
            npages += (b.data_len / PAGE_SIZE) as u64;
            let mut buf = w.buffer()?;
            // (A buffer comes back as long as the batch it held: batches differ, a first one
            // is small.)
            if buf.len() < b.data_len {
                buf.resize(b.data_len, 0);
            }
            let base = buf.as_ptr();
            let runs = b.runs.clone();
            let (at, n) = b.data(rd, &mut buf).map(|d| (d.as_ptr(), d.len()))?;
            // SAFETY: the data just read, read into `buf` or borrowed from the input, which
            // keeps it until it is read from again (below, after this).
            let data = unsafe { std::slice::from_raw_parts(at, n) };
            if sections.more {
                copies.keep(&plans, &runs, data)?;
            }
            let job = if std::ptr::eq(at, base) {
                buf.truncate(n);
                memory::Data::Owned(buf)
            } else if lasting {
                w.reuse(buf);
                // SAFETY: borrowed from an input whose data lives as long as its memory,
                // which outlives this restore (Input::lasting); the writers finish below.
                memory::Data::Lasting(unsafe { memory::Lasting::of(data) })
            } else {
                // Borrowed until the next read (a network frame): written now, from there.
                w.reuse(buf);
                w.write_now(&targets, data)?;
                s = rd.next_section()?;
                continue;
            };
            w.write(targets, job)?;
            s = rd.next_section()?;
        }
        if let Some(p) = &plan {
            p.finish()?;
        }
        w.finish()
    })?;
    drop(fill);
    if let Some(st) = store.as_deref_mut().filter(|_| !bases.is_empty()) {
        step("5 (image's)");
        let copied = st.copy_aside(&mut c, pid)?;
        bases.iter_mut().for_each(|(s, _)| s.written(&copied));
        step("5 (own kept over the earlier's)");
    }
    for st in store.iter().map(|s| &**s).chain(bases.iter().map(|b| &*b.0)) {
        st.drop_stale(&mut c)?;
    }
    debug!("pid {pid}: {npages} pages written");
    step("5 (written)");
    // The pages left in the image: from here on the server answers for them. Any page that is
    // there already is dropped first: a huge page that a write nearby (or khugepaged) filled
    // with zeros, a stale one held ahead; else no fault would ever ask for the image's.
    // (Transparent huge pages are off meanwhile: khugepaged could otherwise fill a dropped
    // range with zeros before it is registered; registered, it leaves it alone. The image's
    // own setting comes at step 7.)
    if let (Some(server), Some(uffd)) = (shared.lazy, uffd) {
        const THP: &str = "prctl(PR_SET_THP_DISABLE)";
        let mut l = Calls::new();
        l.prctl(libc::PR_SET_THP_DISABLE, [1, 0, 0, 0], THP, "lazy restore");
        for (s, e) in deferred.ranges() {
            l.madvise(RemoteAddr(s), e - s, libc::MADV_DONTNEED, "madvise(MADV_DONTNEED)");
        }
        let dropping = !deferred.is_empty();
        let area = c.scratch.clone();
        if dropping {
            c.run_at_once(&l, &area)?;
        }
        let areas: Vec<(u64, u64)> = plans.iter().map(|p| (p.vma.start, p.vma.end)).collect();
        server.add(pid, uffd, std::mem::take(&mut deferred), &areas)?;
        if dropping {
            let mut l = Calls::new();
            l.prctl(libc::PR_SET_THP_DISABLE, [0; 4], THP, "lazy restore");
            c.run_at_once(&l, &area)?;
        }
    }

    step("6");
    // 6. The rest of the image, checked to its trailer before anything else is applied.
    let next = sections.read_group(rd, st, s, false, &mut |_, _| Ok(()))?;
    if st.threads.len() != st.thread_info.len().max(1) {
        return Err(Error::Refused(format!(
            "the image holds registers for {} threads and THREAD sections for {}: it is damaged",
            st.threads.len(),
            st.thread_info.len()
        )));
    }
    if !st.thread_sched.is_empty() && st.thread_sched.len() != st.threads.len() {
        return Err(Error::Refused(format!(
            "the image holds registers for {} threads and TSCHED sections for {}: it is damaged",
            st.threads.len(),
            st.thread_sched.len()
        )));
    }
    for th in &st.threads {
        regs::check_xstate(&th.regs)?;
    }
    let regs =
        st.threads.first().map(|t| t.regs.clone()).ok_or_else(|| Error::Refused("the image holds no thread".into()))?;

    step("7");
    // 7. Apply the rest: protections, files, cwd, signals, session, task attributes, limits,
    //    scheduling, knobs, mapping flags.
    memory::protect_all(&mut c, &plans)?;
    let descs = shared.made.descs_of(st.head.pid);
    files::restore(&mut c, &st.files, &st.pipes, &shared.made.for_files(&descs), null_stdio, st.head.uids[3])?;
    crate::res::inotify::restore(&mut c, &st.inotify)?;
    // In a time namespace of their own (--timens) the clocks go on from where they were, as on
    // the same boot.
    crate::res::timerfd::restore(&mut c, &st.timerfds, same_boot || shared.opts.timens)?;
    crate::res::epoll::restore(&mut c, &st.epolls)?;
    crate::res::locks::restore(&mut c, &st.locks, &st.files)?;
    // The rt_sigaction that makes SIGTRAP ignored would itself end in a step's trap (and so
    // would a batch's int3 after it: then these go one at a time).
    c.r.stepping &= trap(&st.signals) != libc::SIG_IGN as u64;
    let ours = procfs::read_stat(pid)?.ppid == std::process::id() as i32;
    if opts.detach && ours && st.task.pdeathsig != 0 {
        // Its parent would be us, and we exit now: the signal would fire at once.
        st.task.pdeathsig = 0;
    }
    // What the leader has of its own that depends on nothing else, in one go.
    let mut l = Calls::new();
    cwd::calls(&mut l, &st.cwd);
    st.signals.calls(&mut l, inherited);
    st.task.calls(&mut l, &st.head.comm);
    thp::calls(&mut l, st.thp_disabled);
    if let Some(info) = st.thread_info.first() {
        info.calls(&mut l, true);
    }
    let area = c.scratch.clone();
    c.run_at_once(&l, &area)?;
    rlimits::restore(&mut c, &st.rlimits)?;
    // Scheduling and knobs after the limits (RLIMIT_NICE, RLIMIT_RTPRIO decide what the user
    // may set); dumpable after the knobs, which write the process's own /proc files.
    let slack = st.sched.as_ref().map(|s| s.restore(&mut c)).transpose()?;
    let (kept_knobs, thread_knobs) = knobs::restore(&mut c, &st.knobs)?;
    notes.extend(kept_knobs);
    // The other threads: the ids (as the leader's at step 4), what each task has of its own
    // (the leader's values, but for its own scheduling where it had one), then what is the
    // thread's alone. Made from the leader at step 3b, they still hold what it held then: its
    // timer slack and knobs before step 7, what it had to drop at step 4.
    let slack = match slack {
        Some(v) => v,
        None if !st.thread_sched.is_empty() => {
            c.prctl(libc::PR_GET_TIMERSLACK, [0; 4], "prctl(PR_GET_TIMERSLACK)", "query")?
        }
        None => 0,
    };
    let mut lists = Vec::with_capacity(others.len());
    for (i, (o, info)) in others.iter().zip(st.thread_info.iter().skip(1)).enumerate() {
        let mut l = if creds::is_root() { creds::calls(&st.head, kept, keepers, join) } else { Calls::new() };
        l.personality(st.task.personality);
        if let Some(s) = st.thread_sched.get(i + 1).or(st.sched.as_ref()) {
            l.append(s.calls(o.pid, slack)?);
        }
        thread_knobs.calls(&mut l);
        info.calls(&mut l, false);
        lists.push(l);
    }
    // Each thread runs its list in one go, all at once, where the int3 that ends it is harmless:
    // SIGTRAP not blocked (they block every other signal, as the leader did when it made them)
    // nor ignored, which is what lets the leader be stepped.
    // (In one go, the calls after one that fails run all the same, as root maybe: the restore
    // fails on the first, and nothing of the process's own runs.) A list too long for the
    // area (a user with thousands of groups) goes one syscall at a time.
    let (batched, alone): (Vec<_>, Vec<_>) =
        others.iter().zip(lists).partition(|(_, l)| c.r.stepping && l.fits(&threads_area));
    let ts: Vec<(&Tracee, Regs)> = batched.iter().map(|(o, _)| Ok((*o, o.regs()?))).collect::<Result<_>>()?;
    let batched: Vec<Calls> = batched.into_iter().map(|(_, l)| l).collect();
    calls::run_in_threads(pid, &ts, &batched, &threads_area, &mut c.r.held)?;
    for (o, l) in alone {
        let mut oc = ctl(o)?;
        oc.run(&l)?;
        c.r.held.append(&mut oc.r.held);
    }
    if creds::is_root() && kept {
        for o in &others {
            creds::verify(o.pid, &st.head, creds::Stage::Keeping)?;
        }
    }
    if creds::is_root() && !others.is_empty() {
        // A thread's change of ids made the whole process undumpable again (suid_dumpable),
        // and with that its /proc files root's: dumpable until restore_dumpable below.
        c.prctl(libc::PR_SET_DUMPABLE, [1, 0, 0, 0], "prctl(PR_SET_DUMPABLE)", "for its /proc files")?;
    }
    // The other knobs of a task's own (the login uid), in each thread (a thread with other
    // values than the leader's was refused at checkpoint); a knob kept as the restorer's is
    // said once, not once per thread.
    for o in &others {
        let mut oc = ctl(o)?;
        for n in knobs::restore_per_task(&mut oc, &st.knobs)? {
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
        c.r.held.append(&mut oc.r.held);
    }
    st.task.restore_dumpable(&mut c)?;
    notes.extend(memory::advise_all(&mut c, &plans)?);
    mdwe::restore(&mut c, st.mdwe)?;
    // A root process's own capabilities last: every step before needed root's.
    // Each task's credentials are then read back, once where nothing was left to do: its
    // sets and, for the other threads (which took the ids in one go at step 7), the ids.
    let own_sets = (caps::all_root(&st.head) && creds::is_root()) || kept || creds::user_with_caps();
    for (i, tid) in std::iter::once(pid).chain(others.iter().map(|o| o.pid)).enumerate() {
        let path = format!("/proc/{pid}/task/{tid}/status");
        let read = || std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e));
        let mut status = read()?;
        if let Some(caps) = &st.caps {
            if own_sets && !caps::already(&status, caps, kept) {
                match i.checked_sub(1).and_then(|k| others.get(k)) {
                    Some(o) => {
                        let mut oc = ctl(o)?;
                        caps::restore_root(&mut oc, caps, kept)?;
                        c.r.held.append(&mut oc.r.held);
                    }
                    None => caps::restore_root(&mut c, caps, kept)?,
                }
                status = read()?;
            }
            caps::verify(&status, tid, caps, own_sets)?;
        }
        if i > 0 && creds::is_root() && !kept {
            creds::verify_in(&status, tid, &st.head, creds::Stage::All)?;
        }
    }
    // Pending signals go back with every signal blocked, so that none is delivered before the
    // process runs (and no more steps, whose SIGTRAP would now be blocked); its own mask is set
    // once the last remote syscall is done.
    c.r.stepping = false;
    t.set_sigmask(!0)?;
    for o in &others {
        o.set_sigmask(!0)?;
    }
    pending::restore(&mut c, &st.pending)?;
    // Each thread queues its own: the kernel lets no other thread give a signal the siginfo of
    // one from the kernel or from tgkill (a runtime's preemption signal).
    for (o, info) in others.iter().zip(st.thread_info.iter().skip(1)).filter(|(_, i)| !i.pending.is_empty()) {
        let mut oc = ctl(o)?;
        for p in &info.pending {
            let at = oc.scratch.put(pid, 0, &p.info)?;
            oc.queue_signal(pid, p.signo(), at, Some(o.pid))?;
        }
    }
    // The timers last: the time the restore takes must not count against them.
    itimers::restore(&mut c, &st.itimers)?;
    let tid_of = |tid: i32| {
        let i = st.thread_info.iter().position(|t| t.tid == tid)?;
        if i == 0 { Some(pid) } else { others.get(i - 1).map(|o| o.pid) }
    };
    crate::res::ptimers::restore(&mut c, &st.ptimers, st.thread_info.len().max(1), &tid_of)?;
    regs.load_xstate(t)?;
    // The other threads get their own registers and mask now: they are stopped, and none of
    // them is in the gadget the leader is about to unmap.
    for ((o, th), info) in others.iter().zip(st.threads.iter().skip(1)).zip(st.thread_info.iter().skip(1)) {
        th.regs.load_xstate(o)?;
        o.set_sigmask(info.sigmask)?;
        th.regs.load_gprs(o)?;
    }
    step("8");
    // 8. The last syscall removes the gadget; the child stops at its exit and never returns there.
    let r = c.munmap_and_stop(RemoteAddr(g), glen)?;
    if r != 0 {
        return Err(Error::sys("munmap (restore gadget)", format!("pid {pid}"), Errno::from_raw(-r as i32)));
    }
    t.set_sigmask(st.signals.blocked)?;
    // Signals that came meanwhile go to the process once it runs (a SIGSTOP only if asked;
    // no SIGCHLD: the only children that changed state meanwhile are the zombies the restore
    // made, whose SIGCHLD the checkpointed process had had, or has pending in the image).
    let artefact = |s: &Caught| (s.sig == libc::SIGSTOP && !opts.stop) || s.sig == libc::SIGCHLD;
    let held: Vec<Caught> = std::mem::take(&mut c.r.held).into_iter().filter(|s| !artefact(s)).collect();
    regs.load_gprs(t)?;
    drop(c);
    p.held.retain(|s| !artefact(s));
    p.held.extend(held);
    // Stopped when it was checkpointed (a SIGSTOP pending in the image): stopped again as it
    // is let go, before it runs an instruction.
    p.stop = st.pending.iter().any(|s| s.stops());
    p.others = others;
    debug!("restored pid {} as pid {pid} ({npages} pages)", st.head.pid);
    Ok((next, exe_set, null_stdio))
}

/// The most threads a restore creates.
const MAX_THREADS: usize = 8192;

/// Bytes of the gadget, at the start of its area, and of the scratch area after its code page:
/// room for a seccomp filter of BPF_MAXINSNS instructions.
const GADGET_LEN: u64 = 12 * PAGE_SIZE as u64;

/// Bytes of the area after the gadget's for the lists of syscalls of a process's `threads`
/// threads but its leader (and for the clone3 calls that make them): a page for the code that
/// runs them and 2 KiB each, at least 16 KiB, for up to 256 of them at once (more take turns).
fn threads_area(threads: usize) -> u64 {
    match threads {
        0 | 1 => 0,
        n => (PAGE_SIZE + (n - 1).clamp(8, 256) * 2048).next_multiple_of(PAGE_SIZE) as u64,
    }
}

/// A remote-syscall driver for thread `o` of the restored process, with the gadget at `g` (and
/// the scratch area after its code page), its syscalls stopped at entry and exit rather than
/// single-stepped, which leaves no single-step state behind.
fn thread_ctl(o: &Tracee, g: u64) -> Result<Ctl<'_>> {
    let scratch = Scratch { addr: RemoteAddr(g + PAGE_SIZE as u64), len: GADGET_LEN as usize - PAGE_SIZE, exec: true };
    let mut oc = Ctl { r: Remote::new(o, g, o.regs()?), scratch };
    oc.r.stepping = false;
    Ok(oc)
}

/// Creates the image's other threads in the restored child `c` (its leader, traced as `t`):
/// clone3 with the thread's clear_child_tid and, when `keep_tids` (the leader got its pid
/// back), its tid, all in one go with `area` for the list. Each new thread stops before it
/// runs anything and is traced from then on. A tid that cannot be had is said in `notes`.
fn create_threads(
    c: &mut Ctl,
    t: &Tracee,
    st: &ProcessState,
    keep_tids: bool,
    area: &Scratch,
    notes: &mut Vec<String>,
) -> Result<Vec<Tracee>> {
    let mut others = Vec::new();
    if st.thread_info.len() < 2 {
        return Ok(others);
    }
    // The threads are created while the child still has our privileges, so past the user's
    // RLIMIT_NPROC: an image may not ask for an unbounded number of them.
    if st.thread_info.len() > MAX_THREADS {
        return Err(Error::Refused(format!(
            "the image holds {} threads; crs restores at most {MAX_THREADS}",
            st.thread_info.len()
        )));
    }
    t.trace_clones()?;
    const FLAGS: u64 = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    let flags = |info: &ThreadInfo| FLAGS | if info.clear_tid != 0 { libc::CLONE_CHILD_CLEARTID as u64 } else { 0 };
    // All in one go; each new thread stops before it runs anything (PTRACE_O_TRACECLONE),
    // adopted below.
    let mut all = Calls::new();
    for info in &st.thread_info[1..] {
        all.clone3_thread(flags(info), info.clear_tid, keep_tids.then_some(info.tid));
    }
    let made = c.run_at_once(&all, area)?;
    for (info, mut r) in st.thread_info[1..].iter().zip(made) {
        if r < 0 || !keep_tids {
            let why = match Errno::from_raw(-r as i32) {
                _ if !keep_tids => "the pid could not be kept".to_string(),
                Errno::EEXIST => match std::fs::read_to_string(format!("/proc/{}/status", info.tid)) {
                    Ok(st) => {
                        let of = procfs::status_field(&st, "Tgid").unwrap_or("?");
                        let name = procfs::status_field(&st, "Name").unwrap_or("?");
                        format!("tid {} is in use, by a thread of pid {of} ({name})", info.tid)
                    }
                    Err(_) => format!("tid {} is in use", info.tid),
                },
                e => e.desc().to_string(),
            };
            if r < 0 {
                let mut one = Calls::new();
                one.clone3_thread(flags(info), info.clear_tid, None);
                r = c.run_at_once(&one, area)?.first().copied().unwrap_or(-(libc::EINVAL as i64));
            }
            if r < 0 {
                return Err(Error::sys("clone3 (a thread)", format!("pid {}", c.pid()), Errno::from_raw(-r as i32)));
            }
            notes.push(format!("thread {} ({}) runs as tid {r}: {why}", info.tid, info.comm));
        }
        others.push(Tracee::adopt_child(r as i32)?);
    }
    Ok(others)
}
