//! Shell jobs on a terminal (ckpt/rstrt --shell-job), with tmux as the terminal: vim and less
//! checkpointed in one pane and restarted in a pane of another size, where they redraw and
//! take keys; a bash job printing a counter moved between panes, then ^Z and `fg` there.
//! Everything is judged from what the panes show and what the programs write.

mod support;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

/// A tmux server of the test's own, its panes running `bash --norc` with a prompt of "$ ".
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(name: &str) -> Option<Tmux> {
        if !require(Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()), "tmux") {
            return None;
        }
        Some(Tmux { socket: format!("crs-{name}-{}", std::process::id()) })
    }

    fn cmd(&self, args: &[&str]) -> String {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]).args(args);
        // The server (started by the first command) and the panes hold nothing of ours.
        close_extra_fds(&mut c);
        let o = c.output().expect("tmux");
        assert!(o.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A session (one pane) of `cols` x `rows` running a plain bash.
    fn pane(&self, name: &str, cols: u16, rows: u16) -> String {
        let (c, r) = (cols.to_string(), rows.to_string());
        self.cmd(&["new-session", "-d", "-s", name, "-x", &c, "-y", &r, "env PS1='$ ' bash --norc --noprofile"]);
        self.wait(name, |s| s.contains("$ "), "a prompt");
        name.to_string()
    }

    fn keys(&self, pane: &str, keys: &[&str]) {
        self.cmd(&[&["send-keys", "-t", pane], keys].concat());
    }

    fn type_line(&self, pane: &str, line: &str) {
        self.cmd(&["send-keys", "-t", pane, "-l", line]);
        self.keys(pane, &["Enter"]);
    }

    fn screen(&self, pane: &str) -> String {
        self.cmd(&["capture-pane", "-p", "-J", "-t", pane])
    }

    /// Waits (bounded) until the pane's screen satisfies `ok`; returns that screen.
    fn wait(&self, pane: &str, ok: impl Fn(&str) -> bool, what: &str) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen(pane);
            if ok(&s) {
                return s;
            }
            assert!(t0.elapsed() < TIMEOUT, "pane {pane} never showed {what}; it shows:\n{s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the program the pane's shell runs in the foreground (its name begins with
    /// `comm`).
    fn job(&self, pane: &str, comm: &str) -> i32 {
        let shell: i32 = self.cmd(&["display-message", "-p", "-t", pane, "#{pane_pid}"]).trim().parse().unwrap();
        let t0 = Instant::now();
        loop {
            for k in children(shell) {
                if std::fs::read_to_string(format!("/proc/{k}/comm")).is_ok_and(|c| c.trim().starts_with(comm)) {
                    return k;
                }
            }
            assert!(t0.elapsed() < TIMEOUT, "pane {pane} runs no {comm}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

/// Waits until no process has pid `pid` (a killed job's member, reaped by init).
fn wait_free(pid: i32) {
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(t0.elapsed() < TIMEOUT, "pid {pid} never went");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ckpt_job(pid: i32, img: &Path) {
    ckpt(&["--shell-job", "-k", "-o", img.to_str().unwrap(), &pid.to_string()]);
    wait_free(pid);
}

#[test]
fn vim_moves_to_a_bigger_pane_redraws_and_takes_keys() {
    let Some(t) = Tmux::new("vim") else { return };
    if !require(Path::new("/usr/bin/vim.tiny").exists(), "vim.tiny (Debian's vim-tiny)") {
        return;
    }
    let dir = tmpdir("term-vim");
    let file = dir.join("notes.txt");
    std::fs::write(&file, "line one\nline two\n").unwrap();
    let img = dir.join("vim.crf");
    let a = t.pane("a", 80, 24);
    let b = t.pane("b", 100, 30);
    t.type_line(&a, &format!("vim.tiny -u NONE -N -n {}", file.display()));
    t.wait(&a, |s| s.contains("line two"), "the file");
    // An edit not yet written: it lives only in vim's memory.
    t.keys(&a, &["ihello ", "Escape"]);
    t.wait(&a, |s| s.contains("hello line one"), "the edit");
    let vim = t.job(&a, "vim.tiny");
    ckpt_job(vim, &img);

    t.type_line(&b, &format!("{} rstrt --shell-job {}; echo rstrt-said=$?", crs(), img.display()));
    // vim learns the new size (SIGWINCH) and redraws everything: the edit, and the 30-row
    // screen filled with "~" below the two lines (27 of them: 30 less two lines and the last).
    let s = t.wait(
        &b,
        |s| s.contains("hello line one") && s.lines().filter(|l| l.starts_with('~')).count() == 27,
        "vim redrawn at 30 rows",
    );
    assert!(!s.contains("rstrt-said"), "{s}");
    // Keys reach it at once, in the terminal mode it had (raw: no echo, no line buffering).
    t.keys(&b, &["A", "-appended", "Escape"]);
    let s = t.wait(&b, |s| s.lines().next() == Some("hello line one-appended"), "the keys taken");
    assert!(!s.contains("^["), "the terminal echoed the keys:\n{s}");
    t.keys(&b, &[":wq", "Enter"]);
    t.wait(&b, |s| s.contains("rstrt-said=0"), "vim ending, and rstrt with it");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello line one-appended\nline two\n");
}

#[test]
fn less_needs_the_option_then_moves_to_another_pane() {
    let Some(t) = Tmux::new("less") else { return };
    if !require(Path::new("/usr/bin/less").exists(), "less") {
        return;
    }
    let dir = tmpdir("term-less");
    let file = dir.join("numbers.txt");
    std::fs::write(&file, (1..=300).map(|n| format!("{n}\n")).collect::<String>()).unwrap();
    let img = dir.join("less.crf");
    let a = t.pane("a", 80, 24);
    let b = t.pane("b", 90, 30);
    t.type_line(&a, &format!("less {}", file.display()));
    t.wait(&a, |s| s.lines().next() == Some("1"), "the top of the file");
    t.keys(&a, &["j", "j", "j", "j", "j"]);
    t.wait(&a, |s| s.lines().next() == Some("6"), "line 6 at the top");
    let less = t.job(&a, "less");
    // less reads keys from the terminal on fd 3: only --shell-job carries that.
    let o = run(&["ckpt", "--check", &less.to_string()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("fd 3 is its controlling terminal") && out.contains("--shell-job"), "{out}");
    ckpt_job(less, &img);
    // Restored without the option, it is refused, naming it, and nothing runs.
    t.type_line(&b, &format!("{} rstrt {}; echo rstrt-said=$?", crs(), img.display()));
    let s = t.wait(&b, |s| s.contains("rstrt-said=3"), "rstrt's refusal");
    assert!(s.contains("rstrt --shell-job puts it on rstrt's"), "{s}");
    t.type_line(&b, "clear");
    t.wait(&b, |s| !s.contains("rstrt-said"), "a clear screen");
    t.type_line(&b, &format!("{} rstrt --shell-job {}; echo rstrt-said=$?", crs(), img.display()));
    // Redrawn at the new height: lines 6 to 34 and less's prompt.
    let s = t.wait(&b, |s| s.lines().next() == Some("6") && s.contains("\n34\n"), "less redrawn at 30 rows");
    assert!(!s.contains("\n35\n"), "{s}");
    t.keys(&b, &["j"]);
    t.wait(&b, |s| s.lines().next() == Some("7") && s.contains("\n35\n"), "a key that scrolled");
    t.keys(&b, &["q"]);
    t.wait(&b, |s| s.contains("rstrt-said=0"), "less ending, and rstrt with it");
}

#[test]
fn a_python_repl_comes_back_in_its_terminal_mode() {
    let Some(t) = Tmux::new("repl") else { return };
    let dir = tmpdir("term-repl");
    let img = dir.join("repl.crf");
    let a = t.pane("a", 80, 24);
    let b = t.pane("b", 80, 24);
    t.type_line(&a, "python3 -q");
    t.wait(&a, |s| s.contains(">>> "), "the prompt");
    t.type_line(&a, "x = 41");
    t.wait(&a, |s| s.matches(">>> ").count() == 2, "the second prompt");
    let py = t.job(&a, "python3");
    ckpt_job(py, &img);
    t.type_line(&b, &format!("{} rstrt --shell-job {}; echo rstrt-said=$?", crs(), img.display()));
    // Python does not redraw its prompt: the restore is over once rstrt's child runs untraced
    // (keys typed before would be echoed by the terminal in the shell's modes).
    // rstrt also sends it SIGWINCH (its job may redraw), and readline, taking it, puts the
    // terminal back in the shell's modes until its handler is done: a key typed meanwhile is
    // echoed by the terminal too. So: untraced, SIGWINCH taken, and back waiting for a key
    // (read, poll, select or pselect6, as its readline goes).
    let rstrt = t.job(&b, "crs");
    let t0 = Instant::now();
    let waiting = |k: i32| {
        let status = std::fs::read_to_string(format!("/proc/{k}/status")).unwrap_or_default();
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
        };
        let winch = 1u64 << (libc::SIGWINCH - 1);
        let pending = |name: &str| u64::from_str_radix(&field(name), 16).map_or(true, |v| v & winch != 0);
        let nr = std::fs::read_to_string(format!("/proc/{k}/syscall"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok());
        let in_read = nr.is_some_and(|n| {
            [libc::SYS_read, libc::SYS_poll, libc::SYS_select, libc::SYS_pselect6, libc::SYS_ppoll].contains(&n)
        });
        field("TracerPid:") == "0" && !pending("SigPnd:") && !pending("ShdPnd:") && in_read
    };
    loop {
        if children(rstrt).into_iter().any(waiting) {
            std::thread::sleep(Duration::from_millis(20));
            if children(rstrt).into_iter().any(waiting) {
                break;
            }
        }
        assert!(t0.elapsed() < TIMEOUT, "the restored python never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Readline's own modes (no echo by the terminal, keys one at a time): the line typed
    // shows once, and the variable is there.
    t.keys(&b, &["x + 1", "Enter"]);
    let s = t.wait(&b, |s| s.lines().any(|l| l.trim() == "42"), "x + 1 evaluated");
    assert_eq!(s.matches("x + 1").count(), 1, "the line typed shows twice:\n{s}");
    t.type_line(&b, "exit()");
    t.wait(&b, |s| s.contains("rstrt-said=0"), "python ending, and rstrt with it");
}

/// The last "n=K" a pane shows.
fn last_count(screen: &str) -> Option<u64> {
    screen.lines().rev().find_map(|l| l.trim().strip_prefix("n=")?.parse().ok())
}

#[test]
fn a_counting_job_moves_panes_then_stops_and_goes_on_with_job_control() {
    let Some(t) = Tmux::new("job") else { return };
    let dir = tmpdir("term-job");
    let img = dir.join("job.crf");
    let a = t.pane("a", 80, 24);
    let b = t.pane("b", 80, 24);
    // A job of two processes: bash and the sleep it waits for.
    t.type_line(&a, "bash -c 'i=0; while :; do echo n=$i; i=$((i+1)); sleep 0.1; done'");
    t.wait(&a, |s| last_count(s).is_some_and(|n| n >= 3), "the count");
    let job = t.job(&a, "bash");
    let members = tree_of(job);
    ckpt_job(job, &img);
    let last = last_count(&t.screen(&a)).unwrap();
    for p in members {
        wait_free(p);
    }
    t.type_line(&b, &format!("{} rstrt --shell-job {}", crs(), img.display()));
    // It goes on from where it was, not from 0.
    let s = t.wait(&b, |s| last_count(s).is_some_and(|n| n >= last + 3), "the count going on");
    let first = s.lines().find_map(|l| l.trim().strip_prefix("n=")?.parse::<u64>().ok());
    assert_eq!(first, Some(last + 1), "{s}");
    // ^Z stops the whole job (rstrt with it): the shell says so and the count stands still.
    t.keys(&b, &["C-z"]);
    let s = t.wait(&b, |s| s.contains("Stopped"), "the job stopped");
    let stopped = last_count(&s).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(last_count(&t.screen(&b)), Some(stopped), "the count went on while stopped");
    // fg: it goes on in the foreground, and ^C ends it.
    t.type_line(&b, "fg");
    t.wait(&b, |s| last_count(s).is_some_and(|n| n >= stopped + 3), "the count going on after fg");
    t.keys(&b, &["C-c"]);
    t.type_line(&b, "echo rstrt-said=$?");
    t.wait(&b, |s| s.contains("rstrt-said=130"), "the job ended by ^C");
}

#[test]
fn shell_job_without_a_terminal_is_refused_by_name() {
    let dir = tmpdir("term-none");
    // A process with no controlling terminal (its own session, stdio on pipes).
    let mut c = Command::new("setsid");
    c.args(["sleep", "100"]);
    let mut p = Proc::spawn(c);
    let pid = p.child.id() as i32;
    // Once setsid has become sleep (a process in the middle of execve is no target).
    let t0 = Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep") {
        assert!(t0.elapsed() < TIMEOUT, "setsid never ran sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = run(&["ckpt", "--shell-job", "-o", dir.join("x.crf").to_str().unwrap(), &pid.to_string()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no controlling terminal"), "{}", stderr(&o));
    // With --kill no look comes before the freeze: the look at the frozen process refuses it
    // the same, and lets it run on.
    let o = run(&["ckpt", "-k", "--shell-job", "-o", dir.join("x.crf").to_str().unwrap(), &pid.to_string()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no controlling terminal"), "{}", stderr(&o));
    // Let go, it is runnable for a moment before it sleeps again: wait for the sleep, and
    // never see it stopped, traced or gone on the way.
    let t0 = Instant::now();
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.contains(") S ") {
            break;
        }
        assert!(state.contains(") R ") && t0.elapsed() < TIMEOUT, "not sleeping on after the refusal: {state}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // An image of it, restored with --shell-job by an rstrt that has no terminal.
    ckpt(&["-o", dir.join("x.crf").to_str().unwrap(), &pid.to_string()]);
    let mut r = Command::new("setsid");
    r.args([crs(), "rstrt", "--shell-job", dir.join("x.crf").to_str().unwrap()]);
    close_extra_fds(&mut r);
    let o = r.output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("rstrt has none"), "{}", stderr(&o));
    p.kill();
}

/// The children of `pid` (none if it is gone).
fn children(pid: i32) -> Vec<i32> {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    kids.split_whitespace().filter_map(|k| k.parse().ok()).collect()
}

/// Every descendant of `pid`, and `pid`.
fn tree_of(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        out.extend(children(out[i]));
        i += 1;
    }
    out
}

/// What the driver prints once told "go": the lines from its master, then its child's status.
fn driven(p: &mut Proc, pts: &str) {
    p.send("go\n");
    p.expect("master: out-before");
    p.expect("master: typed-ahead");
    p.expect(&format!("master: got:typed-ahead ({pts})"));
    p.expect("child ended 0");
}

#[test]
fn a_pty_pair_with_bytes_in_flight_both_ways_runs_on_and_comes_back() {
    if !require(is_root(), "root (to restore the pids the two processes know each other by)") {
        return;
    }
    let dir = tmpdir("term-pty");
    let img = dir.join("pty.crf");
    let mut p = Proc::spawn(Command::new(target("pty")));
    let ready = p.expect("ready");
    let pts = ready.trim_start_matches("ready ").trim().to_string();
    let pid = p.child.id() as i32;
    let members = tree_of(pid);
    // Its slave open outside the tree too: the pair is not the checkpoint's alone.
    let outsider = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOCTTY).open(&pts).unwrap();
    let o = run(&["ckpt", "--check", &pid.to_string()]);
    let out = String::from_utf8_lossy(&o.stdout);
    let me = format!("is open in pid {}", std::process::id());
    assert!(o.status.code() == Some(3) && out.contains(&me) && out.contains("outside the checkpoint"), "{out}");
    drop(outsider);
    ckpt(&["-o", img.to_str().unwrap(), &pid.to_string()]);
    // The line bash wrote (and the echo of the one typed) and the line typed to it were read
    // out of the pair...
    let info = String::from_utf8_lossy(&run(&["crfinfo", img.to_str().unwrap()]).stdout).into_owned();
    let pty = info.lines().find(|l| l.starts_with("pty:")).unwrap_or_else(|| panic!("{info}"));
    assert!(pty.contains(&format!("{pts} (")), "{pty}");
    assert!(pty.contains("12 bytes typed and 25 shown unread"), "{pty}");
    assert!(pty.contains("terminal of session"), "{pty}");
    // ...and put back: the original runs on and finds them there.
    driven(&mut p, &pts);
    assert!(p.wait().success());
    for m in members {
        wait_free(m);
    }
    // Restored, the pair has its number, its bytes in flight and its session again.
    let mut again = rstrt(&[img.to_str().unwrap()]);
    driven(&mut again, &pts);
    assert!(again.wait().success());
}

#[test]
fn a_tmux_server_with_its_shells_moves_whole() {
    let Some(t) = Tmux::new("server") else { return };
    let dir = tmpdir("term-tmux");
    let img = dir.join("tmux.crf");
    let a = t.pane("a", 80, 24);
    t.type_line(&a, "i=0; while :; do echo n=$i; i=$((i+1)); sleep 0.1; done");
    t.cmd(&["split-window", "-t", &a, "env PS1='$ ' bash --norc --noprofile"]);
    let (left, right) = (format!("{a}.0"), format!("{a}.1"));
    t.wait(&right, |s| s.contains("$ "), "the second pane's prompt");
    // A line half typed in the second pane: readline holds it.
    t.keys(&right, &["echo", " half-typed"]);
    t.wait(&right, |s| s.contains("echo half-typed"), "the half-typed line");
    t.wait(&left, |s| last_count(s).is_some_and(|n| n >= 3), "the count");
    let server: i32 = t.cmd(&["display-message", "-p", "#{pid}"]).trim().parse().unwrap();
    let members = tree_of(server);
    let o = run(&["ckpt", "-k", "-o", img.to_str().unwrap(), &server.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for m in &members {
        wait_free(*m);
    }
    let o = run(&["rstrt", "-d", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert_eq!(back, server, "{}", stderr(&o));
    // A new client finds the server at its socket, with its panes, their screens and shells.
    let before = last_count(&t.screen(&left)).unwrap();
    let s = t.wait(&left, |s| last_count(s).is_some_and(|n| n >= before + 3), "the count going on");
    assert!(s.contains("n=0") || s.lines().filter(|l| l.starts_with("n=")).count() > 5, "{s}");
    t.keys(&right, &[" now", "Enter"]);
    t.wait(&right, |s| s.lines().any(|l| l == "half-typed now"), "the half-typed line ended and run");
    t.cmd(&["kill-server"]);
}

/// A pty pair of a devpts instance of its own (a container's /dev/pts), numbered as a pair
/// of the host's that a process outside holds: the pair is the checkpoint's alone (the host's
/// pty of that number is another), and comes back, with its bytes in flight, in rstrt's
/// /dev/pts.
#[test]
fn a_pty_of_another_devpts_instance_is_told_from_the_hosts() {
    if !require(is_root(), "root (a mount namespace with a devpts instance of its own)")
        || !require(std::path::Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)")
    {
        return;
    }
    // A pair of the host's, held here: its number.
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two fds of ours; the name, termios and winsize are not asked.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty");
    let n = std::fs::read_link(format!("/proc/self/fd/{s}")).unwrap();
    let n: u32 = n.to_str().unwrap().trim_start_matches("/dev/pts/").parse().unwrap();
    // The target opens pairs in its own instance until it has number n, keeps that one, types
    // into it; on a line of stdin, reads what its slave has and says so.
    let script = "import os,sys\n\
        n=int(sys.argv[1]); keep=None; others=[]\n\
        while keep is None:\n  m,s=os.openpty()\n  \
        k=int(os.ttyname(s).rsplit('/',1)[1])\n  \
        if k==n: keep=(m,s)\n  else: others.append((m,s))\n\
        for a,b in others: os.close(a); os.close(b)\n\
        m,s=keep\nimport tty\ntty.setraw(s)\nos.write(m,b'typed')\n\
        print('ready', os.ttyname(s), flush=True)\n\
        sys.stdin.readline()\nprint('got', os.read(s,64).decode(), flush=True)\n";
    let sh = format!(
        "mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts && mount --bind /dev/pts/ptmx /dev/ptmx && exec python3 -c \"$0\" {n}"
    );
    let mut c = std::process::Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", &sh, script]);
    close_extra_fds(&mut c);
    let mut p = Proc::spawn(c);
    assert_eq!(p.expect("ready"), format!("ready /dev/pts/{n}"));
    let dir = tmpdir("pty-instance");
    let img = dir.join("p.crf");
    let o = run(&["ckpt", "-k", "-o", img.to_str().unwrap(), &p.pid().to_string()]);
    assert!(o.status.success(), "ckpt took the host's pty {n} for the target's: {}", stderr(&o));
    p.kill();
    let mut r = rstrt(&[img.to_str().unwrap()]);
    r.send("");
    assert_eq!(r.expect("got"), "got typed");
    // SAFETY: closing our own fds.
    unsafe {
        libc::close(m);
        libc::close(s);
    }
}
