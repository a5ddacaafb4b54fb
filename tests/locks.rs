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
