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
    /// let clients that ask with migrate --move-address move their process's address here;
    /// it is put on the interface in its subnet before the process runs, taken off if it does
    /// not
    #[argh(switch)]
    move_address: bool,
    /// which engine restores: "ptrace", "crd" (the kernel module, /dev/crd, see crd(4): one
    /// single-threaded process, not live), or "auto" (the default: ptrace, and crd when Yama
    /// forbids ptrace)
    #[argh(option, default = "String::from(\"auto\")")]
    backend: String,
}

use crate::error::{Error, Result};
use crate::exit;
use crate::migration::{ServeConfig, serve_one};
use crate::net::{NetError, key};
use log::{info, warn};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::Duration;

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
    // A restart through /dev/crd says it is done with SIGUSR1 to the handler: every thread,
    // the frame receiver's too, inherits it blocked from here (only the one that waits for it
    // takes it, with sigtimedwait).
    let mut usr1 = nix::sys::signal::SigSet::empty();
    usr1.add(nix::sys::signal::Signal::SIGUSR1);
    let _ = usr1.thread_block();
    let r = if a.inetd { serve_stdin(&cfg) } else { serve(&a, &cfg) };
    match r {
        Ok(()) => exit::OK,
        Err(e) => exit::report(name, &e),
    }
}

fn config(a: &Args) -> Result<ServeConfig> {
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
    Ok(ServeConfig {
        key,
        spool: a.spool.clone(),
        uids,
        allow_root: a.allow_root,
        move_address: a.move_address,
        limit,
        timeout: Duration::from_secs(a.timeout.max(1)),
        handshake: Duration::from_secs(a.handshake_timeout.max(1)),
        backend: a.backend.parse().map_err(Error::Usage)?,
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

fn serve(a: &Args, cfg: &ServeConfig) -> Result<()> {
    let addr = a.bind.clone().unwrap_or_else(|| "0.0.0.0".into());
    let ip: IpAddr = addr.parse().map_err(|_| Error::Usage(format!("-b {addr}: not an IP address")))?;
    let l = TcpListener::bind((ip, a.port))
        .map_err(|e| Error::Net(NetError::Setup(format!("cannot listen on {addr} port {}: {e}", a.port))))?;
    if cfg.key.is_none() {
        warn!("no cluster key: serving only clients on this node (give --key or create {})", key::DEFAULT_KEY);
    }
    // Whether this kernel puts waiting TCP connections back (its BTF read, a program loaded):
    // once, for every child to know.
    let _ = crate::res::tcpqueue::usable();
    info!(
        "listening on {}, up to {} clients, images up to {} bytes, {}, root's processes {}",
        l.local_addr().map(|x| x.to_string()).unwrap_or(addr),
        a.max_clients,
        cfg.limit,
        if cfg.key.is_some() { "with a cluster key" } else { "without a key (this node's clients only)" },
        if cfg.allow_root { "accepted (--allow-root)" } else { "refused" }
    );
    // Our handlers. Other children may come to us too: as the init of a pid namespace, every
    // process orphaned in it (the restored ones, once their handler is done), each reaped
    // as it ends, never counted as a handler.
    let mut live = std::collections::BTreeSet::<i32>::new();
    loop {
        reap(&mut live, false);
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
        // Block until one finishes rather than turn the client away at once.
        while live.len() >= a.max_clients && reap(&mut live, true) {}
        // SAFETY: restartd is single-threaded here; the child serves one client and exits.
        match unsafe { libc::fork() } {
            0 => {
                drop(l);
                let code = match serve_one(s, peer, cfg) {
                    Ok(_) => 0,
                    Err(_) => 1,
                };
                std::process::exit(code);
            }
            -1 => warn!("fork for client {peer}: {}", std::io::Error::last_os_error()),
            pid => {
                live.insert(pid);
            }
        }
    }
}

/// Reaps every child that has ended (with `block`, waits for one first), handlers (`live`,
/// taken out) or not; false once there is no child to wait for.
fn reap(live: &mut std::collections::BTreeSet<i32>, block: bool) -> bool {
    let mut flags = if block { None } else { Some(WaitPidFlag::WNOHANG) };
    loop {
        match waitpid(None::<Pid>, flags) {
            Ok(WaitStatus::StillAlive) => return true,
            Ok(w) => {
                if let Some(p) = w.pid() {
                    live.remove(&p.as_raw());
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
        flags = Some(WaitPidFlag::WNOHANG);
    }
}

/// Waits up to `ms` milliseconds for a connection to accept.
fn readable(l: &TcpListener, ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes the one pollfd we pass, which lives across the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

fn serve_stdin(cfg: &ServeConfig) -> Result<()> {
    use std::os::fd::{AsFd, OwnedFd};
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| Error::io("standard input", e))?;
    let s = TcpStream::from(fd);
    let peer = s.peer_addr().map_err(|e| {
        Error::Net(NetError::Setup(format!(
            "standard input is not a TCP connection ({e}); -i is for inetd and systemd"
        )))
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
    serve_one(s, peer, cfg).map(drop).map_err(|_| Error::Net(NetError::Setup("the migration did not complete".into())))
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
