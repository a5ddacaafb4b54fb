//! Several "nodes" on one machine: network namespaces joined by a veth pair, a restartd in one
//! of them, the migration target and how a test asks it where it runs.

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Two namespaces `a` and `b` with 10.55.N.1 and 10.55.N.2; removed on drop.
pub struct Nodes {
    pub a: String,
    pub b: String,
    pub addr_b: String,
    pub veth_a: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

impl Nodes {
    pub fn new() -> Option<Nodes> {
        if !require(is_root() && Command::new("ip").arg("-V").output().is_ok(), "root and iproute2") {
            return None;
        }
        let n = (std::process::id() % 200) as u32 * 10 + NEXT.fetch_add(1, Ordering::SeqCst);
        let (a, b) = (format!("crs-a{n}"), format!("crs-b{n}"));
        let (va, vb) = (format!("crsa{n}"), format!("crsb{n}"));
        let net = n % 250 + 1;
        ip(&["netns", "add", &a]);
        let nodes = Nodes { a: a.clone(), b: b.clone(), addr_b: format!("10.55.{net}.2"), veth_a: va.clone() };
        ip(&["netns", "add", &b]);
        ip(&["link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b]);
        ip(&["-n", &a, "addr", "add", &format!("10.55.{net}.1/24"), "dev", &va]);
        ip(&["-n", &b, "addr", "add", &format!("10.55.{net}.2/24"), "dev", &vb]);
        for (ns, dev) in [(&a, &va), (&b, &vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Some(nodes)
    }

    pub fn cmd(&self, ns: &str, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, prog]).args(args);
        close_extra_fds(&mut c);
        c
    }

    /// The inode of namespace `ns`, as /proc/PID/ns/net shows it: "net:[N]".
    pub fn ns_id(&self, ns: &str) -> String {
        use std::os::unix::fs::MetadataExt;
        format!("net:[{}]", std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino())
    }
}

/// Kills whatever still runs in namespace `ns`, then removes it.
fn remove_ns(ns: &str) {
    let _ = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| {
        for p in String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            if p > 1 {
                // SAFETY: kill takes integers.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    });
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

impl Drop for Nodes {
    fn drop(&mut self) {
        remove_ns(&self.a);
        remove_ns(&self.b);
    }
}

/// Rate-limits the source's side of the link (so a transfer lasts long enough to be cut), then
/// waits until more than 4 MiB of the image has reached restartd's spool.
pub fn slow_link_and_wait_for_spool(n: &Nodes, spool: &Path) {
    let tc = [
        "netns", "exec", &n.a, "tc", "qdisc", "add", "dev", &n.veth_a, "root", "tbf", "rate", "80mbit", "burst",
        "64kb", "latency", "50ms",
    ];
    assert!(Command::new("ip").args(tc).status().unwrap().success());
    let t0 = Instant::now();
    loop {
        let size: u64 = std::fs::read_dir(spool)
            .map(|r| r.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        if size > 4 << 20 {
            return;
        }
        assert!(t0.elapsed() < TIMEOUT, "the image never started to arrive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// restartd in namespace b, listening on its address; killed on drop.
pub struct Daemon(pub Child, pub Said);

impl Daemon {
    pub fn start(n: &Nodes, extra: &[&str]) -> Daemon {
        let mut args = vec!["restartd", "-b", &n.addr_b, "-p", "1023"];
        args.extend_from_slice(extra);
        let mut c = n.cmd(&n.b, crs(), &args);
        c.stderr(Stdio::piped()).stdout(Stdio::null()).stdin(Stdio::null());
        let mut child = c.spawn().unwrap();
        // It says it listens once it does.
        let said = watch(&mut child, "listening on", "restartd");
        Daemon(child, said)
    }
}

impl Daemon {
    /// [`Daemon::start`], in a mount namespace of its own where `hidden` (a directory) is an
    /// empty tmpfs: node b as a machine without the files there.
    pub fn start_without(n: &Nodes, hidden: &Path, extra: &[&str]) -> Daemon {
        let script = format!(
            "mount -t tmpfs crs-hidden '{}' && exec '{}' restartd -b {} -p 1023 {}",
            hidden.display(),
            crs(),
            n.addr_b,
            extra.join(" ")
        );
        let mut c = n.cmd(&n.b, "unshare", &["--mount", "--propagation", "private", "sh", "-c", &script]);
        c.stderr(Stdio::piped()).stdout(Stdio::null()).stdin(Stdio::null());
        let mut child = c.spawn().unwrap();
        let said = watch(&mut child, "listening on", "restartd");
        Daemon(child, said)
    }

    /// [`Daemon::start`], in a pid namespace of its own (with its /proc): node b as a machine
    /// of its own, where every pid of a tree from node a is free.
    pub fn start_own_pids(n: &Nodes, extra: &[&str]) -> Daemon {
        let mut args = vec!["--pid", "--fork", "--mount-proc", crs(), "restartd", "-b", &n.addr_b, "-p", "1023"];
        args.extend_from_slice(extra);
        let mut c = n.cmd(&n.b, "unshare", &args);
        c.stderr(Stdio::piped()).stdout(Stdio::null()).stdin(Stdio::null());
        let mut child = c.spawn().unwrap();
        let said = watch(&mut child, "listening on", "restartd");
        Daemon(child, said)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until the log has a line starting with `prefix` after `skip` lines.
pub fn log_line(log: &Path, prefix: &str, skip: usize) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().skip(skip).find(|l| l.starts_with(prefix)) {
            return l.to_string();
        }
        assert!(t0.elapsed() < TIMEOUT, "no {prefix:?} line in {}: {text}", log.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A Python program that holds `mib` MiB of its own and flips the flags of a whole mapping
/// (madvise MADV_DONTDUMP, MADV_DODUMP) all the time; it writes "ready PID" to `log`.
pub fn flag_flipper_script(log: &Path, mib: usize) -> String {
    format!(
        "import mmap, os\n\
         b = bytearray(b'x' * ({mib} << 20))\n\
         m = mmap.mmap(-1, 4096)\n\
         m[0] = 1\n\
         open({log:?}, 'a').write('ready %d\\n' % os.getpid())\n\
         while True:\n\
         \x20   m.madvise(mmap.MADV_DONTDUMP)\n\
         \x20   m.madvise(mmap.MADV_DODUMP)\n",
        log = log.to_str().unwrap()
    )
}

/// Worker `w`'s pid and digest of its slice, from its first line after `skip` lines of the log
/// of tests/targets/shared_pool.py ("wN PID COUNT DIGEST").
pub fn pool_worker(log: &Path, w: usize, skip: usize) -> (String, String) {
    let l = log_line(log, &format!("w{w} "), skip);
    let f: Vec<String> = l.split_whitespace().map(String::from).collect();
    (f[1].clone(), f[3].clone())
}

pub fn lines(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().count()
}

/// Starts the migrant in namespace a; returns it and its log.
pub fn migrant(n: &Nodes, dir: &Path, mib: &str) -> (Child, PathBuf, i32) {
    threaded_migrant(n, dir, mib, "0")
}

/// [`migrant`] with `threads` threads counting beside its main one.
pub fn threaded_migrant(n: &Nodes, dir: &Path, mib: &str, threads: &str) -> (Child, PathBuf, i32) {
    let log = dir.join("log");
    let mut c = n.cmd(&n.a, target("migrant").to_str().unwrap(), &[log.to_str().unwrap(), mib, threads]);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    let child = c.spawn().unwrap();
    let l = log_line(&log, "ready", 0);
    let pid = l.split_whitespace().nth(1).unwrap().parse().unwrap();
    (child, log, pid)
}

/// Starts the migrant on this node (no namespace), reaped by the test; waits until it is ready.
pub fn local_migrant(log: &Path, mib: &str) -> Reap {
    let mut c = Command::new(target("migrant"));
    c.args([log.to_str().unwrap(), mib]).stdin(Stdio::null()).stdout(Stdio::null());
    close_extra_fds(&mut c);
    let src = Reap(c.spawn().unwrap());
    log_line(log, "ready", 0);
    src
}

/// A failed migration must leave the source running at node a, its state intact.
pub fn still_runs_at_source(n: &Nodes, src: &mut Child, pid: i32, log: &Path, why: &str) {
    assert!(!gone(src), "{why}: the source is gone");
    let v = check(pid, log);
    assert!(v.starts_with("ok") && v.contains(&n.ns_id(&n.a)), "{why}: {v}");
}

/// Asks `pid` to check itself; returns its verdict line.
pub fn check(pid: i32, log: &Path) -> String {
    let before = lines(log);
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0, "pid {pid} is gone");
    log_line(log, "", before)
}

pub fn migrate(n: &Nodes, args: &[&str]) -> Output {
    let mut a = vec!["migrate"];
    a.extend_from_slice(args);
    n.cmd(&n.a, crs(), &a).output().unwrap()
}

pub fn keyfile(dir: &Path, name: &str) -> String {
    let k = dir.join(name);
    let o = run(&["keygen", k.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    k.to_str().unwrap().to_string()
}

pub fn gone(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_))) || {
        std::thread::sleep(Duration::from_millis(50));
        matches!(child.try_wait(), Ok(Some(_)))
    }
}

/// Three nodes on one Ethernet segment: namespaces a, b (as [`Nodes`]) and c, each with a
/// veth into a bridge in a fourth namespace; 10.57.N.1, .2 and .3 (fd00:57:N::1, 2, 3), and
/// the service address 10.57.N.100 (fd00:57:N::100) on a. Removed on drop.
pub struct Segment {
    pub nodes: Nodes,
    pub c: String,
    br: String,
    pub service: String,
    pub prefix: String,
    pub service6: String,
    pub prefix6: String,
}

impl Segment {
    pub fn new() -> Option<Segment> {
        if !require(is_root() && Command::new("ip").arg("-V").output().is_ok(), "root and iproute2") {
            return None;
        }
        let n = (std::process::id() % 200) * 10 + NEXT.fetch_add(1, Ordering::SeqCst);
        let net = format!("10.57.{}", n % 250 + 1);
        let net6 = format!("fd00:57:{:x}", n % 250 + 1);
        let name = |x: &str| format!("crs-{x}{n}");
        let (a, b, c, br) = (name("a"), name("b"), name("c"), name("br"));
        for ns in [&br, &a, &b, &c] {
            ip(&["netns", "add", ns]);
        }
        let seg = Segment {
            nodes: Nodes { a: a.clone(), b: b.clone(), addr_b: format!("{net}.2"), veth_a: format!("crsa{n}") },
            c: c.clone(),
            br: br.clone(),
            service: format!("{net}.100"),
            prefix: format!("{net}.100/24"),
            service6: format!("{net6}::100"),
            prefix6: format!("{net6}::100/64"),
        };
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for (ns, x, last) in [(&a, "a", 1), (&b, "b", 2), (&c, "c", 3)] {
            let (inner, outer) = (format!("crs{x}{n}"), format!("p{x}{n}"));
            ip(&["link", "add", &inner, "netns", ns, "type", "veth", "peer", "name", &outer, "netns", &br]);
            ip(&["-n", &br, "link", "set", &outer, "master", "br0", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{net}.{last}/24"), "dev", &inner]);
            ip(&["-n", ns, "addr", "add", &format!("{net6}::{last}/64"), "dev", &inner, "nodad"]);
            ip(&["-n", ns, "link", "set", &inner, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &a, "addr", "add", &seg.prefix, "dev", &format!("crsa{n}")]);
        ip(&["-n", &a, "addr", "add", &seg.prefix6, "dev", &format!("crsa{n}"), "nodad"]);
        Some(seg)
    }

    /// Whether namespace `ns` has the service address.
    pub fn has_service(&self, ns: &str) -> bool {
        self.has(ns, &self.service)
    }

    /// Whether namespace `ns` has address `addr`.
    pub fn has(&self, ns: &str, addr: &str) -> bool {
        let o = Command::new("ip").args(["-n", ns, "-o", "addr", "show"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).contains(&format!(" {addr}/"))
    }

    /// The nftables tables crs left in namespace `ns`.
    pub fn crs_tables(&self, ns: &str) -> String {
        let o = Command::new("ip").args(["netns", "exec", ns, "nft", "list", "tables"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains(" crs_")).collect::<Vec<_>>().join("; ")
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        remove_ns(&self.c);
        remove_ns(&self.br);
    }
}
