//! The server side of a migration: one client, from the handshake to the process running
//! here (or nothing left of it). restartd runs it once per connection; any program may.

use crate::engine::precopy::{Stores, decode_areas};
use crate::error::{Error, Result};
use crate::net::handshake::server_hello;
use crate::net::pace::Paced;
use crate::net::pid_payload;
use crate::net::stream::FrameStream;
use crate::net::{Code, Conn, Kind, NetError, Side, URGENT_WAIT};
use crate::res::head::Header;
use log::info;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// What a server accepts and how long it waits (restartd(8) describes each).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The cluster key; without one only clients on this node are served, each restoring
    /// only its own user's processes.
    pub key: Option<[u8; 32]>,
    /// A directory that keeps a copy of every image received.
    pub spool: Option<String>,
    /// Uid ranges allowed (--allow-uid); None: any but root.
    pub uids: Option<Vec<(u32, u32)>>,
    pub allow_root: bool,
    /// Largest image accepted, in bytes.
    pub limit: u64,
    /// Longest silence of the client.
    pub timeout: Duration,
    /// Time the client has for the handshake.
    pub handshake: Duration,
    /// Slowest average rate of the image, in bytes per second of waiting.
    pub min_rate: u64,
    /// Clients may move an address here with their process (restartd --move-address).
    pub move_address: bool,
    /// Which engine restores (see crate::dev).
    pub backend: crate::dev::Backend,
}

/// A process restored here and running.
#[derive(Debug)]
pub struct Served {
    pub pid: i32,
    pub original_pid: i32,
    /// Image bytes received.
    pub bytes: u64,
}

/// Whether the image's owner may be restored here (restartd(8), THREAT MODEL). `local_uid` is
/// the connecting user of a keyless restartd (None: a keyed one, whose peer proved the key).
fn policy(cfg: &ServeConfig, h: &Header, local_uid: Option<u32>) -> Result<()> {
    if let Some(u) = local_uid.filter(|&u| u != 0) {
        // A local user hands us their image: it may claim only that user's ids and groups.
        let whose = format!("the image sent by uid {u}");
        crate::res::creds::check_user_claims(h, u, &whose).map_err(|e| {
            Error::Permission(format!("{e} (a restartd without a key restores only the connecting user's processes)"))
        })?;
    }
    if !cfg.allow_root
        && let Some((name, _)) = h.ids().find(|&(_, v)| v == 0)
    {
        return Err(Error::Permission(format!(
            "process {}'s {name} is 0 (root); this restartd restores root's processes only with --allow-root",
            h.pid
        )));
    }
    if let Some(r) = &cfg.uids
        && let Some((name, u)) = h.ids().take(4).find(|(_, u)| !r.iter().any(|&(lo, hi)| (lo..=hi).contains(u)))
    {
        return Err(Error::Permission(format!("process {}'s {name} {u} is not allowed here (--allow-uid)", h.pid)));
    }
    // A process that is not root comes back only in groups its user has on this node.
    if h.uids.iter().all(|&u| u != 0) {
        crate::res::creds::check_groups(h)?;
    }
    Ok(())
}

/// The uid owning the other end of a TCP connection on this node, from /proc/net/tcp{,6}
/// (the row whose local end is `peer` and remote end is `us`).
fn local_peer_uid(peer: &SocketAddr, us: &SocketAddr) -> Option<u32> {
    fn hex(a: &SocketAddr) -> String {
        let ip = match a.ip() {
            IpAddr::V4(v) => format!("{:08X}", u32::from_ne_bytes(v.octets())),
            IpAddr::V6(v) => {
                v.octets().chunks(4).map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).collect()
            }
        };
        format!("{ip}:{:04X}", a.port())
    }
    let (p, u) = (hex(peer), hex(us));
    let file = if peer.is_ipv4() { "/proc/self/net/tcp" } else { "/proc/self/net/tcp6" };
    let text = std::fs::read_to_string(file).ok()?;
    // Only a connection that is established and still has a socket (state 01, an inode): a
    // closing one's row is left to the kernel, which reports it as root's.
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let live = f.len() > 9 && f[3] == "01" && f[9] != "0";
        (live && f[1] == p && f[2] == u).then(|| f[7].parse().ok()).flatten()
    })
}

fn is_loopback(p: &SocketAddr) -> bool {
    match p.ip() {
        IpAddr::V4(v) => v.is_loopback(),
        IpAddr::V6(v) => v.is_loopback() || v.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

/// Serves one client on `s` (from `peer`): handshake, image straight into a restore, commit.
/// Logs one line of what became of it. Returns once the process runs here, or with what went
/// wrong (then nothing of it is left here).
pub fn serve_one(s: TcpStream, peer: SocketAddr, cfg: &ServeConfig) -> Result<Served> {
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(cfg.timeout)).map_err(|e| Error::Net(NetError::Io(e)))?;
    // Without a key, a local user could have us restore a process as anyone: then the image
    // must belong to the user at the other end of the connection (root excepted).
    let local_uid = match (&cfg.key, s.local_addr()) {
        (None, Ok(us)) => local_peer_uid(&peer, &us),
        _ => None,
    };
    let mut c = Conn::new(Paced::new(s, cfg.timeout, cfg.handshake), Side::Server);
    if let Err(e) = server_hello(&mut c, cfg.key.as_ref(), is_loopback(&peer)) {
        info!("{peer}: refused: {e}");
        return Err(e.into());
    }
    let mut buf = Vec::new();
    c.expect(Kind::Options, &mut buf).map_err(Error::Net)?;
    let wishes = String::from_utf8_lossy(&buf).into_owned();
    let live = wishes.split_whitespace().any(|w| w == "live");
    let post_copy = wishes.split_whitespace().any(|w| w == "post-copy");
    let wish = wishes.split_whitespace().filter(|&w| w != "live" && w != "post-copy").collect::<Vec<_>>().join(" ");
    let addr = match wish.as_str() {
        "" => None,
        w => Some(crate::net::address::Address::parse(w).map_err(|e| Error::Net(NetError::Protocol(e)))?),
    };
    if addr.is_some() && !cfg.move_address {
        let msg = "this restartd moves no address: start it with --move-address";
        let _ = c.send_error(Code::Forbidden, msg);
        info!("{peer}: refused: asked to move address {wish}");
        return Err(Error::Permission(msg.into()));
    }
    if live && cfg.spool.is_some() {
        let msg = "this restartd keeps a copy of every image (--spool), which a live migration's is not: migrate without --live";
        let _ = c.send_error(Code::Forbidden, msg);
        info!("{peer}: refused: a live migration to a spooling restartd");
        return Err(Error::Refused(msg.into()));
    }
    let crd = crate::dev::choose_restart(cfg.backend) == crate::dev::Backend::Crd;
    let post_refused = if !post_copy {
        None
    } else if cfg.spool.is_some() {
        Some(
            "this restartd keeps a copy of every image (--spool), which a post-copy's is not: migrate without --post-copy",
        )
    } else if crd {
        Some("this restartd restores through /dev/crd, which does not restore lazily: migrate without --post-copy")
    } else if !crate::res::creds::is_root() {
        Some("post-copy needs a restartd run as root (userfaultfd with fork events)")
    } else {
        None
    };
    if let Some(msg) = post_refused {
        let _ = c.send_error(Code::Forbidden, msg);
        info!("{peer}: refused a post-copy migration: {msg}");
        return Err(Error::Refused(msg.into()));
    }
    // Which of the files it maps this node holds the same of: those stay out of the image.
    c.expect(Kind::Files, &mut buf).map_err(Error::Net)?;
    let have = match super::files::have(&buf) {
        Ok(h) => h,
        Err(e) => {
            let _ = c.send_error(code_of(&e), &e.public());
            info!("{peer}: refused: {e}");
            return Err(e);
        }
    };
    c.send(Kind::Have, &have).map_err(Error::Net)?;
    let urgent = if post_copy && c.sibling().is_some() { second_connection(&mut c, peer, cfg)? } else { None };
    c.s.transfer(cfg.min_rate, cfg.timeout);
    let mut store = None;
    if live {
        let mut st = Stores::new(cfg.limit);
        // Unmapped here once the process runs there (after commit, below).
        st.unmap_later();
        if let Err(e) = receive_ahead(&mut c, &mut st) {
            info!("{peer}: live migration failed while pages were sent ahead ({} bytes): {e}", st.received());
            if !matches!(e, Error::Net(_)) {
                let _ = c.send_error(code_of(&e), &e.public());
            }
            return Err(e);
        }
        info!("{peer}: {} bytes sent ahead", st.received());
        store = Some(st);
    }
    let mut tee = None;
    if let Some(d) = &cfg.spool {
        let name = format!("{d}/{}-{}.crf", peer.to_string().replace([':', '[', ']'], "_"), std::process::id());
        // Whole process memories: for root's eyes only.
        use std::os::unix::fs::OpenOptionsExt;
        // A new file, never through a link: the spool directory may not be root's alone.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&name);
        match f {
            Ok(f) => tee = Some(f),
            Err(e) => {
                let e = Error::io(name, e);
                let _ = c.send_error(Code::RestoreFailed, &format!("restartd cannot spool: {e}"));
                return Err(e);
            }
        }
    }
    // The image arrives on a thread of its own, which checks each frame's tag, while this one
    // restores from what has arrived.
    let mut fr = FrameStream::start(c, cfg.limit);
    fr.tee = tee;
    let opts = crate::RestartFlags {
        free_bind: addr.map(|a| a.ip),
        detach: true,
        stop: false,
        require_pid: false,
        hold: true,
        null_stdio: 7,
        ipcns: false,
        timens: false,
        shell_job: false,
        grant_caps: false,
        backend: crate::dev::Backend::Ptrace,
    };
    let who_cell = std::cell::RefCell::new(String::new());
    // How much of the image had arrived when the restore began (the restore is pipelined).
    let progress = fr.progress.clone();
    let began = std::cell::Cell::new(0u64);
    let check = |h: &crate::res::head::Header| {
        // Named by its first process (the tree's root), whose header comes first.
        if who_cell.borrow().is_empty() {
            began.set(progress.load(std::sync::atomic::Ordering::Relaxed));
            *who_cell.borrow_mut() = crate::text::printable(&format!("pid {} ({}, uid {})", h.pid, h.comm, h.uids[0]));
        }
        if cfg.key.is_none() && local_uid.is_none() {
            return Err(Error::Permission("cannot tell which local user connects; give restartd a key".into()));
        }
        policy(cfg, h, local_uid)
    };
    let r = if crd && store.is_some() {
        Err(Error::Refused(
            "this restartd restores through /dev/crd, which takes no pages sent ahead: migrate without --live".into(),
        ))
    } else if crd {
        // Read whole and checked, then restarted stopped: it runs on the client's Commit.
        let opts = crate::RestartFlags { hold: false, stop: true, backend: crate::dev::Backend::Crd, ..opts };
        crate::dev::restart::restart_from(&mut fr, &opts, &check)
    } else if post_copy {
        crate::engine::restore::restore_postcopy(&mut fr, &opts, store.as_mut(), cfg.timeout, &check)
    } else {
        crate::engine::restore::restore_live(&mut fr, &opts, store.as_mut(), &check)
    };
    let who = who_cell.into_inner();
    // The image reader stops at the trailer; the End frame follows it.
    let drained = match &r {
        Ok(_) => std::io::copy(&mut fr, &mut std::io::sink()).map(|_| ()).map_err(|e| Error::Net(NetError::Io(e))),
        Err(_) => Ok(()),
    };
    let bytes = fr.bytes();
    let failure = fr.failure.take();
    let Some(mut c) = fr.finish() else {
        return Err(Error::Proc("the frame receiver failed".into()));
    };
    c.s.idle_only();
    let mut restored = match r.and_then(|x| drained.map(|_| x)) {
        Ok(r) => r,
        Err(e) => {
            // The log has the whole story; the client is told what concerns its image, not
            // what this node holds (Error::public).
            let (code, text, public) = match failure {
                Some((code, text)) => (code, text.clone(), text),
                None => (code_of(&e), e.to_string(), e.public()),
            };
            info!("{peer}: {who} refused after {bytes} bytes: {text}");
            let _ = c.send_error(code, &public);
            return Err(e);
        }
    };
    let pid = restored.pid;
    let lazy = restored.lazy.take();
    let copy = Copy { pid, held: restored.held, stopped: crd };
    for n in &restored.notes {
        info!("{peer}: {who}: {n}");
    }
    // The address the process moves with, here before it runs (taken off again if it never
    // does).
    let placed = match addr.map(crate::net::address::put_on).transpose() {
        Ok(p) => p,
        Err(e) => {
            info!("{peer}: {who} refused: {e}");
            let _ = c.send_error(code_of(&e), &e.public());
            return Err(e);
        }
    };
    let mut outcome = commit(&mut c, copy);
    // What was sent ahead is the process's now: our mappings of it go, beside it (a
    // post-copy's pages follow meanwhile).
    if let Some(mut st) = store.take() {
        let unmap = move || st.unmap();
        if let Err(e) = std::thread::Builder::new().name("crs-unmap".into()).spawn(unmap) {
            info!("{peer}: the pages sent ahead are unmapped as the restore returns: no thread for it ({e})");
        }
    }
    // A post-copy: it runs; its pages follow, from the source over this connection.
    if let (Ok(()), Some(server)) = (&outcome, lazy) {
        let t0 = std::time::Instant::now();
        info!("{peer}: {who} runs as pid {pid}; its pages follow (post-copy)");
        outcome = server.link(Box::new(super::postcopy::Link::new(c, urgent, (cfg.limit, bytes)))).and_then(|()| server.finish()).map(|st| {
            info!(
                "{peer}: {who}: post-copy: {} pages in {:.1} ms after it ran, {} asked for first ({} faults waited, {:.2} ms on average, the longest {:.1} ms), {} forks followed",
                st.received,
                t0.elapsed().as_secs_f64() * 1e3,
                st.wanted,
                st.waits,
                if st.waits > 0 { st.waited * 1e3 / st.waits as f64 } else { 0.0 },
                st.longest * 1e3,
                st.forks
            );
        });
    }
    if let (Ok(()), Some(p)) = (&outcome, placed) {
        p.keep();
    }
    match &outcome {
        Ok(()) => info!("{peer}: {who} restored as pid {pid}, {bytes} bytes (began at {}), running", began.get()),
        Err(e) => {
            info!("{peer}: {who} restored as pid {pid}, {bytes} bytes (began at {}), then dropped: {e}", began.get())
        }
    }
    outcome.map(|()| Served { pid, original_pid: restored.original_pid, bytes })
}

/// A post-copy's second connection, for the pages a process here waits for (on the first
/// they would queue behind the others): a port of our own, said in an Urgent frame (empty
/// when none can be had), taken by the first connection from the client's address that
/// proves it is the client's (its Urgent frame opens under the session's sibling keys),
/// answered with Urgent. None when none came in time: the pages asked for then share the
/// first.
fn second_connection(c: &mut Conn<Paced>, peer: SocketAddr, cfg: &ServeConfig) -> Result<Option<Conn<Paced>>> {
    let Some(session) = c.sibling() else { return Ok(None) };
    let l = c.s.stream().local_addr().and_then(|a| std::net::TcpListener::bind((a.ip(), 0)));
    let (l, port) = match l.and_then(|l| l.local_addr().map(|a| (l, a.port()))) {
        Ok(x) => x,
        Err(e) => {
            info!("{peer}: no second connection for the pages asked for: cannot listen for one: {e}");
            c.send(Kind::Urgent, &[]).map_err(Error::Net)?;
            return Ok(None);
        }
    };
    c.send(Kind::Urgent, &port.to_le_bytes()).map_err(Error::Net)?;
    let until = std::time::Instant::now() + URGENT_WAIT;
    let mut buf = Vec::new();
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&l), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes one pollfd of ours.
        if left.is_zero() || unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) } <= 0 {
            info!("{peer}: no second connection for the pages asked for: none came within {} s", URGENT_WAIT.as_secs());
            return Ok(None);
        }
        let Ok((s, from)) = l.accept() else { continue };
        if from.ip() != peer.ip() {
            continue;
        }
        let _ = s.set_nodelay(true);
        if s.set_write_timeout(Some(cfg.timeout)).is_err() {
            continue;
        }
        let mut u = Conn::new(Paced::new(s, cfg.timeout, left), Side::Server);
        u.authenticate(session);
        match u.expect(Kind::Urgent, &mut buf).and_then(|()| u.send(Kind::Urgent, &[])) {
            Ok(()) => {
                u.s.idle_only();
                info!("{peer}: second connection from {from}: the pages asked for come on it");
                return Ok(Some(u));
            }
            Err(e) => info!("{peer}: a second connection from {from} refused: {e}"),
        }
    }
}

/// A live migration's pre-copy: areas and pages until the source freezes the process.
fn receive_ahead(c: &mut Conn<Paced>, st: &mut Stores) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        match c.recv(&mut buf).map_err(Error::Net)? {
            Kind::Member => st.member(&buf)?,
            Kind::Areas => st.follow(&decode_areas(&buf).map_err(|e| Error::Net(NetError::Protocol(e)))?)?,
            Kind::Pages => st.pages(&buf)?,
            Kind::Shm => st.shm(&buf)?,
            // Every page sent so far is in place (the source's round is over only then).
            Kind::Caught => c.send(Kind::Caught, &[]).map_err(Error::Net)?,
            // Every page sent ahead is in place: the source may freeze the process now. (The
            // last round's Caught has caught up already; this answer says we are ready.)
            Kind::Freeze => return c.send(Kind::Freeze, &[]).map_err(Error::Net),
            k => return Err(Error::Net(NetError::Protocol(format!("expected pages sent ahead, got {k:?}")))),
        }
    }
}

/// The restored copy, not yet run: held traced by the ptrace engine, or stopped (SIGSTOP) by
/// the crd one. Dropped before its release, it is killed: the source runs on.
struct Copy {
    pid: i32,
    held: Option<crate::engine::restore::Held>,
    stopped: bool,
}

impl Copy {
    fn release(mut self) -> Result<()> {
        if let Some(h) = self.held.take() {
            return h.release();
        }
        if !self.stopped {
            return Err(Error::Proc("restore did not hold the process".into()));
        }
        self.stopped = false;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGCONT)
            .map_err(|e| Error::sys("kill(SIGCONT)", format!("pid {}", self.pid), e))
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        if self.stopped {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Reports the copy, restored but held (not yet run), and lets it run only on the client's
/// Commit. Without one (Abort, a cut connection, a timeout, this handler dying) the copy is
/// killed, for the source runs on.
fn commit(c: &mut Conn<Paced>, copy: Copy) -> Result<()> {
    let pid = copy.pid;
    if copy.held.is_none() && !copy.stopped {
        return Err(Error::Proc("restore did not hold the process".into()));
    }
    let mut buf = Vec::new();
    match c.send(Kind::Restored, &pid_payload(pid)).and_then(|_| c.recv(&mut buf)) {
        Ok(Kind::Commit) => {}
        Ok(k) => return Err(Error::Net(NetError::Protocol(format!("expected Commit, got {k:?}")))),
        Err(e) => return Err(e.into()),
    }
    copy.release()?;
    c.send(Kind::Running, &pid_payload(pid))?;
    Ok(())
}

fn code_of(e: &Error) -> Code {
    match e {
        Error::Image(_) => Code::BadImage,
        Error::Permission(_) => Code::Forbidden,
        Error::NotHere { .. } => Code::RestoreFailed,
        Error::Net(_) => Code::Protocol,
        _ => Code::RestoreFailed,
    }
}
