//! migrate: move a running process to another node's restartd.

/// Move a running process to the restartd on HOST: its image streams over TCP as it is made,
/// with no temporary file; the process stays frozen meanwhile and is killed only once it runs at
/// the destination. On any failure it runs on here, where it was.
#[derive(argh::FromArgs)]
struct Args {
    /// port of restartd on HOST (default 1023, or the :PORT of HOST)
    #[argh(option, short = 'p')]
    port: Option<u16>,
    /// leave the process running here too: copy it rather than move it
    #[argh(switch)]
    keep: bool,
    /// cluster key file (default /etc/crs/key when it exists; see crs keygen)
    #[argh(option)]
    key: Option<String>,
    /// seconds to wait for the destination at each step (default 30)
    #[argh(option, default = "30")]
    timeout: u64,
    /// print the freeze time and the transfer rate
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// the process to move
    #[argh(positional)]
    pid: i32,
    /// destination node, HOST or HOST:PORT ([ADDR]:PORT for IPv6)
    #[argh(positional)]
    host: String,
}

use crate::error::{Error, Result};
use crate::exit;
use crate::net::session::{FrameWriter, client_hello, parse_pid};
use crate::net::{Conn, DEFAULT_PORT, Kind, Side, key};
use nix::sys::signal::Signal;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub fn main(name: &str, argv: &[String]) -> i32 {
    let a: Args = match super::parse(name, argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    super::verbose(a.verbose);
    match run(&a) {
        Ok(()) => exit::OK,
        Err(e) => exit::report(name, &e),
    }
}

/// "host", "host:port", "[v6]:port", "v6" -> addresses.
fn resolve(host: &str, port: Option<u16>) -> Result<Vec<SocketAddr>> {
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
    let addrs: Vec<SocketAddr> =
        (h.as_str(), port).to_socket_addrs().map_err(|e| Error::Net(format!("cannot resolve {h}: {e}")))?.collect();
    if addrs.is_empty() {
        return Err(Error::Net(format!("{h} has no address")));
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
                    .map_err(|e| Error::Net(format!("{a}: {e}")))?;
                return Ok(s);
            }
            Err(e) => last = Some(format!("cannot reach restartd at {a}: {e}")),
        }
    }
    Err(Error::Net(last.unwrap_or_default()))
}

fn run(a: &Args) -> Result<()> {
    if a.pid <= 0 {
        return Err(Error::Usage(format!("{} is not a process id", a.pid)));
    }
    let key_path =
        a.key.clone().or_else(|| std::path::Path::new(key::DEFAULT_KEY).exists().then(|| key::DEFAULT_KEY.to_string()));
    let k = match &key_path {
        Some(p) => Some(key::load(p).map_err(Error::Usage)?),
        None => None,
    };
    let timeout = Duration::from_secs(a.timeout.max(1));
    // Nothing is touched before the destination has answered and proved itself.
    crate::engine::checkpoint::precheck(a.pid, &crate::Flags::default())?;
    let addrs = resolve(&a.host, a.port)?;
    let stream = connect(&addrs, timeout)?;
    let peer = stream.peer_addr().map(|p| p.to_string()).unwrap_or_else(|_| a.host.clone());
    let mut c = Conn::new(stream, Side::Client);
    client_hello(&mut c, k.as_ref())?;

    // Signals that would end us wait until the process is safely here or there.
    let mut hold = nix::sys::signal::SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT] {
        hold.add(s);
    }
    let _ = hold.thread_block();

    let flags = crate::Flags { kill: !a.keep, ..Default::default() };
    let pid = a.pid;
    let keep = a.keep;
    let mut remote_pid = 0;
    let mut sent = 0u64;
    let t0 = Instant::now();
    let mut peer_said = None;
    let r = std::thread::scope(|s| {
        let w = FrameWriter::new(s, &mut c);
        peer_said = Some(w.peer_said.clone());
        crate::engine::checkpoint::checkpoint_prechecked(pid, w, &flags, |w| {
            commit(w, &peer, pid, keep, &mut sent, &mut remote_pid)
        })
    });
    let report = match r {
        Ok(r) => r,
        Err(e) => {
            let said = peer_said.and_then(|p| p.lock().ok()?.take());
            return Err(explain(e, said, &mut c));
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    let verb = if a.keep { "copied" } else { "moved" };
    println!("{verb} pid {pid} to {peer}: it runs there as pid {remote_pid}");
    if a.verbose {
        eprintln!(
            "migrate: frozen {:.1} ms, {} bytes in {:.1} ms ({:.0} MB/s)",
            report.frozen.as_secs_f64() * 1e3,
            sent,
            secs * 1e3,
            sent as f64 / secs / 1e6
        );
    }
    Ok(())
}

/// The end of the image and the commit exchange, once the last byte is out.
fn commit(
    w: FrameWriter<'_, TcpStream>,
    peer: &str,
    pid: i32,
    keep: bool,
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
    // From here the copy may start: the frozen source must not run again unless we are sure
    // the copy does not.
    c.send(Kind::Commit, &[])?;
    match c.expect(Kind::Running, &mut buf) {
        Ok(()) => Ok(()),
        Err(e) if keep => {
            Err(Error::Net(format!("{e}; the copy (pid {remote_pid} on {peer}) may or may not run: check there")))
        }
        Err(e) => {
            // We cannot know whether the copy runs: keep the source, stopped.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP);
            Err(Error::Net(format!(
                "{e}; the destination may or may not run the process (pid {remote_pid} there): it is left stopped here as pid {pid}; check {peer}, then kill or continue it"
            )))
        }
    }
}

/// A send that failed is often the destination closing after it refused: its Error frame, if
/// one is waiting, says why better than "broken pipe".
fn explain(e: Error, said: Option<crate::net::NetError>, c: &mut Conn<TcpStream>) -> Error {
    if let Some(crate::net::NetError::Remote(code, text)) = said {
        return Error::Net(format!("refused by the destination ({code:?}): {text}; the process runs on here"));
    }
    if matches!(e, Error::Io { .. } | Error::Net(_)) {
        let _ = c.s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = Vec::new();
        if let Err(crate::net::NetError::Remote(code, text)) = c.recv(&mut buf) {
            return Error::Net(format!("refused by the destination ({code:?}): {text}; the process runs on here"));
        }
    }
    match e {
        Error::Io { path, err } if path == "image" => {
            Error::Net(format!("sending the image: {err}; the process runs on here"))
        }
        Error::Net(s) if !s.contains("left stopped") => Error::Net(format!("{s}; the process runs on here")),
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
