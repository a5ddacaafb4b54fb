//! A process crs cannot checkpoint is refused with every reason at once, and `ckpt --check`
//! lists them touching nothing. Proven on a target with a child holding a socket (the child is
//! in the checkpoint: its reason is named as its own; the pipe they share is no reason), a
//! lease on a file and a POSIX timer on another process's CPU clock, which runs on untouched.

mod support;
use support::*;

#[test]
fn every_reason_is_named_at_once_and_the_process_runs_on() {
    let dir = tmpdir("blockers");
    let d = dir.to_str().unwrap();
    let mut p = start("blocked", &[d], &dir);
    let pid = p.pid().to_string();
    let img = format!("{d}/x.crf");

    let o = run(&["ckpt", "-k", "-o", &img, &pid]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    for want in [
        "cannot be checkpointed, for 3 reasons",
        "its descendant pid ",
        "fd 5 is a netlink socket",
        "holds a lease (LEASE READ",
        "POSIX timer 0 is on another process's CPU clock (CPU time of pid ",
    ] {
        assert!(e.contains(want), "lacks {want:?}: {e}");
    }
    assert!(!std::path::Path::new(&img).exists(), "an image was left behind");

    let o = run(&["ckpt", "--check", &pid]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.starts_with(&format!("pid {pid}: "))), "{out}");

    // Untouched, twice over: it still answers.
    p.verdict("ok");
}

#[test]
fn check_says_when_a_process_can_be_checkpointed() {
    let dir = tmpdir("blockers-none");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "4"], &dir);
    let o = run(&["ckpt", "--check", &p.pid().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("pid {} can be checkpointed", p.pid()));
    p.verdict("ok");
}

/// The fds crs does not restore are each refused by name, before the process is touched: an
/// io_uring, a pidfd, a userfaultfd, a perf event, a fanotify instance (as root) and an inotify
/// instance with an event not yet read.
#[test]
fn each_fd_crs_cannot_restore_is_named() {
    let dir = tmpdir("blockers-fds");
    let d = dir.to_str().unwrap();
    let mut c = std::process::Command::new(target("unsupported"));
    c.arg(d).current_dir(&dir);
    let mut p = Proc::spawn(c);
    let ready = p.expect("ready");
    let fds: Vec<i32> = ready.split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
    let what = [
        "an io_uring instance",
        "a pidfd",
        "a userfaultfd",
        "a perf event",
        "a fanotify instance",
        "an inotify instance with 16 bytes of events not yet read",
    ];
    let o = run(&["ckpt", "-o", &format!("{d}/x.crf"), &p.pid().to_string()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    for (fd, w) in fds.iter().zip(what) {
        if *fd < 0 {
            assert!(!is_root(), "root could not make {w}");
            continue;
        }
        assert!(e.contains(&format!("fd {fd} is {w}")), "lacks fd {fd} as {w:?}: {e}");
    }
    p.verdict("ok");
}

/// A NUMA policy of a memory area (mbind), which crs does not restore, is refused whether the
/// process runs on after the checkpoint or not (without a look at it running first, --kill
/// reads numa_maps frozen), and the process keeps it. Python sets it (ctypes).
#[test]
fn a_numa_policy_of_an_area_is_refused_with_or_without_kill() {
    const MBIND: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
n = 1 << 20
a = libc.mmap(None, n, 3, 0x22, -1, 0)
node0 = ctypes.c_ulong(1)
# mbind(a, n, MPOL_BIND, {node 0}, 64, 0)
if libc.syscall(237, ctypes.c_void_p(a), ctypes.c_ulong(n), 2, ctypes.byref(node0), ctypes.c_ulong(64), 0) != 0:
    print("mbind failed, errno", ctypes.get_errno(), flush=True)
    sys.exit(1)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "check":
        # get_mempolicy(&mode, NULL, 0, a, MPOL_F_ADDR)
        mode = ctypes.c_int(-1)
        r = libc.syscall(239, ctypes.byref(mode), None, ctypes.c_ulong(0), ctypes.c_void_p(a), ctypes.c_ulong(2))
        print("ok" if r == 0 and mode.value == 2 else f"bad: mode {mode.value}, r {r}", flush=True)
        break
"#;
    let dir = tmpdir("blockers-numa");
    let d = dir.to_str().unwrap();
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.args(["-c", MBIND]).current_dir(&dir);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let pid = p.pid().to_string();
    let img = format!("{d}/x.crf");
    for kill in [false, true] {
        let args: Vec<&str> = if kill { vec!["ckpt", "-k", "-o", &img, &pid] } else { vec!["ckpt", "-o", &img, &pid] };
        let o = run(&args);
        assert_eq!(o.status.code(), Some(3), "kill {kill}: {}", stderr(&o));
        assert!(stderr(&o).contains("has a NUMA policy (mbind)"), "kill {kill}: {}", stderr(&o));
        assert!(!std::path::Path::new(&img).exists(), "an image was left behind");
    }
    p.verdict("ok");
}
