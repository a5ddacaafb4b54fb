//! TERMINAL: the controlling terminal of a shell job (`ckpt --shell-job`), its modes and its
//! window size, for `rstrt --shell-job` to put the job on the terminal rstrt runs on.
//!
//! At checkpoint, the job's terminal is the controlling terminal of its first process. With
//! `--shell-job` every fd on it (any number, by its /dev/pts path or by /dev/tty) is a FILES
//! record of kind `KIND_TTY`, and the image holds the terminal's termios (as TCGETS shows
//! them), its window size and its foreground process group. Without `--shell-job`, fds 0-2 on
//! a terminal are carried as stdio (rstrt's own are used) and any other fd on a terminal is
//! refused, naming the option.
//!
//! At restore, `--shell-job` makes the job a member of rstrt's session and process group (the
//! one the shell made for rstrt), so that the terminal's signals (^C, ^Z) reach it and the
//! shell's job control (`fg`, `bg`) moves it; its fds on the terminal are opened on rstrt's
//! controlling terminal, /dev/tty fds on /dev/tty. Before it runs, the terminal gets the
//! image's modes; once it runs, the processes of the foreground group get SIGWINCH, so that
//! a full-screen program learns the size of a terminal whose screen it never drew, and
//! redraws. Not carried: what the screen showed, unread input, the exclusive mode
//! (TIOCEXCL), a stopped output (^S); only the N_TTY line discipline is.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::procfs;
use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The kernel's NCCS: how many control characters TCGETS shows.
const NCCS: usize = 19;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Terminal {
    /// Its path at checkpoint (/dev/pts/3), for messages.
    pub path: String,
    /// Its device number at checkpoint.
    pub rdev: u64,
    pub modes: Modes,
    /// Its foreground process group then (the image's pid; 0: none).
    pub foreground: i32,
}

/// A terminal's modes (termios, as TCGETS shows them) and window size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modes {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; NCCS],
    /// Rows, columns, and the pixel sizes (TIOCGWINSZ).
    pub winsize: [u16; 4],
}

impl Modes {
    /// The modes of terminal `fd` (`what` names it), refused unless its line discipline is
    /// N_TTY.
    pub fn read(fd: RawFd, what: &str) -> Result<Modes> {
        let mut ldisc: libc::c_int = 0;
        // SAFETY: TIOCGETD writes one int into `ldisc`, which we own.
        if unsafe { libc::ioctl(fd, libc::TIOCGETD, &mut ldisc) } != 0 {
            return Err(Error::sys("ioctl(TIOCGETD)", what, Errno::last()));
        }
        if ldisc != 0 {
            return Err(Error::Refused(format!(
                "{what} uses line discipline {ldisc}, not N_TTY, which crs does not restore"
            )));
        }
        let t = termios_of(fd, what)?;
        let mut w = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into `w`, which we own.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } != 0 {
            return Err(Error::sys("ioctl(TIOCGWINSZ)", what, Errno::last()));
        }
        let mut cc = [0u8; NCCS];
        cc.copy_from_slice(&t.c_cc[..NCCS]);
        Ok(Modes {
            iflag: t.c_iflag,
            oflag: t.c_oflag,
            cflag: t.c_cflag,
            lflag: t.c_lflag,
            line: t.c_line,
            cc,
            winsize: [w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel],
        })
    }

    /// Gives terminal `fd` these modes (not the window size), at once.
    pub fn set(&self, fd: RawFd, what: &str) -> Result<()> {
        let mut t = termios_of(fd, what)?;
        t.c_iflag = self.iflag;
        t.c_oflag = self.oflag;
        t.c_cflag = self.cflag;
        t.c_lflag = self.lflag;
        t.c_line = self.line;
        t.c_cc[..NCCS].copy_from_slice(&self.cc);
        // SAFETY: `t` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            return Err(Error::sys("tcsetattr", what, Errno::last()));
        }
        Ok(())
    }

    /// Gives terminal `fd` this window size.
    pub fn set_winsize(&self, fd: RawFd, what: &str) -> Result<()> {
        let [ws_row, ws_col, ws_xpixel, ws_ypixel] = self.winsize;
        let w = libc::winsize { ws_row, ws_col, ws_xpixel, ws_ypixel };
        // SAFETY: TIOCSWINSZ reads one winsize, which lives across the call.
        if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &w) } != 0 {
            return Err(Error::sys("ioctl(TIOCSWINSZ)", what, Errno::last()));
        }
        Ok(())
    }

    /// These modes with every byte passing unchanged in both directions: no line editing,
    /// echo, signals or translation, and reads that never wait.
    pub fn raw(&self) -> Modes {
        let mut m = *self;
        m.lflag &= !(libc::ICANON | libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL | libc::ISIG | libc::IEXTEN);
        m.iflag &= !(libc::ICRNL
            | libc::INLCR
            | libc::IGNCR
            | libc::ISTRIP
            | libc::IXON
            | libc::IXOFF
            | libc::IUCLC
            | libc::PARMRK
            | libc::BRKINT
            | libc::INPCK);
        m.oflag &= !libc::OPOST;
        m.cc[libc::VMIN] = 0;
        m.cc[libc::VTIME] = 0;
        m
    }

    pub fn encode(&self, e: &mut Enc) {
        e.u32(self.iflag).u32(self.oflag).u32(self.cflag).u32(self.lflag).u8(self.line);
        for &c in &self.cc {
            e.u8(c);
        }
        for &w in &self.winsize {
            e.u32(w as u32);
        }
    }

    pub fn decode(d: &mut Dec) -> CrfResult<Modes> {
        let at = d.offset();
        let mut m = Modes { iflag: d.u32()?, oflag: d.u32()?, cflag: d.u32()?, lflag: d.u32()?, ..Default::default() };
        m.line = d.u8()?;
        for c in m.cc.iter_mut() {
            *c = d.u8()?;
        }
        for w in m.winsize.iter_mut() {
            let v = d.u32()?;
            *w = u16::try_from(v).map_err(|_| d.bad_at(d.offset() - 4, format!("invalid window size {v}")))?;
        }
        if m.line != 0 {
            return Err(d.bad_at(at, format!("line discipline {} (crs restores N_TTY, 0)", m.line)));
        }
        Ok(m)
    }

    /// "24 rows, 80 columns, raw, echo".
    pub fn describe(&self) -> String {
        format!(
            "{} rows, {} columns, {}{}",
            self.winsize[0],
            self.winsize[1],
            if self.lflag & libc::ICANON != 0 { "canonical" } else { "raw" },
            if self.lflag & libc::ECHO != 0 { ", echo" } else { "" },
        )
    }
}

fn termios_of(fd: RawFd, what: &str) -> Result<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid out-pointer for the call.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(Error::sys("tcgetattr", what, Errno::last()));
    }
    Ok(t)
}

/// Whether an fd whose /proc link reads `target` may be a terminal.
pub fn named_like_one(target: &str) -> bool {
    target.starts_with("/dev/pts/") || target.starts_with("/dev/tty") || target == "/dev/console"
}

/// The controlling terminal of process `pid` (its device number), if it has one.
pub fn controlling(pid: i32) -> Option<u64> {
    let nr = procfs::read_stat(pid).ok()?.tty_nr;
    (nr != 0).then(|| from_kernel(nr))
}

/// A device number from the kernel's 32-bit encoding (stat's tty_nr, TIOCGDEV's answer):
/// major in bits 8-19, minor in bits 0-7 and 20-31.
pub fn from_kernel(nr: u32) -> u64 {
    libc::makedev((nr >> 8) & 0xfff, (nr & 0xff) | ((nr >> 12) & 0xfff00))
}

/// The foreground process group of `pid`'s controlling terminal (stat field 8), if any.
fn foreground_of(pid: i32) -> i32 {
    procfs::read_stat(pid).map_or(0, |s| s.tpgid.max(0))
}

/// The device an open terminal is (TIOCGDEV): for an fd opened on /dev/tty, the terminal it
/// stands for.
fn device_of(fd: &OwnedFd) -> Option<u64> {
    let mut dev: libc::c_uint = 0;
    // SAFETY: TIOCGDEV writes one unsigned int into `dev`, which we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGDEV, &mut dev) } != 0 {
        return None;
    }
    Some(from_kernel(dev))
}

/// The terminal fd `fd` of `pid` (named `target`, of device `rdev` by stat) is: its own device
/// for /dev/pts/N and the like, the terminal it stands for when opened as /dev/tty.
pub fn device(pid: i32, fd: i32, target: &str, rdev: u64) -> u64 {
    if target != "/dev/tty" {
        return rdev;
    }
    let real = procfs::getfd(pid, fd, "/dev/tty").ok().and_then(|f| device_of(&f));
    real.or_else(|| controlling(pid)).unwrap_or(rdev)
}

/// Reads the state of terminal fd `fd` of the frozen process `pid`; `root`'s foreground group.
pub fn collect(pid: i32, fd: i32, path: &str, rdev: u64, root: i32) -> Result<Terminal> {
    let f = procfs::getfd(pid, fd, path)?;
    let modes = Modes::read(f.as_raw_fd(), &format!("its terminal {path} (fd {fd} of pid {pid})"))?;
    Ok(Terminal { path: path.to_string(), rdev, modes, foreground: foreground_of(root) })
}

/// rstrt's controlling terminal, which `rstrt --shell-job` gives the job.
pub struct Here {
    /// Open on /dev/tty.
    pub tty: OwnedFd,
    /// The path the job's terminal fds are opened on: the one rstrt's fds 0-2 show for it, or
    /// /dev/tty.
    pub path: String,
}

impl Here {
    pub fn find() -> Result<Here> {
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: open reads a NUL-terminated literal.
        let raw = unsafe { libc::open(c"/dev/tty".as_ptr(), flags) };
        if raw < 0 {
            return Err(match Errno::last() {
                Errno::ENXIO => Error::Refused(
                    "--shell-job puts the job on rstrt's terminal, and rstrt has none: run it from a shell on a terminal"
                        .into(),
                ),
                e => Error::sys("open", "/dev/tty", e),
            });
        }
        // SAFETY: a fresh fd nobody else owns.
        let tty = unsafe { OwnedFd::from_raw_fd(raw) };
        let dev = device_of(&tty);
        let path = (0..3)
            .find_map(|n| {
                let link = std::fs::read_link(format!("/proc/self/fd/{n}")).ok()?;
                let link = link.to_str()?.to_string();
                let st = nix::sys::stat::stat(link.as_str()).ok()?;
                (named_like_one(&link) && link != "/dev/tty" && Some(st.st_rdev) == dev).then_some(link)
            })
            .unwrap_or_else(|| "/dev/tty".to_string());
        Ok(Here { tty, path })
    }

    /// Whether rstrt's process group is the terminal's foreground one.
    pub fn foreground(&self) -> bool {
        // SAFETY: tcgetpgrp and getpgrp take and return integers.
        unsafe { libc::tcgetpgrp(self.tty.as_raw_fd()) == libc::getpgrp() }
    }

    /// Gives the terminal the image's modes (with SIGTTOU blocked meanwhile: a restore in the
    /// background sets them too, for the job brought to the foreground later).
    pub fn apply(&self, t: &Terminal) -> Result<()> {
        let mut ttou = nix::sys::signal::SigSet::empty();
        ttou.add(nix::sys::signal::Signal::SIGTTOU);
        let old = ttou.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);
        let r = t.modes.set(self.tty.as_raw_fd(), &self.path);
        if let Ok(old) = old {
            let _ = old.thread_set_mask();
        }
        r
    }
}

/// Sends SIGWINCH to those of `pids` in our process group, when it has the terminal: they
/// are the job's foreground, and learn the terminal's size (and redraw).
pub fn winch(here: &Here, pids: &[i32]) {
    if !here.foreground() {
        return;
    }
    // SAFETY: getpgrp takes nothing.
    let ours = unsafe { libc::getpgrp() };
    for &p in pids {
        if procfs::read_stat(p).is_ok_and(|s| s.pgid == ours) {
            // SAFETY: kill takes integers.
            unsafe { libc::kill(p, libc::SIGWINCH) };
        }
    }
}

pub fn encode(t: &Terminal) -> Vec<u8> {
    let mut e = Enc::new();
    t.modes.encode(&mut e);
    e.u64(t.rdev).u32(t.foreground as u32).str(&t.path);
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Option<Terminal>> {
    let mut d = Dec::new(b, at, "TERMINAL");
    let modes = Modes::decode(&mut d)?;
    let t = Terminal { modes, rdev: d.u64()?, foreground: d.u32()? as i32, path: d.str()? };
    d.finish()?;
    Ok(Some(t))
}

pub fn describe(t: &Terminal) -> Vec<String> {
    vec![format!(
        "terminal:  {} ({}), foreground group {}",
        crate::text::printable(&t.path),
        t.modes.describe(),
        t.foreground
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = Terminal {
            path: "/dev/pts/3".into(),
            rdev: libc::makedev(136, 3),
            modes: Modes {
                iflag: 0o2400,
                oflag: 5,
                cflag: 0o277,
                lflag: 0o105073,
                line: 0,
                cc: [3; NCCS],
                winsize: [24, 80, 0, 0],
            },
            foreground: 4242,
        };
        assert_eq!(decode(&encode(&t), 0).unwrap(), Some(t));
    }

    #[test]
    fn tty_nr_is_decoded() {
        // tty_nr 34816 is /dev/pts/0 (136, 0); 34817 /dev/pts/1.
        let dev = from_kernel(34817);
        assert_eq!((libc::major(dev), libc::minor(dev)), (136, 1));
        // Minors past 255 use the high bits: /dev/pts/300 is (136, 300).
        let dev = from_kernel((136 << 8) | (300 & 0xff) | ((300 & !0xff) << 12));
        assert_eq!((libc::major(dev), libc::minor(dev)), (136, 300));
    }
}
