//! restartd: receive processes from migrate and restore them, straight from the socket.

/// Receive processes sent by migrate and restart them here. Standalone it listens on port 1023
/// and serves clients concurrently, one process each; with -i it serves the one connection on
/// its standard input (inetd, systemd Accept=yes).
#[derive(argh::FromArgs)]
struct Args {
    /// port to listen on (default 1023)
    #[argh(option, short = 'p', default = "crate::net::DEFAULT_PORT")]
    port: u16,
    /// address to listen on (default 0.0.0.0; :: for IPv6)
    #[argh(option, short = 'b')]
    bind: Option<String>,
    /// serve one connection on standard input/output, as started by inetd or systemd
    #[argh(switch, short = 'i')]
    inetd: bool,
    /// cluster key file (default /etc/crs/key when it exists); without a key only clients on
    /// this node are served
    #[argh(option)]
    key: Option<String>,
    /// also keep every received image as a file in DIR
    #[argh(option)]
    spool: Option<String>,
    /// restore only processes of these uids (comma-separated, ranges as 1000-1999)
    #[argh(option)]
    allow_uid: Option<String>,
    /// restore processes that run as root too (refused by default)
    #[argh(switch)]
    allow_root: bool,
    /// largest image accepted, in bytes or with K, M, G (default half of this node's memory)
    #[argh(option)]
    max_image_size: Option<String>,
    /// most clients served at once; more wait until one finishes (default 16)
    #[argh(option, default = "16")]
    max_clients: usize,
    /// seconds a client may stay silent before it is dropped (default 30)
    #[argh(option, default = "30")]
    timeout: u64,
    /// seconds a client has, from its connection, to complete the handshake (default 10)
    #[argh(option, default = "10")]
    handshake_timeout: u64,
    /// slowest average rate an image may arrive at, in bytes per second or with K, M, G, after
    /// an allowance of --timeout seconds (default 64K)
    #[argh(option)]
    min_rate: Option<String>,
}

use crate::error::{Error, Result};
use crate::exit;
use crate::net::pace::Paced;
use crate::net::session::{FrameStream, pid_payload, server_hello};
use crate::net::{Code, Conn, Kind, Side, key};
use crate::res::head::Header;
use log::{info, warn};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

struct Config {
    key: Option<[u8; 32]>,
    spool: Option<String>,
    uids: Option<Vec<(u32, u32)>>,
    allow_root: bool,
    limit: u64,
    timeout: Duration,
    handshake: Duration,
    min_rate: u64,
}

pub fn main(name: &str, argv: &[String]) -> i32 {
    let a: Args = match super::parse(name, argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    // A daemon logs one line per migration.
    super::verbose(true);
    let cfg = match config(&a) {
        Ok(c) => c,
        Err(e) => return exit::report(name, &e),
    };
    let r = if a.inetd { serve_stdin(&cfg) } else { serve(&a, &cfg) };
    match r {
        Ok(()) => exit::OK,
        Err(e) => exit::report(name, &e),
    }
}

fn config(a: &Args) -> Result<Config> {
    let key_path =
        a.key.clone().or_else(|| std::path::Path::new(key::DEFAULT_KEY).exists().then(|| key::DEFAULT_KEY.to_string()));
    let key = match &key_path {
        Some(p) => Some(key::load(p).map_err(Error::Usage)?),
        None => None,
    };
    let uids = a.allow_uid.as_deref().map(parse_uids).transpose()?;
    let limit = match &a.max_image_size {
        Some(s) => parse_size(s)?,
        None => mem_total() / 2,
    };
    if let Some(d) = &a.spool {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d.as_str(), e))?;
    }
    if a.max_clients == 0 {
        return Err(Error::Usage("--max-clients must be at least 1".into()));
    }
    Ok(Config {
        key,
        spool: a.spool.clone(),
        uids,
        allow_root: a.allow_root,
        limit,
        timeout: Duration::from_secs(a.timeout.max(1)),
        handshake: Duration::from_secs(a.handshake_timeout.max(1)),
        min_rate: match &a.min_rate {
            Some(r) => parse_size(r)
                .map_err(|_| Error::Usage(format!("--min-rate {r:?}: give bytes per second, e.g. 64K or 1M")))?
                .max(1),
            None => 64 << 10,
        },
    })
}

fn parse_uids(s: &str) -> Result<Vec<(u32, u32)>> {
    s.split(',')
        .map(|p| {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            match (lo.trim().parse(), hi.trim().parse()) {
                (Ok(l), Ok(h)) if l <= h => Ok((l, h)),
                _ => Err(Error::Usage(format!("--allow-uid: {p:?} is not a uid or a range like 1000-1999"))),
            }
        })
        .collect()
}

fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Error::Usage(format!("{s:?} is not a size (e.g. 512M, 4G)")))
}

fn mem_total() -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    crate::ptrace::procfs::status_field(&m, "MemTotal")
        .and_then(|v| v.trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(1 << 20)
        * 1024
}

/// Whether the image's owner may be restored here (restartd(8), THREAT MODEL). `local_uid` is
/// the connecting user of a keyless restartd (None: a keyed one, whose peer proved the key).
fn policy(cfg: &Config, h: &Header, local_uid: Option<u32>) -> Result<()> {
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

fn serve(a: &Args, cfg: &Config) -> Result<()> {
    let addr = a.bind.clone().unwrap_or_else(|| "0.0.0.0".into());
    let ip: IpAddr = addr.parse().map_err(|_| Error::Usage(format!("-b {addr}: not an IP address")))?;
    let l = TcpListener::bind((ip, a.port))
        .map_err(|e| Error::Net(format!("cannot listen on {addr} port {}: {e}", a.port)))?;
    if cfg.key.is_none() {
        warn!("no cluster key: serving only clients on this node (give --key or create {})", key::DEFAULT_KEY);
    }
    info!(
        "listening on {}, up to {} clients, images up to {} bytes",
        l.local_addr().map(|x| x.to_string()).unwrap_or(addr),
        a.max_clients,
        cfg.limit
    );
    let mut live = 0usize;
    loop {
        // Reap finished handlers (the processes they restored live on, as init's).
        while live > 0 {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => live -= 1,
            }
        }
        // A timed wait for the next client, so that a finished handler is reaped within a
        // second even when nobody connects.
        if !readable(&l, 1000) {
            continue;
        }
        let (s, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if live >= a.max_clients {
            // Block until one finishes rather than turn the client away at once.
            if waitpid(None::<Pid>, None).is_ok() {
                live -= 1;
            }
        }
        // SAFETY: restartd is single-threaded here; the child serves one client and exits.
        match unsafe { libc::fork() } {
            0 => {
                drop(l);
                let code = match handle(s, peer, cfg) {
                    Ok(()) => 0,
                    Err(_) => 1,
                };
                std::process::exit(code);
            }
            -1 => warn!("fork for client {peer}: {}", std::io::Error::last_os_error()),
            _ => live += 1,
        }
    }
}

/// Waits up to `ms` milliseconds for a connection to accept.
fn readable(l: &TcpListener, ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes the one pollfd we pass, which lives across the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

fn serve_stdin(cfg: &Config) -> Result<()> {
    use std::os::fd::{AsFd, OwnedFd};
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| Error::io("standard input", e))?;
    let s = TcpStream::from(fd);
    let peer = s.peer_addr().map_err(|e| {
        Error::Net(format!("standard input is not a TCP connection ({e}); -i is for inetd and systemd"))
    })?;
    // Classic inetd gives us the connection as stderr too: our log lines must not go into it.
    use std::os::unix::fs::MetadataExt;
    let same = |a: &str, b: &str| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    };
    if same("/proc/self/fd/2", "/proc/self/fd/0")
        && let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto our own stderr; `null` stays valid for the call.
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
    }
    if cfg.key.is_none() {
        warn!("no cluster key: serving only clients on this node");
    }
    // The handler has logged why it failed; the exit status says that it did.
    handle(s, peer, cfg).map_err(|_| Error::Net("the migration did not complete".into()))
}

/// Serves one client: handshake, image straight into a restore, commit.
fn handle(s: TcpStream, peer: SocketAddr, cfg: &Config) -> Result<()> {
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(cfg.timeout)).map_err(|e| Error::Net(e.to_string()))?;
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
    c.s.transfer(cfg.min_rate, cfg.timeout);
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
    let opts = crate::RestartFlags { detach: true, stop: false, require_pid: false, hold: true, null_stdio: 7 };
    let who_cell = std::cell::RefCell::new(String::new());
    // How much of the image had arrived when the restore began (the restore is pipelined).
    let progress = fr.progress.clone();
    let began = std::cell::Cell::new(0u64);
    let r = crate::engine::restore::restore_checked(&mut fr, &opts, &|h| {
        began.set(progress.load(std::sync::atomic::Ordering::Relaxed));
        *who_cell.borrow_mut() = crate::text::printable(&format!("pid {} ({}, uid {})", h.pid, h.comm, h.uids[0]));
        if cfg.key.is_none() && local_uid.is_none() {
            return Err(Error::Permission("cannot tell which local user connects; give restartd a key".into()));
        }
        policy(cfg, h, local_uid)
    });
    let who = who_cell.into_inner();
    // The image reader stops at the trailer; the End frame follows it.
    let drained = match &r {
        Ok(_) => std::io::copy(&mut fr, &mut std::io::sink())
            .map(|_| ())
            .map_err(|e| Error::Net(format!("after the image: {e}"))),
        Err(_) => Ok(()),
    };
    let bytes = fr.bytes();
    let failure = fr.failure.take();
    let Some(mut c) = fr.finish() else {
        return Err(Error::Proc("the frame receiver failed".into()));
    };
    c.s.idle_only();
    let restored = match r.and_then(|x| drained.map(|_| x)) {
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
    let outcome = commit(&mut c, pid, restored.held);
    match &outcome {
        Ok(()) => info!("{peer}: {who} restored as pid {pid}, {bytes} bytes (began at {}), running", began.get()),
        Err(e) => {
            info!("{peer}: {who} restored as pid {pid}, {bytes} bytes (began at {}), then dropped: {e}", began.get())
        }
    }
    outcome
}

/// Reports the copy, restored but held (traced, not yet run), and lets it run only on the
/// client's Commit. Without one (Abort, a cut connection, a timeout, this handler dying) the
/// copy is killed, for the source runs on.
fn commit(c: &mut Conn<Paced>, pid: i32, held: Option<crate::engine::restore::Held>) -> Result<()> {
    let held = held.ok_or_else(|| Error::Proc("restore did not hold the process".into()))?;
    let mut buf = Vec::new();
    match c.send(Kind::Restored, &pid_payload(pid)).and_then(|_| c.recv(&mut buf)) {
        Ok(Kind::Commit) => {}
        Ok(k) => return Err(Error::Net(format!("expected Commit, got {k:?}"))),
        Err(e) => return Err(e.into()),
    }
    held.release()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_uids() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4g").unwrap(), 4 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("x").is_err());
        assert_eq!(parse_uids("1000,2000-2999").unwrap(), vec![(1000, 1000), (2000, 2999)]);
        assert!(parse_uids("5-1").is_err());
    }
}
