//! ITIMERS: the three interval timers of setitimer(2) (ITIMER_REAL, which alarm(2) also sets,
//! ITIMER_VIRTUAL and ITIMER_PROF): each one's interval and the time left until it fires,
//! asked of the frozen process and set again in the restored one as the last thing before it
//! runs. The time the process spent checkpointed does not count: a timer with 300 ms left
//! fires 300 ms after the restore. A section of its own, written only when a timer is armed.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::Result;
use crate::ptrace::Ctl;
use crate::ptrace::calls::{Answers, Calls, Q};

/// One timer: (interval, value), each in microseconds; value 0 means disarmed.
pub type Timer = (u64, u64);

const NAMES: [&str; 3] = ["ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"];
/// The largest time a struct timeval may say here, in microseconds (about 292 000 years).
const MAX_US: u64 = i64::MAX as u64 / 1000;

fn us(sec: u64, usec: u64) -> u64 {
    sec.saturating_mul(1_000_000).saturating_add(usec)
}

/// The questions for the three timers of the frozen process.
pub fn ask(l: &mut Calls) -> [Q; 3] {
    [0, 1, 2].map(|which| l.ask_getitimer(which))
}

/// The three timers, as answered; empty when none is armed.
pub fn timers(a: &Answers, qs: &[Q; 3]) -> Result<Vec<Timer>> {
    let mut t = Vec::with_capacity(3);
    for (q, name) in qs.iter().zip(NAMES) {
        a.ok(*q, "getitimer", name)?;
        let [isec, iusec, vsec, vusec] = a.words(*q);
        t.push((us(isec, iusec), us(vsec, vusec)));
    }
    Ok(if t.iter().all(|&(_, v)| v == 0) { vec![] } else { t })
}

pub fn encode(t: &[Timer]) -> Vec<u8> {
    let mut e = Enc::new();
    for &(i, v) in t {
        e.u64(i).u64(v);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Timer>> {
    let mut d = Dec::new(b, at, "ITIMERS");
    let mut t = Vec::with_capacity(3);
    for name in NAMES {
        let (i, v) = (d.u64()?, d.u64()?);
        if i > MAX_US || v > MAX_US {
            return Err(d.bad_at(at, format!("{name}: a time beyond what setitimer takes")));
        }
        t.push((i, v));
    }
    d.finish()?;
    if t.iter().all(|&(_, v)| v == 0) {
        return Err(d.bad_at(at, "no timer is armed (the section is written only when one is)".into()));
    }
    Ok(t)
}

/// crfinfo's line: the armed timers.
pub fn describe(t: &[Timer]) -> Vec<String> {
    let armed: Vec<String> = NAMES
        .iter()
        .zip(t)
        .filter(|(_, (_, v))| *v != 0)
        .map(|(n, (i, v))| format!("{n} in {:.3} s every {:.3} s", *v as f64 / 1e6, *i as f64 / 1e6))
        .collect();
    match armed.len() {
        0 => vec![],
        _ => vec![format!("itimers:   {}", armed.join(", "))],
    }
}

/// Arms the timers in the restored process (its signals all blocked by now: a timer that fires
/// before it runs leaves its signal pending).
pub fn restore(c: &mut Ctl, t: &[Timer]) -> Result<()> {
    for (which, &(i, v)) in t.iter().enumerate() {
        if v != 0 {
            c.setitimer(which as i32, [i / 1_000_000, i % 1_000_000, v / 1_000_000, v % 1_000_000])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = vec![(20_000, 13_000), (0, 0), (7_000_000, 6_500_000)];
        assert_eq!(decode(&encode(&t), 0).unwrap(), t);
        assert!(decode(&encode(&[(0, 0), (0, 0), (0, 0)]), 0).is_err());
        assert!(decode(&encode(&[(0, u64::MAX), (0, 0), (0, 0)]), 0).is_err());
        assert!(describe(&t)[0].contains("ITIMER_REAL in 0.013 s every 0.020 s, ITIMER_PROF"));
    }
}
