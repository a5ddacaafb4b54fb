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
    assert!(err.contains("(rstrt --pidns would keep it): restored pid"), "rstrt stderr: {err}");
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
