//! Deadlines for a server's connection, so that a slow or silent client cannot hold a handler:
//! a timeout per read alone lets a client that drips one byte at a time stay forever.
//!
//! - every read may wait at most `idle`;
//! - the handshake must be over by a deadline of its own;
//! - the image must keep a minimum average rate: the time spent waiting for the peer may not
//!   exceed `grace` plus the bytes received divided by the rate. Only time spent blocked in a
//!   read counts, so a restore that is slow to take the data in is never blamed on the client.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct Paced {
    s: TcpStream,
    idle: Duration,
    phase: Phase,
}

enum Phase {
    /// Until the handshake ends, a wall-clock deadline.
    Handshake { until: Instant, limit: Duration },
    /// During the image, a minimum rate.
    Transfer { rate: u64, grace: Duration, waited: Duration, got: u64 },
    /// The per-read limit alone.
    Idle,
}

fn timed_out(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl Paced {
    /// A connection just accepted: its handshake must be over within `handshake`.
    pub fn new(s: TcpStream, idle: Duration, handshake: Duration) -> Paced {
        let idle = idle.max(Duration::from_millis(1));
        Paced { s, idle, phase: Phase::Handshake { until: Instant::now() + handshake, limit: handshake } }
    }

    /// From now on the peer must send at least `rate` bytes per second of waiting, after an
    /// allowance of `grace`.
    pub fn transfer(&mut self, rate: u64, grace: Duration) {
        self.phase = Phase::Transfer { rate: rate.max(1), grace, waited: Duration::ZERO, got: 0 };
    }

    /// From now on only the per-read limit applies.
    pub fn idle_only(&mut self) {
        self.phase = Phase::Idle;
    }

    pub fn stream(&self) -> &TcpStream {
        &self.s
    }

    /// How long the next read may wait, or why it may not.
    fn allowance(&self) -> io::Result<Duration> {
        let left = match &self.phase {
            Phase::Idle => return Ok(self.idle),
            Phase::Handshake { until, limit } => {
                until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or_else(|| {
                    timed_out(format!("the client did not complete the handshake within {} s", limit.as_secs()))
                })?
            }
            Phase::Transfer { rate, grace, waited, got } => {
                let earned = *grace + Duration::from_secs_f64(*got as f64 / *rate as f64);
                earned.checked_sub(*waited).filter(|d| !d.is_zero()).ok_or_else(|| {
                    timed_out(format!(
                        "the client sent {got} bytes in {:.1} s of waiting, under the minimum rate of {rate} bytes/s (--min-rate)",
                        waited.as_secs_f64()
                    ))
                })?
            }
        };
        Ok(left.min(self.idle))
    }
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = self.allowance()?;
        self.s.set_read_timeout(Some(limit))?;
        let t0 = Instant::now();
        let r = self.s.read(buf);
        if let Phase::Transfer { waited, got, .. } = &mut self.phase {
            *waited += t0.elapsed();
            *got += *r.as_ref().unwrap_or(&0) as u64;
        }
        match r {
            // The socket's timeout fired: say which limit it was.
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err(self.allowance().err().unwrap_or_else(|| {
                    timed_out(format!("the client was silent for {} s (--timeout)", self.idle.as_secs()))
                }))
            }
            r => r,
        }
    }
}

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.s.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.s.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (a, l.accept().unwrap().0)
    }

    /// A client that drips a byte every `every`: the handshake deadline ends it, though no
    /// single read waits long.
    #[test]
    fn a_drip_meets_the_handshake_deadline() {
        let (mut a, b) = pair();
        let t = std::thread::spawn(move || {
            for _ in 0..40 {
                if a.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut p = Paced::new(b, Duration::from_secs(5), Duration::from_millis(200));
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        let e = loop {
            match p.read(&mut buf) {
                Ok(0) => panic!("eof"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(e.to_string().contains("handshake within"), "{e}");
        drop(p);
        t.join().unwrap();
    }

    #[test]
    fn a_slow_transfer_is_cut_and_a_fast_one_is_not() {
        let (mut a, b) = pair();
        let mut p = Paced::new(b, Duration::from_secs(5), Duration::from_secs(5));
        p.transfer(16 << 20, Duration::from_millis(100));
        // Fast: 4 MiB at once is far above the rate.
        let t = std::thread::spawn(move || {
            a.write_all(&vec![7u8; 4 << 20]).unwrap();
            // Then a drip.
            for _ in 0..100 {
                if a.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        while n < 4 << 20 {
            n += p.read(&mut buf).unwrap();
        }
        // 4 MiB earned a quarter of a second of waiting; the drip spends it and is cut.
        let e = loop {
            match p.read(&mut buf) {
                Ok(0) => panic!("eof: the drip was never cut"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(e.to_string().contains("minimum rate"), "{e}");
        drop(p);
        t.join().unwrap();
    }
}
