//! Open files, cwd and umask survive a checkpoint; rstrt refuses an image whose file shrank; ckpt
//! refuses (and leaves alone) a process holding a socket pair. The target
//! (tests/targets/files.c) verifies its own fds and reports one verdict line.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

/// support::start for this file's target.
fn start(args: &[&str], dir: &Path) -> support::Proc {
    support::start("files", args, dir)
}

/// A test directory: DIR/sub/data.txt holds "0123456789abcdef".
fn setup(name: &str) -> (support::TmpDir, PathBuf) {
    let dir = support::tmpdir(name);
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("data.txt"), "0123456789abcdef").unwrap();
    (dir, sub)
}

/// Starts the target on `dir`, checkpoints it with -k (asserting it died), returns the image.
fn checkpoint(dir: &Path) -> String {
    let img = dir.join("files.crf").to_str().unwrap().to_string();
    let mut p = start(&[dir.to_str().unwrap()], dir);
    support::ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    let st = p.wait();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "ckpt -k did not kill the target: {st:?}");
    img
}

/// Sends "check", asserts the verdict is ok and the target exits 0.
fn check(p: &mut support::Proc) {
    p.send("check");
    let verdict = p.expect("");
    assert!(verdict.starts_with("ok"), "target reported: {verdict:?} (saw {:?})", p.seen);
    let st = p.wait();
    assert!(st.success(), "target ended with {st:?}; saw {:?}", p.seen);
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn control_without_checkpoint() {
    let (dir, sub) = setup("files-control");
    let mut p = start(&[dir.to_str().unwrap()], &dir);
    check(&mut p);
    assert_eq!(read(&sub.join("log.txt")), "line1\nline2\n");
}

#[test]
fn open_files_cwd_and_umask_survive() {
    let (dir, sub) = setup("files-basic");
    let img = checkpoint(&dir);
    assert_eq!(read(&sub.join("log.txt")), "line1\n");
    let mut r = support::rstrt(&[&img]);
    check(&mut r);
    assert_eq!(read(&sub.join("log.txt")), "line1\nline2\n");
    assert_eq!(read(&sub.join("data.txt")), "0123456789abcdef");
}

#[test]
fn grown_log_is_appended_at_its_new_end() {
    let (dir, sub) = setup("files-grown");
    let img = checkpoint(&dir);
    let log = sub.join("log.txt");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"extra\n").unwrap();
    }
    let mut r = support::rstrt(&[&img]);
    check(&mut r);
    assert_eq!(read(&log), "line1\nextra\nline2\n");
}

#[test]
fn truncated_file_makes_rstrt_refuse() {
    let (dir, sub) = setup("files-truncated");
    let img = checkpoint(&dir);
    let data = sub.join("data.txt");
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(2).unwrap();

    let pidfile = dir.join("restored.pid");
    let o = support::run(&["rstrt", "--pidfile", pidfile.to_str().unwrap(), &img]);
    let err = support::stderr(&o);
    eprintln!("rstrt refused: {err}");
    assert_eq!(o.status.code(), Some(3), "rstrt should refuse (exit 3): {o:?}");
    assert_eq!(err.lines().count(), 1, "expected one line on stderr, got {err:?}");
    assert!(err.contains("data.txt"), "message does not name data.txt: {err:?}");
    // Nothing was restored: no output from the target, no pidfile, the log untouched.
    assert!(o.stdout.is_empty(), "something ran: {:?}", String::from_utf8_lossy(&o.stdout));
    assert!(!pidfile.exists(), "rstrt wrote a pidfile");
    assert_eq!(read(&sub.join("log.txt")), "line1\n");
    assert_eq!(read(&data), "01");
}

#[test]
fn a_socket_makes_ckpt_refuse_and_leave_the_process_alone() {
    let dir = support::tmpdir("files-socket");
    let mut p = start(&["socket"], &dir);
    let ready = p.seen.last().unwrap().clone();
    let fds: Vec<i32> = ready.split_whitespace().skip(1).map(|s| s.parse().unwrap()).collect();
    assert_eq!(fds.len(), 2, "ready line: {ready:?}");
    assert!(fds[0] >= 3 && fds[1] >= 3, "socket fds {fds:?} should be beyond stdio");

    let img = dir.join("socket.crf");
    let o = support::run(&["ckpt", "-k", "-o", img.to_str().unwrap(), &p.pid().to_string()]);
    let err = support::stderr(&o);
    eprintln!("ckpt refused: {err}");
    assert_eq!(o.status.code(), Some(3), "ckpt should refuse (exit 3): {o:?}");
    let fd = format!("fd {} is a unix stream socket connected to itself (fd {})", fds[0], fds[1]);
    assert!(err.contains(&fd), "message should say {fd:?}: {err:?}");
    assert!(!img.exists(), "a refused checkpoint left an image");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(leftovers.is_empty(), "a refused checkpoint left files: {leftovers:?}");

    // Not killed, not stopped, not traced: it still answers.
    p.send("ping");
    assert_eq!(p.expect(""), "pong", "saw {:?}", p.seen);
    let status = read(Path::new(&format!("/proc/{}/status", p.pid())));
    assert!(status.lines().any(|l| l == "TracerPid:\t0"), "still traced: {status}");
    p.send("ping");
    assert_eq!(p.expect(""), "pong", "saw {:?}", p.seen);
    assert!(p.wait().success());
}

/// A unix listener's socket file comes back with the permission bits the server gave it (a
/// database's 0777, for clients of every user), not the restorer's umask's; and what crfinfo
/// shows of it.
#[test]
fn a_unix_listeners_socket_file_keeps_its_mode() {
    let dir = support::tmpdir("unix-mode");
    let sock = dir.join("s.sock");
    let script = "import os, socket, sys, time\n\
                  s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n\
                  os.chmod(sys.argv[1], 0o777)\n\
                  print('ready', flush=True)\n\
                  while True:\n    c, _ = s.accept(); c.sendall(b'hello\\n'); c.close()\n";
    let mut c = std::process::Command::new("python3");
    c.args(["-c", script, sock.to_str().unwrap()]);
    let mut p = support::Proc::spawn(c);
    p.expect("ready");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&sock), 0o777);
    let img = dir.join("m.crf");
    support::ckpt(&["-o", img.to_str().unwrap(), &p.pid().to_string()]);
    let info = support::run(&["crfinfo", img.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("file mode 777"), "{info:?}");
    p.kill();
    std::fs::remove_file(&sock).unwrap();
    // (rstrt's umask would make it 0755.)
    let o = support::run(&["rstrt", "-d", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", support::stderr(&o));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let got = mode(&sock);
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut b = String::new();
    std::io::Read::read_to_string(&mut s, &mut b).unwrap();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(b, "hello\n");
    assert_eq!(got, 0o777, "the restored socket file's mode is {got:o}");
}

/// A restore whose unix socket's path another process listens on (the original, running
/// on) is refused without connecting to it: the listener sees no connection from it (it saw
/// one per attempt, which closed at once; a server may die of that).
#[test]
fn a_unix_listeners_path_in_use_is_refused_without_a_connection() {
    let dir = support::tmpdir("unix-in-use");
    let sock = dir.join("s.sock");
    let script = "import os, socket, sys\n\
                  s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n\
                  print('ready', flush=True)\n\
                  n = 0\n\
                  while True:\n    c, _ = s.accept(); n += 1; c.sendall(b'%d\\n' % n); c.close()\n";
    let mut c = std::process::Command::new("python3");
    c.args(["-c", script, sock.to_str().unwrap()]);
    let mut p = support::Proc::spawn(c);
    p.expect("ready");
    let nth = || {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let mut b = String::new();
        std::io::Read::read_to_string(&mut s, &mut b).unwrap();
        b.trim().to_string()
    };
    assert_eq!(nth(), "1");
    let img = dir.join("u.crf");
    support::ckpt(&["-o", img.to_str().unwrap(), &p.pid().to_string()]);
    for _ in 0..2 {
        let o = support::run(&["rstrt", "-d", img.to_str().unwrap()]);
        assert!(!o.status.success(), "restored beside the original");
        let err = support::stderr(&o);
        assert!(err.contains("Address already in use"), "{err}");
        // Who holds it is named.
        assert!(err.contains(&format!("pid {} ", p.pid())) && err.contains("listens on it"), "{err}");
    }
    assert_eq!(nth(), "2", "the refused restores connected to the original");
    p.kill();
}

/// Fds opened with O_PATH (a directory held to open files relative to, as rsync holds its
/// source, and dup'ed; a file held to stat it) come back O_PATH, on the same directory and file, and
/// work as they did: the restore once set their status flags after the open, which O_PATH
/// fds refuse (EBADF), and failed.
#[test]
fn o_path_fds_come_back_as_they_were() {
    let dir = support::tmpdir("o-path");
    std::fs::write(dir.join("x"), "in the directory\n").unwrap();
    let script = "import fcntl, os, sys\n\
                  d = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY); dd = os.dup(d)\n\
                  f = os.open(sys.argv[1] + '/x', os.O_PATH)\n\
                  print('ready', flush=True)\n\
                  for line in sys.stdin:\n\
                  \x20   both = all(fcntl.fcntl(n, fcntl.F_GETFL) & os.O_PATH for n in (d, dd, f))\n\
                  \x20   r = os.open('x', os.O_RDONLY, dir_fd=d)\n\
                  \x20   print('o_path', both, os.fstat(f).st_ino, os.read(r, 100).decode().strip(), flush=True)\n\
                  \x20   os.close(r)\n";
    let mut c = std::process::Command::new("python3");
    c.args(["-c", script, dir.to_str().unwrap()]);
    let mut p = support::Proc::spawn(c);
    p.expect("ready");
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(dir.join("x")).unwrap().ino();
    let want = format!("o_path True {ino} in the directory");
    p.send("check");
    assert_eq!(p.expect("o_path"), want);
    let img = dir.join("p.crf");
    support::ckpt(&["-k", "-o", img.to_str().unwrap(), &p.pid().to_string()]);
    let info = support::run(&["crfinfo", img.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("flags 0o10"), "{info:?}");
    let mut r = support::rstrt(&[img.to_str().unwrap()]);
    r.send("check");
    assert_eq!(r.expect("o_path"), want, "saw {:?}", r.seen);
    r.kill();
}

/// A file made with O_TMPFILE (never linked: a database's scratch file) comes back with its
/// content and offset, and one held by two fds (dup'ed) with one offset for both. Its fd's flags keep O_TMPFILE, which includes O_DIRECTORY: the
/// restore once opened the file it made again with them, and failed (ENOTDIR).
#[test]
fn an_o_tmpfile_file_comes_back_with_its_content() {
    let dir = support::tmpdir("o-tmpfile");
    let script = "import os, sys\n\
                  f = os.open(sys.argv[1], os.O_TMPFILE | os.O_RDWR, 0o600)\n\
                  g = os.open(sys.argv[1], os.O_TMPFILE | os.O_RDWR, 0o600); h = os.dup(g)\n\
                  os.write(f, b'scratch space'); os.lseek(f, 3, os.SEEK_SET)\n\
                  os.write(g, b'shared'); os.lseek(g, 2, os.SEEK_SET)\n\
                  print('ready', flush=True)\n\
                  for line in sys.stdin:\n\
                  \x20   link = os.readlink('/proc/self/fd/%d' % f)\n\
                  \x20   print('tmp', os.read(f, 100).decode(), '#' in link and link.endswith('(deleted)'), os.read(h, 2).decode(), os.read(g, 9).decode(), flush=True)\n";
    let mut c = std::process::Command::new("python3");
    c.args(["-c", script, dir.to_str().unwrap()]);
    let mut p = support::Proc::spawn(c);
    p.expect("ready");
    let img = dir.join("t.crf");
    support::ckpt(&["-k", "-o", img.to_str().unwrap(), &p.pid().to_string()]);
    let mut r = support::rstrt(&[img.to_str().unwrap()]);
    r.send("check");
    assert_eq!(r.expect("tmp"), "tmp atch space True ar ed", "saw {:?}", r.seen);
    r.kill();
}
