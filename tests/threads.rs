//! Multi-threaded processes checkpoint and restart exactly: every thread with its own
//! registers, tid, name, signal mask, alternate stack, TLS and robust list, whether it was
//! waiting on a futex, sleeping or spinning (tests/targets/threads.c checks all of it itself).

mod support;
use support::*;

fn round_trip(name: &str, threads: usize) {
    let dir = tmpdir(name);
    let d = dir.to_str().unwrap();
    let n = threads.to_string();
    let mut p = start("threads", &[&n], &dir);
    let img = format!("{d}/t.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert_eq!(info.lines().filter(|l| l.starts_with("thread:")).count(), threads + 1, "{info}");
    assert!(info.contains("(worker-1)"), "{info}");
    // Its pid is free again (reaped above): every thread gets its own tid back.
    let mut r = rstrt(&["--require-pid", &img]);
    r.verdict("ok");
}

#[test]
fn threads_waiting_sleeping_and_spinning_survive() {
    round_trip("threads", 6);
}

#[test]
fn two_hundred_fifty_six_threads_survive() {
    round_trip("threads-256", 256);
}

/// The original runs on after a checkpoint of all its threads, none the wiser.
#[test]
fn a_threaded_process_runs_on_after_its_checkpoint() {
    let dir = tmpdir("threads-on");
    let d = dir.to_str().unwrap();
    let mut p = start("threads", &["9"], &dir);
    ckpt(&["-o", &format!("{d}/t.crf"), &p.pid().to_string()]);
    p.verdict("ok");
}
