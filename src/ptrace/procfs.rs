//! Parsers for /proc/PID files. The parsers are pure functions over text (tested on fixtures);
//! the `read_*` helpers add the file I/O and name the file in their errors.

use crate::error::{Error, Result};
use std::fs;

/// One line of /proc/PID/maps, plus the VmFlags of /proc/PID/smaps when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    /// The path or pseudo-name ("[heap]", "[vdso]", "/dev/zero (deleted)"), empty for anonymous.
    pub name: String,
    /// Two-letter VmFlags ("rd", "gd", "sh", ...), from smaps.
    pub vmflags: Vec<String>,
    /// The memory protection key (pkey_mprotect), from smaps where the CPU has them.
    pub pkey: u32,
    /// smaps shows no page of it in memory or in swap (Rss and Swap 0): its page table holds
    /// nothing to read.
    pub untouched: bool,
    /// smaps shows pages of it that another process maps too (Shared_Clean, Shared_Dirty):
    /// in private memory, pages a fork left shared copy-on-write.
    pub shares: bool,
}

impl MapEntry {
    /// The kernel's vdso or one of its vvar areas ([vvar], [vvar_vclock]...).
    pub fn is_vdso_or_vvar(&self) -> bool {
        self.name == "[vdso]" || self.name.starts_with("[vvar")
    }
    pub fn has_flag(&self, f: &str) -> bool {
        self.vmflags.iter().any(|x| x == f)
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

fn parse_map_line(line: &str) -> Option<MapEntry> {
    // 7f38d4c73000-7f38d4c75000 rw-p 00033000 fe:00 325843   /usr/lib/x86_64-linux-gnu/ld.so
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() != 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev: (u32::from_str_radix(maj, 16).ok()?, u32::from_str_radix(min, 16).ok()?),
        inode,
        name,
        vmflags: Vec::new(),
        pkey: 0,
        untouched: false,
        shares: false,
    })
}

/// Parses /proc/PID/smaps (or maps: then VmFlags stay empty).
pub fn parse_smaps(text: &str) -> Option<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            let last = out.last_mut()?;
            last.vmflags = rest.split_whitespace().map(str::to_string).collect();
        } else if let Some(rest) = line.strip_prefix("ProtectionKey:") {
            out.last_mut()?.pkey = rest.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            out.last_mut()?.untouched = rest.trim() == "0 kB";
        } else if let Some(rest) = line.strip_prefix("Shared_Clean:").or_else(|| line.strip_prefix("Shared_Dirty:")) {
            out.last_mut()?.shares |= rest.trim() != "0 kB";
        } else if let Some(rest) = line.strip_prefix("Swap:") {
            let last = out.last_mut()?;
            last.untouched &= rest.trim() == "0 kB";
        } else if line.split(' ').next().is_some_and(|w| w.contains('-') && !w.contains(':')) {
            let m = parse_map_line(line)?;
            // Shown again, changed: the kernel reads a running process's mappings a few at a
            // time, and resumes where it stopped, at a mapping that may have grown or moved
            // meanwhile (a heap, brk after brk: [heap] twice, the second a page longer). The
            // later view stands; the earlier gives way.
            while out.last().is_some_and(|p| p.start >= m.start) {
                out.pop();
            }
            if let Some(p) = out.last_mut().filter(|p| p.end > m.start) {
                p.end = m.start;
            }
            out.push(m);
        }
    }
    Some(out)
}

pub fn read_smaps(pid: i32) -> Result<Vec<MapEntry>> {
    let path = format!("/proc/{pid}/smaps");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_smaps(&text).ok_or_else(|| Error::Proc(format!("{path}: unexpected format")))
}

/// /proc/PID/maps: the mappings without what only smaps shows (VmFlags, protection key,
/// whether touched), at a fraction of its cost (smaps walks every page table).
pub fn read_maps(pid: i32) -> Result<Vec<MapEntry>> {
    let path = format!("/proc/{pid}/maps");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_smaps(&text).ok_or_else(|| Error::Proc(format!("{path}: unexpected format")))
}

/// Fields of /proc/PID/stat after the command name (which may contain spaces and parens).
pub fn parse_stat(text: &str) -> Option<(String, Vec<u64>, char)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest = text.get(close + 2..)?;
    let mut words = rest.split_whitespace();
    let state = words.next()?.chars().next()?;
    // Field 4 (ppid) onwards; signed fields are parsed as i64 and stored as u64.
    let nums = words
        .map(|w| w.parse::<i64>().map(|v| v as u64).or_else(|_| w.parse::<u64>()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .ok()?;
    Some((comm, nums, state))
}

/// The values of /proc/PID/stat that describe the mm layout and the process identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Its controlling terminal, in the kernel's encoding (field 7; 0: none).
    pub tty_nr: u32,
    /// That terminal's foreground process group (field 8; -1: none).
    pub tpgid: i32,
    pub num_threads: u64,
    /// When it started, in clock ticks after boot (field 22): with the pid, which process.
    pub starttime: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// A zombie's exit status as waitpid reports it (field 52; 0 while it runs).
    pub exit_code: i32,
}

pub fn stat_from_text(text: &str) -> Option<Stat> {
    let (comm, n, state) = parse_stat(text)?;
    // n[0] is field 4 (ppid); field k is n[k - 4].
    let f = |k: usize| n.get(k - 4).copied();
    Some(Stat {
        comm,
        state,
        ppid: f(4)? as i32,
        pgid: f(5)? as i32,
        sid: f(6)? as i32,
        tty_nr: f(7)? as u32,
        tpgid: f(8)? as i32,
        num_threads: f(20)?,
        starttime: f(22)?,
        start_code: f(26)?,
        end_code: f(27)?,
        start_stack: f(28)?,
        start_data: f(45)?,
        end_data: f(46)?,
        start_brk: f(47)?,
        arg_start: f(48)?,
        arg_end: f(49)?,
        env_start: f(50)?,
        env_end: f(51)?,
        exit_code: f(52).unwrap_or(0) as i32,
    })
}

pub fn read_stat(pid: i32) -> Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    stat_from_text(&text).ok_or_else(|| Error::Proc(format!("{path}: unexpected format")))
}

/// Waits (at most a second) until the process shows as stopped: a SIGSTOP sent before a detach
/// takes effect when the process next runs, and callers promise a stopped process.
pub fn wait_stopped(pid: i32) -> bool {
    for _ in 0..1000 {
        match read_stat(pid) {
            Ok(s) if s.state == 'T' => return true,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            Err(_) => return false,
        }
    }
    false
}

/// A "Key:\tvalue" field of /proc/PID/status.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// The four ids of a "Uid:" or "Gid:" line: real, effective, saved, filesystem.
pub fn status_ids(status: &str, key: &str) -> Option<[u32; 4]> {
    let v: Vec<u32> = status_field(status, key)?.split_whitespace().map(|w| w.parse().ok()).collect::<Option<_>>()?;
    v.try_into().ok()
}

/// The thread ids of process `pid` (/proc/PID/task), in no particular order.
pub fn tasks(pid: i32) -> Result<Vec<i32>> {
    let dir = format!("/proc/{pid}/task");
    let rd = fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
}

/// A thread's name (/proc/PID/task/TID/comm), empty if it is gone.
pub fn thread_comm(pid: i32, tid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default().trim_end_matches('\n').to_string()
}

pub fn read_status(pid: i32) -> Result<String> {
    let path = format!("/proc/{pid}/status");
    fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
}

/// pos and flags from /proc/PID/fdinfo/FD.
pub fn parse_fdinfo(text: &str) -> Option<(u64, u32)> {
    let pos = status_field(text, "pos")?.parse().ok()?;
    let flags = u32::from_str_radix(status_field(text, "flags")?, 8).ok()?;
    Some((pos, flags))
}

/// A pidfd of process `pid` (pidfd_open): it keeps naming that process even once its pid is
/// free again, and polls readable when it has exited.
pub fn pidfd(pid: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes integers and returns a new fd, owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Error::sys("pidfd_open", format!("pid {pid}"), nix::errno::Errno::last()));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// A copy of fd `fd` of process `pid` in crs (pidfd_getfd: the same open file, so what crs
/// asks of it is what the process would be told), to read state /proc does not show.
pub fn getfd(pid: i32, fd: i32, what: &str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let sys = |call: &str, what: String| Error::sys(call, what, nix::errno::Errno::last());
    let pidfd = pidfd(pid)?;
    // SAFETY: pidfd_getfd takes integers and returns a new fd, owned below.
    let ours = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if ours < 0 {
        return Err(sys("pidfd_getfd", format!("{what} (fd {fd} of pid {pid})")));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ours as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:00 1234                       /usr/bin/cat
Size:                  8 kB
Rss:                   8 kB
VmFlags: rd mr mw me sd
7e0000000000-7e0000002000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
VmFlags: rd wr mr mw me gd ac
7f0000000000-7f0000001000 rw-s 00000000 00:01 99                         /dev/zero (deleted)
VmFlags: rd wr sh mr mw me ms sd
7fff00000000-7fff00004000 r--p 00000000 00:00 0                          [vvar]
VmFlags: rd mr pf io de dd sd
7fff00004000-7fff00006000 r--p 00000000 00:00 0                          [vvar_vclock]
VmFlags: rd mr pf io de dd sd
7fff00006000-7fff00008000 r-xp 00000000 00:00 0                          [vdso]
VmFlags: rd ex mr mw me de sd
";

    #[test]
    fn smaps_with_split_vvar() {
        let m = parse_smaps(SMAPS).unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].name, "/usr/bin/cat");
        assert_eq!(m[0].dev, (0xfe, 0));
        assert!(m[1].has_flag("gd") && m[1].write && !m[1].shared);
        assert!(m[2].shared && m[2].name == "/dev/zero (deleted)");
        assert_eq!(m[4].name, "[vvar_vclock]");
        assert_eq!(m[5].len(), 0x2000);
    }

    /// A mapping shown twice, changed in between (a running process's heap as it grows), is
    /// the later view once, and the mappings stay in order and apart.
    #[test]
    fn a_mapping_shown_again_is_its_later_view() {
        let text = "1000-3000 rw-p 00000000 00:00 0 [heap]\n\
                    VmFlags: rd wr\n\
                    1000-4000 rw-p 00000000 00:00 0 [heap]\n\
                    VmFlags: rd wr mr\n\
                    8000-9000 rw-p 00000000 00:00 0 \n\
                    a000-c000 rw-p 00000000 00:00 0 \n\
                    b000-c000 r--p 00000000 00:00 0 \n";
        let m = parse_smaps(text).unwrap();
        let spans: Vec<(u64, u64)> = m.iter().map(|m| (m.start, m.end)).collect();
        assert_eq!(spans, vec![(0x1000, 0x4000), (0x8000, 0x9000), (0xa000, 0xb000), (0xb000, 0xc000)]);
        assert_eq!(m[0].vmflags, ["rd", "wr", "mr"]);
        assert!(!m[3].write);
    }

    #[test]
    fn stat_with_parens_in_comm() {
        let text = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 1000 100 \
                    18446744073709551615 4096 8192 140000 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 \
                    12288 12300 13000 14000 14010 14010 14100 0";
        let s = stat_from_text(text).unwrap();
        assert_eq!(s.comm, "a) b) c");
        assert_eq!(s.state, 'S');
        assert_eq!((s.ppid, s.pgid, s.sid), (1, 42, 42));
        assert_eq!(s.num_threads, 1);
        assert_eq!((s.start_code, s.end_code, s.start_stack), (4096, 8192, 140000));
        assert_eq!((s.start_data, s.end_data, s.start_brk), (12288, 12300, 13000));
        assert_eq!((s.arg_start, s.arg_end, s.env_start, s.env_end), (14000, 14010, 14010, 14100));
    }

    #[test]
    fn status_and_fdinfo() {
        let st = "Name:\tcat\nUmask:\t0022\nUid:\t1000\t1000\t1000\t1000\nTracerPid:\t0\n";
        assert_eq!(status_field(st, "Umask"), Some("0022"));
        assert_eq!(status_ids(st, "Uid"), Some([1000; 4]));
        let fi = "pos:\t42\nflags:\t02102001\nmnt_id:\t25\nino:\t7\n";
        assert_eq!(parse_fdinfo(fi), Some((42, 0o2102001)));
    }
}
