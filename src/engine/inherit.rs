//! What the restorer makes, before it creates the processes, for all of them to inherit at
//! the same fds: the pipes and unix socket pairs between them (filled with what was queued),
//! the files deleted while open or mapped and the memfds (made again), the tree's shared
//! memory, the System V objects they use, and the open file descriptions more than one fd
//! held. Each process keeps, at its own fds and
//! mappings, what it held, and closes the rest; the restorer closes its copies once every
//! process exists (a reader must see end of file when its writers close their ends).

use crate::error::{Error, Result};
use crate::res::fdescs::{self, Desc};
use crate::res::files::{self, Inherited};
use crate::res::image::ProcessState;
use crate::res::{caps, creds, deleted, fileid, inet, memfd, pipes, ptys, sysv, tcpconn, treeshm, unixpairs};
use std::os::fd::{AsRawFd, OwnedFd};

#[derive(Default)]
pub struct Made {
    /// The restorer's own copies, closed by `close_ours`.
    owned: Vec<OwnedFd>,
    /// The tree's pipes: (pipe, read end, write end).
    pipes: Vec<(u64, i32, i32)>,
    /// Deleted files and shared memory made again: (dev, ino in the image, fd).
    remade: Vec<(u64, u64, i32)>,
    /// Of the tree's shared memory, the objects a live migration sent ahead: (dev, ino).
    sent_ahead: Vec<(u64, u64)>,
    /// Unix socket pairs' ends: (inode in the image, fd).
    sockets: Vec<(u64, i32)>,
    /// Descriptions more than one fd held, and the fd each was opened at.
    descs: Vec<Desc>,
    opened: Vec<i32>,
    /// The System V objects made again: removed if the restore fails.
    pub ipc: Option<sysv::Made>,
    /// Where the job's terminal fds are opened (rstrt --shell-job: rstrt's terminal).
    terminal: Option<String>,
    /// The pty pairs: (the image's number, master fd, the slave's path here).
    pub ptys: Vec<(u32, i32, String)>,
    /// Their slaves, held until the restore ends (a pair whose slave no one holds reads EIO).
    slaves: Vec<OwnedFd>,
    /// The established TCP connections, in repair mode until the processes run.
    pub repaired: tcpconn::Repaired,
    /// Socket files of owners the first process's ids do not name (see [`Made::give_files`]).
    unowned: Vec<unixpairs::Unowned>,
}

impl Made {
    /// Makes all of it from the first process's state `st` (the image-wide sections, taken out
    /// of it), as the image's owner where files are concerned. What could not be made exactly
    /// goes to `notes`.
    /// `opts`: the restore's (System V objects in a new IPC namespace, an address to bind
    /// though this node lacks it). `terminal`:
    /// the path the job's terminal fds are opened on (rstrt --shell-job). `grant`: root gives
    /// a user's process the capabilities its image says it had (rstrt --user-caps).
    /// `ahead`: the tree's shared memory a live migration sent ahead (engine::shmahead),
    /// taken for the objects of the same identity and size.
    pub fn make(
        st: &mut ProcessState,
        opts: &crate::engine::restore::Options,
        (terminal, grant): (Option<&str>, bool),
        mut ahead: Vec<crate::engine::shmahead::Held>,
        notes: &mut Vec<String>,
    ) -> Result<Made> {
        let mut m = Made {
            ipc: Some(sysv::create_here(&st.sysv, &st.head, opts.ipcns)?),
            terminal: terminal.map(str::to_string),
            ..Default::default()
        };
        for p in &st.tree_pipes {
            let (r, w) = pipes::create_here(p)?;
            m.pipes.push((p.ino, r.as_raw_fd(), w.as_raw_fd()));
            m.owned.extend([r, w]);
        }
        for o in &st.tree_shm {
            let (fd, note) = match ahead.iter().position(|h| h.obj == *o) {
                Some(k) => {
                    let h = ahead.swap_remove(k);
                    m.sent_ahead.push((o.dev, o.ino));
                    (h.fd, h.note)
                }
                None => treeshm::create_here(o)?,
            };
            notes.extend(note);
            m.remade.push((o.dev, o.ino, fd.as_raw_fd()));
            m.owned.push(fd);
        }
        let _as_owner = creds::AsOwner::enter(&st.head)?;
        for p in ptys::create_here(&st.ptys, notes)? {
            m.ptys.push((p.index, p.master.as_raw_fd(), p.path));
            m.owned.push(p.master);
            m.slaves.push(p.slave);
        }
        // TCP and UDP sockets, with no effective capability root has and the image's
        // process had not: an image cannot bind a privileged port its owner could not have.
        if !st.inet_socks.is_empty() {
            let _lowered = if creds::is_root() && !caps::all_root(&st.head) {
                let had = st.caps.filter(|c| grant && caps::claims(c, &st.head)).map_or(0, |c| c.eff);
                caps::Lowered::to(had)?
            } else {
                caps::Lowered::none()
            };
            for s in &st.inet_socks {
                let fd = inet::create_here(s, opts.free_bind)?;
                m.sockets.push((s.ino, fd.as_raw_fd()));
                m.owned.push(fd);
            }
        }
        // Established TCP connections, after the listeners whose ports they share.
        if !st.tcp_conns.conns.is_empty() || !st.tcp_queued.is_empty() {
            if creds::is_root() && !caps::all_root(&st.head) {
                return Err(Error::Permission(format!(
                    "the image of uid {}'s process holds established TCP connections, which root restores for its own images only (an image could forge any connection)",
                    st.head.uids[0]
                )));
            }
            m.repaired = tcpconn::Repaired::new(&st.tcp_conns.lock);
            if !st.tcp_queued.is_empty() {
                crate::res::tcpqueue::usable().map_err(|why| {
                    Error::Refused(format!(
                        "the image holds {} TCP connections waiting to be accepted, which this kernel cannot put back in their listeners' queues: {why}",
                        st.tcp_queued.len()
                    ))
                })?;
            }
            for q in &st.tcp_queued {
                let listens = st.inet_socks.iter().any(|s| s.ino == q.listener && s.state == inet::LISTEN);
                if !listens {
                    return Err(Error::Refused(format!(
                        "the image has no listening socket {}: it is damaged",
                        q.listener
                    )));
                }
            }
            m.repaired.block(&st.tcp_conns.conns, &st.tcp_queued)?;
            for c in &st.tcp_conns.conns {
                let fd = tcpconn::create_here(c, opts.free_bind)?;
                let copy = fd.try_clone().map_err(|e| Error::io("a restored TCP connection (dup)", e))?;
                m.sockets.push((c.ino, fd.as_raw_fd()));
                m.owned.push(fd);
                m.repaired.push(copy, c)?;
            }
        }
        for l in &st.unix_listening {
            let (fd, unowned) = unixpairs::listen_here(l, &st.head, notes)?;
            m.unowned.extend(unowned);
            m.sockets.push((l.ino, fd.as_raw_fd()));
            m.owned.push(fd);
        }
        // The pairs, after the listeners: a connection connects to its listener again, and
        // is accepted unless it was waiting.
        let listener = |ino: u64| {
            let l = st.unix_listening.iter().find(|l| l.ino == ino);
            let fd = m.sockets.iter().find(|s| s.0 == ino).map(|s| s.1);
            l.zip(fd).ok_or_else(|| Error::Refused(format!("the image has no listening socket {ino}: it is damaged")))
        };
        let mut made = Vec::new();
        for p in &st.unix_pairs {
            let conn = st.unix_conns.iter().find(|c| c.accepted && p.ends.iter().any(|e| e.ino == c.ino));
            let fds = match conn {
                Some(c) => {
                    let (l, lfd) = listener(c.listener)?;
                    unixpairs::connect_here(p, c.ino, l, lfd)?
                }
                None => unixpairs::create_here(p)?,
            };
            // A peer closed before the checkpoint (inode 0) is closed again here, its work done.
            made.extend(p.ends.iter().map(|e| e.ino).zip(fds).filter(|e| e.0 != 0));
        }
        for c in st.unix_conns.iter().filter(|c| !c.accepted) {
            let (l, _) = listener(c.listener)?;
            made.push((c.ino, unixpairs::wait_here(c, l)?));
        }
        for (ino, fd) in made {
            m.sockets.push((ino, fd.as_raw_fd()));
            m.owned.push(fd);
        }
        for d in &st.deleted {
            let (fd, other) = deleted::create_here(d)?;
            if let Some(name) = other {
                notes.push(format!("deleted file {} was made again as {name}, its name being in use", d.path));
            }
            m.remade.push((d.dev, d.ino, fd.as_raw_fd()));
            m.owned.push(fd);
        }
        for d in &st.memfds {
            let fd = memfd::create_here(d)?;
            m.remade.push((d.dev, d.ino, fd.as_raw_fd()));
            m.owned.push(fd);
        }
        // Each description after the same checks as every file the image names; a deleted
        // one's through the file just made again.
        let same_boot = st.head.boot_id == fileid::boot_id();
        m.descs = std::mem::take(&mut st.fdescs);
        for d in &m.descs {
            let again = m.remade.iter().find(|r| (r.0, r.1) == (d.file.id.dev, d.file.id.ino));
            let via = match again {
                Some(r) if matches!(d.file.kind, files::KIND_DELETED | files::KIND_MEMFD) => {
                    Some(format!("/proc/self/fd/{}", r.2))
                }
                _ if d.file.kind == files::KIND_TTY && d.file.id.path == "/dev/tty" => Some("/dev/tty".into()),
                _ if d.file.kind == files::KIND_TTY => terminal.map(str::to_string),
                // Opened here on the slave itself, /dev/tty too (ours is another terminal).
                _ if d.file.kind == files::KIND_PTS => {
                    let n = ptys::slave_index(d.file.id.rdev);
                    m.ptys.iter().find(|p| Some(p.0) == n).map(|p| p.2.clone())
                }
                _ => None,
            };
            files::check(std::slice::from_ref(&d.file), same_boot)?;
            let fd = fdescs::open_here(d, via.as_deref())?;
            m.opened.push(fd.as_raw_fd());
            m.owned.push(fd);
        }
        Ok(m)
    }

    /// Once process `head` of the tree is read and checked: the socket files whose owner and
    /// group are among its ids get them.
    pub fn give_files(&mut self, head: &crate::res::head::Header, notes: &mut Vec<String>) {
        self.unowned.retain(|u| !u.give(head, notes));
    }

    /// Once every process is read: the socket files whose owner no process of the image was.
    pub fn unowned_notes(&mut self, notes: &mut Vec<String>) {
        notes.extend(self.unowned.drain(..).map(|u| u.note()));
    }

    /// Closes the restorer's copies, once every process has inherited them.
    pub fn close_ours(&mut self) {
        self.owned.clear();
    }

    /// The fd a deleted file or the tree's shared memory (by its identity in the image) was
    /// made again at.
    /// Whether the tree's shared memory (dev, ino) holds what a live migration sent ahead.
    pub fn sent_ahead(&self, dev: u64, ino: u64) -> bool {
        self.sent_ahead.contains(&(dev, ino))
    }

    pub fn remade(&self, dev: u64, ino: u64) -> Option<i32> {
        self.remade.iter().find(|r| (r.0, r.1) == (dev, ino)).map(|r| r.2)
    }

    /// The shared descriptions process `pid` (of the image) held: (its fd, the inherited fd).
    pub fn descs_of(&self, pid: i32) -> Vec<(i32, i32)> {
        fdescs::held_by(pid, &self.descs, &self.opened)
    }

    /// What `files::restore` takes from it, for a process holding `descs` (see `descs_of`).
    pub fn for_files<'a>(&'a self, descs: &'a [(i32, i32)]) -> Inherited<'a> {
        let terminal = self.terminal.as_deref();
        Inherited {
            pipes: &self.pipes,
            descs,
            deleted: &self.remade,
            sockets: &self.sockets,
            terminal,
            ptys: &self.ptys,
        }
    }
}
