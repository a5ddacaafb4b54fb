//! The ptrace toolkit beneath the resources: a traced task (seize, interrupt, detach on drop),
//! remote syscalls run inside it, bulk memory I/O, /proc parsers, and the x86_64 specifics.
//! It knows nothing of images or resources; src/res/ builds on it, src/engine/ above both.

pub mod arch;
pub mod calls;
pub mod mem;
pub mod pagemap;
pub mod procfs;
pub mod remote;
pub mod sys;
pub mod tracee;
pub mod uffd;
pub mod wp;

use crate::error::{Error, Result};
use remote::Remote;

/// An address in a tracee's address space: never one of ours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteAddr(pub u64);

impl std::fmt::Display for RemoteAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl RemoteAddr {
    pub fn offset(self, off: u64) -> RemoteAddr {
        RemoteAddr(self.0 + off)
    }
}

/// A small buffer mapped inside the tracee, used to pass syscall arguments that are pointers
/// (paths, structs) and to collect results. The default is none at all.
#[derive(Clone, Default)]
pub struct Scratch {
    pub addr: RemoteAddr,
    pub len: usize,
    /// Mapped executable too, so code can be copied there and run.
    pub exec: bool,
}

impl Scratch {
    /// Copies `bytes` to offset `off` of the scratch area; returns the remote address.
    pub fn put(&self, pid: i32, off: usize, bytes: &[u8]) -> Result<RemoteAddr> {
        if off + bytes.len() > self.len {
            return Err(Error::Proc(format!("scratch area too small for {} bytes", bytes.len())));
        }
        let at = self.addr.offset(off as u64);
        mem::write_runs(pid, &[(at.0, bytes.len())], bytes)?;
        Ok(at)
    }

    /// A NUL-terminated copy of `s` at offset `off`.
    pub fn put_cstr(&self, pid: i32, off: usize, s: &str) -> Result<RemoteAddr> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(pid, off, &b)
    }

    pub fn get(&self, pid: i32, off: usize, len: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        mem::read_runs(pid, &[(self.addr.0 + off as u64, len)], &mut b)?;
        Ok(b)
    }
}

/// A remote syscall driver plus its scratch area: what resources use to act inside a tracee.
pub struct Ctl<'a> {
    pub r: Remote<'a>,
    pub scratch: Scratch,
}

impl Ctl<'_> {
    pub fn pid(&self) -> i32 {
        self.r.t.pid
    }
}
