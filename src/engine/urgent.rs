//! crs's own thread ahead of the processes it drives: while it freezes them, and while it lets
//! them go after a checkpoint or a restore.

/// crs's own thread scheduled ahead of the process it freezes or restores, back as it was when
/// dropped: at nice -20 where allowed (root, or RLIMIT_NICE), so that threads still running (spinning
/// ones, on a busy node) do not keep it from the CPU; and while it stops the threads and lets
/// them go ([`Urgent::real_time`]), real-time where allowed (root, or RLIMIT_RTPRIO). Nice is
/// not enough then: each thread let go is a fresh wakeup that the fair scheduler may run
/// first, for a whole slice (3 ms here), while those not yet let go stay frozen (16 ms for 64
/// threads, a third of them spinning, on 2 CPUs). Not real-time throughout: a real-time task
/// is not kept on its CPU when woken as a fair one is, so each syscall run in the process
/// would cost two wakeups across CPUs.
pub struct Urgent {
    nice: Option<i32>,
    fifo: Option<(i32, i32)>,
}

/// This thread's nice value, None if it cannot be read.
pub fn nice() -> Option<i32> {
    // SAFETY: getpriority takes integers (`which` 0 with who 0 is this thread); errno is this
    // thread's (-1 is also a valid nice value).
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        (!(n == -1 && *libc::__errno_location() != 0)).then_some(n)
    }
}

impl Urgent {
    pub fn raise() -> Urgent {
        // SAFETY: setpriority takes integers; who 0 is this thread.
        let nice = nice().filter(|_| unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) } == 0);
        Urgent { nice, fifo: None }
    }

    /// SCHED_FIFO at its lowest priority (`on`), or back to what it was: while the threads
    /// are stopped and let go. crs does not spin meanwhile: it makes a ptrace call per
    /// thread and waits.
    pub fn real_time(&mut self, on: bool) {
        // SAFETY: sched_getscheduler/sched_getparam/sched_setscheduler take this thread (0) and
        // a sched_param we own.
        unsafe {
            match self.fifo.take() {
                Some((policy, priority)) if !on => {
                    libc::sched_setscheduler(0, policy, &libc::sched_param { sched_priority: priority });
                }
                Some(was) => self.fifo = Some(was),
                None if on => {
                    let policy = libc::sched_getscheduler(0);
                    let mut old = libc::sched_param { sched_priority: 0 };
                    if policy == libc::SCHED_OTHER && libc::sched_getparam(0, &mut old) == 0 {
                        let fifo = libc::sched_param { sched_priority: 1 };
                        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) == 0 {
                            self.fifo = Some((policy, old.sched_priority));
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// Back to the nice value it had, for long work that must not crowd out the processes
    /// it serves (a post-copy's transfer, which runs while the processes run at the
    /// destination, maybe on the same CPUs); real-time may still come after.
    pub fn at_ease(&mut self) {
        if let Some(old) = self.nice.take() {
            // SAFETY: as above.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, old) };
        }
    }
}

impl Drop for Urgent {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            if let Some((policy, priority)) = self.fifo {
                libc::sched_setscheduler(0, policy, &libc::sched_param { sched_priority: priority });
            }
            if let Some(old) = self.nice {
                libc::setpriority(libc::PRIO_PROCESS, 0, old);
            }
        }
    }
}
