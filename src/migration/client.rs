//! The client side of a migration: check the process, connect, prove the key, stream its
//! image while it is frozen, and commit, so that it never runs twice and is never lost.

pub use crate::engine::precopy::Ahead;
use crate::engine::precopy::{Frame, Precopied, Source};
use crate::engine::shmahead::ShmSource;
use crate::error::{Error, Left, Result};
use crate::net::handshake::client_hello;
use crate::net::parse_pid;
use crate::net::stream::FrameWriter;
use crate::net::{Conn, DEFAULT_PORT, Kind, NetError, Side, URGENT_WAIT};
use log::debug;
use nix::sys::signal::Signal;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub struct Options {
    /// Copy rather than move: the process runs on here too.
    pub keep: bool,
    /// The cluster key; without one only a keyless restartd on the same node serves us.
    pub key: Option<[u8; 32]>,
    /// How long to wait for the destination at each step.
    pub timeout: Duration,
    /// Fds carried as stubs (see `ckpt --stub-fd`).
    pub stubs: crate::res::files::Stubs,
    /// The unmodified pages of the executable, of shared libraries, are not carried: the
    /// destination has the same files (see `ckpt --no-binary`, `--no-libs`).
    pub no_binary: bool,
    pub no_libs: bool,
    /// Established TCP connections are carried (see `ckpt --tcp-established`).
    pub tcp_established: bool,
    /// Unix sockets to peers outside are connected again by name (see `ckpt --unix-reconnect`).
    pub unix_reconnect: bool,
    /// An address that moves with the process (see net::address).
    pub move_address: Option<crate::net::address::Address>,
    /// Live: send the pages ahead while the process runs, until what is left fits this
    /// downtime (see engine::precopy); None: stop-and-copy.
    pub live: Option<Duration>,
    /// Post-copy: the process runs at the destination before its private anonymous memory is
    /// there, which follows from here (see migration::postcopy).
    pub post_copy: bool,
    /// Which engine checkpoints (see crate::dev).
    pub backend: crate::dev::Backend,
}

/// A process that now runs at the destination.
#[derive(Debug)]
pub struct Moved {
    pub peer: SocketAddr,
    pub remote_pid: i32,
    pub report: crate::Report,
    /// Image bytes sent.
    pub bytes: u64,
    /// From the start of the checkpoint (of the pre-copy, if live) to the destination's
    /// answer to Commit.
    pub elapsed: Duration,
    pub ahead: Ahead,
    /// A post-copy's pages, sent once the process ran there.
    pub post: Option<super::postcopy::Sent>,
}

/// "host", "host:port", "[v6]:port", "v6" -> addresses (`port` overrides; default 1023).
pub fn resolve(host: &str, port: Option<u16>) -> Result<Vec<SocketAddr>> {
    let (h, p) = if let Some(rest) = host.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(|| Error::Usage(format!("{host}: missing ']'")))?;
        (h.to_string(), tail.strip_prefix(':').map(str::to_string))
    } else if host.matches(':').count() == 1 {
        let (h, p) = host.split_once(':').unwrap_or((host, ""));
        (h.to_string(), Some(p.to_string()))
    } else {
        (host.to_string(), None)
    };
    let port = match (port, p) {
        (Some(x), _) => x,
        (None, Some(p)) => p.parse().map_err(|_| Error::Usage(format!("{p:?} is not a port number")))?,
        (None, None) => DEFAULT_PORT,
    };
    let setup = |s: String| Error::Net(NetError::Setup(s));
    let addrs: Vec<SocketAddr> =
        (h.as_str(), port).to_socket_addrs().map_err(|e| setup(format!("cannot resolve {h}: {e}")))?.collect();
    if addrs.is_empty() {
        return Err(setup(format!("{h} has no address")));
    }
    Ok(addrs)
}

fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.set_read_timeout(Some(timeout))
                    .and_then(|_| s.set_write_timeout(Some(timeout)))
                    .map_err(|e| Error::Net(NetError::Setup(format!("{a}: {e}"))))?;
                return Ok(s);
            }
            Err(e) => last = Some(format!("cannot reach restartd at {a}: {e}")),
        }
    }
    Err(Error::Net(NetError::Setup(last.unwrap_or_default())))
}

/// Moves (or, with `keep`, copies) process `pid` to the restartd at `addrs` (the first that
/// answers). On any failure the process runs on here, where it was, except in the one case
/// [`Left::StoppedHere`] names; the error says which ([`Error::Migration`]).
pub fn migrate(pid: i32, addrs: &[SocketAddr], opts: &Options) -> Result<Moved> {
    if pid <= 0 {
        return Err(Error::Usage(format!("{pid} is not a process id")));
    }
    // Nothing is touched before the destination has answered and proved itself.
    let flags = crate::Flags {
        kill: !opts.keep,
        no_binary: opts.no_binary,
        no_libs: opts.no_libs,
        stubs: opts.stubs.clone(),
        tcp_established: opts.tcp_established,
        unix_reconnect: opts.unix_reconnect,
        backend: crate::dev::choose(opts.backend, pid),
        ..Default::default()
    };
    let crd = flags.backend == crate::dev::Backend::Crd;
    if crd && opts.live.is_some() {
        return Err(Error::Usage("the crd backend does not migrate live: drop --live, or use --backend ptrace".into()));
    }
    if opts.post_copy {
        let clash = [
            (opts.keep, "--keep (the process here could not run on while its pages go)"),
            (crd, "the crd backend"),
            (
                opts.tcp_established,
                "--tcp-established (connections the copy used before a failure could not be taken back here)",
            ),
        ];
        if let Some((_, what)) = clash.iter().find(|c| c.0) {
            return Err(Error::Usage(format!("--post-copy does not go with {what}")));
        }
    }
    if opts.move_address.is_some() && opts.keep {
        return Err(Error::Usage("--move-address moves the process's address: it cannot go with --keep".into()));
    }
    if opts.tcp_established && opts.keep {
        return Err(Error::Usage(
            "--tcp-established moves the process's connections, which a copy cannot share with it: drop --keep".into(),
        ));
    }
    // The mapped files the precheck reads are not read again frozen (engine::checkpoint).
    let _files = crate::res::fileid::Remembered::scope();
    if crd {
        // The module says what it refuses once it has the process (no ptrace to look first).
        crate::dev::flags_of(&flags)?;
    } else {
        crate::engine::checkpoint::precheck(pid, &flags)?;
    }
    if let Some(a) = opts.move_address {
        crate::net::address::device_of(a)?;
    }
    let t0 = Instant::now();
    let stream = connect(addrs, opts.timeout).map_err(here)?;
    let peer = stream.peer_addr().unwrap_or(addrs[0]);
    let mut c = Conn::new(stream, Side::Client);
    client_hello(&mut c, opts.key.as_ref()).map_err(|e| here(e.into()))?;
    let mut ahead = Ahead::default();
    // Its writes tracked from now on (a kernel that cannot: stop-and-copy, said).
    let mut source = match opts.live.map(|_| Source::arm_tree(pid, false, &mut ahead)).transpose() {
        Ok(s) => s,
        Err(e @ Error::NotHere { .. }) => {
            ahead.not_live = Some(format!("{e}"));
            None
        }
        Err(e) => return Err(here(e)),
    };
    // With --post-copy alone, the files the destination lacks go ahead all the same (their
    // pages would go frozen): the destination takes pages ahead ("live"), maybe none.
    let files_ahead = opts.live.is_none() && opts.post_copy && !crd && crate::ptrace::wp::available().is_ok();
    let mut wishes: Vec<String> = opts.move_address.map(|a| a.to_string()).into_iter().collect();
    if source.is_some() || files_ahead {
        wishes.push("live".into());
    }
    if opts.post_copy {
        wishes.push("post-copy".into());
    }
    c.send(Kind::Options, wishes.join(" ").as_bytes()).map_err(|e| here(e.into()))?;
    // The files it maps that the destination has the same of stay out of the image.
    let mapped = super::files::mapped_all(&crate::res::tree::walk(pid));
    let boot = crate::res::fileid::boot_id();
    let mut have = Vec::new();
    // A refusal of the Options (an Error frame, then the close) is read here.
    if let Err(e) =
        c.send(Kind::Files, &super::files::encode(&boot, &mapped)).and_then(|_| c.expect(Kind::Have, &mut have))
    {
        return Err(explain(Error::Net(e), None, &mut c));
    }
    // A post-copy's second connection, for the pages a process there waits for.
    let urgent = if opts.post_copy && c.sibling().is_some() {
        match second_connection(&mut c, peer, opts.timeout) {
            Ok(u) => u,
            Err(e) => return Err(explain(e, None, &mut c)),
        }
    } else {
        None
    };
    let held_there = super::files::held(&mapped, &have);
    // Those it lacks go ahead too, with the rounds (the image would carry them frozen).
    let lacking = super::files::lacking(&mapped, &have);
    if files_ahead && !lacking.is_empty() {
        match Source::arm_tree(pid, false, &mut ahead) {
            Ok(mut s) => {
                s.iter_mut().for_each(Source::files_only);
                source = Some(s);
            }
            // (A process with a userfaultfd of its own: they go frozen, as they did.)
            Err(e @ Error::NotHere { .. }) => debug!("pid {pid}: its files do not go ahead: {e}"),
            Err(e) => return Err(explain(e, None, &mut c)),
        }
    }
    if let Some(src) = source.as_mut() {
        src.iter_mut().for_each(|s| s.carry_files(&lacking));
    }
    debug!("pid {pid}: {} of {} mapped files are the same at the destination", held_there.len(), mapped.len());
    // The module leaves out the executable's pages, or every other ELF file's, not files one
    // by one: as much of that as the destination holds.
    let mut flags = flags;
    if crd {
        let (binary, libs) = super::files::held_wholesale(pid, &mapped, &held_there);
        flags.no_binary |= binary;
        flags.no_libs |= libs;
    }
    // The memory the tree's processes share goes ahead too (with --live).
    let mut shm = source.as_ref().filter(|_| opts.live.is_some()).map(|_| ShmSource::default());
    let budget = opts.live.unwrap_or(Duration::from_millis(50));
    // (Said "live": the Freeze, after the rounds if any.)
    if (source.is_some() || files_ahead)
        && let Err(e) =
            send_ahead(source.as_mut().map(|s| (s, shm.as_mut())), &mut c, budget, opts.post_copy, &mut ahead)
    {
        // (Which step broke: a reset alone does not say.)
        let e = match e {
            Error::Net(NetError::Io(err)) => Error::Io { path: "sending its memory ahead (--live)".into(), err },
            e => e,
        };
        return Err(explain(e, None, &mut c));
    }
    let precopied = source.map(|s| Precopied::new(s, true, shm));
    let postcopy = opts.post_copy.then(crate::engine::checkpoint::PostCopy::default);
    // The mappings' flags as read just before the freeze, checked before the copy may run.
    let flags_later = crate::engine::vmflags::FlagsLater::default();
    let flags = crate::Flags {
        precopied,
        held_there,
        postcopy: postcopy.clone(),
        flags_later: Some(flags_later.clone()),
        ..flags
    };
    let mut post = None;

    // Signals that would end us wait until the process is safely here or there.
    let mut hold = nix::sys::signal::SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT] {
        hold.add(s);
    }
    let _ = hold.thread_block();

    let (mut remote_pid, mut sent) = (0, 0u64);
    let mut peer_said = None;
    let mut moved = None;
    let r = std::thread::scope(|s| {
        let w = FrameWriter::new(s, &mut c);
        peer_said = Some(w.peer_said.clone());
        let done = |w| {
            // The address leaves with the process, once its image is out; it is back before
            // the process runs here again.
            if let Some(a) = opts.move_address {
                moved = Some(crate::net::address::take_off(a)?);
            }
            let later = postcopy.as_ref().map(|runs| Later { runs, urgent, timeout: opts.timeout, out: &mut post });
            let r = commit(w, peer, pid, opts.keep, (later, &flags_later), &mut sent, &mut remote_pid);
            if r.is_err() {
                moved = None;
            }
            r
        };
        if crd {
            crate::dev::checkpoint_with(pid, w, &flags, done)
        } else {
            crate::engine::checkpoint::checkpoint_prechecked(pid, w, &flags, done)
        }
    });
    match r {
        Ok(report) => {
            if let Some(m) = moved {
                m.keep();
            }
            // Its connections run there now: the block on their packets here goes.
            if !report.tcp_lock.is_empty() {
                crate::res::tcpconn::unlock(&report.tcp_lock)?;
            }
            Ok(Moved { peer, remote_pid, report, bytes: sent, elapsed: t0.elapsed(), ahead, post })
        }
        Err(e) => {
            let said = peer_said.and_then(|p| p.lock().ok()?.take());
            Err(explain(e, said, &mut c))
        }
    }
}

/// A live migration's pre-copy (engine::precopy::rounds) of `src`, sent as Areas and Pages
/// frames (none without it), then the Freeze frame: the image follows.
fn send_ahead(
    src: Option<(&mut Vec<Source>, Option<&mut ShmSource>)>,
    c: &mut Conn<TcpStream>,
    budget: Duration,
    post: bool,
    ahead: &mut Ahead,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut send = |f: Frame, b: &mut [u8]| {
        let kind = match f {
            Frame::Member => Kind::Member,
            Frame::Areas => Kind::Areas,
            Frame::Pages => Kind::Pages,
            Frame::Shm => Kind::Shm,
            Frame::Caught => {
                return c.send(Kind::Caught, &[]).and_then(|()| c.expect(Kind::Caught, &mut buf)).map_err(Error::Net);
            }
        };
        c.send_in_place(kind, b).map_err(Error::Net)
    };
    let how = if post { "follow once it runs there" } else { "go while it is frozen" };
    if let Some((src, shm)) = src {
        crate::engine::precopy::rounds(src, (budget, post, true), shm, &mut send, how, ahead)?;
    }
    // The destination answers at once: every round ended with it caught up.
    c.send(Kind::Freeze, &[]).and_then(|()| c.expect(Kind::Freeze, &mut buf)).map_err(Error::Net)
}

/// The destination's answer to a post-copy's Options: the port of a second connection, for
/// the pages a process there waits for (they would queue behind the others on this one), or
/// none. Made, and proved to be ours, before anything is frozen; one that cannot be made is
/// not a failure: the pages asked for then share the stream (said with -v).
fn second_connection(c: &mut Conn<TcpStream>, peer: SocketAddr, timeout: Duration) -> Result<Option<Conn<TcpStream>>> {
    let mut buf = Vec::new();
    c.expect(Kind::Urgent, &mut buf).map_err(Error::Net)?;
    let (Some(session), &[a, b]) = (c.sibling(), &buf[..]) else { return Ok(None) };
    let to = SocketAddr::new(peer.ip(), u16::from_le_bytes([a, b]));
    let made = (|| -> std::result::Result<Conn<TcpStream>, String> {
        let s = TcpStream::connect_timeout(&to, URGENT_WAIT.min(timeout)).map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(URGENT_WAIT.min(timeout)))
            .and_then(|_| s.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        let mut u = Conn::new(s, Side::Client);
        u.authenticate(session);
        u.send(Kind::Urgent, &[]).map_err(|e| e.to_string())?;
        // Its answer: it took this connection as ours.
        u.expect(Kind::Urgent, &mut buf).map_err(|e| e.to_string())?;
        u.s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        Ok(u)
    })();
    match made {
        Ok(u) => {
            debug!("post-copy: a second connection to {to}, for the pages asked for");
            Ok(Some(u))
        }
        Err(e) => {
            log::info!("post-copy: no second connection to {to} ({e}): the pages asked for share the stream");
            Ok(None)
        }
    }
}

/// A failure before the copy could run: the process runs on here.
fn here(cause: Error) -> Error {
    Error::Migration { cause: Box::new(cause), left: Left::RunningHere }
}

/// A post-copy's pages, to send once the process runs there.
struct Later<'a> {
    runs: &'a crate::engine::checkpoint::PostCopy,
    /// The second connection, for the pages asked for.
    urgent: Option<Conn<TcpStream>>,
    timeout: Duration,
    out: &'a mut Option<super::postcopy::Sent>,
}

/// The end of the image and the commit exchange, once the last byte is out.
fn commit(
    w: FrameWriter<'_, TcpStream>,
    peer: SocketAddr,
    pid: i32,
    keep: bool,
    (later, flags): (Option<Later<'_>>, &crate::engine::vmflags::FlagsLater),
    sent: &mut u64,
    remote_pid: &mut i32,
) -> Result<()> {
    let (c, bytes) = w.finish()?;
    *sent = bytes;
    c.send(Kind::End, &[])?;
    let mut buf = Vec::new();
    c.expect(Kind::Restored, &mut buf)?;
    *remote_pid = parse_pid(&buf)?;
    let remote_pid = *remote_pid;
    // The mappings as they were frozen (checked while the image went and it was restored).
    // A post-copy need not wait: the process here stays frozen until the last page went,
    // and the copy there is killed if the check fails before then (postcopy::send).
    if later.is_none() {
        flags.wait().map_err(|e| match e {
            Error::Refused(d) => Error::Refused(format!("{d}: nothing was moved, and it runs on here; try again")),
            e => e,
        })?;
    }
    // From here the copy may start: the frozen source must not run again unless we are sure
    // the copy does not.
    c.send(Kind::Commit, &[])?;
    let e = match c.expect(Kind::Running, &mut buf) {
        Ok(()) => {
            let Some(Later { runs: p, urgent, timeout, out }) = later else { return Ok(()) };
            // Post-copy: it runs there; its pages follow from here, where it stays frozen.
            let runs = p.0.lock().map(|r| r.clone()).map_err(|_| Error::Proc("post-copy state poisoned".into()))?;
            match super::postcopy::send(c, urgent, &runs, timeout, flags) {
                Ok(s) => {
                    *out = Some(s);
                    return Ok(());
                }
                // Before its last page the copy cannot have them all: the destination kills
                // it (as soon as it sees the link broken or silent), and the process runs on
                // here.
                Err((e, false)) => {
                    // The destination sees the end at once, and kills its copy, before this
                    // one runs again.
                    let _ = c.s.shutdown(std::net::Shutdown::Both);
                    return Err(Error::Migration {
                        cause: Box::new(Error::Proc(format!(
                            "post-copy stopped before every page was sent ({e}); the copy at {peer} is killed, what it did is lost"
                        ))),
                        left: Left::RunningHere,
                    });
                }
                Err((e, true)) => NetError::Protocol(format!("after the last page of a post-copy: {e}")),
            }
        }
        Err(e) => e,
    };
    let peer = peer.to_string();
    let left = if keep {
        Left::CopyMayRun { remote_pid, peer }
    } else {
        // We cannot know whether the copy runs: keep the source, stopped.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP);
        Left::StoppedHere { pid, remote_pid, peer }
    };
    Err(Error::Migration { cause: Box::new(e.into()), left })
}

/// A send that failed is often the destination closing after it refused: its Error frame, if
/// one is waiting, says why better than "broken pipe". Failures of the network or the stream
/// become [`Error::Migration`] with the process running here; the checkpoint's own refusals
/// (a process crs cannot take) are returned as they are: it runs on too.
fn explain(e: Error, said: Option<NetError>, c: &mut Conn<TcpStream>) -> Error {
    if let Some(r @ NetError::Remote(..)) = said {
        return here(Error::Net(r));
    }
    if matches!(e, Error::Io { .. } | Error::Net(_)) {
        let _ = c.s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = Vec::new();
        if let Err(r @ NetError::Remote(..)) = c.recv(&mut buf) {
            return here(Error::Net(r));
        }
    }
    match e {
        Error::Io { path, err } if path == "image" => here(Error::Io { path: "sending the image".into(), err }),
        e @ (Error::Net(_) | Error::Io { .. }) => here(e),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn host_forms() {
        assert_eq!(resolve("127.0.0.1", None).unwrap()[0].to_string(), "127.0.0.1:1023");
        assert_eq!(resolve("127.0.0.1:99", None).unwrap()[0].to_string(), "127.0.0.1:99");
        assert_eq!(resolve("[::1]:7", None).unwrap()[0].to_string(), "[::1]:7");
        assert_eq!(resolve("::1", Some(5)).unwrap()[0].to_string(), "[::1]:5");
        assert!(resolve("127.0.0.1:x", None).is_err());
    }
}
