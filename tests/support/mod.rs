//! Test support: build C target programs, spawn them with piped stdio, synchronise on the lines
//! they print (never on sleeps), and run the crs applets.
#![allow(dead_code)]

pub mod nodes;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

pub const TIMEOUT: Duration = Duration::from_secs(30);

pub fn crs() -> &'static str {
    env!("CARGO_BIN_EXE_crs")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A test's own directory, removed when the test ends; kept when it failed, to be looked at.
pub struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TmpDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TmpDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh directory for one test, "NAME.N.PID" (N counts the calls of this test process: two
/// tests running side by side may ask for the same NAME). Images of hundreds of megabytes are
/// written there, so what test processes that have ended left behind (a failed test's
/// directory, targets compiled by a run) is removed on the first call of each test process.
pub fn tmpdir(name: &str) -> TmpDir {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    SWEPT.call_once(|| sweep(root));
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = root.join(format!("{name}.{n}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

/// Removes the entries of ROOT named for a process that no longer runs ("NAME.PID" directories
/// and "target-NAME-PID" binaries).
fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.rsplit(['.', '-']).next().and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let p = e.path();
        let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
    }
}

/// Compiles tests/targets/NAME.c, once per test process (each test binary has its own copy, so
/// no test ever replaces a binary another one is running).
pub fn target(name: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets").join(format!("{name}.c"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("target-{name}-{}", std::process::id()));
    if !out.exists() {
        let tmp = out.with_extension("tmp");
        let st = Command::new("cc").args(["-O1", "-g", "-Wall", "-o"]).arg(&tmp).arg(&src).status().expect("cc");
        assert!(st.success(), "compiling {}", src.display());
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// A process whose stdout lines we read through a channel, with stdin piped.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(cmd: Command) -> Proc {
        Proc::spawn_keeping(cmd, &[])
    }

    /// [`Proc::spawn`], giving the process fd `dst` as a copy of our `src` for each pair: the
    /// fds a launcher leaks into what it starts.
    pub fn spawn_keeping(mut cmd: Command, keep: &[(std::os::fd::OwnedFd, i32)]) -> Proc {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut pairs: Vec<(i32, i32)> = keep.iter().map(|(f, d)| (f.as_raw_fd(), *d)).collect();
        pairs.sort_by_key(|p| p.1);
        // SAFETY: dup2 and close_range are async-signal-safe and touch only the child's fds.
        unsafe {
            cmd.pre_exec(move || {
                for &(src, dst) in &pairs {
                    // Above every fd we keep first, so no dup2 overwrites a source.
                    libc::dup2(src, 4000 + dst);
                }
                let mut from = 3u32;
                for &(_, dst) in &pairs {
                    libc::dup2(4000 + dst, dst);
                    libc::syscall(libc::SYS_close_range, from, (dst - 1) as u32, 0u32);
                    from = dst as u32 + 1;
                }
                libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
                default_dispositions();
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                match l {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        Proc { child, stdin, lines: rx, seen: Vec::new() }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads lines until one starts with `prefix`; returns it. Panics (with what was seen) when
    /// the process ends or TIMEOUT passes first.
    pub fn expect(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(TIMEOUT) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!("no line starting with {prefix:?}; saw {:?}", self.seen),
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        let s = self.stdin.as_mut().expect("stdin");
        writeln!(s, "{line}").unwrap();
        s.flush().unwrap();
    }

    /// Tells the target to check its state and asserts its verdict starts with `want` ("ok",
    /// "ok uid=0"...); the target then exits, successfully.
    pub fn verdict(&mut self, want: &str) -> String {
        self.send("check");
        let v = self.expect("");
        assert!(v.starts_with(want), "target says: {:?}", self.seen);
        assert!(self.wait().success(), "target failed after {v:?}");
        v
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a compiled target with extra args, in `dir`, and waits for its "ready" line.
pub fn start(name: &str, args: &[&str], dir: &Path) -> Proc {
    let mut c = Command::new(target(name));
    c.args(args).current_dir(dir);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    p
}

pub fn run(args: &[&str]) -> Output {
    let mut c = Command::new(crs());
    c.args(args);
    close_extra_fds(&mut c);
    c.output().expect("run crs")
}

/// Targets must hold only what the test gives them: fds the test harness (or whatever started
/// it) leaked would make ckpt refuse them. (And they start with SIGINT and SIGQUIT at their
/// defaults: a runner started in the background by a shell without job control ignores them,
/// and so would every target, which checks them.)
pub fn close_extra_fds(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: close_range and sigaction are async-signal-safe and touch only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            default_dispositions();
            Ok(())
        });
    }
}

/// SIGINT and SIGQUIT back at their defaults, in a child about to exec a target (see
/// [`close_extra_fds`]).
fn default_dispositions() {
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: sigaction with a zeroed struct (SIG_DFL, empty mask) only changes this
        // process's disposition of `sig`; it is async-signal-safe.
        unsafe {
            let dfl: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    }
}

/// Runs `crs ckpt ARGS`, asserting success.
pub fn ckpt(args: &[&str]) -> Output {
    let o = run(&[&["ckpt"], args].concat());
    assert!(o.status.success(), "ckpt {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Starts `crs rstrt ARGS` with piped stdio: the restored process's fds 0-2 are these pipes.
pub fn rstrt(args: &[&str]) -> Proc {
    let mut c = Command::new(crs());
    c.arg("rstrt").args(args);
    Proc::spawn(c)
}

/// A leave-running copy of a running process, the image going through a pipe: `rstrt
/// RSTRT_ARGS <(ckpt -o - PID)`, the copy's stdio being our pipes (its pid and tids are new,
/// the original keeps its own, unless --pidns). The copy ends when its stdin closes (`wait`).
pub fn copy_of(pid: i32, rstrt_args: &str) -> Proc {
    let mut c = Command::new("/bin/bash");
    let crs = crs();
    c.args(["-c", &format!("exec {crs} rstrt {rstrt_args} <({crs} ckpt -o - {pid})")]);
    Proc::spawn(c)
}

/// Whether process `pid` holds a userfaultfd or has memory registered with one.
pub fn tracked(pid: i32) -> bool {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let registered = smaps.lines().any(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw"));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let uffd =
        fds.flatten().any(|f| std::fs::read_link(f.path()).is_ok_and(|l| l.to_string_lossy().contains("userfaultfd")));
    registered || uffd
}

/// Kills a (non-child) pid with SIGKILL and waits until it is gone.
pub fn kill_wait(p: &mut Proc) {
    p.kill();
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Rewrites an image, letting `edit` change any section's payload (page batches are copied as
/// they are); checksums and the trailer are recomputed, as a forger would.
pub fn rewrite(bytes: &[u8], edit: impl Fn(crs::crf::Tag, Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    rewrite_each(bytes, |t, p| vec![edit(t, p)])
}

/// [`rewrite`], where `edit` gives each section's payloads: none drops it, several repeat it.
pub fn rewrite_each(bytes: &[u8], edit: impl Fn(crs::crf::Tag, Vec<u8>) -> Vec<Vec<u8>>) -> Vec<u8> {
    use crs::crf::{Reader, Tag, Writer, pages};
    let mut r = Reader::new(bytes).unwrap();
    let mut w = Writer::new(Vec::new()).unwrap();
    let mut buf = vec![0u8; pages::MAX_BATCH_PAGES * 4096];
    while let Some(s) = r.next_section().unwrap() {
        if s.tag == Tag::PAGES {
            let b = pages::read_batch_header(&mut r, &s).unwrap();
            let runs = b.runs.clone();
            let data = b.data(&mut r, &mut buf).unwrap().to_vec();
            pages::write_batch(&mut w, &runs, &data).unwrap();
            continue;
        }
        let p = r.payload(&s, "X").unwrap();
        for p in edit(s.tag, p) {
            w.section(s.tag, s.flags, &[&p]).unwrap();
        }
    }
    w.finish().unwrap().0
}

/// Waits for a line containing `needle` on the child's stderr, then keeps draining it (to our
/// stderr, tagged) so the child never blocks on a full pipe.
pub fn watch(child: &mut std::process::Child, needle: &str, tag: &'static str) -> Said {
    watch_or(child, needle, tag).unwrap_or_else(|before| panic!("{tag} never said {needle:?}, only {before:?}"))
}

/// [`watch`], or every line the child said before its stderr ended without `needle`.
pub fn watch_or(child: &mut std::process::Child, needle: &str, tag: &'static str) -> Result<Said, Vec<String>> {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let mut before = Vec::new();
    let first = lines.find_map(|l| match l {
        Ok(l) if l.contains(needle) => Some(l),
        Ok(l) => {
            before.push(l);
            None
        }
        Err(_) => None,
    });
    let Some(first) = first else { return Err(before) };
    let said = Said::default();
    said.0.lock().unwrap().push(first);
    let keep = said.clone();
    std::thread::spawn(move || {
        lines.map_while(Result::ok).for_each(|l| {
            eprintln!("[{tag}] {l}");
            keep.0.lock().unwrap().push(l);
        })
    });
    Ok(said)
}

/// A server started by `start(port)` on a free loopback port, once it says `needle` and holds a
/// socket listening there. The port is free when picked but may be taken (by another test's
/// connection) before the server binds it: a server that said "in use" and stopped, or that
/// listens nowhere soon after saying `needle` (inetd binds after it says "ADD" and only logs a
/// failure), is started again on another port.
pub fn on_free_port(needle: &str, tag: &'static str, start: impl Fn(u16) -> Command) -> (Reap, Said, u16) {
    let mut lost = Vec::new();
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c = start(port);
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        close_extra_fds(&mut c);
        let mut child = Reap(c.spawn().unwrap());
        match watch_or(&mut child.0, needle, tag) {
            Ok(said) => {
                let t0 = std::time::Instant::now();
                while t0.elapsed() < Duration::from_secs(2) {
                    if listens(child.0.id() as i32, port) {
                        return (child, said, port);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                lost.push(port);
            }
            Err(before) if before.iter().any(|l| l.contains("in use")) => lost.push(port),
            Err(before) => panic!("{tag} never said {needle:?}, only {before:?}"),
        }
    }
    panic!("{tag}: every free port picked was taken before it listened: {lost:?}")
}

/// A server started by `start(port)` on a free loopback port, once it holds a socket listening
/// there; its stdio is left as `start` set it. Started again on another port when it stops
/// before it listens (the port taken meanwhile, see [`on_free_port`]).
pub fn serving_on(tag: &str, start: impl Fn(u16) -> Command) -> (Reap, u16) {
    let mut lost = Vec::new();
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c = start(port);
        close_extra_fds(&mut c);
        let mut child = Reap(c.spawn().unwrap());
        let t0 = std::time::Instant::now();
        loop {
            if listens(child.0.id() as i32, port) {
                return (child, port);
            }
            if child.0.try_wait().unwrap().is_some() {
                lost.push(port);
                break;
            }
            assert!(t0.elapsed() < TIMEOUT, "{tag} never listened on port {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("{tag} stopped before it listened on each free port picked: {lost:?}")
}

/// Whether `pid` holds a TCP socket listening on `port` (of its network namespace).
pub fn listens(pid: i32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else { return false };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let here = f.get(1)?.ends_with(&format!(":{port:04X}")) && *f.get(3)? == "0A";
            let inode = f.get(9)?;
            here.then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str())))
}

/// What a watched program has said, from the line waited for on.
#[derive(Clone, Default)]
pub struct Said(pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Said {
    /// Waits (bounded) for a line containing `needle`.
    pub fn line(&self, needle: &str) -> String {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(t0.elapsed() < TIMEOUT, "never said {needle:?}: {:?}", self.0.lock().unwrap());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A process of a test that must not outlive it, even when the test fails.
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process a test restored (not its child): killed when the test ends, even when it fails.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

impl Said {
    /// Every line said so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Whether a test's prerequisite (root, a tool) is here. Without it the test is skipped when
/// run by hand, but fails under CI (CI=true), where .ci/run installs everything: a test that
/// cannot run must never pass there.
pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "prerequisite missing under CI: {what}");
        eprintln!("skipped: needs {what}");
    }
    ok
}

pub const NOBODY: &str = "65534";

/// A command run as nobody (uid and gid 65534, no supplementary groups), with no stray fds.
pub fn as_nobody(args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"]).args(args);
    close_extra_fds(&mut c);
    c
}

/// A fresh directory anyone may write (for files a test's unprivileged processes make).
pub fn open_dir(name: &str) -> TmpDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tmpdir(name);
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// The keyless protocol, by hand, as nobody: Hello, Options, Files (none), the image, End;
/// then Commit if restored.
/// Prints "restored PID" or "error CODE TEXT".
pub const NOBODY_CLIENT: &str = r#"
import os, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
def send(t, p): s.sendall(struct.pack("<BI", t, len(p)) + p)
def recv():
    h = b""
    while len(h) < 5:
        c = s.recv(5 - len(h))
        if not c: return None, b""
        h += c
    t, n = struct.unpack("<BI", h); p = b""
    while len(p) < n: p += s.recv(n - len(p))
    return t, p
def answer(t, p):
    if t == 10: print("error", struct.unpack("<I", p[:4])[0], p[4:].decode(errors="replace")); sys.exit()
send(1, b"CRSM" + struct.pack("<II", int(sys.argv[3]), 0) + os.urandom(32))
t, p = recv()
if t != 1: answer(t, p)
send(11, b"")
send(15, b"\0" * 8)
t, p = recv()
if t != 16: answer(t, p)
data = open(sys.argv[2], "rb").read()
try:
    for i in range(0, len(data), 1 << 20): send(4, data[i:i + (1 << 20)])
    send(5, b"")
except OSError: pass
t, p = recv()
if t != 6: answer(t, p); print("closed"); sys.exit()
send(7, b"")
t, p2 = recv()
print("restored", struct.unpack("<I", p)[0]) if t == 9 else answer(t, p2)
"#;

/// Sends `img` to the keyless restartd on `port` as nobody; its one line of answer.
pub fn nobody_sends(port: u16, img: &str) -> String {
    let o = as_nobody(&[
        "/usr/bin/python3",
        "-c",
        NOBODY_CLIENT,
        &port.to_string(),
        img,
        &crs::net::PROTOCOL_VERSION.to_string(),
    ])
    .output()
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(!out.is_empty(), "the client said nothing: {}", stderr(&o));
    out
}

/// MiB of Pss (each page shared by n processes counts 1/n in each) of `pids` together.
pub fn pss_mib(pids: &[i32]) -> u64 {
    let kib: u64 = pids
        .iter()
        .map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
            let line = s.lines().find(|l| l.starts_with("Pss:")).unwrap_or("Pss: 0 kB").to_string();
            line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum();
    kib / 1024
}

/// The pids of `pid`'s descendants (not itself).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>());
    for t in tasks.unwrap_or_default() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
            out.push(k);
            out.extend(descendants(k));
        }
    }
    out
}
