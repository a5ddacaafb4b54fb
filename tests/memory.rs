//! Memory, mm layout, pid reuse, leave-running and pipe mode, proven by the memory target.

mod support;
use support::*;

#[test]
fn all_memory_survives_kill_and_restart() {
    let dir = tmpdir("mem-basic");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "64", "exe"], &dir);
    let pid = p.pid().to_string();
    let img = format!("{d}/m.crf");
    ckpt(&["-k", "-o", &img, &pid]);
    p.kill();
    let info = run(&["crfinfo", &img]);
    assert!(info.status.success(), "{}", stderr(&info));
    let mut r = rstrt(&[&img]);
    r.verdict("ok");
}

/// A process with transparent huge pages disabled and resource limits of its own comes back
/// with them (and one without, above, without: the target checks whichever it started with).
#[test]
fn transparent_huge_pages_and_resource_limits_survive() {
    let dir = tmpdir("mem-thp");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "8", "thp,rlim"], &dir);
    let img = format!("{d}/m.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = run(&["crfinfo", &img]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("transparent huge pages disabled"), "{text}");
    assert!(text.contains("nofile 64/4096"), "{text}");
    let mut r = rstrt(&[&img]);
    r.verdict("ok");
}

/// A process that maps more files than a restore opens at once gets each back where it was,
/// private and shared, with what the shared ones had written to their files.
#[test]
fn many_mapped_files_come_back() {
    let dir = tmpdir("mem-files");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "8", "files"], &dir);
    let img = format!("{d}/m.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let mut r = rstrt(&[&img]);
    r.verdict("ok");
}

#[test]
fn sparse_mapping_stores_only_touched_pages() {
    let dir = tmpdir("mem-sparse");
    let d = dir.to_str().unwrap();
    // 2 GiB mapped, one page in 256 touched: 8 MiB.
    let mut p = start("memory", &[d, "2048"], &dir);
    let img = format!("{d}/m.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let size = std::fs::metadata(&img).unwrap().len();
    assert!(size < 24 << 20, "image of a 2 GiB sparse process is {size} bytes");
    let mut r = rstrt(&[&img]);
    r.verdict("ok");
}

/// Pages a process only read (the shared zero page) are not stored, and read as zero after
/// the restore; the one it wrote among them comes back.
#[test]
fn pages_only_read_are_not_stored() {
    let dir = tmpdir("mem-zero");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "16", "zero"], &dir);
    let img = format!("{d}/m.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let size = std::fs::metadata(&img).unwrap().len();
    assert!(size < 24 << 20, "image of a process that read 64 MiB of zeros is {size} bytes");
    let mut r = rstrt(&[&img]);
    r.verdict("ok");
}

#[test]
fn original_and_copy_both_run_on() {
    let dir = tmpdir("mem-leave");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "16"], &dir);
    let img = format!("{d}/m.crf");
    ckpt(&["-o", &img, &p.pid().to_string()]);
    // The original keeps its pid, so the copy gets a new one, and says so.
    let mut c = std::process::Command::new(crs());
    c.args(["rstrt", &img]).stderr(std::process::Stdio::piped());
    let mut r = Proc::spawn(c);
    r.verdict("ok");
    p.verdict("ok");
    let mut err = String::new();
    use std::io::Read;
    r.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let pid = p.pid();
    assert!(err.contains(&format!("pid {pid} is in use by target-memory")), "rstrt stderr: {err}");
    assert!(
        err.contains("would keep it: rstrt --pidns, or a restartd started in one): restored pid"),
        "rstrt stderr: {err}"
    );
}

#[test]
fn pipe_mode_needs_no_file() {
    let dir = tmpdir("mem-pipe");
    let d = dir.to_str().unwrap();
    let p = start("memory", &[d, "16"], &dir);
    // ckpt streams to stdout, rstrt reads stdin; the restored process gets /dev/null as fd 0,
    // so it is told to go on by a signal-free path: its stdout reports, and it reads EOF.
    let script = format!("{} ckpt -k -o - {} | {} rstrt -", crs(), p.pid(), crs());
    let mut c = std::process::Command::new("sh");
    c.args(["-c", &script]);
    let mut r = Proc::spawn(c);
    // stdin of the restored process is /dev/null: fgets fails and the target says so.
    assert_eq!(r.expect("FAIL"), "FAIL: stdin closed", "{:?}", r.seen);
    r.wait();
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".crf")));
}

#[test]
fn foreground_rstrt_forwards_signals_and_dies_like_the_process() {
    let dir = tmpdir("mem-fg");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "8"], &dir);
    let img = format!("{d}/m.crf");
    let pidfile = format!("{d}/pid");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let mut r = rstrt(&["--pidfile", &pidfile, &img]);
    // The pid file appears once the process runs: wait for that fact, bounded.
    let t0 = std::time::Instant::now();
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.strip_suffix('\n')?.parse().ok()) {
            break pid;
        }
        assert!(t0.elapsed() < TIMEOUT, "no pid file");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    // SIGTERM to rstrt (as from kill(1)) reaches the process, which dies of it; so does rstrt.
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(r.pid(), libc::SIGTERM) };
    // Keep its stdin open: EOF would end the target by another way.
    let st = r.child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGTERM), "rstrt status {st:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/status")).exists() || {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            s.contains("zombie") || !s.contains("target-memory")
        },
        "restored process {pid} still runs"
    );
}

#[test]
fn ckpt_stop_leaves_the_process_stopped() {
    let dir = tmpdir("mem-stop");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "8"], &dir);
    let img = format!("{d}/m.crf");
    ckpt(&["--stop", "-o", &img, &p.pid().to_string()]);
    let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    assert!(st.contains("State:\tT (stopped)"), "{st}");
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(p.pid(), libc::SIGCONT) };
    p.verdict("ok");
}

/// ckpt killed while it writes the image (a reader that stalls, then SIGKILL, an OOM kill) must
/// leave the process running on as before.
#[test]
fn a_ckpt_killed_mid_image_leaves_the_process_intact() {
    let dir = tmpdir("mem-killed");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "64"], &dir);
    let mut c = std::process::Command::new(crs());
    c.args(["ckpt", "-o", "-", &p.pid().to_string()]).stdout(std::process::Stdio::piped());
    close_extra_fds(&mut c);
    let mut ck = c.spawn().unwrap();
    // Nobody reads its stdout: it blocks once the pipe is full. Wait for that fact.
    let t0 = std::time::Instant::now();
    loop {
        let w = std::fs::read_to_string(format!("/proc/{}/wchan", ck.id())).unwrap_or_default();
        if w.contains("pipe_write") || w.contains("pipe_wait") {
            break;
        }
        assert!(t0.elapsed() < TIMEOUT, "ckpt never blocked on its pipe (wchan {w})");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    ck.kill().unwrap();
    ck.wait().unwrap();
    p.verdict("ok");
}

/// `rstrt --lazy` and what its `-v` line says: (pages touched first, forks followed).
fn lazy_rstrt(img: &str) -> (Proc, impl FnOnce(&mut Proc) -> (u64, u64)) {
    let mut c = std::process::Command::new(crs());
    c.args(["rstrt", "--lazy", "-v", img]).stderr(std::process::Stdio::piped());
    let p = Proc::spawn(c);
    let finish = |p: &mut Proc| {
        let st = p.wait();
        let mut err = String::new();
        use std::io::Read;
        p.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(st.success(), "rstrt --lazy: {st}: {err}");
        let line = err.lines().find(|l| l.contains("every page in after")).unwrap_or_else(|| panic!("{err}"));
        let n = |after: &str| -> u64 {
            let at = line.find(after).unwrap_or_else(|| panic!("{line}"));
            line[..at].split([' ', ',', ':']).rfind(|w| !w.is_empty()).unwrap().parse().unwrap()
        };
        (n(" touched first"), n(" forks followed"))
    };
    (p, finish)
}

/// The lazy target holding `mib` MiB, checkpointed (killed) to an image in a new directory
/// `name`: the directory and the image.
fn lazy_image(name: &str, mib: &str) -> (TmpDir, String) {
    let dir = tmpdir(name);
    let mut p = start("lazy", &[mib], &dir);
    let img = format!("{}/l.crf", dir.to_str().unwrap());
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    (dir, img)
}

/// `rstrt --lazy img` of a damaged image, the process told to go: how rstrt ended, what it
/// said, and what the process said.
fn lazy_rstrt_damaged(img: &str) -> (std::process::ExitStatus, String, Vec<String>) {
    let mut c = std::process::Command::new(crs());
    c.args(["rstrt", "--lazy", img]).stderr(std::process::Stdio::piped());
    let mut r = Proc::spawn(c);
    r.send("go");
    let st = r.wait();
    let mut err = String::new();
    use std::io::Read;
    r.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (st, err, r.seen.clone())
}

/// rstrt --lazy: the process runs before its pages are in, and does at once what a process
/// may do to its memory (fork, mremap, MADV_DONTNEED, munmap and mmap, system calls that read
/// and write it, two threads reading): its own checks, and its child's, find every byte as it
/// was, or zero where it dropped them.
#[test]
fn lazy_restore_serves_pages_while_the_process_runs() {
    if !require(is_root(), "root (rstrt --lazy)") {
        return;
    }
    let (_dir, img) = lazy_image("mem-lazy", "512");
    let (mut r, finish) = lazy_rstrt(&img);
    r.send("go");
    assert_eq!(r.expect(""), "ok", "{:?}", r.seen);
    r.send("end");
    let (touched, forks) = finish(&mut r);
    assert!(touched > 0, "no page was brought in by a fault: the restore was not lazy");
    assert_eq!(forks, 1, "the fork was not followed");
}

/// A page batch damaged in the image is found when a lazy restore reads it, after the process
/// ran: the process is killed rather than left to run on without those pages, and rstrt says
/// which batch. Without --lazy the same image is refused before anything runs.
#[test]
fn lazy_restore_kills_the_process_when_a_page_batch_is_damaged() {
    if !require(is_root(), "root (rstrt --lazy)") {
        return;
    }
    let (_dir, img) = lazy_image("mem-lazy-bad", "64");
    let mut b = std::fs::read(&img).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&img, &b).unwrap();
    let (st, err, seen) = lazy_rstrt_damaged(&img);
    assert!(!st.success(), "rstrt --lazy of a damaged image succeeded: {err}");
    assert!(err.contains("PAGES section checksum mismatch"), "{err}");
    assert!(!seen.iter().any(|l| l == "ok"), "the process ran on: {seen:?}");
    let o = run(&["rstrt", &img]);
    assert!(!o.status.success() && stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
}

/// A lazy restore passes over the page batches a PAGEPLAN announces without reading them,
/// and reads each one when it serves it: a batch whose run table was changed is found then
/// (the process killed, rstrt naming the plan), where a restore that reads it first refuses
/// the image before anything runs. An image without a plan (as crs wrote before CRF 8)
/// restores lazily as well, every page as it was.
#[test]
fn lazy_restore_passes_over_the_planned_batches_and_checks_each_when_served() {
    if !require(is_root(), "root (rstrt --lazy)") {
        return;
    }
    use crs::crf::{Reader, Tag};
    let (dir, img) = lazy_image("mem-lazy-plan", "64");
    let d = dir.to_str().unwrap();
    let bytes = std::fs::read(&img).unwrap();
    // The image's sections: (tag, offset of the payload).
    let mut r = Reader::new(&bytes[..]).unwrap();
    let mut secs = Vec::new();
    while let Some(s) = r.next_section().unwrap() {
        secs.push((s.tag, s.offset));
        r.skip(&s).unwrap();
    }
    assert_eq!(secs.iter().filter(|s| s.0 == Tag::PAGEPLAN).count(), 1, "no PAGEPLAN in {img}");
    let unplanned = format!("{d}/unplanned.crf");
    let without = rewrite_each(&bytes, |t, p| if t == Tag::PAGEPLAN { vec![] } else { vec![p] });
    std::fs::write(&unplanned, without).unwrap();
    let (mut r, finish) = lazy_rstrt(&unplanned);
    r.send("go");
    assert_eq!(r.expect(""), "ok", "{:?}", r.seen);
    r.send("end");
    assert!(finish(&mut r).0 > 0, "no page was brought in by a fault: the restore was not lazy");
    // The middle batch's first run, a page further on.
    let batches: Vec<_> = secs.iter().filter(|s| s.0 == Tag::PAGES).collect();
    let mid = batches[batches.len() / 2];
    let mut b = bytes.clone();
    b[mid.1 as usize + 9] ^= 0x10;
    let damaged = format!("{d}/damaged.crf");
    std::fs::write(&damaged, &b).unwrap();
    let o = run(&["rstrt", "-d", &damaged]);
    assert!(!o.status.success() && o.stdout.is_empty(), "rstrt took {damaged}: {}", stderr(&o));
    let (st, err, seen) = lazy_rstrt_damaged(&damaged);
    // Found once the process ran (exit 4), not before.
    assert_eq!(st.code(), Some(4), "rstrt --lazy of a damaged image: {err}");
    assert!(err.contains("not the one the PAGEPLAN announced"), "{err}");
    assert!(!seen.iter().any(|l| l == "ok"), "the process ran on: {seen:?}");
}

/// rstrt --lazy needs a file it can read pages from later, and root: each refusal says so.
#[test]
fn lazy_restore_refuses_a_pipe_and_an_ordinary_user() {
    let o = run(&["rstrt", "--lazy", "-"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("give a file, not \"-\""), "{}", stderr(&o));
    if !require(is_root(), "root (to try as nobody)") {
        return;
    }
    let dir = open_dir("mem-lazy-user");
    let img = dir.join("none.crf");
    std::fs::write(&img, b"CRF").unwrap();
    let o = as_nobody(&[crs(), "rstrt", "--lazy", img.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("rstrt --lazy cannot work here: only root may"), "{}", stderr(&o));
}

/// The writer target (tests/targets/writer.c): 64 MiB written at `rate` MB/s, pages dropped
/// and an area mapped afresh now and then; each page checked on SIGUSR1. Returns it, its log
/// and its pid.
fn writer(dir: &std::path::Path, rate: &str) -> (std::process::Child, std::path::PathBuf, i32) {
    writer_with(dir, rate, "churn")
}

fn writer_with(dir: &std::path::Path, rate: &str, mode: &str) -> (std::process::Child, std::path::PathBuf, i32) {
    let log = dir.join("log");
    let mut c = std::process::Command::new(target("writer"));
    c.args([log.to_str().unwrap(), "64", rate, mode]);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    close_extra_fds(&mut c);
    let child = c.spawn().unwrap();
    let l = support::nodes::log_line(&log, "ready", 0);
    (child, log, l.split_whitespace().nth(1).unwrap().parse().unwrap())
}

/// Restores `img` detached, with `args` (`-` with `stdin` from a file: read as a stream, as from a pipe), and
/// checks every page of the writer it holds; returns the new pid and what rstrt said.
fn restore_writer(img: &str, args: &[&str], stdin: Option<std::fs::File>, log: &std::path::Path) -> (i32, String) {
    let mut c = std::process::Command::new(crs());
    c.args(["rstrt", "-d"]).args(args).arg(if stdin.is_some() { "-" } else { img });
    if let Some(f) = stdin {
        c.stdin(f);
    }
    close_extra_fds(&mut c);
    let o = c.output().unwrap();
    assert!(o.status.success(), "rstrt {img}: {}", stderr(&o));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let v = support::nodes::check(pid, log);
    assert!(v.starts_with("ok") && v.contains(&format!("pid {pid}")), "restored: {v}");
    (pid, stderr(&o))
}

fn kill_pid(pid: i32) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The pages ckpt -v says the image holds of what the processes were frozen for.
fn frozen_pages(err: &str) -> u64 {
    let n = err.split(" pages, image").next().and_then(|s| s.rsplit(' ').next());
    n.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{err}"))
}

/// A checkpoint of a process that runs on copies its memory while it writes it, and freezes
/// it only for what it wrote since: the frozen part of the image is a small part of its
/// memory; the process runs on with nothing of the tracking left; the image, restored from a
/// file, as a stream (rstrt -) and lazily, holds every page as the process last wrote it (pages it dropped
/// read as zero, an area it mapped afresh holds what it wrote there since).
#[test]
fn a_running_checkpoint_copies_the_memory_while_the_process_writes_it() {
    let dir = tmpdir("mem-running");
    let (mut w, log, pid) = writer(&dir, "20");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let img = dir.join("r.crf");
    let img = img.to_str().unwrap();
    let o = ckpt(&["-v", "-o", img, &pid.to_string()]);
    let err = stderr(&o);
    if !require(!err.contains("Linux 6.7+"), "write tracking (Linux 6.7+)") {
        w.kill().unwrap();
        return;
    }
    assert!(err.contains("copied while it ran, "), "-v says no round: {err}");
    let frozen_pages = frozen_pages(&err);
    assert!(frozen_pages < 4096, "the frozen part carried {frozen_pages} pages of a 64 MiB process: {err}");
    // The original runs on as it was.
    let v = support::nodes::check(pid, &log);
    assert!(v.starts_with("ok") && v.contains(&format!("pid {pid}")), "after the checkpoint: {v}");
    assert!(!tracked(pid), "the process is left tracked");
    let info = run(&["crfinfo", img]);
    assert!(info.status.success(), "{}", stderr(&info));
    let out = String::from_utf8_lossy(&info.stdout);
    assert!(out.contains("ahead:") && out.contains("copied while the process ran"), "{out}");
    w.kill().unwrap();
    w.wait().unwrap();
    let (new, _) = restore_writer(img, &[], None, &log);
    assert!(!tracked(new), "the restored process is tracked");
    kill_pid(new);
    let (new, _) = restore_writer(img, &[], Some(std::fs::File::open(img).unwrap()), &log);
    kill_pid(new);
    // Lazily: the pages copied while it ran stay in the image until it touches them (or the
    // background copies them): most of its 64 MiB.
    if is_root() {
        let (new, said) = restore_writer(img, &["--lazy", "-v"], None, &log);
        let served: u64 = said
            .split("every page in after ")
            .nth(1)
            .map(|l| {
                let n =
                    |w: &str| l.split(w).next().and_then(|x| x.rsplit(' ').next()).and_then(|x| x.parse::<u64>().ok());
                n(" touched first").unwrap_or(0) + n(" copied in the background").unwrap_or(0)
            })
            .unwrap_or_else(|| panic!("rstrt --lazy -v: {said}"));
        assert!(served > 12000, "only {served} pages came lazily: {said}");
        kill_pid(new);
    }
}

/// Restores the writer tree of `img` (the writer and its child) detached, with `args` (`-`:
/// the image from `stdin`, a stream); checks every page of both; returns the new pids.
fn restore_writers(img: &str, args: &[&str], stdin: Option<std::fs::File>, log: &std::path::Path) -> (i32, i32) {
    let (new, _) = restore_writer(img, args, stdin, log);
    let kids = std::fs::read_to_string(format!("/proc/{new}/task/{new}/children")).unwrap();
    let kid: i32 = kids.trim().parse().unwrap_or_else(|_| panic!("children of {new}: {kids:?}"));
    let v = support::nodes::check(kid, log);
    assert!(v.starts_with("ok") && v.contains(&format!("pid {kid}")), "restored child: {v}");
    assert!(!tracked(new) && !tracked(kid), "a restored process is tracked");
    (new, kid)
}

/// writer.c in `mode` at `rate` MB/s and the child it forks, checkpointed with -v into
/// DIR/t.crf while they run, which -v says of both.
struct RunningTree {
    w: std::process::Child,
    log: std::path::PathBuf,
    pid: i32,
    kid: i32,
    img: String,
    err: String,
}

/// [`RunningTree`]; None (the writer gone) when the kernel cannot track writes.
fn running_tree(dir: &std::path::Path, rate: &str, mode: &str) -> Option<RunningTree> {
    let (mut w, log, pid) = writer_with(dir, rate, mode);
    let kid: i32 = support::nodes::log_line(&log, "forked", 0).split_whitespace().nth(1).unwrap().parse().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let img = dir.join("t.crf").to_str().unwrap().to_string();
    let o = ckpt(&["-v", "-o", &img, &pid.to_string()]);
    let err = stderr(&o);
    if !require(!err.contains("Linux 6.7+"), "write tracking (Linux 6.7+)") {
        w.kill().unwrap();
        return None;
    }
    assert!(err.contains(&format!("copied while they ran: the memory of pids {pid}, {kid}")), "{err}");
    Some(RunningTree { w, log, pid, kid, img, err })
}

/// Each of `pids` answers its check as itself after the checkpoint, untracked.
fn ran_on(pids: &[i32], log: &std::path::Path) {
    for &p in pids {
        let v = support::nodes::check(p, log);
        assert!(v.starts_with("ok") && v.contains(&format!("pid {p}")), "after the checkpoint: {v}");
        assert!(!tracked(p), "pid {p} is left tracked");
    }
}

/// A running checkpoint of a tree whose processes hold their own memory copies the memory of
/// each while they write it (PREMEMBER sections say whose), and freezes them only for what
/// they wrote since; restored from a file, as a stream and lazily, each process checks every
/// page. A tree that shares most of its memory since a fork is copied while it runs too, and
/// what the processes share is stored once and shared again after the restore.
#[test]
fn a_running_checkpoint_copies_a_trees_memory_while_it_writes_it() {
    let dir = tmpdir("mem-running-tree");
    let Some(RunningTree { mut w, log, pid, kid, img, err }) = running_tree(&dir, "10", "fork") else { return };
    let img = img.as_str();
    let frozen = frozen_pages(&err);
    assert!(frozen < 8192, "the frozen part carried {frozen} pages of two 64 MiB processes: {err}");
    ran_on(&[pid, kid], &log);
    let info = run(&["crfinfo", img]);
    assert!(info.status.success(), "{}", stderr(&info));
    let out = String::from_utf8_lossy(&info.stdout);
    for p in [pid, kid] {
        assert!(out.contains(&format!("ahead:     pid {p}: ")), "{out}");
    }
    w.kill().unwrap();
    w.wait().unwrap();
    kill_pid(kid);
    let (new, kid2) = restore_writers(img, &[], None, &log);
    kill_pid(new);
    kill_pid(kid2);
    let (new, kid2) = restore_writers(img, &[], Some(std::fs::File::open(img).unwrap()), &log);
    kill_pid(new);
    kill_pid(kid2);
    if is_root() {
        let (new, kid2) = restore_writers(img, &["--lazy"], None, &log);
        kill_pid(new);
        kill_pid(kid2);
    }

    // Most of its memory shared with its child since the fork: copied while they run too,
    // the child's pages that are still the parent's stored once, as the parent's; restored,
    // the two share them again.
    let dir = tmpdir("mem-running-cow");
    let Some(RunningTree { mut w, log, kid, img, err, .. }) = running_tree(&dir, "1", "cow") else { return };
    let img = img.as_str();
    let frozen = frozen_pages(&err);
    assert!(frozen < 8192, "the frozen part carried {frozen} pages of two 64 MiB processes: {err}");
    let size = std::fs::metadata(img).unwrap().len();
    assert!(size < 100 << 20, "the image of two processes sharing 64 MiB takes {size} bytes: {err}");
    w.kill().unwrap();
    w.wait().unwrap();
    kill_pid(kid);
    let stream = || Some(std::fs::File::open(img).unwrap());
    let mut ways: Vec<(&[&str], Option<std::fs::File>)> = vec![(&[], None), (&[], stream())];
    if is_root() {
        ways.push((&["--lazy"], None));
    }
    for (args, stdin) in ways {
        let piped = stdin.is_some();
        let (new, kid2) = restore_writers(img, args, stdin, &log);
        let pss = pss_mib(&[new, kid2]);
        kill_pid(new);
        kill_pid(kid2);
        assert!(pss < 100, "restored ({args:?}, from a stream: {piped}), the two take {pss} MiB: not shared");
    }
}

/// A running checkpoint of a tree whose processes write MAP_SHARED anonymous memory they both
/// map (writer.c "shm") copies that memory too while they write it (PRESHM), by content, and
/// freezes them only for what changed since; restored from a file, as a stream and lazily,
/// each finds its pages as it wrote them.
#[test]
fn a_running_checkpoint_copies_the_memory_a_tree_shares_while_it_writes_it() {
    let dir = tmpdir("mem-running-shm");
    let Some(RunningTree { mut w, log, pid, kid, img, err }) = running_tree(&dir, "10", "shm") else { return };
    let img = img.as_str();
    // (The 64 MiB they share alone are 16384 pages.)
    let frozen = frozen_pages(&err);
    assert!(frozen < 8192, "the frozen part carried {frozen} pages of a tree sharing 64 MiB: {err}");
    ran_on(&[pid, kid], &log);
    let info = run(&["crfinfo", img]);
    assert!(info.status.success(), "{}", stderr(&info));
    let out = String::from_utf8_lossy(&info.stdout);
    assert!(out.contains("of the tree's shared memory copied while it ran"), "{out}");
    w.kill().unwrap();
    w.wait().unwrap();
    kill_pid(kid);
    let stream = || Some(std::fs::File::open(img).unwrap());
    let mut ways: Vec<(&[&str], Option<std::fs::File>)> = vec![(&[], None), (&[], stream())];
    if is_root() {
        ways.push((&["--lazy"], None));
    }
    for (args, stdin) in ways {
        let (new, kid2) = restore_writers(img, args, stdin, &log);
        kill_pid(new);
        kill_pid(kid2);
    }
}

/// A checkpoint of a process that runs on takes the mappings' flags from a look just before
/// the freeze (frozen, smaps would walk all of its page tables), and compares them with the
/// frozen process's own before the image ends: a process that flips the flags of a whole
/// mapping (madvise) all the time is caught doing it between the two; the checkpoint fails by
/// name and leaves no image (through a pipe, a stream without its end, which a reader
/// refuses), and the process runs on, untracked.
#[test]
fn mapping_flags_that_change_as_a_running_checkpoint_freezes_fail_it() {
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3") {
        return;
    }
    let dir = tmpdir("mem-flags");
    let log = dir.join("log");
    // 32 MiB of its own (copied while it runs), and a page whose flags it flips.
    let script = support::nodes::flag_flipper_script(&log, 32);
    let mut c = std::process::Command::new("python3");
    c.args(["-c", &script]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    close_extra_fds(&mut c);
    let mut p = c.spawn().unwrap();
    let pid: i32 = support::nodes::log_line(&log, "ready", 0).split_whitespace().nth(1).unwrap().parse().unwrap();
    let img = dir.join("f.crf");
    let img = img.to_str().unwrap();
    // About half of the looks find the flags the freeze does not; up to forty tries.
    let mut caught = None;
    for _ in 0..40 {
        let o = run(&["ckpt", "-v", "-o", img, &pid.to_string()]);
        let err = stderr(&o);
        if !require(!err.contains("Linux 6.7+"), "write tracking (Linux 6.7+)") {
            p.kill().unwrap();
            p.wait().unwrap();
            return;
        }
        if o.status.success() {
            assert!(err.contains("copied while it ran, "), "{err}");
            std::fs::remove_file(img).unwrap();
            continue;
        }
        caught = Some(err);
        break;
    }
    let err = caught.expect("no checkpoint saw the flags change");
    assert!(err.contains("changed as it was frozen") && err.contains("the image was not completed"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| n.to_string_lossy() == "log"), "left behind: {left:?}");
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(!state.contains(") T ") && !tracked(pid), "left stopped or tracked: {state}");
    // Through a pipe: the reader gets no end.
    let mut refused = None;
    for _ in 0..40 {
        let mut c = std::process::Command::new(crs());
        c.args(["ckpt", "-o", "-", &pid.to_string()]);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        close_extra_fds(&mut c);
        let mut ck = c.spawn().unwrap();
        let mut info = std::process::Command::new(crs());
        info.args(["crfinfo", "-"]).stdin(ck.stdout.take().unwrap());
        close_extra_fds(&mut info);
        let read = info.output().unwrap();
        let ck = ck.wait_with_output().unwrap();
        if ck.status.success() {
            assert!(read.status.success(), "a whole image refused: {}", stderr(&read));
            continue;
        }
        refused = Some((stderr(&ck), read));
        break;
    }
    let (err, read) = refused.expect("no checkpoint through a pipe saw the flags change");
    assert!(err.contains("changed as it was frozen"), "{err}");
    assert!(!read.status.success(), "crfinfo took the stream of a failed checkpoint: {err}");
    assert!(!tracked(pid), "left tracked");
    p.kill().unwrap();
    p.wait().unwrap();
}

/// A process with a userfaultfd of its own is not tracked (its ranges and ours would meet):
/// the checkpoint is refused, naming the userfaultfd, and the process runs on unharmed.
#[test]
fn a_running_checkpoint_of_a_process_with_its_own_userfaultfd_is_refused_by_name() {
    let dir = tmpdir("mem-running-uffd");
    let (mut w, log, pid) = writer_with(&dir, "10", "uffd");
    let img = dir.join("u.crf");
    let o = run(&["ckpt", "-v", "-o", img.to_str().unwrap(), &pid.to_string()]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("a userfaultfd, which crs does not restore") && !err.contains("UFFDIO"), "{err}");
    assert!(!img.exists());
    let v = support::nodes::check(pid, &log);
    assert!(v.starts_with("ok") && v.contains(&format!("pid {pid}")), "after the refusal: {v}");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let uffds = fds
        .flatten()
        .filter(|f| std::fs::read_link(f.path()).is_ok_and(|l| l.to_string_lossy().ends_with("[userfaultfd]")));
    let uffds = uffds.count();
    w.kill().unwrap();
    w.wait().unwrap();
    assert_eq!(uffds, 1, "the process's userfaultfds changed");
}

/// --frozen copies as before: no pages before the freeze; and a damaged page copied while the
/// process ran is refused before anything runs, by crfinfo and by rstrt, and kills what a
/// lazy restore ran.
#[test]
fn a_running_checkpoint_can_be_frozen_and_its_damage_is_refused() {
    let dir = tmpdir("mem-running-bad");
    let (mut w, log, pid) = writer(&dir, "10");
    let d = dir.to_str().unwrap();
    let (plain, tracked_img) = (format!("{d}/f.crf"), format!("{d}/t.crf"));
    let o = ckpt(&["-v", "--frozen", "-o", &plain, &pid.to_string()]);
    assert!(!stderr(&o).contains("copied while it ran"), "{}", stderr(&o));
    let info = run(&["crfinfo", &plain]);
    assert!(!String::from_utf8_lossy(&info.stdout).contains("ahead:"));
    let o = ckpt(&["-v", "-o", &tracked_img, &pid.to_string()]);
    let tracking = !stderr(&o).contains("Linux 6.7+");
    w.kill().unwrap();
    w.wait().unwrap();
    kill_pid(restore_writer(&plain, &[], None, &log).0);
    if !require(tracking, "write tracking (Linux 6.7+)") {
        return;
    }
    // A byte in the middle of the first PREPAGES section's data.
    let mut b = std::fs::read(&tracked_img).unwrap();
    let at = {
        let mut r = crs::crf::Reader::new(&b[..]).unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert_eq!(s.tag, crs::crf::Tag::PREMEMBER);
        r.skip(&s).unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert_eq!(s.tag, crs::crf::Tag::PREAREAS);
        r.skip(&s).unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert_eq!(s.tag, crs::crf::Tag::PREPAGES);
        (s.offset + s.len / 2) as usize
    };
    b[at] ^= 0x40;
    std::fs::write(&tracked_img, &b).unwrap();
    for args in [vec!["crfinfo", tracked_img.as_str()], vec!["rstrt", "-d", tracked_img.as_str()]] {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?} took a damaged image");
        let e = stderr(&o);
        assert!(e.contains("pages copied while the process ran: section checksum mismatch"), "{args:?}: {e}");
        // rstrt -d prints the pid of what it restored: nothing.
        assert!(o.stdout.is_empty(), "{args:?} restored something: {}", String::from_utf8_lossy(&o.stdout));
    }
    // A lazy restore finds the damage when it reads the pages, after the process ran: it
    // kills it (rstrt says so and exits with 4).
    if is_root() {
        let o = run(&["rstrt", "-d", "--lazy", &tracked_img]);
        assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
        assert!(stderr(&o).contains("PREPAGES section checksum mismatch"), "{}", stderr(&o));
        let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        // Killed before rstrt exits (its parent, init, may not have reaped it yet).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        assert!(matches!(state, None | Some('Z') | Some('X')), "pid {pid} runs on: {stat}");
    }
}

/// A crafted running checkpoint that declares a vast area (64 TiB, unreserved, where the
/// process maps nothing) beside its real ones restores from a stream as the plain image does,
/// costing what arrived and not the area's size (a byte per page of it once was 16 GiB to
/// walk); one whose areas change more often than rounds are run is refused, by name, however
/// it is read.
#[test]
fn a_crafted_image_of_vast_areas_costs_nothing_and_endless_area_changes_are_refused() {
    use crs::engine::precopy::{Area, decode_areas, encode_areas};
    let dir = tmpdir("mem-running-vast");
    let (mut w, log, pid) = writer(&dir, "10");
    let d = dir.to_str().unwrap();
    let img = format!("{d}/r.crf");
    let o = ckpt(&["-v", "-o", &img, &pid.to_string()]);
    w.kill().unwrap();
    w.wait().unwrap();
    if !require(!stderr(&o).contains("Linux 6.7+"), "write tracking (Linux 6.7+)") {
        return;
    }
    let vast = Area { start: 1 << 40, end: 1 << 46, noreserve: true };
    let bytes = std::fs::read(&img).unwrap();
    let grown = rewrite(&bytes, |t, p| {
        if t != crs::crf::Tag::PREAREAS {
            return p;
        }
        let mut a = decode_areas(&p).unwrap();
        assert!(a.iter().all(|x| x.0.end <= vast.start || x.0.start >= vast.end), "the writer maps {a:?}");
        a.push((vast, false));
        a.sort_by_key(|x| x.0.start);
        encode_areas(&a)
    });
    let vast_img = format!("{d}/vast.crf");
    std::fs::write(&vast_img, &grown).unwrap();
    let t0 = std::time::Instant::now();
    let (new, _) = restore_writer(&vast_img, &[], Some(std::fs::File::open(&vast_img).unwrap()), &log);
    let took = t0.elapsed();
    kill_pid(new);
    // 60 ms here; 13 s when it was walked a page at a time.
    assert!(took < std::time::Duration::from_secs(5), "the vast area took {took:?} to restore");
    // Every PREAREAS section written 40 times over: more changes than rounds.
    let endless = format!("{d}/endless.crf");
    let again = |t, p: Vec<u8>| if t == crs::crf::Tag::PREAREAS { vec![p; 40] } else { vec![p] };
    std::fs::write(&endless, rewrite_each(&bytes, again)).unwrap();
    // From a stream, from the file, and crfinfo.
    for args in [&["rstrt", "-d", "-"][..], &["rstrt", "-d", &endless], &["crfinfo", &endless]] {
        let o = std::process::Command::new(crs())
            .args(args)
            .stdin(std::fs::File::open(&endless).unwrap())
            .output()
            .unwrap();
        assert!(!o.status.success() && o.stdout.is_empty(), "{args:?} took it: {}", stderr(&o));
        assert!(stderr(&o).contains("changed 32 times"), "{args:?}: {}", stderr(&o));
    }
}

/// An ordinary user's running checkpoint, restored by that user from a stream (rstrt - <
/// image): the pages copied while the process ran are held for it in rstrt, so its first
/// process does not execute its own program first (that would drop them): it is restored,
/// every page as it was, and rstrt says its exe link names crs.
#[test]
fn an_ordinary_users_running_checkpoint_restores_from_a_stream() {
    let dir = open_dir("mem-running-user");
    let log = dir.join("log");
    let mut c = as_nobody(&[target("writer").to_str().unwrap(), log.to_str().unwrap(), "32", "10"]);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut w = c.spawn().unwrap();
    let pid: i32 = support::nodes::log_line(&log, "ready", 0).split_whitespace().nth(1).unwrap().parse().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let img = dir.join("u.crf");
    let o = as_nobody(&[crs(), "ckpt", "-v", "-o", img.to_str().unwrap(), &pid.to_string()]).output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    if !require(!err.contains("Linux 6.7+"), "write tracking (Linux 6.7+)") {
        w.kill().unwrap();
        w.wait().unwrap();
        return;
    }
    assert!(err.contains("copied while it ran, "), "{err}");
    w.kill().unwrap();
    w.wait().unwrap();
    let mut r = as_nobody(&[crs(), "rstrt", "-d", "-"]);
    r.stdin(std::fs::File::open(&img).unwrap());
    let o = r.output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "rstrt - as the user: {err}");
    assert!(err.contains("names crs as its program"), "{err}");
    let new: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let v = support::nodes::check(new, &log);
    assert!(v.starts_with("ok") && v.contains(&format!("pid {new}")), "restored: {v}");
    kill_pid(new);
}

/// A file mapped shared (MAP_SHARED) that is another file at restore time: refused by name,
/// and for what it is (a shared mapping's pages are the file's, in no image), not as an image
/// made with --no-binary/--no-libs.
#[test]
fn a_shared_mapping_of_a_file_replaced_since_is_refused_for_what_it_is() {
    const SHARED: &str = r#"
import mmap, sys
f = open("data", "r+b")
m = mmap.mmap(f.fileno(), 4096, flags=mmap.MAP_SHARED)
print("ready", flush=True)
sys.stdin.readline()
"#;
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3") {
        return;
    }
    let dir = tmpdir("memory-shared-replaced");
    let data = dir.join("data");
    std::fs::write(&data, vec![7u8; 4096]).unwrap();
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.args(["-c", SHARED]).current_dir(&dir);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let img = dir.join("x.crf");
    let o = run(&["ckpt", "-k", "-o", img.to_str().unwrap(), &p.pid().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Another file under its name.
    std::fs::remove_file(&data).unwrap();
    std::fs::write(&data, vec![8u8; 4096]).unwrap();
    let o = run(&["rstrt", "-d", img.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{e}");
    assert!(e.contains(&format!("mapped file {} is not the same here", data.display())), "{e}");
    assert!(e.contains("maps it shared (MAP_SHARED)") && !e.contains("--no-binary"), "{e}");
}

/// A reservation of terabytes (PROT_NONE, private, not MAP_NORESERVE: what a database or a
/// runtime maps to grow into) comes back as it was, and the process makes parts of it usable
/// as before. The restore once mapped it writable while the pages went in, which the kernel
/// charges against its commit limit, and refused it (ENOMEM: mariadbd's 8 TiB).
#[test]
fn a_reservation_of_terabytes_comes_back_unaccounted() {
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3") {
        return;
    }
    let dir = tmpdir("mem-reserve");
    let script = "import ctypes, sys\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  libc.mmap.restype = ctypes.c_void_p\n\
                  libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
                  libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]\n\
                  a = libc.mmap(None, 16 << 40, 0, 0x22, -1, 0)\n\
                  print('ready %x' % a, flush=True)\n\
                  n = 0\n\
                  for line in sys.stdin:\n\
                  \x20   n += 1\n\
                  \x20   p = a + (n << 20)\n\
                  \x20   if libc.mprotect(p, 1 << 20, 3) != 0: print('mprotect failed', ctypes.get_errno(), flush=True); continue\n\
                  \x20   ctypes.memset(p, n, 1 << 20)\n\
                  \x20   print('used', n, ctypes.string_at(p + 12345, 1)[0], flush=True)\n";
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.args(["-c", script]);
    let mut p = Proc::spawn(c);
    let at = p.expect("ready").split_whitespace().nth(1).unwrap().to_string();
    p.send("use");
    assert_eq!(p.expect("used"), "used 1 1");
    // The reservation's line in maps and its flags (smaps): never accounted, no MAP_NORESERVE.
    let reservation = |pid: i32| {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&format!("{at}-"))).skip(1);
        let flags = lines.find(|l| l.starts_with("VmFlags:")).unwrap_or_default().to_string();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let line = maps.lines().find(|l| l.starts_with(&format!("{at}-"))).unwrap_or_default().to_string();
        (line.split_whitespace().take(2).collect::<Vec<_>>().join(" "), flags)
    };
    let before = reservation(p.pid());
    assert!(before.0.ends_with("---p") && !before.1.contains(" ac") && !before.1.contains(" nr"), "{before:?}");
    let dir_s = dir.to_str().unwrap();
    let img = format!("{dir_s}/r.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let mut r = rstrt(&[&img]);
    r.send("use");
    assert_eq!(r.expect("used"), "used 2 2", "saw {:?}", r.seen);
    // (Its first MiB: the second, made usable, is a mapping of its own, as is the rest.)
    let restored = *descendants(r.pid()).first().expect("the restored process");
    let after = reservation(restored);
    assert_eq!(after, before, "the reservation before and after the restore");
    r.kill();
}
