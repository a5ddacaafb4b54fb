//! MMSTRUCT: the mm layout (code, data, brk, stack, arguments, environment, auxv, exe),
//! restored with PR_SET_MM_MAP.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use crate::res::fileid::FileId;
use nix::errno::Errno;
use std::os::unix::fs::MetadataExt;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MmStruct {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u8>,
    pub exe: Option<FileId>,
}

impl MmStruct {
    fn fields(&self) -> [u64; 11] {
        [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
        ]
    }

    /// The frozen process's mm layout, from its stat, its program break (which only the
    /// process can tell: `brk`), auxv and exe link. Also returns the exe link's path.
    pub fn collect(pid: i32, stat: &crate::ptrace::procfs::Stat, brk: u64) -> Result<(MmStruct, String)> {
        let exe_link = format!("/proc/{pid}/exe");
        let exe_path = std::fs::read_link(&exe_link).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let exe = FileId::of(&exe_link, &exe_path, true).ok().filter(|_| !exe_path.ends_with(" (deleted)"));
        let auxv_path = format!("/proc/{pid}/auxv");
        let auxv = std::fs::read(&auxv_path).map_err(|e| Error::io(&auxv_path, e))?;
        let mm = MmStruct {
            start_code: stat.start_code,
            end_code: stat.end_code,
            start_data: stat.start_data,
            end_data: stat.end_data,
            start_brk: stat.start_brk,
            brk,
            start_stack: stat.start_stack,
            arg_start: stat.arg_start,
            arg_end: stat.arg_end,
            env_start: stat.env_start,
            env_end: stat.env_end,
            auxv,
            exe,
        };
        Ok((mm, exe_path))
    }

    /// crfinfo's lines.
    pub fn describe(&self) -> Vec<String> {
        let m = self;
        vec![
            format!(
                "mm:        code {:#x}-{:#x} data {:#x}-{:#x} brk {:#x}-{:#x} stack {:#x}",
                m.start_code, m.end_code, m.start_data, m.end_data, m.start_brk, m.brk, m.start_stack
            ),
            format!(
                "           args {:#x}-{:#x} env {:#x}-{:#x} auxv {} bytes",
                m.arg_start,
                m.arg_end,
                m.env_start,
                m.env_end,
                m.auxv.len()
            ),
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        for v in self.fields() {
            e.u64(v);
        }
        e.bytes(&self.auxv);
        e.u8(self.exe.is_some() as u8);
        if let Some(x) = &self.exe {
            x.encode(&mut e);
        }
        e.into_bytes()
    }

    pub fn decode(b: &[u8], at: u64) -> CrfResult<MmStruct> {
        let mut d = Dec::new(b, at, "MMSTRUCT");
        // Fields are read in the order they are written here, which is the image's.
        let mut m = MmStruct {
            start_code: d.u64()?,
            end_code: d.u64()?,
            start_data: d.u64()?,
            end_data: d.u64()?,
            start_brk: d.u64()?,
            brk: d.u64()?,
            start_stack: d.u64()?,
            arg_start: d.u64()?,
            arg_end: d.u64()?,
            env_start: d.u64()?,
            env_end: d.u64()?,
            auxv: d.bytes()?.to_vec(),
            exe: None,
        };
        if !m.auxv.len().is_multiple_of(16) || m.auxv.len() > 512 {
            return Err(d.bad_at(at, format!("auxv of {} bytes is not valid", m.auxv.len())));
        }
        m.exe = if d.u8()? != 0 { Some(FileId::decode(&mut d)?) } else { None };
        if let Some(x) = m.exe.as_ref().filter(|x| x.file_type() != libc::S_IFREG) {
            return Err(d.bad_at(at, format!("the executable {} is not a regular file", x.path)));
        }
        d.finish()?;
        Ok(m)
    }

    /// PR_SET_MM_MAP inside the restored child. Returns whether /proc/PID/exe names the image's
    /// executable. `exe` is the executable as the child has it open (the restorer opened it
    /// before the child was forked; see engine::restore), when the link may be set at all.
    /// Changing the exe link needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), an executable
    /// file, and the old exe unmapped; when it fails the rest is set without it.
    pub fn restore(&self, c: &mut Ctl, exe: Option<i32>) -> Result<bool> {
        let pid = c.pid();
        let auxv_at = c.scratch.put(pid, 512, &self.auxv)?;
        // The child was forked from rstrt: its exe is ours. If that is already the image's
        // executable (a restored crs), there is nothing to change.
        let ours = std::fs::metadata("/proc/self/exe").ok().map(|m| (m.dev(), m.ino()));
        let already = self.exe.as_ref().is_some_and(|x| ours == Some((x.dev, x.ino)));
        let exe_fd: i64 = match exe {
            Some(fd) if !already => fd as i64,
            _ => -1,
        };
        let set = |c: &mut Ctl, fd: i64| -> Result<i64> {
            let mut e = Enc::new();
            for v in self.fields() {
                e.u64(v);
            }
            e.u64(auxv_at.0).u32(self.auxv.len() as u32).u32(fd as u32);
            let map = c.scratch.put(pid, 0, e.as_slice())?;
            c.prctl_raw(libc::PR_SET_MM, [libc::PR_SET_MM_MAP as u64, map.0, e.len() as u64, 0])
        };
        let mut r = set(c, exe_fd)?;
        let mut exe_set = already || (exe_fd >= 0 && r == 0);
        if exe_fd >= 0 && r < 0 {
            // EPERM (no capability), EBUSY (old exe still mapped), EACCES (not executable here):
            // the exe link is the one thing we can go without.
            r = set(c, -1)?;
            exe_set = false;
        }
        if r < 0 {
            let what = format!("brk {:#x}..{:#x}", self.start_brk, self.brk);
            return Err(Error::sys(format!("prctl(PR_SET_MM_MAP) (in pid {pid})"), what, Errno::from_raw(-r as i32)));
        }
        Ok(exe_set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_round_trip() {
        let m = MmStruct {
            start_code: 1,
            end_code: 2,
            start_data: 3,
            end_data: 4,
            start_brk: 5,
            brk: 6,
            start_stack: 7,
            arg_start: 8,
            arg_end: 9,
            env_start: 10,
            env_end: 11,
            auxv: vec![0; 32],
            exe: None,
        };
        assert_eq!(MmStruct::decode(&m.encode(), 0).unwrap(), m);
    }
}
