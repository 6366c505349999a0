//! Rate limits for the lines a peer can cause (issue 16, finding 14): a
//! frontend decides how often the backend refuses a request, sees a
//! device error or ends a session, so it must not decide how many lines
//! the backend writes. Each kind of line gets a window: the first `burst`
//! lines of a kind in a window are written, the rest only counted, and the
//! count is written as one summary line when the window is over (or when
//! the log is flushed). A kind thus writes at most `burst + 1` lines a
//! window, whatever the peer does; nothing is lost but the repetition.
//!
//! No I/O and no clock here: the caller says what time it is and writes
//! the lines, so the arithmetic is tested with made-up instants.

use std::time::{Duration, Instant};

/// What to do with one line of a kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Admit {
    /// A summary of the kind's previous window, to write first.
    pub(crate) summary: Option<String>,
    /// Whether to write the line.
    pub(crate) write: bool,
}

/// One kind's window.
#[derive(Debug)]
struct Window {
    kind: &'static str,
    start: Instant,
    written: u32,
    suppressed: u64,
}

/// Per-kind windows over a fixed set of kinds (`&'static str`, so the
/// table cannot grow with what a peer sends).
#[derive(Debug)]
pub(crate) struct LogLimit {
    burst: u32,
    window: Duration,
    windows: Vec<Window>,
}

impl LogLimit {
    /// At most `burst` lines of each kind every `window`.
    pub(crate) fn new(burst: u32, window: Duration) -> LogLimit {
        LogLimit {
            burst,
            window,
            windows: Vec::new(),
        }
    }

    fn summary(&self, w: &Window) -> String {
        format!(
            "{} more lines of kind \"{}\" suppressed (at most {} every {} s)",
            w.suppressed,
            w.kind,
            self.burst,
            self.window.as_secs()
        )
    }

    /// A line of `kind` at `now`: whether to write it, and the summary of
    /// the kind's last window if that window is over and suppressed lines.
    pub(crate) fn admit(&mut self, kind: &'static str, now: Instant) -> Admit {
        let i = match self.windows.iter().position(|w| w.kind == kind) {
            Some(i) => i,
            None => {
                self.windows.push(Window {
                    kind,
                    start: now,
                    written: 0,
                    suppressed: 0,
                });
                self.windows.len() - 1
            }
        };
        let mut admit = Admit::default();
        if now.saturating_duration_since(self.windows[i].start) >= self.window {
            if self.windows[i].suppressed > 0 {
                admit.summary = Some(self.summary(&self.windows[i]));
            }
            let w = &mut self.windows[i];
            w.start = now;
            w.written = 0;
            w.suppressed = 0;
        }
        let w = &mut self.windows[i];
        if w.written < self.burst {
            w.written += 1;
            admit.write = true;
        } else {
            w.suppressed += 1;
        }
        admit
    }

    /// The summaries of every window that is over at `now` (or of every
    /// window, with `all`), counts cleared: what the caller writes at the
    /// end of a session, and when the log is flushed.
    pub(crate) fn summaries(&mut self, now: Instant, all: bool) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.windows.len() {
            let w = &self.windows[i];
            let over = now.saturating_duration_since(w.start) >= self.window;
            if w.suppressed > 0 && (all || over) {
                out.push(self.summary(w));
                self.windows[i].suppressed = 0;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_writes_its_burst_then_counts_until_the_window_is_over() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(2, Duration::from_secs(60));
        let at = |s| t0 + Duration::from_secs(s);
        assert!(l.admit("a", at(0)).write);
        assert!(l.admit("a", at(1)).write);
        for _ in 0..1000 {
            assert_eq!(l.admit("a", at(2)), Admit::default());
        }
        // Another kind has its own window.
        assert!(l.admit("b", at(2)).write);
        // Nothing is over yet.
        assert!(l.summaries(at(59), false).is_empty());
        let next = l.admit("a", at(60));
        assert!(next.write);
        assert_eq!(
            next.summary.as_deref(),
            Some("1000 more lines of kind \"a\" suppressed (at most 2 every 60 s)")
        );
        l.admit("a", at(61));
        l.admit("a", at(62));
        assert_eq!(l.summaries(at(62), false), Vec::<String>::new());
        assert_eq!(
            l.summaries(at(62), true),
            vec!["1 more lines of kind \"a\" suppressed (at most 2 every 60 s)".to_string()]
        );
        assert!(l.summaries(at(500), true).is_empty());
    }
}
