//! Multi-threaded processes checkpoint and restart exactly: every thread with its own
//! registers, tid, name, signal mask, alternate stack, TLS and robust list, whether it was
//! waiting on a futex, sleeping or spinning (tests/targets/threads.c checks all of it itself).

mod support;
use support::*;

/// Checkpoints (killing) a threads target with `workers` workers, plus the four extras when
/// `sleep_ms` is given, its image in `dir`, and restores it with every tid.
fn round_trip(dir: &std::path::Path, workers: usize, sleep_ms: Option<&str>) -> Proc {
    round_trip_with(dir, workers, sleep_ms, |_| {})
}

/// [`round_trip`] with the rstrt command changed by `change`.
fn round_trip_with(
    dir: &std::path::Path,
    workers: usize,
    sleep_ms: Option<&str>,
    change: impl FnOnce(&mut std::process::Command),
) -> Proc {
    let d = dir.to_str().unwrap();
    let n = workers.to_string();
    let mut args = vec![n.as_str()];
    args.extend(sleep_ms);
    let mut p = start("threads", &args, dir);
    if sleep_ms.is_some() {
        // The extras have settled: the reader in read(), the sleeper in nanosleep().
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let img = format!("{d}/t.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    let extras = if sleep_ms.is_some() { 4 } else { 0 };
    assert_eq!(info.lines().filter(|l| l.starts_with("thread:")).count(), workers + 1 + extras, "{info}");
    assert!(info.contains("(worker-1)"), "{info}");
    // Its pid is free again (reaped above): every thread gets its own tid back.
    let mut c = std::process::Command::new(crs());
    c.args(["rstrt", "--require-pid", &img]);
    change(&mut c);
    Proc::spawn(c)
}

/// The issue's C program: 64 threads waiting, sleeping and spinning (with vector registers),
/// a mutex/condvar ping-pong, a reader blocked on a pipe, a sleeper, pthread_kill and join.
#[test]
fn threads_waiting_sleeping_and_spinning_survive() {
    round_trip(&tmpdir("threads"), 64, Some("1500")).verdict("ok");
}

/// Where a trap would change the process (rstrt runs with SIGTRAP ignored, which the child it
/// restores into inherits), the threads are made and set up one system call at a time, not
/// in one run each: the same process comes back all the same.
#[test]
fn threads_come_back_one_syscall_at_a_time_where_a_trap_would_show() {
    use std::os::unix::process::CommandExt;
    let ignore_trap = |c: &mut std::process::Command| {
        // SAFETY: signal() is async-signal-safe and changes only the child's own disposition.
        let ignore = || match unsafe { libc::signal(libc::SIGTRAP, libc::SIG_IGN) } {
            libc::SIG_ERR => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        };
        // SAFETY: the hook only calls signal(), as above.
        unsafe { c.pre_exec(ignore) };
    };
    round_trip_with(&tmpdir("threads-trapign"), 16, Some("1500"), ignore_trap).verdict("ok");
}

#[test]
fn two_hundred_fifty_six_threads_survive() {
    round_trip(&tmpdir("threads-256"), 256, None).verdict("ok");
}

/// A thread frozen 2 s into a 3 s nanosleep(&req, &rem) sleeps the second it had left after
/// the restore, not 3 s again: the target's verdict waits for it (main joins the sleeper).
#[test]
fn a_sleep_goes_on_for_the_time_it_had_left() {
    let dir = tmpdir("threads-sleep");
    let d = dir.to_str().unwrap();
    let mut p = start("threads", &["2", "3000"], &dir);
    std::thread::sleep(std::time::Duration::from_millis(2000));
    let img = format!("{d}/t.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let mut r = rstrt(&["--require-pid", &img]);
    let t = std::time::Instant::now();
    r.verdict("ok");
    let took = t.elapsed();
    // About 1 s left; starting over would take 3 s.
    assert!(took.as_millis() < 2000, "the sleep started over: the verdict took {took:?}");
    assert!(took.as_millis() >= 500, "the sleep was cut short: the verdict took {took:?}");
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
/// lock, each counting, a producer and a consumer on a queue.Queue (the consumer checks every
/// item comes once and in order) and a threading.Timer re-arming itself. After the restore, all
/// of them go on.
#[test]
fn threaded_python_counts_on() {
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)") {
        return;
    }
    const SCRIPT: &str = r#"
import queue, threading, time, sys
count = [0, 0]
lock = threading.Lock()
def spin(k):
    while True:
        with lock:
            count[k] += 1
        time.sleep(0.01)
for k in range(2):
    threading.Thread(target=spin, args=(k,), daemon=True).start()
q = queue.Queue(maxsize=8)
got = [0, True]
def produce():
    i = 0
    while True:
        i += 1
        q.put(i)
        time.sleep(0.002)
def consume():
    while True:
        v = q.get()
        if v != got[0] + 1:
            got[1] = False
        got[0] = v
threading.Thread(target=produce, daemon=True).start()
threading.Thread(target=consume, daemon=True).start()
ticks = [0]
def tick():
    ticks[0] += 1
    t = threading.Timer(0.02, tick)
    t.daemon = True
    t.start()
tick()
print("ready", flush=True)
for line in sys.stdin:
    with lock:
        a, b = count
    n, t = got[0], ticks[0]
    time.sleep(0.3)
    with lock:
        c, d = count
    print("progress", c > a and d > b, got[0] > n and got[1], ticks[0] > t, flush=True)
"#;
    let dir = tmpdir("threads-python");
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.args(["-c", SCRIPT]).current_dir(&dir);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    p.send("before");
    assert_eq!(p.expect("progress"), "progress True True True");
    // A leave-running copy (new pid, new tids) goes on, and so does the original.
    let mut copy = copy_of(p.pid(), "");
    copy.send("copy");
    assert_eq!(copy.expect("progress"), "progress True True True");
    assert!(copy.wait().success(), "the copy failed: {:?}", copy.seen);
    p.send("original");
    assert_eq!(p.expect("progress"), "progress True True True");
    let img = format!("{}/py.crf", dir.display());
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let mut r = rstrt(&["--require-pid", &img]);
    r.send("after");
    assert_eq!(r.expect("progress"), "progress True True True");
}

/// Threads with scheduling of their own (a nice value, a CPU affinity) get it back, each its
/// own, while the leader keeps its: Python reads them itself after the restore.
#[test]
fn each_threads_own_scheduling_survives() {
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)") {
        return;
    }
    const SCRIPT: &str = r#"
import os, sys, threading
def own(nice, cpus):
    me = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, me, nice)
    os.sched_setaffinity(me, cpus)
    print("ready", me, flush=True)
    sys.stdin.readline()
    print("state", os.getpriority(os.PRIO_PROCESS, me), sorted(os.sched_getaffinity(me)), flush=True)
a = threading.Thread(target=own, args=(7, {0}))
a.start()
a.join()
print("leader", os.getpriority(os.PRIO_PROCESS, 0), len(os.sched_getaffinity(0)) == os.cpu_count(), flush=True)
"#;
    let dir = tmpdir("threads-nice");
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.args(["-c", SCRIPT]).current_dir(&dir);
    let mut p = Proc::spawn(c);
    let tid = p.expect("ready").trim_start_matches("ready ").to_string();
    let img = format!("{}/n.crf", dir.display());
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains(&format!("tsched:    thread {tid}: SCHED_OTHER nice 7, CPUs 0,")), "{info}");
    let mut r = rstrt(&["--require-pid", &img]);
    r.send("go");
    assert_eq!(r.expect("state"), "state 7 [0]");
    assert_eq!(r.expect("leader"), "leader 0 True");
}

/// A leave-running copy restored in a pid namespace of its own (rstrt --pidns) gets its pid and
/// every tid back while the original runs on: both check their tids themselves. rstrt ends as
/// the copy ends, and forwards the signals it is sent.
#[test]
fn a_copy_in_its_own_pid_namespace_keeps_every_tid() {
    if !require(is_root(), "root (rstrt --pidns)") {
        return;
    }
    let dir = tmpdir("threads-pidns");
    let d = dir.to_str().unwrap();
    let mut p = start("threads", &["9", "300"], &dir);
    let img = format!("{d}/t.crf");
    ckpt(&["-o", &img, &p.pid().to_string()]);
    let mut r = rstrt(&["--pidns", "--require-pid", &img]);
    r.verdict("ok");
    p.verdict("ok");

    // SIGTERM to rstrt reaches the copy (threads.c does not catch it), and rstrt dies of it.
    let mut r = rstrt(&["--pidns", "--require-pid", &img]);
    let rstrt_pid = nix::unistd::Pid::from_raw(r.pid());
    nix::sys::signal::kill(rstrt_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    use std::os::unix::process::ExitStatusExt;
    // Its stdin stays open (Proc::wait would close it, and the copy would end of that).
    assert_eq!(r.child.wait().unwrap().signal(), Some(libc::SIGTERM));
}

/// Asks tests/targets/preempt.c for the signals its worker handled in 200 ms.
fn handled(p: &mut Proc, when: &str) -> u64 {
    p.send("progress");
    let l = p.expect("handled");
    l.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{when}: {l}"))
}

/// A signal on its way to a thread when the checkpoint freezes it (taken from the thread's
/// queue at its signal-delivery stop) goes in the image as queued to that thread, and the
/// restored thread queues it to itself (only it may: it came from tgkill): the worker of
/// tests/targets/preempt.c, sent one SIGURG at a time as Go's runtime preempts a thread, is
/// still sent them after the restore. Lost, the sender would wait for it for ever (and a Go
/// program under load starved its goroutines so).
#[test]
fn a_signal_on_its_way_to_a_thread_reaches_it_after_restore() {
    if !require(is_root(), "root (rstrt --pidns, which keeps the worker's tid)") {
        return;
    }
    let dir = tmpdir("preempt");
    let mut p = start("preempt", &[], &dir);
    let worker = p.seen.last().and_then(|l| l.split_whitespace().nth(1)).unwrap_or_default().to_string();
    assert!(handled(&mut p, "before") > 0);
    // Checkpoints while it runs on, until one froze the worker with a signal on its way.
    let mut caught = None;
    for i in 0..30 {
        let img = dir.join(format!("p{i}.crf")).to_str().unwrap().to_string();
        ckpt(&["-o", &img, &p.pid().to_string()]);
        // The process that ran on got it back.
        assert!(handled(&mut p, "after a checkpoint") > 0, "checkpoint {i}");
        let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
        let line =
            info.lines().find(|l| l.starts_with("thread:") && l.contains(&format!("tid {worker} "))).map(String::from);
        if line.is_some_and(|l| l.contains("1 signals pending")) {
            caught = Some(img);
            break;
        }
        std::fs::remove_file(&img).unwrap();
    }
    let img = caught.expect("none of 30 checkpoints carried a signal on its way to the worker (one taken from its queue while frozen goes in the image)");
    let mut copy = rstrt(&["--pidns", &img]);
    assert!(handled(&mut copy, "restored") > 0, "the signal caught on its way was lost");
    assert!(handled(&mut copy, "restored, again") > 0);
    copy.send("quit");
    assert!(copy.wait().success(), "{:?}", copy.seen);
}
