//! The engine's error type. Each variant carries what the user needs to act: the syscall and the
//! object (pid, address, path), or the reason a process or image is refused.

use crate::crf::CrfError;
use crate::text::printable;
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
    /// The process cannot be checkpointed, for every one of these reasons (each names what:
    /// "fd 3 is a pipe (pipe:[123])"); nothing was changed.
    Blocked { pid: i32, reasons: Vec<String> },
    /// The image does not fit this node. `public` names the part of the image (what its sender
    /// may be told); `detail` says what differs here (sizes, build-ids, errors: this node's
    /// own business, for its log and its local user).
    NotHere { public: String, detail: String },
    /// The caller may not do this (ptrace access, restoring another user's image).
    Permission(String),
    /// The target process disappeared while we worked on it.
    Gone(i32),
    /// Bad arguments.
    Usage(String),
    /// The network or the peer failed us (migrate, restartd).
    Net(crate::net::NetError),
    /// A migration failed; `left` says where that left the process.
    Migration { cause: Box<Error>, left: Left },
}

/// Where a failed migration left the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// It runs on at the source, where it was; no copy runs at the destination.
    RunningHere,
    /// The answer to Commit was lost: the destination may or may not run its copy
    /// (`remote_pid` at `peer`), so the source is kept, stopped, as `pid`.
    StoppedHere { pid: i32, remote_pid: i32, peer: String },
    /// A copy (--keep) whose last answer was lost: it may or may not run at the destination;
    /// the source runs on.
    CopyMayRun { remote_pid: i32, peer: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn sys(call: impl Into<String>, object: impl Into<String>, errno: Errno) -> Error {
        Error::Sys { call: call.into(), object: object.into(), errno }
    }
    pub fn io(path: impl Into<String>, err: io::Error) -> Error {
        Error::Io { path: path.into(), err }
    }
    /// The process is blocked for `reasons`, or Ok when there are none.
    pub fn blocked(pid: i32, reasons: Vec<String>) -> Result<()> {
        if reasons.is_empty() { Ok(()) } else { Err(Error::Blocked { pid, reasons }) }
    }
    /// Adds the reasons of a [`Error::Blocked`] to `all`; any other error is returned.
    pub fn gather<T>(r: Result<T>, all: &mut Vec<String>) -> Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(Error::Blocked { reasons, .. }) => {
                all.extend(reasons);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
    pub fn not_here(public: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::NotHere { public: public.into(), detail: detail.into() }
    }
    /// The message for a remote party (restartd's client): without this node's own details.
    pub fn public(&self) -> String {
        match self {
            Error::NotHere { public, .. } => printable(&format!("{public} (the destination's log says why)")),
            e => e.to_string(),
        }
    }
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Sys { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    /// Messages carry strings from images and peers (paths, names): control characters are
    /// escaped, so that no message can forge a line of a log or drive a terminal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::Sys { call, object, errno } => format!("{call} on {object}: {}", errno.desc()),
            Error::Io { path, err } => format!("{path}: {err}"),
            Error::Image(e) => e.to_string(),
            Error::NotHere { public, detail } => format!("{public}: {detail}"),
            Error::Proc(s) | Error::Refused(s) | Error::Permission(s) | Error::Usage(s) => s.clone(),
            Error::Net(e) => e.to_string(),
            Error::Migration { cause, left: Left::RunningHere } => format!("{cause}; the process runs on here"),
            Error::Migration { cause, left: Left::StoppedHere { pid, remote_pid, peer } } => format!(
                "{cause}; the destination may or may not run the process (pid {remote_pid} there): it is left stopped here as pid {pid}; check {peer}, then kill or continue it"
            ),
            Error::Migration { cause, left: Left::CopyMayRun { remote_pid, peer } } => {
                format!("{cause}; the copy (pid {remote_pid} on {peer}) may or may not run: check there")
            }
            Error::Gone(pid) => format!("no process {pid}: it does not exist or has exited"),
            Error::Blocked { pid, reasons } if reasons.len() == 1 => {
                format!("pid {pid}: {}; crs cannot checkpoint that yet", reasons[0])
            }
            Error::Blocked { pid, reasons } => format!(
                "pid {pid} cannot be checkpointed, for {} reasons: {}; crs cannot checkpoint these yet",
                reasons.len(),
                reasons.join("; ")
            ),
        };
        f.write_str(&printable(&s))
    }
}

impl std::error::Error for Error {}

impl From<crate::net::NetError> for Error {
    fn from(e: crate::net::NetError) -> Self {
        Error::Net(e)
    }
}

impl From<CrfError> for Error {
    fn from(e: CrfError) -> Self {
        Error::Image(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_of_plain_text() {
        let e = Error::Refused("fd 3: /tmp/a\nrestored pid 1 (x, uid 0), running\u{1b}[2J".into());
        assert_eq!(e.to_string(), "fd 3: /tmp/a\\nrestored pid 1 (x, uid 0), running\\u{1b}[2J");
        let e = Error::not_here("fd 3: /srv/x", "shrank to 1 byte (was 2)");
        assert_eq!(e.public(), "fd 3: /srv/x (the destination's log says why)");
        assert_eq!(e.to_string(), "fd 3: /srv/x: shrank to 1 byte (was 2)");
    }
}
