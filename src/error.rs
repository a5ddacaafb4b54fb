//! The engine's error type. Each variant carries what the user needs to act: the syscall and the
//! object (pid, address, path), or the reason a process or image is refused.

use crate::crf::CrfError;
use nix::errno::Errno;
use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// A syscall failed: `call` names it, `object` says on what (pid, address range, path).
    Sys { call: String, object: String, errno: Errno },
    /// A file could not be read or written.
    Io { path: String, err: io::Error },
    /// /proc said something we cannot parse.
    Proc(String),
    /// The image is malformed, truncated or of another version.
    Image(CrfError),
    /// The process or image uses something crs cannot (yet) handle; nothing was changed.
    Refused(String),
    /// The caller may not do this (ptrace access, restoring another user's image).
    Permission(String),
    /// The target process disappeared while we worked on it.
    Gone(i32),
    /// Bad arguments.
    Usage(String),
    /// The network or the peer failed us (migrate, restartd).
    Net(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn sys(call: impl Into<String>, object: impl Into<String>, errno: Errno) -> Error {
        Error::Sys { call: call.into(), object: object.into(), errno }
    }
    pub fn io(path: impl Into<String>, err: io::Error) -> Error {
        Error::Io { path: path.into(), err }
    }
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Sys { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sys { call, object, errno } => write!(f, "{call} on {object}: {}", errno.desc()),
            Error::Io { path, err } => write!(f, "{path}: {err}"),
            Error::Proc(s) => write!(f, "{s}"),
            Error::Image(e) => write!(f, "{e}"),
            Error::Refused(s) | Error::Permission(s) | Error::Usage(s) | Error::Net(s) => write!(f, "{s}"),
            Error::Gone(pid) => write!(f, "no process {pid}: it does not exist or has exited"),
        }
    }
}

impl std::error::Error for Error {}

impl From<crate::net::NetError> for Error {
    fn from(e: crate::net::NetError) -> Self {
        Error::Net(e.to_string())
    }
}

impl From<CrfError> for Error {
    fn from(e: CrfError) -> Self {
        Error::Image(e)
    }
}
