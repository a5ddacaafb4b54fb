//! The one place that maps errors to exit codes (documented in crs(1), EXIT STATUS).

use crate::error::Error;

pub const OK: i32 = 0;
/// A syscall or I/O failure.
pub const FAILURE: i32 = 1;
/// Bad command line.
pub const USAGE: i32 = 2;
/// The process or image uses something crs cannot handle; nothing was changed.
pub const REFUSED: i32 = 3;
/// The image is corrupt, truncated or of an unknown version.
pub const BAD_IMAGE: i32 = 4;
/// Permission denied (ptrace access, another user's image).
pub const PERMISSION: i32 = 5;
/// The process does not exist or vanished.
pub const NO_PROCESS: i32 = 6;
/// The network or the destination failed (migrate, restartd); the process runs on at the source.
pub const NETWORK: i32 = 7;
/// Unknown applet name.
pub const UNKNOWN_APPLET: i32 = 127;

pub fn code(e: &Error) -> i32 {
    match e {
        Error::Usage(_) => USAGE,
        Error::Refused(_) | Error::NotHere { .. } | Error::Blocked { .. } => REFUSED,
        Error::Image(_) => BAD_IMAGE,
        Error::Permission(_) => PERMISSION,
        Error::Gone(_) => NO_PROCESS,
        Error::Net(_) | Error::Migration { .. } => NETWORK,
        Error::Sys { errno: nix::errno::Errno::EPERM, .. } => PERMISSION,
        Error::Sys { errno: nix::errno::Errno::ESRCH, .. } => NO_PROCESS,
        Error::Sys { .. } | Error::Io { .. } | Error::Proc(_) => FAILURE,
    }
}

/// Prints `applet: message` on stderr and returns the exit code for it.
pub fn report(applet: &str, e: &Error) -> i32 {
    eprintln!("{applet}: {e}");
    code(e)
}
