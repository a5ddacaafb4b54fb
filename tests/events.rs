//! The event objects runtimes hold: pipes inside the process (with unread bytes), eventfds
//! (plain and semaphore), epoll sets with their 64-bit data, a thread blocked in epoll_wait,
//! timerfds (periodic, expired unread, absolute), a signalfd with a queued signal and inotify
//! watches (tests/targets/events.c checks them itself); and Node.js, which holds most of them.

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

/// A real runtime nobody here wrote: Node.js (libuv: threads, epoll, eventfds, its own
/// pipes) ticking on a timer and answering on stdin, before and after.
#[test]
fn node_ticks_on() {
    if !require(std::path::Path::new("/usr/bin/node").exists(), "node (apt install nodejs)") {
        return;
    }
    let dir = tmpdir("events-node");
    let mut c = std::process::Command::new("/usr/bin/node");
    let js = "let i = 0; setInterval(() => { if (i++ == 3) console.log('ready') }, 5); \
              process.stdin.on('data', d => console.log('ticks', i))";
    c.args(["-e", js]).current_dir(&dir);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let ticks = |p: &mut Proc| -> u64 {
        p.send("?");
        p.expect("ticks").trim_start_matches("ticks ").parse().expect("a count")
    };
    let before = ticks(&mut p);
    let img = format!("{}/n.crf", dir.display());
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let mut r = rstrt(&["--require-pid", &img]);
    let after = ticks(&mut r);
    assert!(after >= before, "the count went back: {before} -> {after}");
    // Its timer goes on: the count grows (each answer takes a round trip, timers tick meanwhile).
    let grew = (0..200).any(|_| ticks(&mut r) > after);
    // Node runs on after rstrt is gone: it is ended here, whatever the verdict.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid()), nix::sys::signal::Signal::SIGKILL);
    assert!(grew, "node's timer stopped after the restore");
}
