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
    rstrt(&["--require-pid", &img]).verdict("ok");
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

/// A pid in use is named with its holder; --require-pid then refuses, and nothing is left.
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
