//! Registers survive a checkpoint taken inside a raw read(2): general-purpose registers, the
//! x87 stack and control word, MXCSR, and the vector registers (xmm, ymm, zmm and opmask k1-k7
//! as far as the CPU has them). The target (tests/targets/regs.c) loads known patterns in one asm
//! block, blocks in `syscall` read(0, buf, 1), stores the registers back after the (restarted)
//! read returns and reports one verdict line.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// support::start for this file's target.
fn start(args: &[&str], dir: &std::path::Path) -> support::Proc {
    support::start("regs", args, dir)
}

/// Waits (bounded) until `pid` is blocked in the target's raw read(0, buf, 1), so that the
/// checkpoint really interrupts that syscall. A wait for a fact, not a timing guess.
fn wait_in_read(pid: i32) {
    let path = format!("/proc/{pid}/syscall");
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(&path).unwrap_or_default();
        let f: Vec<&str> = s.split_whitespace().collect();
        // "NR arg1 arg2 arg3 ...": read(0, buf, 1)
        if f.len() > 3 && f[0] == "0" && f[1] == "0x0" && f[3] == "0x1" {
            return;
        }
        assert!(start.elapsed() < support::TIMEOUT, "pid {pid} never blocked in read: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts the target in `mode`, checkpoints and kills it, restores it, lets the read complete
/// and asserts on the target's own verdict.
fn survive(mode: &str) {
    let dir = support::tmpdir(&format!("regs-{mode}"));
    let img = dir.join("regs.crf");
    let img = img.to_str().unwrap();

    let mut p = start(&[mode], &dir);
    wait_in_read(p.pid());
    support::ckpt(&["-k", "-o", img, &p.pid().to_string()]);
    let st = p.wait();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "ckpt -k did not kill the target: {st:?}");

    let mut r = support::rstrt(&[img]);
    r.send("x");
    let verdict = r.expect("");
    assert!(verdict.starts_with("ok"), "target reported: {verdict:?} (saw {:?})", r.seen);
    assert_eq!(verdict, format!("ok regs {mode}"));
    let st = r.wait();
    assert!(st.success(), "restored target ended with {st:?}; saw {:?}", r.seen);
}

#[test]
fn sse_registers_survive() {
    survive("sse");
}

#[test]
fn avx_registers_survive() {
    if !std::arch::is_x86_feature_detected!("avx") {
        eprintln!("skipped: this CPU has no AVX");
        return;
    }
    survive("avx");
}

#[test]
fn avx512_registers_survive() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("skipped: this CPU has no AVX-512");
        return;
    }
    survive("avx512");
}

/// The same target without a checkpoint: proves the target's own check passes when nothing
/// happens in between, so a failure above is about the checkpoint.
#[test]
fn control_without_checkpoint() {
    let dir = support::tmpdir("regs-control");
    let mut p = start(&["sse"], &dir);
    p.send("x");
    let verdict = p.expect("");
    assert_eq!(verdict, "ok regs sse", "saw {:?}", p.seen);
    assert!(p.wait().success());
}
