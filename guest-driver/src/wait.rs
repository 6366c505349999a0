//! How long a driver may wait for the device: every blocking call takes a
//! [`Wait`], a caller-supplied bound (a poll budget, [`Polls`], or a
//! deadline on a [`Clock`], [`Deadline`]).
//!
//! The spec bounds nothing a device does (§2.7.14: a driver learns of used
//! buffers when the device gets to them), so a driver that trusts nothing
//! never waits without one. How to idle between looks (spin, `pause`,
//! `hlt` until an interrupt) is the `Wait`'s business too.

/// A bound on waiting, consulted each time a driver finds nothing to do.
///
/// [`wait`](Wait::wait) may idle (spin-loop hint, halt until the next
/// interrupt) and returns `false` once the budget is spent; the driver then
/// gives up with a timeout error. Any `FnMut() -> bool` is a `Wait`, so a
/// test or a guest can run its own logic between looks.
pub trait Wait {
    /// Idles once; `false` when no more waiting is allowed.
    fn wait(&mut self) -> bool;
}

impl<F: FnMut() -> bool> Wait for F {
    fn wait(&mut self) -> bool {
        self()
    }
}

/// A budget of looks: `wait` succeeds `n` times, with a spin-loop hint
/// each time, then fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Polls {
    left: u64,
}

impl Polls {
    /// A budget of `n` waits.
    pub const fn new(n: u64) -> Self {
        Polls { left: n }
    }

    /// Waits left.
    pub const fn left(&self) -> u64 {
        self.left
    }
}

impl Wait for Polls {
    fn wait(&mut self) -> bool {
        match self.left.checked_sub(1) {
            Some(left) => {
                self.left = left;
                core::hint::spin_loop();
                true
            }
            None => false,
        }
    }
}

/// A monotonic clock, for deadlines (the TSC, the LAPIC timer, a
/// platform counter).
pub trait Clock {
    /// Nanoseconds since some fixed point; must not go backwards.
    fn now_ns(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// A deadline on a [`Clock`]: `wait` runs the idle function (a spin-loop
/// hint unless set with [`with_idle`](Deadline::with_idle), e.g. to halt
/// until an interrupt) and succeeds until the clock passes the deadline.
#[derive(Debug)]
pub struct Deadline<C, F = fn()> {
    clock: C,
    end: u64,
    idle: F,
}

fn spin() {
    core::hint::spin_loop();
}

impl<C: Clock> Deadline<C> {
    /// A deadline `timeout_ns` from now (saturating at the clock's end).
    pub fn new(clock: C, timeout_ns: u64) -> Self {
        let end = clock.now_ns().saturating_add(timeout_ns);
        Deadline {
            clock,
            end,
            idle: spin,
        }
    }
}

impl<C: Clock, F: FnMut()> Deadline<C, F> {
    /// The same deadline, idling with `idle` between looks.
    pub fn with_idle<G: FnMut()>(self, idle: G) -> Deadline<C, G> {
        Deadline {
            clock: self.clock,
            end: self.end,
            idle,
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.clock.now_ns() >= self.end
    }
}

impl<C: Clock, F: FnMut()> Wait for Deadline<C, F> {
    fn wait(&mut self) -> bool {
        if self.expired() {
            return false;
        }
        (self.idle)();
        true
    }
}

/// The loop every blocking driver call shares (§2.7.14): `attempt` the
/// work (take used buffers, make new ones available); if it is not done,
/// `arm` used buffer notifications, which says whether buffers were used
/// meanwhile (then attempt again at once, so a completion that raced the
/// arm is never slept through); only then idle once within `wait`. A spent
/// budget ends the call with `timeout`'s error; requests stay in flight.
pub(crate) fn drive<S: ?Sized, T, E>(
    s: &mut S,
    wait: &mut impl Wait,
    mut attempt: impl FnMut(&mut S) -> Result<Option<T>, E>,
    mut arm: impl FnMut(&mut S) -> Result<bool, E>,
    timeout: impl FnOnce(&S) -> E,
) -> Result<T, E> {
    loop {
        if let Some(done) = attempt(s)? {
            return Ok(done);
        }
        if arm(s)? {
            continue;
        }
        if !wait.wait() {
            return Err(timeout(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    struct Fake(Cell<u64>);

    impl Clock for Fake {
        fn now_ns(&self) -> u64 {
            let t = self.0.get();
            self.0.set(t.saturating_add(10));
            t
        }
    }

    #[test]
    fn polls_allow_exactly_n_waits() {
        let mut p = Polls::new(3);
        assert!(p.wait() && p.wait() && p.wait());
        assert!(!p.wait());
        assert!(!p.wait());
        assert_eq!(p.left(), 0);
    }

    #[test]
    fn deadline_expires_and_idles_in_between() {
        let clock = Fake(Cell::new(0));
        let idles = Cell::new(0);
        let mut d = Deadline::new(&clock, 35).with_idle(|| idles.set(idles.get() + 1));
        let mut n = 0;
        while d.wait() {
            n += 1;
            assert!(n < 100);
        }
        assert!(n >= 1);
        assert_eq!(idles.get(), n);
        assert!(d.expired());
        // A huge timeout saturates instead of wrapping.
        let far = Deadline::new(Fake(Cell::new(u64::MAX - 50)), 100);
        assert!(!far.expired());
    }

    #[test]
    fn closures_are_waits() {
        let mut left = 2;
        let mut w = || {
            left -= 1;
            left > 0
        };
        assert!(Wait::wait(&mut w));
        assert!(!Wait::wait(&mut w));
    }
}
