//! PIPES: the pipes whose both ends the process holds (a self-pipe, a wakeup pipe, libuv's
//! signal pipe), each with its capacity and the bytes written and not yet read. Their fds are
//! FILES records (KIND_PIPE, `id.ino` naming the pipe); a pipe with an end elsewhere is refused
//! (or carried as a stub). The bytes are copied without being consumed: the read end is taken
//! into crs (pidfd_getfd) and tee(2)d into a pipe of ours. A restore makes one pipe per
//! inode, fills it, and dups its ends to every fd that held them.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use nix::errno::Errno;
use std::os::fd::AsRawFd;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipe {
    pub ino: u64,
    /// F_GETPIPE_SZ.
    pub capacity: u32,
    pub data: Vec<u8>,
}

/// The most a pipe holds here (fs.pipe-max-size may be raised, but not past this in an image).
const MAX_CAPACITY: u32 = 1 << 26;

fn sys(call: &str, what: String) -> Error {
    Error::sys(call, what, Errno::last())
}

/// The capacity and unread bytes of pipe `ino`, whose read end the frozen process `pid` holds
/// as `fd`. Nothing is consumed.
pub fn collect(pid: i32, fd: i32, ino: u64) -> Result<Pipe> {
    let what = format!("{} (fd {fd} of pid {pid})", name(ino));
    let ours = crate::ptrace::procfs::getfd(pid, fd, &name(ino))?;
    // SAFETY: fcntl with an integer command on an fd we own.
    let capacity = unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if capacity < 0 {
        return Err(sys("fcntl(F_GETPIPE_SZ)", what));
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", "copy", e))?;
    // SAFETY: as above, on our own pipe; it may refuse a size past fs.pipe-max-size for a
    // user, then tee copies what fits and the rest is refused below.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, capacity) };
    let mut data = Vec::new();
    // SAFETY: tee between two pipe fds we hold; SPLICE_F_NONBLOCK: an empty pipe answers EAGAIN.
    let n = unsafe { libc::tee(ours.as_raw_fd(), w.as_raw_fd(), capacity as usize, libc::SPLICE_F_NONBLOCK) };
    if n < 0 && Errno::last() != Errno::EAGAIN {
        return Err(sys("tee", what));
    }
    drop(w);
    if n > 0 {
        let mut f = std::fs::File::from(r);
        std::io::Read::read_to_end(&mut f, &mut data).map_err(|e| Error::io("pipe copy", e))?;
    }
    // FIONREAD: what tee could not copy would be lost.
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(ours.as_raw_fd(), libc::FIONREAD, &mut queued) } == 0 && queued as usize > data.len() {
        return Err(Error::Refused(format!("{what} holds {queued} bytes, of which crs could copy {}", data.len())));
    }
    // An image carries a pipe's bytes in one field: a larger pipe (root's F_SETPIPE_SZ past
    // fs.pipe-max-size) would make an image no restore could read.
    if data.len() > crate::crf::MAX_FIELD {
        return Err(Error::Refused(format!(
            "{what} holds {} bytes unread, more than the {} an image carries for a pipe",
            data.len(),
            crate::crf::MAX_FIELD
        )));
    }
    Ok(Pipe { ino, capacity: capacity as u32, data })
}

/// Every pipe among `fds` of the frozen process `pid` (KIND_PIPE), copied through one of its
/// read ends.
pub fn collect_all(pid: i32, fds: &[crate::res::files::Fd]) -> Result<Vec<Pipe>> {
    use crate::res::files::{KIND_FIFO, KIND_PIPE, fifo_key};
    let mut out: Vec<Pipe> = Vec::new();
    for f in fds.iter().filter(|f| f.kind == KIND_PIPE || f.kind == KIND_FIFO) {
        let key = if f.kind == KIND_FIFO { fifo_key(f.id.ino) } else { f.id.ino };
        let reads = f.flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32;
        if reads && !out.iter().any(|p| p.ino == key) {
            out.push(collect(pid, f.fd, key)?);
        }
    }
    Ok(out)
}

pub fn encode(all: &[Pipe]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for p in all {
        e.u64(p.ino).u32(p.capacity).bytes(&p.data);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Pipe>> {
    let mut d = Dec::new(b, at, "PIPES");
    let n = d.count(16)?;
    let mut out: Vec<Pipe> = Vec::with_capacity(n);
    for _ in 0..n {
        let p = Pipe { ino: d.u64()?, capacity: d.u32()?, data: d.bytes()?.to_vec() };
        if p.capacity < 4096 || p.capacity > MAX_CAPACITY || p.data.len() > p.capacity as usize {
            return Err(d.bad_at(at, format!("pipe {}: capacity {} for {} bytes", p.ino, p.capacity, p.data.len())));
        }
        if out.iter().any(|q| q.ino == p.ino) {
            return Err(d.bad_at(at, format!("pipe {} twice", p.ino)));
        }
        out.push(p);
    }
    d.finish()?;
    Ok(out)
}

/// A pipe by its key: "pipe:[123]", or for a FIFO (bit 63 set) "fifo ino 456".
fn name(key: u64) -> String {
    if key & 1 << 63 != 0 { format!("fifo ino {}", key & !(1 << 63)) } else { format!("pipe:[{key}]") }
}

/// crfinfo's lines.
pub fn describe(all: &[Pipe]) -> Vec<String> {
    all.iter()
        .map(|p| {
            let what = if p.ino & 1 << 63 != 0 { name(p.ino) } else { format!("[{}]", p.ino) };
            format!("pipe:      {what} capacity {}, {} bytes unread", p.capacity, p.data.len())
        })
        .collect()
}

/// Gives the pipe (or FIFO) whose write end is `w` the capacity and bytes of `p`.
pub fn fill(c: &mut Ctl, w: i32, p: &Pipe, what: &str) -> Result<()> {
    if p.capacity != 65536 {
        c.fcntl(w, libc::F_SETPIPE_SZ, p.capacity as u64, "fcntl(F_SETPIPE_SZ)", what)?;
    }
    write_all(c, w, p, what)
}

/// Writes the bytes of `p` into the pipe whose write end is `w` (of its capacity already).
pub fn write_all(c: &mut Ctl, w: i32, p: &Pipe, what: &str) -> Result<()> {
    for chunk in p.data.chunks(4096) {
        let n = c.write_raw(w, chunk)?;
        if n != chunk.len() as i64 {
            return Err(Error::sys("write", format!("{what} in pid {}", c.pid()), Errno::from_raw((-n).max(0) as i32)));
        }
    }
    Ok(())
}

/// Makes pipe `p` here, in the restorer, for the processes it forks to inherit: a pipe of its
/// capacity, filled with its bytes. Returns (read end, write end), close-on-exec.
pub fn create_here(p: &Pipe) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let what = name(p.ino);
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", &what, e))?;
    // SAFETY: fcntl with integer arguments on a pipe we own.
    if p.capacity != 65536 && unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, p.capacity as libc::c_int) } < 0 {
        return Err(sys("fcntl(F_SETPIPE_SZ)", what));
    }
    let n = nix::unistd::write(&w, &p.data).map_err(|e| Error::sys("write", &what, e))?;
    if n != p.data.len() {
        return Err(Error::Proc(format!("{what}: {n} of its {} bytes written", p.data.len())));
    }
    Ok((r, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_a_copy_that_consumes_nothing() {
        let all = vec![Pipe { ino: 7, capacity: 65536, data: b"wake".to_vec() }];
        assert_eq!(decode(&encode(&all), 0).unwrap(), all);
        let bad = vec![Pipe { ino: 7, capacity: 4096, data: vec![0; 5000] }];
        assert!(decode(&encode(&bad), 0).is_err());
        // Our own pipe, with bytes in it: copied, and still there.
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"hello").unwrap();
        let me = std::process::id() as i32;
        let p = collect(me, r.as_raw_fd(), 1).unwrap();
        assert_eq!(p.data, b"hello");
        let mut b = [0u8; 8];
        assert_eq!(nix::unistd::read(&r, &mut b).unwrap(), 5);
    }
}
