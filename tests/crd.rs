//! The kernel backend as far as this machine can test it (it cannot load modules: the module
//! itself is tested in a qemu guest, tests/kernel/run.sh and kmod/test/guest.sh): the ABI of
//! kmod/crd.h is the one src/dev speaks, and without the module `--backend crd` is refused with
//! one clear line while the process runs on.

mod support;
use std::path::Path;
use std::process::Command;
use support::*;

#[test]
fn the_abi_of_crd_h_is_the_one_src_dev_speaks() {
    let dir = tmpdir("crd-abi");
    let src = dir.join("abi.c");
    std::fs::write(
        &src,
        r#"#include <stddef.h>
#include <stdio.h>
#include "crd.h"
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %lu %lu %lu %d %d %d %d %d %d %d %d\n",
        sizeof(struct crd_checkpoint), sizeof(struct crd_restart),
        offsetof(struct crd_checkpoint, bytes), offsetof(struct crd_checkpoint, pages),
        sizeof(struct crd_map), sizeof(struct crd_run), offsetof(struct crd_restart, maps),
        offsetof(struct crd_restart, mm), offsetof(struct crd_restart, regs),
        offsetof(struct crd_restart, rseq_sig), offsetof(struct crd_restart, exe_map),
        (unsigned long)CRD_VERSION, (unsigned long)CRD_CHECKPOINT, (unsigned long)CRD_RESTART,
        CRD_ABI_VERSION, CRD_KILL, CRD_NO_BINARY_FILE, CRD_NO_SHARED_LIBRARIES, CRD_STOP,
        CRD_RESTART_NOTIFY, CRD_RESTART_STOP, CRD_RESTART_EXE);
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("abi");
    let kmod = Path::new(env!("CARGO_MANIFEST_DIR")).join("kmod");
    let st = Command::new("cc").arg("-Wall").arg("-I").arg(&kmod).arg("-o").arg(&exe).arg(&src).status().expect("cc");
    assert!(st.success(), "kmod/crd.h does not compile in user space");
    let out = Command::new(&exe).output().unwrap();
    let c = String::from_utf8_lossy(&out.stdout).trim().to_string();
    use crs::dev;
    use dev::restart::{MapArg, RunArg};
    use std::mem::{offset_of, size_of};
    let rust = format!(
        "{} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
        size_of::<dev::CheckpointArg>(),
        size_of::<dev::RestartArg>(),
        offset_of!(dev::CheckpointArg, bytes),
        offset_of!(dev::CheckpointArg, pages),
        size_of::<MapArg>(),
        size_of::<RunArg>(),
        offset_of!(dev::RestartArg, maps),
        offset_of!(dev::RestartArg, mm),
        offset_of!(dev::RestartArg, regs),
        offset_of!(dev::RestartArg, rseq_sig),
        offset_of!(dev::RestartArg, exe_map),
        dev::VERSION,
        dev::CHECKPOINT,
        dev::RESTART,
        dev::ABI_VERSION,
        dev::KILL,
        dev::NO_BINARY_FILE,
        dev::NO_SHARED_LIBRARIES,
        dev::STOP,
        dev::RESTART_NOTIFY,
        dev::RESTART_STOP,
        dev::RESTART_EXE,
    );
    assert_eq!(c, rust, "kmod/crd.h (left) and src/dev (right) disagree");
}

#[test]
fn without_the_module_the_crd_backend_is_refused_and_the_process_runs_on() {
    if Path::new(crs::dev::PATH).exists() {
        // A machine with the module loaded: the guest test covers it; here only its absence.
        eprintln!("{} exists here: the refusal without it is not tested", crs::dev::PATH);
        return;
    }
    let dir = tmpdir("crd-absent");
    let d = dir.to_str().unwrap();
    let mut p = start("memory", &[d, "4"], &dir);
    let img = dir.join("p.crf");
    let o = run(&["ckpt", "--backend", "crd", "-o", img.to_str().unwrap(), &p.pid().to_string()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains("/dev/crd does not exist") && err.contains("--backend ptrace"), "{err}");
    assert!(!img.exists(), "a refused checkpoint left an image");
    // Options the module does not do are refused before anything is touched.
    let o = run(&["ckpt", "--backend", "crd", "--shell-job", "-o", img.to_str().unwrap(), &p.pid().to_string()]);
    assert_eq!(o.status.code(), Some(crs::exit::USAGE), "{}", stderr(&o));
    assert!(stderr(&o).contains("--shell-job"), "{}", stderr(&o));
    let o = run(&["ckpt", "--backend", "kernel", &p.pid().to_string()]);
    assert_eq!(o.status.code(), Some(crs::exit::USAGE));
    assert!(stderr(&o).contains("choose auto, ptrace or crd"), "{}", stderr(&o));
    // The default backend is the ptrace engine here (ptrace is permitted).
    ckpt(&["-o", img.to_str().unwrap(), &p.pid().to_string()]);
    p.verdict("ok");
    // A restart through the module, likewise.
    let o = run(&["rstrt", "--backend", "crd", "-d", img.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains("/dev/crd does not exist"), "{err}");
    let o = run(&["rstrt", "--backend", "crd", "--pidns", img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(crs::exit::USAGE), "{}", stderr(&o));
}
