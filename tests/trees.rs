//! Process trees: `ckpt PID` takes PID and its descendants, frozen together; `rstrt` rebuilds
//! the tree with its parents, process groups, sessions and zombies (tests/targets/tree.c
//! checks all of it itself: every member its own ids and memory, each parent its children's
//! exit and its zombies' statuses).

mod support;
use support::*;

/// The pids of a tree target's "ready" line: worker, session leader, group leader, zombies.
fn pids(ready: &str) -> Vec<i32> {
    ready.split_whitespace().skip(1).filter_map(|w| w.parse().ok()).collect()
}

/// Waits until none of `pids` exists any more (their parent, init, reaps them in its time).
fn gone(pids: &[i32]) {
    let t = std::time::Instant::now();
    while pids.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
        assert!(t.elapsed() < TIMEOUT, "pids {pids:?} are still in use");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_tree_comes_back_with_its_relations_and_zombies() {
    let dir = tmpdir("tree");
    let d = dir.to_str().unwrap();
    let mut p = start("tree", &[], &dir);
    let ready = p.seen.last().cloned().unwrap_or_default();
    let kids = pids(&ready);
    assert_eq!(kids.len(), 5, "{ready}");
    let img = format!("{d}/t.crf");
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let names = [comm(kids[3]), comm(kids[4])];
    let o = ckpt(&["-k", "-v", "-o", &img, &p.pid().to_string()]);
    // main, 3 children, 2 grandchildren; 2 zombies.
    assert!(stderr(&o).contains("and 7 descendants (2 zombies)"), "{}", stderr(&o));
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("-- process 6 of 6"), "{info}");
    assert!(info.contains(&format!("tree:      pid {} parent {}", kids[3], p.pid())), "{info}");
    assert!(info.contains("zombie exited 7") && info.contains("zombie killed by signal 15"), "{info}");
    // Its members are reaped by init, in its time: then every pid is free again.
    let mut all = kids.clone();
    all.push(p.pid());
    gone(&all);
    let mut r = rstrt(&["--require-pid", &img]);
    // Each zombie has its name back (ps shows it so), not the restorer's.
    for (z, name) in kids[3..].iter().zip(names) {
        let t0 = std::time::Instant::now();
        let state = || std::fs::read_to_string(format!("/proc/{z}/stat")).unwrap_or_default();
        while !state().contains(") Z ") {
            assert!(t0.elapsed() < TIMEOUT, "pid {z} is not a zombie again: {}", state());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(comm(*z), name, "the name of zombie {z}");
    }
    r.verdict("ok");
}

/// A copy in a pid namespace of its own, while the original runs on: both check themselves.
#[test]
fn a_tree_is_copied_into_a_new_pid_namespace_and_both_run() {
    if !require(is_root(), "root (rstrt --pidns)") {
        return;
    }
    let dir = tmpdir("tree-pidns");
    let mut p = start("tree", &[], &dir);
    let mut copy = copy_of(p.pid(), "--pidns");
    // The copy said nothing yet (its "ready" was said before the checkpoint): it is asked.
    copy.verdict("ok");
    p.verdict("ok");
}

/// An ordinary user's tree copied into a new pid namespace through a user namespace of the
/// user's own: every pid kept (the tree checks itself), the copy's program named by
/// /proc/PID/exe, no capability left to it, the bounding set the original's.
#[test]
fn an_ordinary_user_copies_a_tree_into_a_new_pid_namespace() {
    if !require(is_root(), "root (to run a target as nobody)") {
        return;
    }
    let dir = open_dir("tree-pidns-user");
    let tree = target("tree");
    let mut c = as_nobody(&[tree.to_str().unwrap()]);
    // (Not the test's stderr: a file of root's, as under CI, nobody could not open again.)
    c.current_dir(&dir).stderr(std::process::Stdio::null());
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let crs = crs();
    let pid = p.pid();
    // (Checkpointed by root, which sees that the stdout pipe is read outside the tree; see
    // a_pipe_read_by_another_user_is_outside for nobody's own checkpoint.)
    let img = dir.join("t.crf");
    let img = img.to_str().unwrap();
    ckpt(&["-o", img, &pid.to_string()]);
    std::fs::set_permissions(img, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut copy = Proc::spawn(as_nobody(&[crs, "rstrt", "--pidns", img]));
    // rstrt (setpriv became it), the namespace's init, the restored tree's first process
    // (once it is that: the init may fork others first), as it is once restored.
    let orig = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |s: &str, k: &str| s.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").trim().to_string();
    let first_child = |p: i32| {
        let kids = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        kids.split_whitespace().next().and_then(|k| k.parse::<i32>().ok())
    };
    let t = std::time::Instant::now();
    let (restored, new) = loop {
        let last = first_child(copy.pid()).and_then(first_child).and_then(|r| {
            let new = std::fs::read_to_string(format!("/proc/{r}/status")).ok()?;
            let exe = std::fs::read_link(format!("/proc/{r}/exe")).ok()?;
            let nspid = field(&new, "NSpid:");
            (exe == tree && nspid.split_whitespace().nth(1) == Some(pid.to_string().as_str())).then_some((r, new))
        });
        if let Some(x) = last {
            break x;
        }
        assert!(t.elapsed() < TIMEOUT, "no restored process with the tree's pid {pid} and program");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    for k in ["CapPrm:", "CapEff:", "CapInh:", "CapAmb:"] {
        assert_eq!(field(&new, k), "0000000000000000", "{k} of the copy, pid {restored}: {new}");
    }
    assert_eq!(field(&new, "CapBnd:"), field(&orig, "CapBnd:"));
    assert_eq!(field(&new, "Uid:"), field(&orig, "Uid:"));
    copy.verdict("ok");
    p.verdict("ok");
}

/// An ordinary user's checkpoint of a tree whose stdout is a pipe another user (root, here
/// the test) reads: it cannot see that reader among the processes, the pipe tells it that
/// its read end is open, so fds 1 and 2 are stdio, the pipe the restore's, and not a pipe
/// of the tree's own (of which the image would hold nothing). All done as nobody.
#[test]
fn a_pipe_read_by_another_user_is_outside() {
    if !require(is_root(), "root (to run a target as nobody)") {
        return;
    }
    let dir = open_dir("tree-pipe-user");
    let mut c = as_nobody(&[target("tree").to_str().unwrap()]);
    c.current_dir(&dir).stderr(std::process::Stdio::null());
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let crs = crs();
    let script = format!("exec {crs} rstrt --pidns <({crs} ckpt -o - {})", p.pid());
    let mut copy = Proc::spawn(as_nobody(&["/bin/bash", "-c", &script]));
    copy.verdict("ok");
    p.verdict("ok");
    // On another fd than 0-2, such a pipe is refused, and said to be read by a process nobody
    // may not look at (not "closed").
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds, owned by this test (closed below).
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let w = fds[1];
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--", "sleep", "100"]);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2 and close_range are async-signal-safe and touch only the child's fd table.
    unsafe {
        c.pre_exec(move || {
            libc::dup2(w, 5);
            libc::syscall(libc::SYS_close_range, 3u32, 4u32, 0u32);
            libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut sleeper = c.spawn().unwrap();
    // SAFETY: our copy of the write end; the read end stays open until the end.
    unsafe { libc::close(w) };
    // Until setpriv has become sleep (as nobody): before, the process is still root's.
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(format!("/proc/{}/comm", sleeper.id())).map_or(true, |c| c.trim() != "sleep") {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "setpriv did not run sleep");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let o = as_nobody(&[crs, "ckpt", "-o", dir.join("s.crf").to_str().unwrap(), &sleeper.id().to_string()])
        .output()
        .unwrap();
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    // SAFETY: the read end, ours.
    unsafe { libc::close(fds[0]) };
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("fd 5 is a pipe's write end, its read end held by a process crs may not look at"),
        "{e}"
    );
}

/// A pid in use is named with its holder; --require-pid then refuses, and a child's pid in use
/// refuses anyway; nothing is left behind.
#[test]
fn a_pid_in_use_is_named() {
    let dir = tmpdir("tree-taken");
    let d = dir.to_str().unwrap();
    let mut p = start("tree", &[], &dir);
    let img = format!("{d}/t.crf");
    ckpt(&["-o", &img, &p.pid().to_string()]);
    let o = run(&["rstrt", "--require-pid", &img]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&format!("cannot restore as pid {}: pid {} is in use by target-tree", p.pid(), p.pid())), "{e}");
    // Without --require-pid the root may take another pid, but not its children: their parent
    // knows them by theirs. The first child in the image is named.
    let o = run(&["rstrt", &img]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&format!("a child of pid {}: pid ", p.pid())) && e.contains("its parent would not find it"),
        "{e}"
    );
    p.verdict("ok");
}

/// --alone takes the process without its descendants, which run on untouched.
#[test]
fn alone_leaves_the_children_out() {
    let dir = tmpdir("tree-alone");
    let d = dir.to_str().unwrap();
    let mut p = start("tree", &[], &dir);
    let img = format!("{d}/t.crf");
    let o = ckpt(&["--alone", "-v", "-o", &img, &p.pid().to_string()]);
    assert!(!stderr(&o).contains("descendants"), "{}", stderr(&o));
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(!info.contains("tree:"), "{info}");
    p.verdict("ok");
}

/// The lines of `file` that are complete, as numbers; panics on a line that is not the one
/// after the previous (a line lost, repeated or reordered).
fn consecutive(file: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    let mut n = 0;
    for (i, l) in complete.lines().enumerate() {
        assert_eq!(l, (i + 1).to_string(), "line {} of {}", i + 1, file.display());
        n = i + 1;
    }
    n
}

/// Waits until `file` has at least `n` complete consecutive lines.
fn until_lines(file: &std::path::Path, n: usize) -> usize {
    let t = std::time::Instant::now();
    loop {
        let have = consecutive(file);
        if have >= n {
            return have;
        }
        assert!(t.elapsed() < TIMEOUT, "{} has {have} lines, not {n}", file.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The issue's session: `setsid bash -c 'seq | pv -q -L 4k | cat > FILE'` (Debian's pv, rate
/// limited, with its timers), checkpointed as a whole while the pipes are full, killed, and
/// restored detached: the output goes on with not one line lost or repeated.
#[test]
fn a_pipeline_session_goes_on_with_nothing_lost() {
    if !require(std::path::Path::new("/usr/bin/pv").exists(), "pv (apt install pv)")
        || !require(is_root(), "root (rstrt --pidns)")
    {
        return;
    }
    let dir = tmpdir("tree-pv");
    let out = dir.join("out");
    let mut c = std::process::Command::new("setsid");
    c.args(["bash", "-c", &format!("seq 1 100000000 | pv -q -L 4k | cat > {}", out.display())]);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    close_extra_fds(&mut c);
    let mut session = c.spawn().unwrap();
    until_lines(&out, 200);
    // setsid execs bash (it forks first only when it leads a group already).
    let mut bash = session.id() as i32;
    if std::fs::read_to_string(format!("/proc/{bash}/comm")).unwrap_or_default().trim() == "setsid" {
        let kids = std::fs::read_to_string(format!("/proc/{bash}/task/{bash}/children")).unwrap_or_default();
        bash = kids.split_whitespace().next().and_then(|p| p.parse().ok()).expect("setsid's child");
    }
    let img = dir.join("s.crf");
    let o = ckpt(&["-k", "-v", "-o", img.to_str().unwrap(), &bash.to_string()]);
    assert!(stderr(&o).contains("and 3 descendants"), "{}", stderr(&o));
    let _ = session.kill();
    let _ = session.wait();
    let at = consecutive(&out);
    let info = String::from_utf8_lossy(&run(&["crfinfo", img.to_str().unwrap()]).stdout).to_string();
    assert!(info.contains("bytes unread"), "the pipes were empty: {info}");
    // In a pid namespace of its own: the killed originals' pids may not be free yet (init
    // reaps them in its time), and bash waits for its children by pid.
    let r = run(&["rstrt", "-d", "--pidns", img.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    let root: i32 = String::from_utf8_lossy(&r.stdout).trim().parse().unwrap();
    let had = until_lines(&out, at + 300);
    // SAFETY: kill takes integers; the restored session's group is its leader's pid.
    unsafe { libc::kill(-root, libc::SIGKILL) };
    assert!(had > at, "{had} lines after the restore, {at} before");
}

/// Anonymous memory a fork left shared stays shared: every child of the copy adds to a page
/// its parent reads (tree.c "shared"), in a copy beside the original, in a pid namespace.
#[test]
fn memory_shared_across_a_fork_stays_shared() {
    if !require(is_root(), "root (rstrt --pidns)") {
        return;
    }
    let dir = tmpdir("tree-shm");
    let mut p = start("tree", &["shared"], &dir);
    let mut copy = copy_of(p.pid(), "--pidns");
    copy.verdict("ok");
    p.verdict("ok");
}

/// The issue's Python program: a multiprocessing.Pool (3 worker processes, its pipes, its
/// POSIX semaphores, unlinked from /dev/shm as soon as made, its handler threads) computing the
/// sum of i*i item by item, checkpointed with -k while it works and restored: every progress
/// line after the restore is right, and so is the total.
#[test]
fn a_python_pool_finishes_its_sum() {
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)")
        || !require(is_root(), "root (rstrt --pidns)")
    {
        return;
    }
    let dir = tmpdir("tree-pool");
    let d = dir.to_str().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/pool.py");
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.arg(&script).arg("3000").current_dir(&dir);
    close_extra_fds(&mut c);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let img = format!("{d}/p.crf");
    let o = ckpt(&["-k", "-v", "-o", &img, &p.pid().to_string()]);
    assert!(stderr(&o).contains("and 3 descendants"), "{}", stderr(&o));
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("deleted:   /dev/shm/sem."), "{info}");
    // In a pid namespace of its own, where the workers' pids are free (see the pipeline test).
    let mut r = rstrt(&["--pidns", &img]);
    let sum = |n: u64| (0..=n).map(|i| i * i).sum::<u64>();
    loop {
        let l = r.expect("");
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["at", i, s] => assert_eq!(s.parse::<u64>().unwrap(), sum(i.parse().unwrap()), "{l}"),
            ["total", s] => {
                assert_eq!(s.parse::<u64>().unwrap(), sum(2999), "{l}");
                break;
            }
            _ => panic!("unexpected line {l:?}; saw {:?}", r.seen),
        }
    }
    assert!(r.wait().success());
}

/// A Python pool's shape (tests/targets/shared_pool.py: three workers forked from a parent
/// holding 200 MiB they only read), started by a shell and checkpointed while it runs: copied
/// while it runs, the workers' copies of the parent's memory left out (their base is the
/// pool's parent, not the shell), so that the image holds it once; restored in a pid
/// namespace of its own, the pool takes the memory it took, every worker goes on with its pid
/// and the same digest of its slice, and the parent finds its 200 MiB whole.
#[test]
fn a_python_pool_checkpointed_while_it_runs_is_stored_once_and_shares_again() {
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)")
        || !require(is_root(), "root (frame numbers in /proc/PID/pagemap; rstrt --pidns)")
    {
        return;
    }
    use support::nodes::{lines, log_line};
    let dir = tmpdir("tree-pool-running");
    let log = dir.join("log");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/shared_pool.py");
    let line = format!("/usr/bin/python3 {} {}; :", script.to_str().unwrap(), log.to_str().unwrap());
    let mut c = std::process::Command::new("/bin/bash");
    c.args(["-c", &line]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    close_extra_fds(&mut c);
    let mut shell = c.spawn().unwrap();
    let root = shell.id() as i32;
    log_line(&log, "ready", 0);
    let digest = |w: usize, skip: usize| support::nodes::pool_worker(&log, w, skip);
    let before: Vec<(String, String)> = (0..3).map(|w| digest(w, 0)).collect();
    log_line(&log, "parent True", 0);
    let tree = [vec![root], descendants(root)].concat();
    assert_eq!(tree.len(), 5, "the pool and its shell: {tree:?}");
    let pss_here = pss_mib(&tree);
    let img = dir.join("p.crf");
    let img = img.to_str().unwrap();
    let o = ckpt(&["-v", "-o", img, &root.to_string()]);
    let err = stderr(&o);
    if !require(!err.contains("Linux 6.7+"), "write tracking (Linux 6.7+)") {
        let _ = shell.kill();
        let _ = shell.wait();
        return;
    }
    assert!(err.contains("copied while they ran"), "{err}");
    let kib: u64 = err
        .lines()
        .find_map(|l| l.split(" KiB of the descendants' memory were").next().filter(|s| s.len() < l.len()))
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("-v does not say what the workers share: {err}"));
    assert!(kib >= 500 << 10, "the workers' copies of the parent's 200 MiB were stored: {err}");
    let size = std::fs::metadata(img).unwrap().len();
    assert!(size < 300 << 20, "an image of {size} bytes for a pool sharing 200 MiB: {err}");
    for p in &tree {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let _ = shell.wait();
    let at = lines(&log);
    let mut r = rstrt(&["--pidns", img]);
    // The lines written by the restored pool: every worker, as the same pid, with the same
    // digest; the parent's memory whole.
    for (w, was) in before.iter().enumerate() {
        assert_eq!(&digest(w, at), was, "worker {w} after the restore");
    }
    log_line(&log, "parent ", at);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("parent False"), "{text}");
    let members = descendants(r.pid());
    let pss_there = pss_mib(&members);
    println!("Pss of the pool: {pss_here} MiB before, {pss_there} MiB restored ({} processes)", members.len());
    assert!(pss_there <= pss_here + 24, "the restored pool takes {pss_there} MiB, {pss_here} MiB before");
    for p in members {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    r.kill();
}

/// Writes a small C project of 24 files into `dir`, each compile followed by a short sleep so
/// that a build takes a few seconds.
fn c_project(dir: &std::path::Path) {
    let mut main = String::from("#include <stdio.h>\n");
    let mut body = String::from("int main(void) { long t = 0;\n");
    for i in 1..=24 {
        let f = format!("int f{i}(int x) {{ int s = 0; for (int i = 0; i < x; i++) s += i * {i}; return s; }}\n");
        std::fs::write(dir.join(format!("f{i}.c")), f).unwrap();
        main.push_str(&format!("int f{i}(int);\n"));
        body.push_str(&format!("t += f{i}({});\n", 100 + i));
    }
    body.push_str("printf(\"%ld\\n\", t); return 0; }\n");
    std::fs::write(dir.join("main.c"), main + &body).unwrap();
    let objs: Vec<String> = (1..=24).map(|i| format!("f{i}.o")).collect();
    let mk = format!(
        "OBJS = main.o {}\nprog: $(OBJS)\n\tcc -o $@ $(OBJS)\n%.o: %.c\n\tcc -O2 -c $< -o $@ && sleep 0.2\n",
        objs.join(" ")
    );
    std::fs::write(dir.join("Makefile"), mk).unwrap();
}

/// What the built program prints.
fn prog_says(dir: &std::path::Path) -> String {
    let o = std::process::Command::new(dir.join("prog")).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The issue's build: `make -j2` of a small C project of the test's own (make, its shells,
/// the compilers, make's jobserver pipe), checkpointed with -k mid-build and restored: it
/// finishes, and the program it built says what an uninterrupted build's says.
#[test]
fn make_j2_finishes_a_build_checkpointed_midway() {
    if !require(std::path::Path::new("/usr/bin/make").exists(), "make (apt install make)")
        || !require(is_root(), "root (rstrt --pidns)")
    {
        return;
    }
    let dir = tmpdir("tree-make");
    let (whole, cut) = (dir.join("whole"), dir.join("cut"));
    for d in [&whole, &cut] {
        std::fs::create_dir_all(d).unwrap();
        c_project(d);
    }
    let make = |d: &std::path::Path| {
        let mut c = std::process::Command::new("make");
        c.args(["-j2", "-s"]).current_dir(d);
        c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        close_extra_fds(&mut c);
        c
    };
    assert!(make(&whole).status().unwrap().success());
    let expected = prog_says(&whole);
    let mut m = make(&cut).spawn().unwrap();
    let t = std::time::Instant::now();
    let built = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "o"))
            .count()
    };
    while built(&cut) < 6 {
        assert!(t.elapsed() < TIMEOUT, "the build does not progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let img = dir.join("m.crf");
    let o = ckpt(&["-k", "-v", "-o", img.to_str().unwrap(), &m.id().to_string()]);
    assert!(stderr(&o).contains("descendants"), "{}", stderr(&o));
    let _ = m.wait();
    let at = built(&cut);
    assert!(at < 25, "the build was over before the checkpoint");
    // In a pid namespace of its own, where every pid of the tree is free (the killed
    // originals may still be zombies, which init reaps in its time): make waits for them.
    let r = run(&["rstrt", "-d", "--pidns", img.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    let t = std::time::Instant::now();
    while !cut.join("prog").exists() {
        assert!(t.elapsed() < TIMEOUT, "the restored build did not finish ({} objects)", built(&cut));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The link may still be writing: the restored make exits once it is done.
    let root: i32 = String::from_utf8_lossy(&r.stdout).trim().parse().unwrap();
    while std::path::Path::new(&format!("/proc/{root}")).exists()
        && !std::fs::read_to_string(format!("/proc/{root}/stat")).unwrap_or_default().contains(") Z")
    {
        assert!(t.elapsed() < TIMEOUT, "the restored make did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(prog_says(&cut), expected);
}

/// Connected unix socket pairs (stream, datagram, seqpacket) between a process and its child,
/// and one a process holds both ends of, each with messages queued at both ends that nobody
/// read: restored with every byte and every message boundary (tests/targets/pairs.c checks).
#[test]
fn unix_socket_pairs_keep_their_queued_messages() {
    let dir = tmpdir("tree-pairs");
    let d = dir.to_str().unwrap();
    let mut p = start("pairs", &[], &dir);
    let img = format!("{d}/s.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert_eq!(info.lines().filter(|l| l.starts_with("unixpair:")).count(), 4, "{info}");
    let args: &[&str] = if is_root() { &["--pidns", &img] } else { &[&img] };
    rstrt(args).verdict("ok");
}

/// Memfds (tests/targets/memfd.c): one sealed against growing and shrinking, open in a parent
/// and its child through one description and mapped shared by both; one sealed against writing
/// and sealing; a sparse one mapped with its fd closed. Each comes back once, with its name,
/// contents, holes, mode and seals, shared again; crfinfo lists each once.
#[test]
fn memfds_come_back_sealed_and_shared() {
    let dir = tmpdir("tree-memfd");
    let d = dir.to_str().unwrap();
    let mut p = start("memfd", &[], &dir);
    let img = format!("{d}/m.crf");
    let o = ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    let memfds: Vec<&str> = info.lines().filter(|l| l.starts_with("memfd:")).collect();
    assert_eq!(memfds.len(), 3, "{info}");
    assert!(info.contains("memfd:     crs-sealed mode 777, 32 bytes (32 of data), sealed seal,write"), "{info}");
    assert!(info.contains("memfd:     crs-sparse mode 777, 67108864 bytes (4096 of data), sealed seal"), "{info}");
    // The 64 MiB of the sparse one are not in the image, nor the shared mappings' pages.
    assert!(std::fs::metadata(&img).unwrap().len() < 8 << 20);
    let args: &[&str] = if is_root() { &["--pidns", &img] } else { &[&img] };
    rstrt(args).verdict("ok");

    // A memfd sealed F_SEAL_FUTURE_WRITE while mapped writable is refused by name, and the
    // process runs on untouched.
    let mut p = start("memfd", &["future"], &dir);
    let o = run(&["ckpt", "-o", &format!("{d}/f.crf"), &p.pid().to_string()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("memfd /memfd:crs-future (deleted) is sealed F_SEAL_FUTURE_WRITE"), "{}", stderr(&o));
    p.verdict("ok");
}

/// System V IPC between a process and its child (tests/targets/sysv.c): a semaphore set, a
/// message queue with messages of three types, a segment both attach (half of it read-only)
/// and one removed while attached. After `ckpt -k` the objects outlive the processes: a
/// restore refuses, naming the id in use and the way out; in a new IPC namespace (--ipcns)
/// everything comes back with its ids; once the leftovers are removed, here too.
#[test]
fn system_v_objects_come_back_with_their_ids() {
    if !require(is_root(), "root (System V ids are kept through /proc/sys/kernel/*_next_id)") {
        return;
    }
    let dir = tmpdir("tree-sysv");
    let d = dir.to_str().unwrap();
    let mut p = start("sysv", &[], &dir);
    // Whatever happens, the objects of its keys go at the end (they outlive processes).
    struct Leftovers(u32);
    impl Drop for Leftovers {
        fn drop(&mut self) {
            for (flag, k) in [("-S", self.0), ("-Q", self.0 + 1), ("-M", self.0 + 2)] {
                let _ = std::process::Command::new("ipcrm")
                    .args([flag, &format!("{k:#x}")])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
    let _leftovers = Leftovers(0x4352_0000 + (p.pid() as u32 & 0xffff) * 4);
    let ready = p.seen.last().cloned().unwrap_or_default();
    let ids: Vec<String> = ready.split_whitespace().skip(1).map(String::from).collect();
    assert_eq!(ids.len(), 3, "{ready}");
    let img = format!("{d}/v.crf");
    let o = ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains(&format!("sysv sem:  id {} ", ids[0])) && info.contains("values 3 0 7"), "{info}");
    assert!(info.contains(&format!("sysv msg:  id {} ", ids[1])) && info.contains("3 messages (24 bytes)"), "{info}");
    assert!(
        info.contains(&format!("sysv shm:  id {} ", ids[2])) && info.contains("1048576 bytes (1048576 of data)"),
        "{info}"
    );
    assert_eq!(info.lines().filter(|l| l.starts_with("sysv shm:")).count(), 2, "{info}");
    // The objects are still here: refused by name, and nothing is left of the attempt.
    let o = run(&["rstrt", &img]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&format!("System V semaphore set {} ", ids[0]))
            && e.contains("in use here")
            && e.contains("--ipcns"),
        "{e}"
    );
    rstrt(&["--ipcns", "--pidns", &img]).verdict("ok");
    for (flag, id) in ["-s", "-q", "-m"].iter().zip(&ids) {
        let st = std::process::Command::new("ipcrm").args([*flag, id]).status().unwrap();
        assert!(st.success(), "ipcrm {flag} {id}");
    }
    rstrt(&["--pidns", &img]).verdict("ok");
    // The restored process removed its objects itself, with the ids it knew.
    let left = std::fs::read_to_string("/proc/sysvipc/sem").unwrap();
    assert!(!left.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some(ids[0].as_str())), "{left}");

    // In an IPC namespace of its own, all of that namespace is the tree's: a restore makes a
    // new one for it, without being asked.
    let mut c = std::process::Command::new("unshare");
    c.arg("--ipc").arg(target("sysv")).current_dir(&dir);
    close_extra_fds(&mut c);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let img = format!("{d}/ns.crf");
    let o = ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("sysv:      an IPC namespace of their own"), "{info}");
    rstrt(&["--pidns", &img]).verdict("ok");
}

/// The issue's script: bash running `producer | filter | consumer` (programs of the test's
/// own: numbers, doubled, appended to a file, the consumer checking each is the last plus 2)
/// and a background job that leaves a zombie child, checkpointed as a whole with -k and
/// restored: the output goes on with nothing lost, repeated or reordered, and the background
/// job reaps its zombie with the status it exited with.
#[test]
fn a_bash_pipeline_and_a_zombie_go_on() {
    if !require(is_root(), "root (rstrt --pidns)") {
        return;
    }
    let dir = tmpdir("tree-bash");
    let t = target("pipeline");
    let t = t.to_str().unwrap();
    let script = format!("{t} producer | {t} filter | {t} consumer out.txt &\n{t} zombie &\nwait\n");
    std::fs::write(dir.join("job.sh"), script).unwrap();
    let mut c = std::process::Command::new("bash");
    c.arg("job.sh").current_dir(&dir);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    close_extra_fds(&mut c);
    let mut bash = c.spawn().unwrap();
    let out = dir.join("out.txt");
    let doubled = |file: &std::path::Path| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        for (i, l) in complete.lines().enumerate() {
            assert_eq!(l, (2 * (i + 1)).to_string(), "line {} of {}", i + 1, file.display());
        }
        complete.lines().count()
    };
    let until = |n: usize| {
        let t0 = std::time::Instant::now();
        while doubled(&out) < n {
            assert!(t0.elapsed() < TIMEOUT, "{} has {} lines, not {n}", out.display(), doubled(&out));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    until(100);
    // The background job's child is a zombie by now.
    let z: i32 = loop {
        if let Some(z) = std::fs::read_to_string(dir.join("zombie.pid")).ok().and_then(|s| s.trim().parse().ok())
            && std::fs::read_to_string(format!("/proc/{z}/stat")).unwrap_or_default().contains(") Z")
        {
            break z;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let img = dir.join("b.crf");
    let o = ckpt(&["-k", "-v", "-o", img.to_str().unwrap(), &bash.id().to_string()]);
    assert!(stderr(&o).contains("(1 zombies)"), "zombie {z}: {}", stderr(&o));
    let _ = bash.wait();
    let at = doubled(&out);
    let r = run(&["rstrt", "-d", "--pidns", img.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    let root: i32 = String::from_utf8_lossy(&r.stdout).trim().parse().unwrap();
    until(at + 200);
    std::fs::write(dir.join("reap"), "").unwrap();
    let t0 = std::time::Instant::now();
    while !dir.join("zombie.out").exists() {
        assert!(t0.elapsed() < TIMEOUT, "the background job did not reap its zombie");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill takes integers: the restored bash (its pid namespace ends with it).
    unsafe { libc::kill(root, libc::SIGKILL) };
    assert_eq!(std::fs::read_to_string(dir.join("zombie.out")).unwrap(), "reaped 1 status 3\n");
}

/// A pre-forking server of the test's own (tests/targets/prefork.c: a parent and 4 workers
/// accepting on one listening unix socket bound to a path, a System V semaphore their accept
/// lock and another their request counter) and a client of its own in the tree, asking
/// without pause: checkpointed with -k mid-conversation and restored, the server listens on
/// the same path again, answers the test's connections, and the client goes on where it was,
/// its connection of the moment (accepted or still waiting) with it: not a request lost,
/// repeated or answered wrong.
#[test]
fn a_pre_forking_server_serves_again() {
    if !require(is_root(), "root (rstrt --pidns --ipcns)") {
        return;
    }
    let dir = tmpdir("tree-prefork");
    let d = dir.to_str().unwrap();
    let mut p = start("prefork", &["client"], &dir);
    let ask = |what: &str| {
        use std::io::{Read, Write};
        // Until the restore has bound the name again (the restored server is the fact).
        let t0 = std::time::Instant::now();
        let mut s = loop {
            match std::os::unix::net::UnixStream::connect(dir.join("srv.sock")) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() < TIMEOUT => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("srv.sock: {e}"),
            }
        };
        s.write_all(format!("{what}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    // Every line of the client's log: request i answered for i = 1, 2, ...
    let log = dir.join("client.log");
    let answered = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        for (i, l) in complete.lines().enumerate() {
            let want = format!("{} worker ", i + 1);
            assert!(l.starts_with(&want) && l.ends_with(&format!(": req {}", i + 1)), "client.log line {}: {l}", i + 1);
        }
        complete.lines().count()
    };
    let until = |n: usize| {
        let t0 = std::time::Instant::now();
        while answered() < n {
            assert!(t0.elapsed() < TIMEOUT, "the client answered {} requests, not {n}", answered());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    assert!(ask("before").ends_with(": before\n"));
    until(30);
    p.send("served");
    let served: u32 = p.expect("served").split_whitespace().nth(1).unwrap().parse().unwrap();
    let img = format!("{d}/s.crf");
    let o = ckpt(&["-k", "-v", "-o", &img, &p.pid().to_string()]);
    assert!(stderr(&o).contains("and 5 descendants"), "{}", stderr(&o));
    p.kill();
    let at = answered();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("listen:    unix socket") && info.contains("srv.sock, backlog 16"), "{info}");
    let sem =
        info.lines().find_map(|l| l.strip_prefix("sysv sem:  id ")?.split_whitespace().next()).unwrap().to_string();
    let mut r = rstrt(&["--pidns", "--ipcns", &img]);
    for i in 0..8 {
        // The greeting first, then (the test sends before reading) the answer.
        let a = ask(&format!("after {i}"));
        assert!(a.starts_with("hello\nworker ") && a.ends_with(&format!(": after {i}\n")), "{a:?}");
    }
    until(at + 50);
    r.send("served");
    let now: u32 = r.expect("served").split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(now as usize >= served as usize + 50 + 8, "served {served} before, {now} after");
    drop(r.stdin.take());
    assert!(r.wait().success());
    // The original's semaphore set, left behind by -k in this IPC namespace.
    let st = std::process::Command::new("ipcrm").args(["-s", &sem]).status().unwrap();
    assert!(st.success(), "ipcrm -s {sem}");
}

/// Private memory a fork left shared (a parent's 256 MiB that its 4 children never wrote)
/// is stored once, and shared again after the restore: the tree takes the memory it took,
/// not 5 times as much. The checkpoint leaves the original's sharing as it was, and
/// copy-on-write still holds in the copy: a child that writes its copy changes nobody else's
/// (every process of the copy checks its own 256 MiB), and then takes 256 MiB more. So with
/// a frozen checkpoint (the pages stored once for all, res::treecow) as with one that copies
/// the memory while the tree runs (the parent's pages copied ahead; each child's that are
/// still the parent's taken as its, RUN_SHARED).
#[test]
fn memory_a_fork_left_shared_is_stored_once_and_shared_again() {
    if !require(is_root(), "root (frame numbers in /proc/PID/pagemap; rstrt --pidns)") {
        return;
    }
    stored_once_and_shared_again(&["--frozen"], &[], "shared:    ", 1);
    stored_once_and_shared_again(&[], &[], "sharing:   pid ", 4);
}

/// The same, when the memory is two mappings side by side (the kernel keeps them apart for
/// their flags), whose shared pages run on from one into the other: each mapping's pages are
/// held apart (a checkpoint once wrote such a run whole, and the restore refused the image).
#[test]
fn memory_a_fork_left_shared_in_mappings_side_by_side_is_stored_once() {
    if !require(is_root(), "root (frame numbers in /proc/PID/pagemap; rstrt --pidns)") {
        return;
    }
    stored_once_and_shared_again(&["--frozen"], &["256", "split"], "shared:    ", 1);
    stored_once_and_shared_again(&[], &["256", "split"], "sharing:   pid ", 4);
}

/// [`memory_a_fork_left_shared_is_stored_once_and_shared_again`], checkpointed with `args`:
/// crfinfo has `lines` lines beginning with `say` that each count 256 MiB or more; the target
/// started with `cow_args`.
fn stored_once_and_shared_again(args: &[&str], cow_args: &[&str], say: &str, lines: usize) {
    let dir = tmpdir(if args.is_empty() { "cow-running" } else { "cow-frozen" });
    let d = dir.to_str().unwrap();
    let mut p = start("cow", cow_args, &dir);
    let tree = || [vec![p.pid()], descendants(p.pid())].concat();
    assert_eq!(tree().len(), 5);
    let before = pss_mib(&tree());
    let img = format!("{d}/c.crf");
    ckpt(&[args, &["-o", &img, &p.pid().to_string()]].concat());
    let after = pss_mib(&tree());
    println!("{args:?}: original tree's Pss: {before} MiB before the checkpoint, {after} MiB after");
    assert!(before < 300 && after <= before + 8, "the checkpoint changed the tree's memory: {before} -> {after} MiB");
    let size = std::fs::metadata(&img).unwrap().len() >> 20;
    assert!((256..320).contains(&size), "{args:?}: an image of {size} MiB for 256 MiB shared by 5 processes");
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    let shared = info
        .lines()
        .filter_map(|l| l.strip_prefix(say)?.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
        .filter(|&b| b >= 256 << 20)
        .count();
    assert_eq!(shared, lines, "{args:?}: {info}");

    let mut copy = rstrt(&["--pidns", &img]);
    copy.send("ping");
    copy.expect("pong");
    // The tree, without its pid namespace's init (crs, which restored it: the image it read
    // is still mapped there for a moment after the tree runs, a page cache Pss of its size).
    let init = descendants(copy.pid()).first().copied().unwrap();
    let members = descendants(init);
    let restored = pss_mib(&members);
    println!("the copy's tree ({} processes): {restored} MiB of Pss", members.len());
    let each: Vec<(i32, u64)> = members.iter().map(|&m| (m, pss_mib(&[m]))).collect();
    assert!(
        restored <= before + 16,
        "the copy takes {restored} MiB where the original took {before}: (pid, MiB) {each:?}"
    );
    // One child writes its copy: only it sees that, and it has 256 MiB of its own now.
    copy.send("write");
    copy.expect("wrote");
    let written = pss_mib(&members);
    assert!(written >= restored + 240, "after a child wrote its copy: {written} MiB, before {restored}");
    copy.send("check");
    copy.expect("ok");
    let sums: Vec<&String> = copy.seen.iter().filter(|l| l.starts_with("sum")).collect();
    assert!(sums.len() == 5 && sums.iter().all(|l| l.ends_with(" ok")), "{:?}", copy.seen);
    assert!(copy.wait().success());
    // The original, which the child's write never reached.
    p.send("check");
    p.expect("ok");
    assert!(p.seen.iter().filter(|l| l.starts_with("sum")).all(|l| l.ends_with(" ok")), "{:?}", p.seen);
}

/// The unmodified pages of the tree's program are stored once (the first process's mapping),
/// and a restore where the program changed since gives every process that copy: the tree's
/// own checks pass, each member running the code it ran.
#[test]
fn a_trees_program_is_stored_once_and_serves_all_when_it_changed() {
    let dir = tmpdir("tree-copies");
    let d = dir.to_str().unwrap();
    let prog = dir.join("tree");
    std::fs::copy(target("tree"), &prog).unwrap();
    let mut c = std::process::Command::new(&prog);
    c.current_dir(&dir);
    let mut p = Proc::spawn(c);
    let ready = p.expect("ready");
    let kids = pids(&ready);
    let img = format!("{d}/t.crf");
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.contains("unmodified pages with an earlier process"), "{info}");
    // Every member's program text but the first one's is left to it.
    let text = |l: &&str| l.contains(" r-xp file ") && l.contains(&format!(" {} ", prog.display()));
    let stored: Vec<u64> =
        info.lines().filter(text).filter_map(|l| l.split_whitespace().nth(3).and_then(|b| b.parse().ok())).collect();
    assert!(stored.len() >= 4 && stored[0] > 0 && stored[1..].iter().all(|&b| b == 0), "{stored:?}");
    // The program changes: the restore cannot map it, and writes the image's copy.
    let mut bytes = std::fs::read(&prog).unwrap();
    bytes.extend_from_slice(b"changed");
    std::fs::write(&prog, &bytes).unwrap();
    let mut all = kids.clone();
    all.push(p.pid());
    gone(&all);
    rstrt(&["--require-pid", &img]).verdict("ok");
}

/// A unix socket with an fd in flight (a message carrying SCM_RIGHTS, not yet read) is refused
/// by name, and the process runs on with the message still queued: it reads the fd after, and
/// the fd is the file sent.
#[test]
fn an_fd_in_flight_is_refused_by_name() {
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)") {
        return;
    }
    let dir = tmpdir("tree-scm");
    let d = dir.to_str().unwrap();
    let script = "import os,socket,sys\n\
        a,b=socket.socketpair()\n\
        f=open('sent','w+'); f.write('the file sent'); f.flush()\n\
        socket.send_fds(a,[b'x'],[f.fileno()])\n\
        print('ready',flush=True)\n\
        sys.stdin.readline()\n\
        m,fds,_,_=socket.recv_fds(b,16,4)\n\
        os.lseek(fds[0],0,0)\n\
        print('got',m.decode(),os.read(fds[0],64).decode(),flush=True)\n";
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.args(["-c", script]).current_dir(&dir);
    close_extra_fds(&mut c);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let img = format!("{d}/s.crf");
    let o = run(&["ckpt", "-o", &img, &p.pid().to_string()]);
    let e = stderr(&o);
    assert!(!o.status.success(), "ckpt took an fd in flight");
    assert!(e.contains("a message carrying fds or credentials queued (SCM_RIGHTS)"), "{e}");
    assert!(!std::path::Path::new(&img).exists());
    p.send("");
    assert_eq!(p.expect("got"), "got x the file sent");
}

/// Memory a fork left shared (MAP_SHARED anonymous) is stored once for the tree, whichever
/// process wrote which pages of it: the parent wrote the first half of 64 MiB, each of three
/// children its own eighth of the second, and each read all of it; the image holds it once
/// (not once per process, as it did), and
/// restored (in a pid namespace), every page is there and still shared: a child's write after
/// the restore is seen by the parent.
#[test]
fn memory_shared_by_a_tree_is_stored_once() {
    const SHM: &str = r#"
import mmap, os, sys, signal, time
M = 64 << 20
m = mmap.mmap(-1, M, flags=mmap.MAP_SHARED)
def fill(lo, hi, tag):
    for i in range(lo, hi, 4096):
        m[i:i + 8] = (i // 4096 * 7 + tag).to_bytes(8, 'little')
def bad(lo, hi, tag):
    return sum(int.from_bytes(m[i:i + 8], 'little') != i // 4096 * 7 + tag for i in range(lo, hi, 4096))
fill(0, M // 2, 0)
kids = []
for k in range(3):
    pid = os.fork()
    if pid == 0:
        lo = M // 2 + k * (M // 8)
        fill(lo, lo + M // 8, k + 1)
        sum(m[i] for i in range(0, M, 4096))
        signal.signal(signal.SIGUSR1, lambda *a: m.__setitem__(slice(M - 8, M), (99 + k).to_bytes(8, 'little')))
        while True:
            time.sleep(1)
    kids.append(pid)
time.sleep(1.5)
sum(m[i] for i in range(0, M, 4096))
print("ready", flush=True)
for line in sys.stdin:
    if line.startswith("poke"):
        m[M - 8:M] = bytes(8)
        os.kill(kids[1], signal.SIGUSR1)
        for _ in range(100):
            if int.from_bytes(m[M - 8:M], 'little') == 100:
                break
            time.sleep(0.05)
        print("poked", int.from_bytes(m[M - 8:M], 'little'), flush=True)
    elif line.startswith("check"):
        b = bad(0, M // 2, 0) + sum(bad(M // 2 + k * (M // 8), M // 2 + (k + 1) * (M // 8) - 4096 * (k == 2), k + 1) for k in range(3))
        print("ok" if b == 0 else "bad %d" % b, flush=True)
        for p in kids:
            os.kill(p, signal.SIGKILL)
        break
"#;
    if !require(std::path::Path::new("/usr/bin/python3").exists(), "python3 (apt install python3)")
        || !require(is_root(), "root (rstrt --pidns)")
    {
        return;
    }
    let dir = tmpdir("tree-shm-once");
    let img = dir.join("t.crf");
    let mut c = std::process::Command::new("/usr/bin/python3");
    c.args(["-c", SHM]).current_dir(&dir);
    close_extra_fds(&mut c);
    let mut p = Proc::spawn(c);
    p.expect("ready");
    let o = ckpt(&["-k", "-v", "-o", img.to_str().unwrap(), &p.pid().to_string()]);
    assert!(stderr(&o).contains("and 3 descendants"), "{}", stderr(&o));
    p.kill();
    let size = std::fs::metadata(&img).unwrap().len();
    // 64 MiB once, and the interpreters' own memory; once per process would be 256 MiB.
    assert!(size < 100 << 20, "image of {} MiB", size >> 20);
    let mut r = rstrt(&["--pidns", img.to_str().unwrap()]);
    r.send("poke");
    assert_eq!(r.expect("poked"), "poked 100", "a child's write after the restore: {:?}", r.seen);
    r.verdict("ok");
}

/// rsync (Debian's, nobody here wrote it) copying a directory, rate limited: its three
/// processes (sender, receiver, generator) with socket pairs between them, the heap they share
/// since the forks (two mappings side by side), and the source directory held with O_PATH.
/// Checkpointed midway (killed) and restored in a pid namespace of its own, it finishes the
/// copy: every file the same, no temporary file left.
#[test]
fn rsync_finishes_a_copy_checkpointed_midway() {
    if !require(std::path::Path::new("/usr/bin/rsync").exists(), "rsync (apt install rsync)")
        || !require(is_root(), "root (rstrt --pidns)")
    {
        return;
    }
    let dir = tmpdir("tree-rsync");
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    std::fs::create_dir(&src).unwrap();
    for i in 0..16u32 {
        let body: Vec<u8> = (0..1u32 << 20).map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 11) as u8).collect();
        std::fs::write(src.join(format!("f{i:02}")), body).unwrap();
    }
    let mut c = std::process::Command::new("rsync");
    c.args(["-a", "--bwlimit=4096"]).arg(format!("{}/", src.display())).arg(&dst);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    close_extra_fds(&mut c);
    let mut rsync = c.spawn().unwrap();
    let t = std::time::Instant::now();
    while std::fs::read_dir(&dst).map_or(0, |d| d.count()) < 3 {
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "rsync copied nothing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let img = dir.join("r.crf");
    let o = ckpt(&["-k", "-v", "-o", img.to_str().unwrap(), &rsync.id().to_string()]);
    assert!(stderr(&o).contains("and 2 descendants"), "{}", stderr(&o));
    let _ = rsync.wait();
    let copied = std::fs::read_dir(&dst).unwrap().count();
    assert!(copied < 17, "rsync was done before the checkpoint: {copied} files");
    let r = run(&["rstrt", "-d", "--pidns", img.to_str().unwrap()]);
    assert!(r.status.success(), "{}", stderr(&r));
    let root: i32 = String::from_utf8_lossy(&r.stdout).trim().parse().unwrap();
    let t = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{root}")).exists() {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "the restored rsync did not finish");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut names: Vec<String> =
        std::fs::read_dir(&dst).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let want: Vec<String> = (0..16).map(|i| format!("f{i:02}")).collect();
    assert_eq!(names, want, "what the restored rsync left");
    for n in &want {
        assert!(std::fs::read(src.join(n)).unwrap() == std::fs::read(dst.join(n)).unwrap(), "{n} differs");
    }
}
