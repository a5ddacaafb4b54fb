//! Real runtimes nobody here wrote, each ticking and computing, checkpointed while they run:
//! Go (its scheduler's threads, futexes, epoll with its own pipe or eventfd, timers,
//! preemption signals) and Java (OpenJDK's JVM: its collector's and compilers' threads, its
//! safepoints, its memory mapped with reservations). Node.js is in events.rs, CPython in
//! threads.rs.

mod support;
use support::*;

/// Builds tests/targets/NAME.go with Debian's golang-go, once per test process.
fn go_target(name: &str) -> Option<std::path::PathBuf> {
    if !require(std::path::Path::new("/usr/bin/go").exists(), "go (apt install golang-go)") {
        return None;
    }
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets").join(format!("{name}.go"));
    let out = tmp.join(format!("go-{name}-{}", std::process::id()));
    let st = std::process::Command::new("/usr/bin/go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&src)
        .env("GOCACHE", tmp.join("gocache"))
        .env("GOPATH", tmp.join("gopath"))
        .env("GO111MODULE", "off")
        .status()
        .expect("run go build");
    assert!(st.success(), "go build {}", src.display());
    Some(out)
}

/// Asks for the ticks of the next 500 ms; asserts the numbers on the channel came in order and
/// kept coming, and that the 20 ms ticker kept about its period.
fn progress(p: &mut Proc, when: &str) {
    p.send(when);
    let l = p.expect("progress");
    let mut w = l.split_whitespace().skip(1);
    let ticks: u32 = w.next().and_then(|t| t.parse().ok()).expect("a tick count");
    assert_eq!(w.next(), Some("true"), "{when}: the channel lost, repeated or stopped numbers: {l}");
    // 25 expected; fewer on a busy machine; more would be a ticker catching up on lost time.
    assert!((8..=30).contains(&ticks), "{when}: {ticks} ticks of 20 ms in 500 ms: {l}");
}

/// A Go program with GOMAXPROCS=2, goroutines burning CPU, a channel and a time.Ticker:
/// copied while it runs (rstrt --pidns), then checkpointed (killed) and restored with its pid
/// and tids: each goes on counting in order at the ticker's period.
#[test]
fn go_ticks_on() {
    let Some(bin) = go_target("ticker") else { return };
    let dir = tmpdir("go");
    let mut c = std::process::Command::new(&bin);
    c.env("GOMAXPROCS", "2").current_dir(&dir);
    ticks_on(c, &dir, 3);
}

/// Runs runtime target `c` (which says "ready" and answers the "progress" protocol above),
/// then: a leave-running copy in a pid namespace of its own, which keeps every tid (Go's
/// preemption signals go by them: with new tids they would miss, and CPU-bound goroutines
/// would starve the others); a checkpoint that kills it, of at least `threads` threads; its
/// restore with its pid and tids. Each goes on ticking, and on counting in order.
fn ticks_on(c: std::process::Command, dir: &std::path::Path, threads: usize) {
    let mut p = Proc::spawn(c);
    p.expect("ready");
    progress(&mut p, "before");
    let mut copy = copy_of(p.pid(), "--pidns");
    progress(&mut copy, "copy");
    assert!(copy.wait().success(), "the copy failed: {:?}", copy.seen);
    progress(&mut p, "original after the copy");
    let img = format!("{}/runtime.crf", dir.display());
    ckpt(&["-k", "-o", &img, &p.pid().to_string()]);
    p.kill();
    let info = String::from_utf8_lossy(&run(&["crfinfo", &img]).stdout).to_string();
    assert!(info.lines().filter(|l| l.starts_with("thread:")).count() >= threads, "{info}");
    let mut r = rstrt(&["--require-pid", &img]);
    progress(&mut r, "restored");
    progress(&mut r, "restored, again");
    assert!(r.wait().success(), "the restored program failed: {:?}", r.seen);
}

/// Compiles tests/targets/NAME.java with Debian's OpenJDK, once per test process: the
/// directory of its classes.
fn java_target(name: &str) -> Option<std::path::PathBuf> {
    let ok = std::path::Path::new("/usr/bin/javac").exists() && std::path::Path::new("/usr/bin/java").exists();
    if !require(ok, "java and javac (apt install openjdk-17-jdk-headless)") {
        return None;
    }
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets").join(format!("{name}.java"));
    let out = tmp.join(format!("java-{name}-{}", std::process::id()));
    let st = std::process::Command::new("/usr/bin/javac").arg("-d").arg(&out).arg(&src).status().expect("run javac");
    assert!(st.success(), "javac {}", src.display());
    Some(out)
}

/// A JVM (OpenJDK, G1, its JIT compiling the loops as they run) with a ticker, a queue between
/// two threads and threads churning memory: copied while it runs (rstrt --pidns), then
/// checkpointed (killed) and restored with its pid and tids: each goes on ticking, and every
/// number on the queue comes once and in order.
#[test]
fn java_ticks_on() {
    let Some(classes) = java_target("Ticker") else { return };
    let dir = tmpdir("java");
    let mut c = std::process::Command::new("/usr/bin/java");
    // No hsperfdata file (/tmp/hsperfdata_USER/PID, which a copy would share), a small heap.
    c.args(["-XX:-UsePerfData", "-Xmx128m", "-cp"]).arg(&classes).arg("Ticker").current_dir(&dir);
    ticks_on(c, &dir, 10);
}
