//! The event objects runtimes hold: pipes inside the process (with unread bytes), eventfds
//! (plain and semaphore), epoll sets with their 64-bit data, a thread blocked in epoll_wait,
//! timerfds (periodic, expired unread, absolute), a signalfd with a queued signal, inotify
//! watches and a FIFO with unread bytes (tests/targets/events.c checks them itself); and
//! Node.js, which holds most of them.

mod support;
use support::*;

#[test]
fn pipes_eventfds_and_epoll_sets_survive() {
    let dir = tmpdir("events");
    let d = dir.to_str().unwrap();
    // The image goes where the target's inotify watch on its directory does not see it made.
    std::fs::create_dir(dir.join("img")).unwrap();
    let mut p = start("events", &[], &dir);
    let img = format!("{d}/img/e.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("4 bytes unread"), "{info}");
    assert!(info.contains("data 0x1111222233334444"), "{info}");
    assert!(info.contains("clock boottime, disarmed, 1 expiries unread"), "{info}");
    assert!(info.contains("clock monotonic,") && info.contains("every 0.050000000 s"), "{info}");
    assert!(info.contains(&format!("wd 3 mask 0x2 {d}/watched")), "{info}");
    assert_eq!(info.matches(&format!(" pos 0 {d}/fifo")).count(), 2, "{info}");
    assert!(info.contains("fifo ino") && info.contains("capacity 65536, 5 bytes unread"), "{info}");
    // A damaged TIMERFDS or INOTIFY record (checksums redone) is refused as a bad image.
    let bytes = std::fs::read(&img).unwrap();
    use crs::res::image::tags;
    for (tag, at, value, want) in [
        (tags::TIMERFDS, 8, 3u32, "timerfd record for fd"), // the first record's clock
        (tags::INOTIFY, 12, 0u32, "watch 0 is not valid"),  // the first watch's wd
    ] {
        let bad = rewrite(&bytes, |t, mut p| {
            if t == tag {
                p[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            p
        });
        let path = dir.join("bad.crf");
        std::fs::write(&path, bad).unwrap();
        let o = run(&["rstrt", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    // A watched path gone by the restore is refused by name; back in place, it restores.
    std::fs::rename(dir.join("watched"), dir.join("away")).unwrap();
    let o = run(&["rstrt", &img]);
    assert!(!o.status.success(), "restored without its watched file");
    assert!(stderr(&o).contains("watch 3") && stderr(&o).contains("the watched path is gone"), "{}", stderr(&o));
    std::fs::rename(dir.join("away"), dir.join("watched")).unwrap();
    let mut r = rstrt(&["--require-pid", &img]);
    r.verdict("ok");
}

/// An epoll instance a parent and its child share since a fork (tests/targets/epollfork.c):
/// it comes back one instance, both processes' (a registration the child adds after the
/// restore is the parent's to see), with the registration of a pipe the child closed, which
/// the parent still has, and the child's own. One none of them has open at the fd it was
/// registered as is refused by name, and the target runs on.
#[test]
fn an_epoll_instance_shared_across_a_fork_comes_back_shared() {
    let dir = tmpdir("epollfork");
    let d = dir.to_str().unwrap();
    let mut p = start("epollfork", &[], &dir);
    let img = format!("{d}/e.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    let shared = info.lines().find(|l| l.starts_with("shared:") && l.contains("eventpoll")).unwrap_or_default();
    assert_eq!(shared.matches(" fd ").count(), 4, "{info}"); // each process's epoll fd and its dup
    // Each registration once, among the processes' EPOLL records.
    for data in ["0xa", "0xb", "0xc"] {
        assert_eq!(
            info.matches(&format!("data {data}]")).count() + info.matches(&format!("data {data},")).count(),
            1,
            "{info}"
        );
    }
    let mut r = rstrt(&["--pidns", &img]);
    r.verdict("ok");
    assert!(r.wait().success());

    let mut p = start("epollfork", &["moved"], &dir);
    let o = run(&["ckpt", "-k", "-o", &format!("{d}/moved.crf"), &p.pid().to_string()]);
    assert!(!o.status.success(), "checkpointed an epoll registration no fd holds");
    assert!(
        stderr(&o).contains("watches a file as fd") && stderr(&o).contains("no longer open at that number"),
        "{}",
        stderr(&o)
    );
    p.verdict("ok");
}

/// A real runtime nobody here wrote: Node.js (libuv: threads, epoll, eventfds, its own
/// pipes) ticking on a timer, with a worker thread posting numbered messages (checked in
/// order), answering on stdin, before and after: after a checkpoint and restore, and in a
/// leave-running copy (rstrt --pidns, which keeps V8's and libuv's threads' ids).
#[test]
fn node_ticks_on() {
    if !require(std::path::Path::new("/usr/bin/node").exists(), "node (apt install nodejs)") {
        return;
    }
    let dir = tmpdir("events-node");
    let mut c = std::process::Command::new("/usr/bin/node");
    let js = "const { Worker } = require('worker_threads'); let i = 0, msgs = 0, inorder = true; \
              const w = new Worker(\"const { parentPort } = require('worker_threads'); let n = 0; \
              setInterval(() => parentPort.postMessage(++n), 5);\", { eval: true }); \
              w.on('message', n => { if (n !== msgs + 1) inorder = false; msgs = n; }); \
              setInterval(() => { if (i++ == 3) console.log('ready') }, 5); \
              process.stdin.on('data', d => console.log('ticks', i, msgs, inorder))";
    c.args(["-e", js]).current_dir(&dir);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    // (its timer's ticks, the worker's messages), asserting the messages came in order.
    let ticks = |p: &mut Proc| -> (u64, u64) {
        p.send("?");
        let l = p.expect("ticks");
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w.get(3), Some(&"true"), "the worker's messages came out of order: {l}");
        (w[1].parse().expect("a count"), w[2].parse().expect("a count"))
    };
    // Both counts grow, within 5 s (both tick every 5 ms).
    let grows = |p: &mut Proc, from: (u64, u64)| {
        (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            let t = ticks(p);
            t.0 > from.0 && t.1 > from.1
        })
    };
    let before = ticks(&mut p);
    assert!(grows(&mut p, before), "node does not tick before any checkpoint");
    let mut copy = copy_of(p.pid(), "--pidns");
    let at = ticks(&mut copy);
    let copied = grows(&mut copy, at);
    drop(copy);
    assert!(copied, "the copy's timer or worker stopped");
    let before = ticks(&mut p);
    let img = format!("{}/n.crf", dir.display());
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let mut r = rstrt(&["--require-pid", &img]);
    let after = ticks(&mut r);
    assert!(after >= before, "the counts went back: {before:?} -> {after:?}");
    let grew = grows(&mut r, after);
    // Node runs on after rstrt is gone: it is ended here, whatever the verdict.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid()), nix::sys::signal::Signal::SIGKILL);
    assert!(grew, "node's timer or worker stopped after the restore");
}

/// A process whose fds come and go as crs looks at it (tests/targets/churn.c: an epoll set, an
/// eventfd and an inotify instance made and closed, their numbers taken again, without pause).
/// The look at the running process (the precheck of ckpt and migrate) passes over an fd closed,
/// or opened again as another file, while it looked: before, some 3 looks in 100 failed on it
/// ("/proc/PID/fdinfo/5: No such file"), and migrate with them. Leave-running checkpoints take
/// the frozen process's fds as they are; the last image restores: the main thread's epoll set
/// still fires, the churning thread runs on.
#[test]
fn fds_that_change_while_the_running_process_is_looked_at_are_passed_over() {
    let dir = tmpdir("churn");
    let d = dir.to_str().unwrap();
    std::fs::create_dir(dir.join("img")).unwrap();
    let mut p = start("churn", &[], &dir);
    let pid = p.pid();
    for i in 0..2000 {
        if let Err(e) = crs::check(pid, &crs::Flags::default()) {
            panic!("look {i} at the running process failed: {e}");
        }
    }
    let img = format!("{d}/img/c.crf");
    for _ in 0..20 {
        ckpt(&["-o", &img, &pid.to_string()]);
    }
    p.send("x");
    let before: u64 = p.expect("ok").split_whitespace().nth(1).unwrap().parse().unwrap();
    ckpt(&["-k", "-o", &img, &pid.to_string()]);
    p.kill();
    let mut r = rstrt(&[&img]);
    r.send("x");
    let at: u64 = r.expect("ok").split_whitespace().nth(1).unwrap().parse().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    r.send("x");
    let later: u64 = r.expect("ok").split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(before <= at && at < later, "rounds {before}, then {at} and {later} after the restore: {:?}", r.seen);
}
