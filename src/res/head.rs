//! HEAD: who the process was and where it was checkpointed (the paper's header).

use crate::crf::{Dec, Enc, Result};
use crate::ptrace::procfs;

/// Checkpoint flags (the paper's CRS_* flags), recorded in the header.
pub const CKPT_KILL: u32 = 1;
pub const CKPT_NO_BINARY: u32 = 2;
pub const CKPT_NO_LIBS: u32 = 4;
pub const CKPT_STOP: u32 = 8;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// real, effective, saved, filesystem
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub comm: String,
    pub exe: String,
    pub hostname: String,
    pub kernel: String,
    pub boot_id: String,
    pub time_sec: i64,
    pub time_nsec: u32,
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(self.flags).u32(self.pid as u32).u32(self.ppid as u32).u32(self.pgid as u32).u32(self.sid as u32);
        for v in self.uids.iter().chain(self.gids.iter()) {
            e.u32(*v);
        }
        e.u32(self.groups.len() as u32);
        for g in &self.groups {
            e.u32(*g);
        }
        e.str(&self.comm).str(&self.exe).str(&self.hostname).str(&self.kernel).str(&self.boot_id);
        e.i64(self.time_sec).u32(self.time_nsec);
        e.into_bytes()
    }

    /// Who the frozen process `pid` is, from its stat and status, and where it is
    /// checkpointed (this node, now); `flags` are the CKPT_* of the checkpoint.
    pub fn collect(pid: i32, flags: u32, stat: &procfs::Stat, status: &str, exe: &str) -> crate::error::Result<Header> {
        use crate::error::Error;
        let ids =
            |k| procfs::status_ids(status, k).ok_or_else(|| Error::Proc(format!("/proc/{pid}/status: no {k} line")));
        let groups = procfs::status_field(status, "Groups")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
        let uts = nix::sys::utsname::uname().map_err(|e| Error::sys("uname", "this node", e))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(Header {
            flags,
            pid,
            ppid: stat.ppid,
            pgid: stat.pgid,
            sid: stat.sid,
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups,
            comm: stat.comm.clone(),
            exe: exe.to_string(),
            hostname: uts.nodename().to_string_lossy().into_owned(),
            kernel: uts.release().to_string_lossy().into_owned(),
            boot_id: super::fileid::boot_id(),
            time_sec: now.as_secs() as i64,
            time_nsec: now.subsec_nanos(),
        })
    }

    /// crfinfo's lines.
    pub fn describe(&self) -> Vec<String> {
        let h = self;
        vec![
            format!("process:   pid {} ({}), ppid {}, pgid {}, sid {}", h.pid, h.comm, h.ppid, h.pgid, h.sid),
            format!("exe:       {}", h.exe),
            format!("ids:       uid {:?} gid {:?} groups {:?}", h.uids, h.gids, h.groups),
            format!("taken on:  {} (kernel {}) at {} (unix time)", h.hostname, h.kernel, h.time_sec),
            format!("flags:     {:#x}", h.flags),
        ]
    }

    pub fn decode(b: &[u8], at: u64) -> Result<Header> {
        let mut d = Dec::new(b, at, "HEAD");
        let mut h = Header {
            flags: d.u32()?,
            pid: d.u32()? as i32,
            ppid: d.u32()? as i32,
            pgid: d.u32()? as i32,
            sid: d.u32()? as i32,
            ..Default::default()
        };
        for v in h.uids.iter_mut() {
            *v = d.u32()?;
        }
        for v in h.gids.iter_mut() {
            *v = d.u32()?;
        }
        let n = d.count(4)?;
        h.groups = (0..n).map(|_| d.u32()).collect::<Result<_>>()?;
        h.comm = d.str()?;
        h.exe = d.str()?;
        h.hostname = d.str()?;
        h.kernel = d.str()?;
        h.boot_id = d.str()?;
        h.time_sec = d.i64()?;
        h.time_nsec = d.u32()?;
        if h.pid <= 0 {
            return Err(d.bad_at(at, format!("pid {} is not valid", h.pid)));
        }
        // (uid_t)-1 means "leave unchanged" to setresuid and is ignored by setfsuid: an image
        // saying it would keep the restorer's own ids. No process can have it.
        if let Some((name, _)) = h.ids().find(|&(_, v)| v == NO_ID) {
            return Err(d.bad_at(at, format!("{name} {NO_ID} (-1) is not a valid id")));
        }
        if h.groups.len() > NGROUPS_MAX {
            return Err(d.bad_at(
                at,
                format!("{} supplementary groups, more than Linux allows ({NGROUPS_MAX})", h.groups.len()),
            ));
        }
        d.finish()?;
        Ok(h)
    }

    /// Every id the process had, each with its name as messages give it: the four uids, the
    /// four gids, then the supplementary groups.
    pub fn ids(&self) -> impl Iterator<Item = (&'static str, u32)> + Clone + '_ {
        const UIDS: [&str; 4] = ["uid", "effective uid", "saved uid", "filesystem uid"];
        const GIDS: [&str; 4] = ["gid", "effective gid", "saved gid", "filesystem gid"];
        UIDS.into_iter()
            .zip(self.uids)
            .chain(GIDS.into_iter().zip(self.gids))
            .chain(self.groups.iter().map(|&g| ("supplementary group", g)))
    }

    /// The user and group ids alone (not the supplementary groups), named.
    pub fn uid_gids(&self) -> impl Iterator<Item = (&'static str, u32)> + Clone + '_ {
        self.ids().take(8)
    }
}

/// (uid_t)-1: "unchanged" to the set*id calls, never a real id.
pub const NO_ID: u32 = u32::MAX;
/// The most supplementary groups a process can have (NGROUPS_MAX).
pub const NGROUPS_MAX: usize = 65536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            flags: CKPT_NO_LIBS,
            pid: 42,
            ppid: 1,
            pgid: 42,
            sid: 40,
            uids: [1, 2, 3, 4],
            gids: [5, 6, 7, 8],
            groups: vec![9, 10],
            comm: "counter".into(),
            exe: "/usr/bin/counter".into(),
            hostname: "node1".into(),
            kernel: "6.18.44".into(),
            boot_id: "abc".into(),
            time_sec: 1_700_000_000,
            time_nsec: 5,
        };
        assert_eq!(Header::decode(&h.encode(), 0).unwrap(), h);
        let names: Vec<_> = h.ids().map(|(n, _)| n).collect();
        assert_eq!(names[2], "saved uid");
        assert_eq!(names[8], "supplementary group");
    }

    #[test]
    fn an_id_of_minus_one_is_refused_wherever_it_is() {
        let ok = Header { pid: 7, uids: [1000; 4], gids: [1000; 4], groups: vec![1000], ..Default::default() };
        assert!(Header::decode(&ok.encode(), 0).is_ok());
        for i in 0..9 {
            let mut h = ok.clone();
            match i {
                0..4 => h.uids[i] = NO_ID,
                4..8 => h.gids[i - 4] = NO_ID,
                _ => h.groups[0] = NO_ID,
            }
            let e = Header::decode(&h.encode(), 0).unwrap_err().to_string();
            assert!(e.contains("is not a valid id"), "{e}");
        }
        let many = Header { groups: vec![5; NGROUPS_MAX + 1], ..ok };
        assert!(Header::decode(&many.encode(), 0).is_err());
    }
}
