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

/// A real program nobody here wrote: CPython with two threads taking turns on the GIL and a
/// lock, each counting. After the restore, both count on.
#[test]
fn threaded_python_counts_on() {
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)") {
        return;
    }
    const SCRIPT: &str = r#"
import threading, time, sys
count = [0, 0]
lock = threading.Lock()
def spin(k):
    while True:
        with lock:
            count[k] += 1
        time.sleep(0.01)
for k in range(2):
    threading.Thread(target=spin, args=(k,), daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    with lock:
        a, b = count
    time.sleep(0.3)
    with lock:
        c, d = count
    print("progress", c > a and d > b, threading.active_count(), flush=True)
"#;
    let dir = tmpdir("threads-python");
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.args(["-c", SCRIPT]).current_dir(&dir);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    p.send("before");
    assert_eq!(p.expect("progress"), "progress True 3");
    let img = format!("{}/py.crf", dir.display());
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let mut r = rstrt(&["--require-pid", &img]);
    r.send("after");
    assert_eq!(r.expect("progress"), "progress True 3");
}

/// A thread that set its own scheduling (a nice value of its own) is refused by name: a
/// restore would give it its leader's.
#[test]
fn a_thread_with_its_own_nice_value_is_refused_by_name() {
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)") {
        return;
    }
    const SCRIPT: &str = r#"
import os, sys, threading
def nice():
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 7)
    print("ready", threading.get_native_id(), flush=True)
    sys.stdin.readline()
t = threading.Thread(target=nice)
t.start()
t.join()
"#;
    let dir = tmpdir("threads-nice");
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.args(["-c", SCRIPT]).current_dir(&dir);
    let mut p = Proc::spawn(c);
    let tid = p.expect("ready").trim_start_matches("ready ").to_string();
    let o = run(&["ckpt", "-k", "-o", &format!("{}/n.crf", dir.display()), &p.pid().to_string()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let want = format!("its thread {tid} (python3) has scheduling of its own (SCHED_OTHER nice 7");
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    // Refused, untouched: it finishes normally.
    p.send("done");
    assert!(p.wait().success());
}
