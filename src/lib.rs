//! crs: checkpoint, restart and migrate running Linux processes.
//!
//! The library offers the paper's interface in Rust form:
//! - [`checkpoint`] freezes a process and writes its CRF image to any file descriptor (a file,
//!   a pipe, a socket), then lets it run on, stops it or kills it (`Flags`);
//! - [`restart`] / [`restart_path`] rebuild a process from an image read from any reader or a
//!   path, optionally stopped, and notify a pid when it is done.
//!
//! The applets (`ckpt`, `rstrt`, `crfinfo`, `crs check`) are thin layers over these calls;
//! [`migration`] moves processes between nodes. ARCHITECTURE.md, at the top of the sources,
//! tells how the code stands in floors, how an image flows, and how to add a resource.

pub mod aligned;
pub mod applets;
pub mod crf;
pub mod dev;
pub mod engine;
pub mod error;
pub mod exit;
pub mod migration;
pub mod net;
pub mod ptrace;
pub mod res;
pub mod text;

pub use engine::checkpoint::{Options as Flags, Report};
pub use engine::restore::{Options as RestartFlags, Restored};
pub use error::{Error, Result};

use std::io::{BufWriter, Read};
use std::os::fd::{AsFd, AsRawFd};

/// Checkpoints `pid` to `fd` (file, pipe or socket). For a regular file the data is flushed
/// and fsync'ed before the process is killed (`flags.kill`).
///
/// `flags.backend` chooses the engine: the userspace one (ptrace), the kernel module
/// (/dev/crd, see [`dev`]), or by default the first, and the second when ptrace is not
/// permitted on `pid` and /dev/crd is there.
pub fn checkpoint(fd: impl AsFd, pid: i32, flags: &Flags) -> Result<Report> {
    let fd = fd.as_fd();
    grow_pipe(fd);
    if dev::choose(flags.backend, pid) == dev::Backend::Crd {
        return dev::checkpoint(fd, pid, flags);
    }
    let dup = fd.try_clone_to_owned().map_err(|e| Error::io("image fd", e))?;
    let file = std::fs::File::from(dup);
    let out = BufWriter::with_capacity(1 << 20, file);
    let r = engine::checkpoint::checkpoint(pid, out, flags, |w| {
        let f = w.into_inner().map_err(|e| Error::io("image", e.into_error()))?;
        sync_if_file(&f)
    });
    // A refused PTRACE_SEIZE comes before the first byte of the image is written.
    match r {
        Err(Error::Permission(why)) if dev::fallback(flags.backend, pid, &why) => dev::checkpoint(fd, pid, flags),
        r => r,
    }
}

/// Whether `pid` can be checkpointed, touching nothing: Ok, or [`Error::Blocked`] with every
/// reason it cannot (each fd, mapping, child, lock... named), or why it cannot even be looked
/// at (no such process, another user's).
pub fn check(pid: i32, flags: &Flags) -> Result<()> {
    engine::checkpoint::precheck(pid, flags)
}

/// Checkpoints `pid` into `out` (a file, a pipe, a socket: any [`crf::Sink`]) and runs
/// `commit` with it once the last byte is written and before the process is killed or
/// stopped (`flags`): a flush, an fsync, a rename. If `commit` fails, the process runs on.
pub fn checkpoint_with<W: crf::Sink>(
    pid: i32,
    out: W,
    flags: &Flags,
    commit: impl FnOnce(W) -> Result<()>,
) -> Result<Report> {
    if dev::choose(flags.backend, pid) == dev::Backend::Crd {
        return dev::checkpoint_with(pid, out, flags, commit);
    }
    engine::checkpoint::checkpoint(pid, out, flags, commit)
}

/// Checkpoints `pid` into the image file `path`: written under a temporary name beside it and
/// renamed into place only when complete and synced, so a failed checkpoint never leaves a
/// truncated image under the final name. The file is created with mode 0600.
pub fn checkpoint_to_file(pid: i32, path: &str, flags: &Flags) -> Result<Report> {
    let r = match dev::choose(flags.backend, pid) {
        dev::Backend::Crd => return crd_to_file(pid, path, flags),
        _ => ptrace_to_file(pid, path, flags),
    };
    match r {
        Err(Error::Permission(why)) if dev::fallback(flags.backend, pid, &why) => crd_to_file(pid, path, flags),
        r => r,
    }
}

/// A temporary file beside `path` for its image, and the directory.
fn temp_beside(path: &str) -> Result<(std::fs::File, std::path::PathBuf, std::path::PathBuf)> {
    let p = std::path::Path::new(path);
    let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let base = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.to_string());
    let tmp = dir.join(format!(".{base}.{}.tmp", std::process::id()));
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(tmp.display().to_string(), e))?;
    Ok((f, tmp, dir.to_path_buf()))
}

/// [`checkpoint_to_file`] through /dev/crd: the module writes the temporary file (and syncs it
/// before it kills the process); it is renamed into place once complete.
fn crd_to_file(pid: i32, path: &str, flags: &Flags) -> Result<Report> {
    let (f, tmp, dir) = temp_beside(path)?;
    // Killed only once the image is synced under its name: the module leaves it stopped, and
    // dev::checkpoint_with kills it after the commit (or continues it if that fails).
    let r = dev::checkpoint_with(pid, &f, flags, |f| {
        f.sync_all().map_err(|e| Error::io(tmp.display().to_string(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn ptrace_to_file(pid: i32, path: &str, flags: &Flags) -> Result<Report> {
    use std::fs::{self, File};
    let (f, tmp, dir) = temp_beside(path)?;
    let out = BufWriter::with_capacity(1 << 20, f);
    let r = engine::checkpoint::checkpoint(pid, out, flags, |w| {
        let f: File = w.into_inner().map_err(|e| Error::io(tmp.display().to_string(), e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(tmp.display().to_string(), e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        // The directory entry must be durable too before the process may be killed.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    });
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Gives a pipe room for 1 MiB (the kernel's default is 64 KiB): an image through a pipe then
/// moves in a sixteenth of the wakeups. Anything else, or a refusal (an unprivileged user past
/// /proc/sys/fs/pipe-user-pages-soft), is left as it is.
pub fn grow_pipe(fd: impl AsFd) {
    let fd = fd.as_fd();
    let is_fifo = nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO);
    if is_fifo {
        // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    }
}

/// fsync for regular files; pipes and sockets have nothing to sync.
pub fn sync_if_file(f: &std::fs::File) -> Result<()> {
    let md = f.metadata().map_err(|e| Error::io("image", e))?;
    if md.is_file() {
        f.sync_all().map_err(|e| Error::io(format!("image (fd {})", f.as_raw_fd()), e))?;
    }
    Ok(())
}

/// Restarts the process whose image `input` yields. With `notify`, sends SIGUSR1 to that pid
/// (0: our parent) once the process is restored (the paper's RESTART_NOTIFY).
pub fn restart(input: impl Read, flags: &RestartFlags, notify: Option<i32>) -> Result<Restored> {
    let r = if dev::choose_restart(flags.backend) == dev::Backend::Crd {
        dev::restart::restart_from(input, flags, &|_| Ok(()))?
    } else {
        engine::restore::restore(crf::Stream(std::io::BufReader::with_capacity(1 << 20, input)), flags)?
    };
    if let Some(p) = notify {
        self::notify(p)?;
    }
    Ok(r)
}

/// An image file opened for a restore, with its metadata: looked at first with O_PATH (a
/// device is never opened, a FIFO only as one), then opened through that very inode; refused
/// to root when group or others may write it (anyone of them could have made it).
pub(crate) fn open_image(path: &str) -> Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let look =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path).map_err(|e| Error::io(path, e))?;
    let md = look.metadata().map_err(|e| Error::io(path, e))?;
    if !md.is_file() && !md.file_type().is_fifo() {
        return Err(Error::Usage(format!("{path} is not an image file (nor a pipe)")));
    }
    if nix::unistd::geteuid().is_root() && md.mode() & 0o022 != 0 {
        return Err(Error::Permission(format!(
            "{path} may be written by group or others, so anyone of them could have made it: refusing to restore it as root (chmod go-w)"
        )));
    }
    let f = std::fs::File::open(format!("/proc/self/fd/{}", look.as_raw_fd())).map_err(|e| Error::io(path, e))?;
    Ok((f, md))
}

/// Sends SIGUSR1 to `pid` (0: our parent) to say a restore is complete (RESTART_NOTIFY).
pub fn notify(pid: i32) -> Result<()> {
    let target = if pid == 0 { nix::unistd::getppid() } else { nix::unistd::Pid::from_raw(pid) };
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGUSR1)
        .map_err(|e| Error::sys("kill(SIGUSR1)", format!("notify pid {target}"), e))
}

/// [`restart_path`] that leaves the pages of the processes' private anonymous memory in the
/// image file until they touch them (rstrt --lazy; see engine::lazy): they run at once, and
/// the returned `Restored::lazy` serves their pages until all are in. Only a regular file,
/// only for root. Its pages are read in place (mapped) when nobody else may write it, else a
/// batch at a time; each batch is checked when read.
pub fn restart_lazy(path: &str, flags: &RestartFlags) -> Result<Restored> {
    use std::os::unix::fs::MetadataExt;
    if let Err(why) = engine::lazy::available() {
        return Err(Error::Refused(format!("rstrt --lazy cannot work here: {why}")));
    }
    if flags.backend == dev::Backend::Crd {
        return Err(Error::Usage("the crd backend does not restore lazily: use --backend ptrace".into()));
    }
    let (f, md) = open_image(path)?;
    if !md.is_file() {
        return Err(Error::Usage(format!(
            "{path} is not a regular file: rstrt --lazy reads pages from the image as the process touches them (restore a pipe without --lazy)"
        )));
    }
    let whose = format!("image file {path}");
    let owner = md.uid();
    let policy = |h: &res::head::Header| {
        if owner != 0 { res::creds::check_user_claims(h, owner, &whose) } else { Ok(()) }
    };
    // As restart_path: mapped only when nobody else may change it under us; the pages of a
    // mapped image are read in place, those of another are read (and checked) a batch at a
    // time, after the process ran.
    // The rest of the image is read through a small buffer, passing over the pages: a page
    // of headers read for each batch (faulting in a mapping's pages costs more).
    let pages = if owner == nix::unistd::geteuid().as_raw() && md.mode() & 0o022 == 0 {
        engine::lazy::Source::Mapped(std::sync::Arc::new(ptrace::mem::Mapped::new(&f, path)?))
    } else {
        engine::lazy::Source::File(f.try_clone().map_err(|e| Error::io(path, e))?)
    };
    let input = crf::Seekable(std::io::BufReader::with_capacity(4 << 10, f));
    engine::restore::restore_lazy(input, pages, flags, &policy)
}

/// [`restart`] from an image file. A regular file is mapped, and its pages go from the page
/// cache straight into the process.
///
/// Root restoring an image file that another user owns, or could have written, checks what
/// the image claims on the very bytes the restore decodes: the file is read once, in order,
/// and never reread (a check of one read followed by a restore from another would let the
/// owner rewrite the file in between).
pub fn restart_path(path: &str, flags: &RestartFlags, notify: Option<i32>) -> Result<Restored> {
    if dev::choose_restart(flags.backend) == dev::Backend::Crd {
        let r = dev::restart::restart(path, flags)?;
        if let Some(p) = notify {
            self::notify(p)?;
        }
        return Ok(r);
    }
    use std::os::unix::fs::MetadataExt;
    let (f, md) = open_image(path)?;
    let me = nix::unistd::geteuid();
    let others_may_write = md.mode() & 0o022 != 0;
    let r = if me.is_root() && md.uid() != 0 {
        // Root restoring a user's image: the user must not be able to say who the process is.
        let whose = format!("image file {path}");
        let policy = |h: &res::head::Header| res::creds::check_user_claims(h, md.uid(), &whose);
        let input = crf::Stream(std::io::BufReader::with_capacity(1 << 20, f));
        engine::restore::restore_checked(input, flags, &policy)?
    } else if md.is_file() && md.uid() == me.as_raw() && !others_may_write {
        // Mapping is only safe for a file nobody else may change under us (a truncation would
        // fault us; a rewrite would change pages after their checksum was verified).
        let m = ptrace::mem::Mapped::new(&f, path)?;
        engine::restore::restore(crf::Whole::new(m.as_slice()), flags)?
    } else {
        return restart(f, flags, notify);
    };
    if let Some(p) = notify {
        self::notify(p)?;
    }
    Ok(r)
}
