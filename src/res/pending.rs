//! PENDING: the signals queued and not yet delivered, with their siginfo, in a section of its
//! own that only a process with some has. Read with PTRACE_PEEKSIGINFO while the process is
//! frozen; the restored process queues each again to itself.

use super::signals::NSIG;
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::Result;
use crate::ptrace::Ctl;
use crate::ptrace::tracee::{SIGINFO_LEN, Tracee};

/// One queued signal: its siginfo as the kernel holds it, and whether it was queued for the
/// whole process (kill) or for the thread (tgkill).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub shared: bool,
    pub info: [u8; SIGINFO_LEN],
}

impl Pending {
    pub fn signo(&self) -> i32 {
        i32::from_le_bytes([self.info[0], self.info[1], self.info[2], self.info[3]])
    }

    /// A SIGSTOP to the whole process: it stops once it runs.
    pub fn stops(&self) -> bool {
        self.shared && self.signo() == libc::SIGSTOP
    }

    /// A SIGSTOP for the process, as kill(2) from nobody sends it (si_code SI_USER): what the
    /// image of a stopped process holds, so that it stops again once it runs.
    pub fn stop() -> Pending {
        let mut info = [0u8; SIGINFO_LEN];
        info[..4].copy_from_slice(&libc::SIGSTOP.to_le_bytes());
        Pending { shared: true, info }
    }
}

/// The frozen process's queued signals, the thread's queue first, each in its order.
pub fn collect(t: &Tracee) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    for shared in [false, true] {
        out.extend(t.pending(shared)?.into_iter().map(|info| Pending { shared, info }));
    }
    Ok(out)
}

/// The payload: u32 count, then per signal u32 queue (0 the thread's, 1 the process's) and the
/// siginfo (a byte field of 128 bytes).
pub fn encode(pending: &[Pending]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(pending.len() as u32);
    for p in pending {
        e.u32(p.shared as u32).bytes(&p.info);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Pending>> {
    let mut d = Dec::new(b, at, "PENDING");
    let n = d.count(8 + SIGINFO_LEN)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let queue = d.u32()?;
        let raw = d.bytes()?;
        let info: [u8; SIGINFO_LEN] =
            raw.try_into().map_err(|_| d.bad_at(at, format!("a siginfo of {} bytes", raw.len())))?;
        let p = Pending { shared: queue == 1, info };
        if queue > 1 || !(1..=NSIG as i32).contains(&p.signo()) {
            return Err(d.bad_at(at, format!("a pending signal {} in queue {queue}", p.signo())));
        }
        out.push(p);
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's line, if any signal is pending.
pub fn describe(pending: &[Pending]) -> Vec<String> {
    if pending.is_empty() {
        return vec![];
    }
    let sigs: Vec<String> = pending.iter().map(|p| p.signo().to_string()).collect();
    vec![format!("pending:   signals [{}]", sigs.join(" "))]
}

/// Queues the pending signals again, sent by the process to itself (the only sender the
/// kernel lets give any siginfo). Its signals must be blocked meanwhile: an unblocked one
/// would otherwise be delivered at our next remote syscall. Not a SIGSTOP, which no mask
/// blocks: the caller sends it once the process is let go (see [`Pending::stops`]).
pub fn restore(c: &mut Ctl, pending: &[Pending]) -> Result<()> {
    let pid = c.pid();
    for p in pending.iter().filter(|p| !p.stops()) {
        let at = c.scratch.put(pid, 0, &p.info)?;
        c.queue_signal(pid, p.signo(), at, (!p.shared).then_some(pid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_signals() {
        let mut info = [7u8; SIGINFO_LEN];
        info[..4].copy_from_slice(&34i32.to_le_bytes());
        let one = Pending { shared: true, info };
        let both = vec![Pending { shared: false, ..one.clone() }, one];
        assert_eq!(decode(&encode(&both), 0).unwrap(), both);
        for bad in [0i32, 65, -1] {
            let mut info = info;
            info[..4].copy_from_slice(&bad.to_le_bytes());
            assert!(decode(&encode(&[Pending { shared: false, info }]), 0).is_err(), "signal {bad}");
        }
    }
}
