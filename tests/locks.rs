//! File locks come back with the process: flock, POSIX record and OFD locks, each shared or
//! exclusive over its range (tests/targets/locks.c proves it: a child of the restored process
//! is refused every conflicting lock). A lock someone else took meanwhile fails the restore,
//! naming who holds it.

mod support;
use support::*;

#[test]
fn every_kind_of_lock_is_held_again() {
    let dir = tmpdir("locks");
    let d = dir.to_str().unwrap();
    let mut p = start("locks", &[], &dir);
    let img = format!("{d}/l.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    for want in ["flock write 0-EOF", "POSIX read 10-19", "POSIX write 100-EOF", "OFD write 0-9"] {
        assert!(info.contains(want), "lacks {want:?}: {info}");
    }
    rstrt(&[&img]).verdict("ok");
}

#[test]
fn a_lock_taken_meanwhile_fails_the_restore_naming_its_holder() {
    let dir = tmpdir("locks-taken");
    let d = dir.to_str().unwrap();
    let mut p = start("locks", &[], &dir);
    let img = format!("{d}/l.crf");
    ckpt(&["-o", &img, &p.pid().to_string()]);
    // The original still holds them.
    let o = run(&["rstrt", &img]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("lock on") && e.contains(&format!("is held by pid {}", p.pid())), "{e}");
    p.verdict("ok");
}

/// A restore that fails once the process and its threads exist (here, a lock the original
/// still holds) ends with its reason: a leader is reported dead only once its other threads
/// are, and those rstrt traces are its to reap (it used to wait for ever, more often the more
/// threads: python with 16 threads, 3 runs in 4).
#[test]
fn a_failed_restore_of_a_process_with_threads_ends_saying_why() {
    let dir = tmpdir("locks-threads");
    let lock = dir.join("lock");
    let script = "import fcntl, os, sys, threading, time\n\
                  f = open(sys.argv[1], 'a')\n\
                  fcntl.flock(f, fcntl.LOCK_EX)\n\
                  for _ in range(16): threading.Thread(target=lambda: time.sleep(1e6), daemon=True).start()\n\
                  print('ready', flush=True)\n\
                  while True: time.sleep(1)\n";
    let mut c = std::process::Command::new("python3");
    c.args(["-c", script, lock.to_str().unwrap()]);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let img = dir.join("t.crf");
    ckpt(&["-o", img.to_str().unwrap(), &p.pid().to_string()]);
    let mut r = std::process::Command::new(crs());
    r.args(["rstrt", img.to_str().unwrap()]).stderr(std::process::Stdio::piped());
    close_extra_fds(&mut r);
    let mut r = r.spawn().unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = r.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            let _ = r.kill();
            panic!("rstrt still runs 30 s after a restore that must fail");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut e = String::new();
    std::io::Read::read_to_string(&mut r.stderr.take().unwrap(), &mut e).unwrap();
    assert!(!status.success(), "{e}");
    assert!(e.contains("lock on") && e.contains(&format!("is held by pid {}", p.pid())), "{e}");
    p.kill();
}
