//! The multicall binary: dispatch, --list, --install, unknown names, flags; and the paper's
//! RESTART_STOP / RESTART_NOTIFY, CRS_NO_SHARED_LIBRARIES and CRS_NO_BINARY_FILE flags.

mod support;
use std::process::{Command, Stdio};
use support::*;

#[test]
fn dispatch_by_name_and_by_argument() {
    let o = run(&["--list"]);
    let list = String::from_utf8_lossy(&o.stdout);
    for a in ["check", "ckpt", "crfinfo", "demo", "rstrt"] {
        assert!(list.lines().any(|l| l == a), "--list lacks {a}: {list}");
    }
    let dir = tmpdir("applets-install");
    let o = run(&["--install", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for a in ["ckpt", "rstrt", "crfinfo"] {
        let link = dir.join(a);
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        // Run through the symlink: argv[0]'s basename picks the applet.
        let o = Command::new(&link).arg("--help").output().unwrap();
        assert!(o.status.success(), "{a} --help via symlink");
        assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("Usage: {a}")), "{a}");
    }
    let o = run(&["nosuch"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(stderr(&o).contains("unknown applet 'nosuch'") && stderr(&o).contains("ckpt"), "{}", stderr(&o));
}

#[test]
fn bad_arguments_get_one_clear_line() {
    let o = run(&["ckpt", "--kill", "--stop", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    for frozen in ["--frozen", "--kill", "--stop"] {
        let o = run(&["ckpt", "--max-frozen", "10", frozen, "1"]);
        assert_eq!(o.status.code(), Some(2), "{frozen}: {}", stderr(&o));
        assert!(stderr(&o).contains("--max-frozen is the budget") && stderr(&o).lines().count() == 1, "{}", stderr(&o));
    }
    let o = run(&["ckpt", "999999999"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    let o = run(&["rstrt", "/nonexistent/x.crf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/x.crf"), "{}", stderr(&o));
}

/// Every flag an applet's --help lists appears in its man page.
#[test]
fn every_help_flag_is_in_the_man_page() {
    let man = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    for (applet, page) in [
        ("ckpt", "ckpt.1"),
        ("rstrt", "rstrt.1"),
        ("crfinfo", "crfinfo.1"),
        ("demo", "crs.1"),
        ("check", "crs.1"),
        ("migrate", "migrate.1"),
        ("restartd", "restartd.8"),
        ("keygen", "crs.1"),
    ] {
        let help = String::from_utf8_lossy(&run(&[applet, "--help"]).stdout).into_owned();
        let text = std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("man/{page}: {e}"));
        let text = text.replace("\\-", "-");
        let flags: Vec<&str> =
            help.split_whitespace().filter(|w| w.starts_with("--")).map(|w| w.trim_end_matches(',')).collect();
        assert!(!flags.is_empty(), "{applet} --help shows no flags");
        for f in flags {
            assert!(text.contains(f), "man/{page} does not mention {applet} {f}");
        }
    }
}

#[test]
fn stop_and_notify() {
    let dir = tmpdir("applets-stop");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "8"], &dir);
    let img = format!("{d}/m.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    // rstrt --stop --notify 0 -d: its parent (sh) gets SIGUSR1 when the restore is complete.
    let pidfile = format!("{d}/pid");
    let script = format!(
        "trap 'echo notified' USR1; {} rstrt -d --stop --notify 0 --pidfile {pidfile} {img} >/dev/null 2>{d}/err </dev/null; echo done",
        crs()
    );
    let o = Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("notified"), "no SIGUSR1: {out} {}", stderr(&o));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = st.rsplit(')').next().unwrap().split_whitespace().next().unwrap();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(state, "T", "restored process should be stopped: {st}");
}

#[test]
fn no_libs_images_are_smaller_and_need_the_same_files() {
    let dir = tmpdir("applets-nolibs");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "8"], &dir);
    let pid = p.pid().to_string();
    let full = format!("{d}/full.crf");
    let lean = format!("{d}/lean.crf");
    ckpt(&["-o", &full, &pid]);
    ckpt(&["-k", "--no-libs", "--no-binary", "-o", &lean, &pid]);
    p.kill();
    let (a, b) = (std::fs::metadata(&full).unwrap().len(), std::fs::metadata(&lean).unwrap().len());
    assert!(b + (1 << 20) < a, "--no-libs image {b} bytes is not much smaller than {a}");
    let mut r = rstrt(&[&lean]);
    r.verdict("ok");
}

/// Replaces the ELF file `path` by another build of it: the same size, a byte of its build-id
/// changed, in a new file of the same name.
fn rebuild(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let id = crs::res::fileid::elf_build_id(&std::fs::File::open(path).unwrap()).expect("a build-id");
    let at = bytes.windows(id.len()).position(|w| w == id).unwrap();
    bytes[at] ^= 0xff;
    std::fs::remove_file(path).unwrap();
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn a_changed_binary_is_refused_for_a_no_binary_image_only() {
    let dir = tmpdir("applets-nobin");
    let d = dir.to_str().unwrap();
    // A private copy of the target, so we may change it.
    let bin = dir.join("memtarget");
    std::fs::copy(target("memory"), &bin).unwrap();
    let mut c = Command::new(&bin);
    c.args([d, "8"]).current_dir(&dir);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let pid = p.pid().to_string();
    let full = format!("{d}/full.crf");
    let lean = format!("{d}/lean.crf");
    ckpt(&["-o", &full, &pid]);
    ckpt(&["-k", "--no-binary", "-o", &lean, &pid]);
    p.kill();
    // Same size, another build-id: a rebuilt binary.
    rebuild(&bin);
    let o = run(&["rstrt", &lean]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("memtarget"), "{}", stderr(&o));
    // The self-contained image does not depend on the file.
    let mut r = rstrt(&[&full]);
    r.verdict("ok");
}

/// The memory target (8 MiB) on a copy of libc of its own, in DIR/lib (LD_LIBRARY_PATH), and
/// that copy.
fn on_libc_copy(dir: &std::path::Path) -> (Proc, std::path::PathBuf) {
    let d = dir.to_str().unwrap();
    let libs = dir.join("lib");
    std::fs::create_dir_all(&libs).unwrap();
    // The libc the targets map, wherever this system keeps it.
    let mut probe = start("memory", &[d, "1"], dir);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", probe.pid())).unwrap();
    probe.kill();
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libc.so.6"))
        .expect("libc mapped");
    let copy = libs.join("libc.so.6");
    std::fs::copy(libc, &copy).unwrap();
    let mut c = Command::new(target("memory"));
    c.args([d, "8"]).current_dir(dir).env("LD_LIBRARY_PATH", &libs);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", p.pid())).unwrap();
    assert!(maps.contains(copy.to_str().unwrap()), "the target does not map the copy of libc:\n{maps}");
    (p, copy)
}

/// A mapped file that changes while the image of a checkpoint that let its process run on is
/// written (its unmodified pages read from the file then) fails the checkpoint, saying so: the
/// image has no end, which any reader refuses, and the process runs on as it was. The image
/// goes into a FIFO that the test reads only once it has changed the file (its mtime).
#[test]
fn a_mapped_file_changed_while_a_running_checkpoint_is_written_fails_it() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tmpdir("applets-libtouch");
    let (mut p, copy) = on_libc_copy(&dir);
    let fifo = dir.join("image.fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo {}", fifo.display());
    // Opened before ckpt opens it, so that neither waits; read only once the file changed.
    let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let mut c = Command::new(crs());
    c.args(["ckpt", "-o", fifo.to_str().unwrap(), &p.pid().to_string()]).stderr(Stdio::piped());
    close_extra_fds(&mut c);
    let ck = c.spawn().unwrap();
    // ckpt lets the process go, then writes the image: it waits once the pipe is full (the
    // image holds libc's 2 MB).
    let t0 = std::time::Instant::now();
    // (Its wchan: pipe_write, anon_pipe_write since Linux 6.14.)
    while !std::fs::read_to_string(format!("/proc/{}/wchan", ck.id())).unwrap_or_default().ends_with("pipe_write") {
        assert!(t0.elapsed() < TIMEOUT, "ckpt never waited for its reader");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600)).unwrap();
    // SAFETY: fcntl changes the flags of an fd we own and touches no memory.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&reader), libc::F_SETFL, 0) };
    let mut image = Vec::new();
    reader.read_to_end(&mut image).unwrap();
    let o = ck.wait_with_output().unwrap();
    assert!(!o.status.success(), "ckpt succeeded though libc's copy changed");
    assert!(stderr(&o).contains("libc.so.6 changed while its unmodified pages were copied"), "{}", stderr(&o));
    let stored = dir.join("stored.crf");
    std::fs::write(&stored, &image).unwrap();
    let info = run(&["crfinfo", stored.to_str().unwrap()]);
    assert!(!info.status.success(), "an image without its end was read whole ({} bytes)", image.len());
    p.verdict("ok");
}

/// A checkpoint that lets the process run on is frozen only for its state and memory: the
/// unmodified pages of its mapped files are read from the files once it runs again. The image
/// must still hold the pages as they were mapped: here libc, a copy of it that the target
/// maps (LD_LIBRARY_PATH), is replaced by another build after the checkpoint, and the target
/// restored from the image must run on the image's pages of it and find its memory intact.
#[test]
fn a_running_checkpoint_stores_a_librarys_pages_read_after_the_freeze() {
    let dir = tmpdir("applets-libcopy");
    let d = dir.to_str().unwrap();
    let (mut p, copy) = on_libc_copy(&dir);
    let pid = p.pid().to_string();
    let img = format!("{d}/running.crf");
    let o = run(&["ckpt", "-v", "-o", &img, &pid]);
    assert!(o.status.success(), "{}", stderr(&o));
    p.kill();
    rebuild(&copy);
    let mut r = rstrt(&[&img]);
    r.verdict("ok");
}

/// `PID=$(rstrt -d IMG)` returns at once: a detached process does not hold the pipe its pid
/// is printed on (its fds 0-2 are /dev/null), and rstrt says so. Checked on sleep(1), a real
/// program whose stdio were pipes when it was checkpointed.
#[test]
fn a_detached_restore_does_not_hold_its_callers_pipes() {
    let dir = tmpdir("detach-stdio");
    let mut c = std::process::Command::new("sleep");
    c.arg("1000").stderr(std::process::Stdio::piped());
    let mut p = Proc::spawn(c);
    let img = dir.join("sleep.crf").to_str().unwrap().to_string();
    // sleep says nothing: it is ready once it sleeps.
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(format!("/proc/{}/wchan", p.pid())).is_ok_and(|w| w.contains("nanosleep")) {
        assert!(t0.elapsed() < TIMEOUT, "sleep never slept");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let (tx, rx) = std::sync::mpsc::channel();
    let i = img.clone();
    // Command::output reads stdout to its end: it returns only once no process holds the pipe.
    std::thread::spawn(move || tx.send(run(&["rstrt", "-d", &i])));
    let o = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("rstrt -d's stdout stays open");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("now use /dev/null"), "{}", stderr(&o));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let fd1 = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(fd1.to_str(), Some("/dev/null"));
    // And --inherit-stdio only with -d.
    let o = run(&["rstrt", "--inherit-stdio", &img]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
