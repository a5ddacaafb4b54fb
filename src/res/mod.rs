//! The resources of a process, one file each, all of the same shape: its model, how it is
//! collected (from /proc and ptrace), its CRF section encoding, how it is restored, and its unit
//! tests. image.rs holds the model of a whole image and the one registry of sections.

pub mod caps;
pub mod clocks;
pub mod creds;
pub mod cwd;
pub mod deleted;
pub mod endpoints;
pub mod epoll;
pub mod fdescs;
pub mod fileid;
pub mod files;
pub mod head;
pub mod image;
pub mod inet;
pub mod inotify;
pub mod itimers;
pub mod knobs;
pub mod locks;
pub mod mdwe;
pub mod memfd;
pub mod memory;
pub mod netlink;
pub mod pending;
pub mod pipes;
pub mod ptimers;
pub mod ptys;
pub mod regs;
pub mod rlimits;
pub mod runs;
pub mod sched;
pub mod seccomp;
pub mod signals;
pub mod sysv;
pub mod task;
pub mod tcpconn;
pub mod tcpqueue;
pub mod terminal;
pub mod thp;
pub mod thread;
pub mod timerfd;
pub mod tree;
pub mod treecow;
pub mod treeshm;
pub mod unixpairs;
