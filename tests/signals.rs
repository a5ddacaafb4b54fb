//! Signal state survives a checkpoint: handlers with SA_SIGINFO/SA_ONSTACK/SA_RESTART/
//! SA_NODEFER and their masks, an ignored signal, the blocked mask and the alternate stack; and
//! the interval timers that send signals (tests/targets/itimers.c) and POSIX timers
//! (tests/targets/ptimers.c). The
//! target (tests/targets/signals.c) verifies its own state and reports one verdict line.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// support::start for this file's target.
fn start(args: &[&str], dir: &Path) -> support::Proc {
    support::start("signals", args, dir)
}

/// Starts the target, checkpoints it with -k (asserting it died), returns the image path.
fn checkpoint(dir: &Path) -> String {
    checkpoint_with(&[], dir)
}

fn checkpoint_with(args: &[&str], dir: &Path) -> String {
    let img = dir.join("signals.crf").to_str().unwrap().to_string();
    let mut p = start(args, dir);
    support::ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    let st = p.wait();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "ckpt -k did not kill the target: {st:?}");
    img
}

/// Sends "check" and asserts on the handler's line and the verdict, then on the exit status.
fn check(r: &mut support::Proc) {
    r.send("check");
    let got = r.expect("got usr1");
    assert_eq!(got, "got usr1: ok", "SIGUSR1 handler reported a problem; saw {:?}", r.seen);
    let verdict = r.expect("");
    assert!(verdict.starts_with("ok"), "target reported: {verdict:?} (saw {:?})", r.seen);
    let st = r.wait();
    assert!(st.success(), "target ended with {st:?}; saw {:?}", r.seen);
}

/// Waits (bounded) for rstrt to write the pidfile, which it does once the restore is complete.
fn read_pidfile(path: &Path) -> i32 {
    let start = Instant::now();
    loop {
        // rstrt writes "PID\n": only a complete line counts.
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s.trim().parse().unwrap_or_else(|_| panic!("pidfile holds {s:?}"));
        }
        assert!(start.elapsed() < support::TIMEOUT, "rstrt never wrote {}", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn control_without_checkpoint() {
    let dir = support::tmpdir("signals-control");
    let mut p = start(&[], &dir);
    check(&mut p);
}

#[test]
fn handlers_masks_and_altstack_survive() {
    let dir = support::tmpdir("signals-state");
    let img = checkpoint(&dir);
    let mut r = support::rstrt(&[&img]);
    check(&mut r);
}

#[test]
fn no_alternate_stack_stays_none() {
    // rstrt itself has an alternate stack (Rust's, for stack overflows) that its child
    // inherits: a process that had none must not get it, or SA_ONSTACK runs on rstrt's.
    let dir = support::tmpdir("signals-noalt");
    let mut p = start(&["noalt"], &dir);
    check(&mut p);
    let img = checkpoint_with(&["noalt"], &dir);
    let mut r = support::rstrt(&[&img]);
    check(&mut r);
}

#[test]
fn memory_deny_write_execute_survives() {
    let dir = support::tmpdir("signals-mdwe");
    let mut p = start(&["mdwe"], &dir);
    if p.seen.iter().any(|l| l.contains("nomdwe")) {
        eprintln!("this kernel has no PR_SET_MDWE: nothing to test");
        return;
    }
    check(&mut p);
    // Its scratch area cannot be executable, so ckpt asks the signals one remote syscall each;
    // the restored process has MDWE again (and every signal state, which check verifies).
    let img = checkpoint_with(&["mdwe"], &dir);
    let info = support::run(&["crfinfo", &img]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("memory-deny-write-execute, flags 0x1"), "{text}");
    let mut r = support::rstrt(&[&img]);
    check(&mut r);
}

#[test]
fn signals_sent_during_a_checkpoint_are_held_and_delivered() {
    // A storm of SIGTRAP and SIGUSR2 from another process while ckpt freezes the target and
    // runs syscalls in it: a sent SIGTRAP is not a fault of ckpt's (ckpt used to fail on it),
    // and every kind of signal sent reaches the process once it runs on.
    let dir = support::tmpdir("signals-storm");
    let mut p = start(&["trap"], &dir);
    let pid = p.pid();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let storm = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: kill(2) with valid signal numbers.
                unsafe {
                    libc::kill(pid, libc::SIGTRAP);
                    libc::kill(pid, libc::SIGUSR2);
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let img = dir.join("storm.crf");
    for _ in 0..5 {
        let o = support::run(&["ckpt", "-o", img.to_str().unwrap(), &pid.to_string()]);
        assert!(o.status.success(), "ckpt failed under a storm of signals: {}", support::stderr(&o));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    storm.join().unwrap();
    assert!(sent.load(std::sync::atomic::Ordering::Relaxed) > 0);
    p.send("count");
    let c = p.expect("traps ");
    let n: Vec<u64> = c.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(n.len() == 2 && n[0] > 0 && n[1] > 0, "signals lost: {c}");
    check(&mut p);
    // The last image restores as well.
    let mut r = support::rstrt(&[img.to_str().unwrap()]);
    check(&mut r);
}

#[test]
fn a_blocked_or_ignored_sigtrap_is_left_as_it_was() {
    // ckpt's single steps would force SIGTRAP on the process: when it is blocked or ignored,
    // the kernel would reset its handler and unblock it. check compares every action and the
    // mask with what they were.
    for mode in ["trapblock", "trapign"] {
        let dir = support::tmpdir(&format!("signals-{mode}"));
        let mut p = start(&[mode], &dir);
        let img = dir.join("live.crf");
        support::ckpt(&["-o", img.to_str().unwrap(), &p.pid().to_string()]);
        check(&mut p);
        let img = checkpoint_with(&[mode], &dir);
        let mut r = support::rstrt(&[&img]);
        check(&mut r);
    }
}

#[test]
fn a_pending_signal_survives_with_its_siginfo() {
    let dir = support::tmpdir("signals-pending");
    let img = dir.join("pending.crf").to_str().unwrap().to_string();
    let mut p = start(&[], &dir);
    p.send("queue");
    assert_eq!(p.expect("queued"), "queued");
    support::ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.wait();
    let info = support::run(&["crfinfo", &img]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("pending:   signals [1]"), "{text}");
    // Still pending (SIGHUP is blocked) and still sent by sigqueue (SI_QUEUE, -1) with 42.
    let mut r = support::rstrt(&[&img]);
    r.send("take");
    assert_eq!(r.expect("took"), "took code -1 value 42", "saw {:?}", r.seen);
    check(&mut r);
}

#[test]
fn restored_process_handles_signal_from_outside() {
    let dir = support::tmpdir("signals-external");
    let img = checkpoint(&dir);
    let pidfile = dir.join("restored.pid");
    let mut r = support::rstrt(&["--pidfile", pidfile.to_str().unwrap(), &img]);
    let pid = read_pidfile(&pidfile);

    // The pidfile names the restored process itself (whatever pid it got).
    r.send("pid");
    assert_eq!(r.expect("pid "), format!("pid {pid}"), "saw {:?}", r.seen);

    // SAFETY: kill(2) with a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0, "kill {pid}");
    let got = r.expect("got usr1");
    assert_eq!(got, "got usr1: ok", "SIGUSR1 handler reported a problem; saw {:?}", r.seen);

    // It carries on normally after the interrupted read, and its state is still intact.
    check(&mut r);
}

/// Interval timers come back armed, with the time they had left, and keep firing.
#[test]
fn interval_timers_survive() {
    let dir = support::tmpdir("itimers");
    let d = dir.to_str().unwrap();
    let mut p = support::start("itimers", &[], &dir);
    let img = format!("{d}/t.crf");
    support::ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&support::run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("ITIMER_REAL in 0.0") && info.contains("every 0.020 s"), "{info}");
    let mut r = support::rstrt(&[&img]);
    r.verdict("ok");
}

/// POSIX timers (timer_create) come back under their own ids (a deleted one's stays free),
/// each with its clock, its signal and value (to the process or to one thread) or none, its
/// interval and the time it had left: the target checks them and that both periodic ones fire.
#[test]
fn posix_timers_keep_their_ids_and_fire_on() {
    use support::{ckpt, rstrt, run, tmpdir};
    let dir = tmpdir("ptimers");
    let d = dir.to_str().unwrap();
    let mut p = support::start("ptimers", &[], &dir);
    let img = format!("{d}/p.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert_eq!(info.lines().filter(|l| l.starts_with("ptimer:")).count(), 5, "{info}");
    assert!(info.contains("ptimer:    id 4 clock monotonic, signal 12 value 0x0, disarmed"), "{info}");
    assert!(info.contains("id 5 clock process CPU time, no signal"), "{info}");
    let mut r = rstrt(&["--require-pid", &img]);
    r.verdict("ok");
}

/// POSIX timers on the CPU clocks of threads (pthread_getcpuclockid) and of the process measure
/// the same threads' time after a restore: the target checks that the timer of its spinning
/// thread fires on and that of its sleeping thread does not. Restored as a copy beside the
/// original (new tids, which each clock is taken to; both check), with its own tids, and in a
/// pid namespace of its own.
#[test]
fn timers_on_threads_cpu_clocks_follow_their_threads() {
    use support::{ckpt, rstrt, run, tmpdir};
    let dir = tmpdir("cputimers");
    let d = dir.to_str().unwrap();
    let mut p = support::start("cputimers", &[], &dir);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let img = format!("{d}/c.crf");
    ckpt(&["-o", &img, &p.pid().to_string()]);
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    let on_threads = info.lines().filter(|l| l.contains("clock CPU time of thread ")).count();
    assert_eq!(on_threads, 2, "{info}");
    assert!(info.contains("id 2 clock process CPU time, no signal"), "{info}");
    // A copy, the original running on: every tid is another.
    let mut copy = rstrt(&[&img]);
    copy.verdict("ok");
    p.verdict("ok");
    let _ = p.child.wait();
    // With its own tids.
    let mut p = support::start("cputimers", &[], &dir);
    std::thread::sleep(std::time::Duration::from_millis(100));
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let mut r = rstrt(&["--require-pid", &img]);
    r.verdict("ok");
    if support::is_root() {
        let mut n = rstrt(&["--pidns", &img]);
        n.verdict("ok");
    }
}

/// Timer signals that fire while ckpt holds the process frozen (a real-time signal with a
/// value, from a timer, to one thread or another) reach it afterwards as they were sent: the
/// target's handlers check each one's si_code, timer id, value and thread. Forty checkpoints
/// of a process with timers every 20 and 30 ms: many fire during one.
#[test]
fn timer_signals_caught_during_a_freeze_keep_their_siginfo() {
    let dir = support::tmpdir("ptimers-storm");
    let d = dir.to_str().unwrap();
    let mut p = support::start("ptimers", &[], &dir);
    for _ in 0..40 {
        support::ckpt(&["-o", &format!("{d}/p.crf"), &p.pid().to_string()]);
    }
    p.verdict("ok");
}

/// A process stopped by a signal (SIGSTOP here: a SIGTSTP, as ^Z sends, is discarded in a
/// process group with no parent in another group of its session, as a CI runner's may be)
/// comes back stopped, its count where it was, and counts on once continued; the original,
/// let run on by a plain ckpt, stays stopped too. (It came back running.)
#[test]
fn a_stopped_process_comes_back_stopped() {
    let dir = support::tmpdir("stopped");
    let count = dir.join("count");
    let script = "import sys, time\n\
                  n = 0\n\
                  print('ready', flush=True)\n\
                  while True:\n    n += 1\n    open(sys.argv[1], 'w').write(str(n))\n    time.sleep(0.01)\n";
    let mut c = std::process::Command::new("python3");
    c.args(["-c", script, count.to_str().unwrap()]);
    let mut p = support::Proc::spawn(c);
    p.expect("ready");
    let pid = p.pid();
    let state = |pid: i32| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("gone").to_string()
    };
    let read = || std::fs::read_to_string(&count).unwrap_or_default();
    let stopped = |pid: i32| {
        let t0 = std::time::Instant::now();
        while state(pid) != "T" {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "pid {pid} is {}, not stopped", state(pid));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    stopped(pid);
    let at = read();
    let img = dir.join("s.crf");
    support::ckpt(&["-o", img.to_str().unwrap(), &pid.to_string()]);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(state(pid), "T", "the original runs on after a checkpoint of it stopped");
    p.kill();
    let o = support::run(&["rstrt", "-d", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", support::stderr(&o));
    let new: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let _new = support::KillOnDrop(new);
    stopped(new);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(read(), at, "the copy counted while it should be stopped");
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(new, libc::SIGCONT) };
    let t0 = std::time::Instant::now();
    while read() == at {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the copy did not count on after SIGCONT");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
