//! A process crs cannot checkpoint is refused with every reason at once, and `ckpt --check`
//! lists them touching nothing. Proven on a target with a child, a pipe it shares with that
//! child, a flock()ed file and a POSIX timer (its pipe's two fds are two reasons), which runs
//! on untouched.

mod support;
use support::*;

#[test]
fn every_reason_is_named_at_once_and_the_process_runs_on() {
    let dir = tmpdir("blockers");
    let d = dir.to_str().unwrap();
    let mut p = start("blocked", &[d], &dir);
    let pid = p.pid().to_string();
    let img = format!("{d}/x.crf");

    let o = run(&["ckpt", "-k", "-o", &img, &pid]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    for want in
        ["cannot be checkpointed, for 5 reasons", "it has children (pid ", "is a pipe", "FLOCK WRITE", "1 POSIX timer"]
    {
        assert!(e.contains(want), "lacks {want:?}: {e}");
    }
    assert!(!std::path::Path::new(&img).exists(), "an image was left behind");

    let o = run(&["ckpt", "--check", &pid]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(out.lines().all(|l| l.starts_with(&format!("pid {pid}: "))), "{out}");

    // Untouched, twice over: it still answers.
    p.verdict("ok");
}

#[test]
fn check_says_when_a_process_can_be_checkpointed() {
    let dir = tmpdir("blockers-none");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "4"], &dir);
    let o = run(&["ckpt", "--check", &p.pid().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("pid {} can be checkpointed", p.pid()));
    p.verdict("ok");
}
