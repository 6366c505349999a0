//! Verdicts of the `hostile` guest (issue 6): the guest prints `case:
//! <device> <case>` before each case and `verdict: <device> <case>
//! PASS|REJECT|WEDGED|CRASH <detail>` after it (contract in
//! `harness/guests/README.md`); this module turns the serial output into
//! one [`Verdict`] per case, judges a device's cases ([`check_device`]) and
//! renders the table printed after the suite ([`render`]).
//!
//! A started case without a verdict line is WEDGED when the run timed out
//! and CRASH when the guest faulted, failed or the monitor stopped
//! otherwise ([`RunEnd`]). Only PASS and REJECT are acceptable.

use std::fmt;
use std::sync::Mutex;

use monitor::vm::{Outcome, Verdict as RunVerdict};

/// The device names of the contract.
pub const DEVICES: &[&str] = &["rng", "console", "blk", "net"];

/// What a case came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VerdictKind {
    /// Handled as the spec says.
    Pass,
    /// The device set DEVICE_NEEDS_RESET or returned an error status.
    Reject,
    /// The queue or the guest got stuck.
    Wedged,
    /// A host panic, a guest fault, or a device fault the guest saw.
    Crash,
}

impl VerdictKind {
    /// Parses the contract's word.
    pub fn parse(word: &str) -> Option<VerdictKind> {
        match word {
            "PASS" => Some(VerdictKind::Pass),
            "REJECT" => Some(VerdictKind::Reject),
            "WEDGED" => Some(VerdictKind::Wedged),
            "CRASH" => Some(VerdictKind::Crash),
            _ => None,
        }
    }

    /// Whether the case ended as the issue requires (PASS or REJECT).
    pub fn is_acceptable(self) -> bool {
        matches!(self, VerdictKind::Pass | VerdictKind::Reject)
    }
}

impl fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerdictKind::Pass => "PASS",
            VerdictKind::Reject => "REJECT",
            VerdictKind::Wedged => "WEDGED",
            VerdictKind::Crash => "CRASH",
        })
    }
}

/// One case's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `rng`, `console`, `blk` or `net`.
    pub device: String,
    /// The case, without the device prefix.
    pub case: String,
    /// What it came to.
    pub kind: VerdictKind,
    /// Why (the guest's words, or the host's for a missing verdict).
    pub detail: String,
}

/// How the guest's run ended, for cases left without a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The guest reported pass: every started case should have a verdict.
    Finished,
    /// The time ran out (or the guest halted for good): stuck.
    TimedOut(String),
    /// The guest failed, faulted, or the VM stopped: a crash.
    Crashed(String),
}

impl RunEnd {
    /// How `outcome` ended.
    pub fn of(outcome: &Outcome) -> RunEnd {
        match &outcome.verdict {
            RunVerdict::Pass => RunEnd::Finished,
            RunVerdict::Timeout(_) | RunVerdict::Halted(_) => {
                RunEnd::TimedOut(outcome.verdict.to_string())
            }
            v => RunEnd::Crashed(v.to_string()),
        }
    }
}

/// Parses the guest's serial output into verdicts, in order. A `case:`
/// line with no matching `verdict:` line before the next case (or the end)
/// becomes WEDGED or CRASH by `end`; a case the guest skipped (`skip:`
/// line) gets no verdict.
pub fn parse(serial: &str, end: &RunEnd) -> Vec<Verdict> {
    let mut out = Vec::new();
    let mut open: Option<(String, String)> = None;
    let missing = |device: String, case: String, why: &str| {
        let (kind, detail) = match end {
            RunEnd::TimedOut(v) => (
                VerdictKind::Wedged,
                format!("no verdict {why}: the run timed out ({v})"),
            ),
            RunEnd::Crashed(v) => (VerdictKind::Crash, format!("no verdict {why}: {v}")),
            RunEnd::Finished => (
                VerdictKind::Crash,
                format!("no verdict {why}: the guest went on without one"),
            ),
        };
        Verdict {
            device,
            case,
            kind,
            detail,
        }
    };
    for line in serial.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("case: ") {
            let mut w = rest.split_whitespace();
            if let (Some(d), Some(c)) = (w.next(), w.next())
                && DEVICES.contains(&d)
            {
                if let Some((d0, c0)) = open.take() {
                    out.push(missing(d0, c0, "before the next case"));
                }
                open = Some((d.to_string(), c.to_string()));
            }
        } else if let Some(rest) = line.strip_prefix("verdict: ") {
            let mut w = rest.splitn(4, ' ');
            let (Some(d), Some(c), Some(word)) = (w.next(), w.next(), w.next()) else {
                continue;
            };
            let Some(kind) = VerdictKind::parse(word) else {
                continue;
            };
            if !DEVICES.contains(&d) {
                continue;
            }
            if open.as_ref().is_some_and(|(d0, c0)| d0 == d && c0 == c) {
                open = None;
            }
            out.push(Verdict {
                device: d.to_string(),
                case: c.to_string(),
                kind,
                detail: w.next().unwrap_or("").to_string(),
            });
        } else if let Some(rest) = line.strip_prefix("skip: ") {
            let mut w = rest.split_whitespace();
            if let (Some(d), Some(c)) = (w.next(), w.next())
                && open.as_ref().is_some_and(|(d0, c0)| d0 == d && c0 == c)
            {
                open = None;
            }
        }
    }
    if let Some((d, c)) = open {
        out.push(missing(d, c, "at the end of the run"));
    }
    out
}

/// `<n> PASS, <n> REJECT` (and WEDGED/CRASH when there are any) of
/// `verdicts`.
pub fn summary(verdicts: &[&Verdict]) -> String {
    let count = |k| verdicts.iter().filter(|v| v.kind == k).count();
    let mut s = format!(
        "{} PASS, {} REJECT",
        count(VerdictKind::Pass),
        count(VerdictKind::Reject)
    );
    for k in [VerdictKind::Wedged, VerdictKind::Crash] {
        if count(k) > 0 {
            s.push_str(&format!(", {} {k}", count(k)));
        }
    }
    s
}

/// Judges `device`'s cases in `serial`: at least `min_cases` ran, as many
/// as the guest's `plan:` line announced, none skipped, every one PASS or
/// REJECT, and `serving:` lines after the device's cases say every one of
/// `others` other devices still served. Returns the summary
/// (`12 PASS, 7 REJECT`) or what went wrong (with the summary).
pub fn check_device(
    verdicts: &[Verdict],
    serial: &str,
    device: &str,
    min_cases: usize,
    others: usize,
) -> Result<String, String> {
    let mine: Vec<&Verdict> = verdicts.iter().filter(|v| v.device == device).collect();
    let sum = summary(&mine);
    let bad: Vec<String> = mine
        .iter()
        .filter(|v| !v.kind.is_acceptable())
        .map(|v| format!("{} {}: {}", v.case, v.kind, v.detail))
        .collect();
    if !bad.is_empty() {
        return Err(format!("{device}: {sum}: {}", bad.join("; ")));
    }
    let plan = serial
        .lines()
        .filter_map(|l| l.strip_prefix("plan: "))
        .filter_map(|l| l.strip_prefix(device)?.trim().parse::<usize>().ok())
        .next_back();
    let Some(plan) = plan else {
        return Err(format!("{device}: the guest printed no plan line"));
    };
    if let Some(l) = serial.lines().find(|l| {
        l.strip_prefix("skip: ")
            .is_some_and(|r| r.starts_with(device))
    }) {
        return Err(format!("{device}: a case was skipped: '{l}'"));
    }
    if mine.len() != plan || plan < min_cases {
        return Err(format!(
            "{device}: {} verdicts, {plan} cases planned, at least {min_cases} wanted ({sum})",
            mine.len()
        ));
    }
    let after = format!(" after {device} cases");
    let serving: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.strip_prefix("serving: "))
        .filter(|l| l.contains(&after))
        .collect();
    if let Some(l) = serving.iter().find(|l| !l.contains(" ok after ")) {
        return Err(format!("{device}: another device stopped serving: '{l}'"));
    }
    if serving.len() < others {
        return Err(format!(
            "{device}: {} of {others} other devices reported serving",
            serving.len()
        ));
    }
    Ok(sum)
}

/// The verdict table: one line per case (device, case, verdict, detail),
/// then one summary line per device, in the order devices first appear
/// (the guest's [`DEVICES`] and the hostile vhost-user peers' own, e.g.
/// `vhost-user-daemon-rng`).
pub fn render(verdicts: &[Verdict]) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    if verdicts.is_empty() {
        return t;
    }
    let w = verdicts
        .iter()
        .map(|v| v.case.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let dw = verdicts
        .iter()
        .map(|v| v.device.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let _ = writeln!(
        t,
        "{:<dw$} {:<w$} {:<7} detail",
        "device", "case", "verdict"
    );
    for v in verdicts {
        let _ = writeln!(
            t,
            "{:<dw$} {:<w$} {:<7} {}",
            v.device, v.case, v.kind, v.detail
        );
    }
    let mut devices: Vec<&str> = Vec::new();
    for v in verdicts {
        if !devices.contains(&v.device.as_str()) {
            devices.push(&v.device);
        }
    }
    for d in devices {
        let mine: Vec<&Verdict> = verdicts.iter().filter(|v| v.device == d).collect();
        let _ = writeln!(t, "{d}: {}", summary(&mine));
    }
    t
}

/// Verdicts recorded by the suite's hostile rows, for [`render_recorded`].
static RECORDED: Mutex<Vec<Verdict>> = Mutex::new(Vec::new());

/// Records verdicts for the table printed after the suite.
pub fn record(verdicts: &[Verdict]) {
    if let Ok(mut r) = RECORDED.lock() {
        r.extend_from_slice(verdicts);
    }
}

/// Every verdict recorded so far, in order.
pub fn recorded() -> Vec<Verdict> {
    RECORDED.lock().map(|r| r.clone()).unwrap_or_default()
}

/// The table of every recorded verdict (empty when none), for
/// `virtio-harness suite`.
pub fn render_recorded() -> String {
    match RECORDED.lock() {
        Ok(r) => render(&r),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
hostile: RAM ends at 0x4000000
plan: rng 3
case: rng desc-loop
hostile: desc-loop: rule §2.7.5.3.1: …
verdict: rng desc-loop PASS chain returned (used len=0); follow-up served
case: rng head-out-of-range
verdict: rng head-out-of-range REJECT DEVICE_NEEDS_RESET (§2.1.2), status 0x4f
case: rng avail-index-jump
verdict: rng avail-index-jump WEDGED nothing used and no DEVICE_NEEDS_RESET
serving: console ok after rng cases (wrote a line after re-initialisation)
serving: blk FAIL after rng cases: timed out
verdict: fail: not a device line
";

    #[test]
    fn verdict_lines_parse_in_order() {
        let v = parse(SAMPLE, &RunEnd::Finished);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].device, "rng");
        assert_eq!(v[0].case, "desc-loop");
        assert_eq!(v[0].kind, VerdictKind::Pass);
        assert_eq!(v[0].detail, "chain returned (used len=0); follow-up served");
        assert_eq!(v[1].kind, VerdictKind::Reject);
        assert_eq!(
            v[2].kind,
            VerdictKind::Wedged,
            "a guest-printed WEDGED counts"
        );
    }

    #[test]
    fn a_case_cut_short_by_a_timeout_is_wedged() {
        let serial = "plan: net 2\ncase: net tx-desc-loop\nverdict: net tx-desc-loop PASS ok\ncase: net tx-avail-index-jump\nhostile: net-tx-avail-index-jump: rule …\n";
        let v = parse(serial, &RunEnd::TimedOut("timeout".into()));
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].case, "tx-avail-index-jump");
        assert_eq!(v[1].kind, VerdictKind::Wedged);
        assert!(v[1].detail.contains("timed out"), "{}", v[1].detail);
    }

    #[test]
    fn a_case_cut_short_by_a_guest_fault_is_a_crash() {
        let serial = "case: blk desc-loop\nverdict: fail: exception 6 (#UD)\n";
        let v = parse(serial, &RunEnd::Crashed("fail: exception 6 (#UD)".into()));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].kind, VerdictKind::Crash);
        assert!(v[0].detail.contains("#UD"));
        // A case followed by another case without a verdict is judged too.
        let serial = "case: blk a\ncase: blk b\nverdict: blk b PASS ok\n";
        let v = parse(serial, &RunEnd::Finished);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].case.as_str(), v[0].kind), ("a", VerdictKind::Crash));
    }

    #[test]
    fn a_guest_printed_crash_and_skips() {
        let serial = "case: console x\nverdict: console x CRASH device fault: stray write\ncase: console y\nskip: console y features 0x10000000 not offered\n";
        let v = parse(serial, &RunEnd::Finished);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].kind, VerdictKind::Crash);
    }

    #[test]
    fn check_device_wants_every_case_accepted_and_the_others_serving() {
        let v = parse(SAMPLE, &RunEnd::Finished);
        let e = check_device(&v, SAMPLE, "rng", 3, 2).unwrap_err();
        assert!(e.contains("avail-index-jump WEDGED"), "{e}");
        assert!(e.contains("1 PASS, 1 REJECT, 1 WEDGED"), "{e}");
        let fixed = SAMPLE.replace(
            "WEDGED nothing used and no DEVICE_NEEDS_RESET",
            "REJECT DEVICE_NEEDS_RESET",
        );
        let v = parse(&fixed, &RunEnd::Finished);
        let e = check_device(&v, &fixed, "rng", 3, 2).unwrap_err();
        assert!(e.contains("stopped serving"), "{e}");
        let fixed = fixed.replace(
            "blk FAIL after rng cases: timed out",
            "blk ok after rng cases",
        );
        assert_eq!(
            check_device(&v, &fixed, "rng", 3, 2),
            Ok("1 PASS, 2 REJECT".to_string())
        );
        let e = check_device(&v, &fixed, "rng", 4, 2).unwrap_err();
        assert!(e.contains("at least 4"), "{e}");
        let e = check_device(&v, &fixed, "rng", 3, 3).unwrap_err();
        assert!(e.contains("2 of 3"), "{e}");
    }

    #[test]
    fn missing_cases_fail_the_device() {
        let serial = "plan: console 2\ncase: console a\nverdict: console a PASS ok\nserving: rng ok after console cases\n";
        let v = parse(serial, &RunEnd::Finished);
        let e = check_device(&v, serial, "console", 1, 1).unwrap_err();
        assert!(e.contains("1 verdicts, 2 cases planned"), "{e}");
        let e = check_device(&[], "", "net", 1, 0).unwrap_err();
        assert!(e.contains("no plan line"), "{e}");
    }

    #[test]
    fn the_table_has_a_line_per_case_and_a_summary_per_device() {
        let mut v = parse(SAMPLE, &RunEnd::Finished);
        v.push(Verdict {
            device: "net".into(),
            case: "tx-desc-loop".into(),
            kind: VerdictKind::Crash,
            detail: "no verdict at the end of the run: shutdown".into(),
        });
        let t = render(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("device"), "{t}");
        assert!(lines[1].starts_with("rng      desc-loop"), "{t}");
        assert!(lines[3].contains("WEDGED"), "{t}");
        assert!(lines[4].contains("CRASH"), "{t}");
        assert!(t.contains("rng: 1 PASS, 1 REJECT, 1 WEDGED\n"), "{t}");
        assert!(t.contains("net: 0 PASS, 0 REJECT, 1 CRASH\n"), "{t}");
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn devices_beyond_the_guests_get_their_summary_and_column() {
        let mut v = parse(SAMPLE, &RunEnd::Finished);
        v.push(Verdict {
            device: "vhost-user-daemon-rng".into(),
            case: "flood-bad-requests".into(),
            kind: VerdictKind::Pass,
            detail: "alive".into(),
        });
        let t = render(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("rng                   desc-loop"),
            "{t}"
        );
        assert!(
            lines[4].starts_with("vhost-user-daemon-rng flood-bad-requests PASS"),
            "{t}"
        );
        assert!(
            t.ends_with("vhost-user-daemon-rng: 1 PASS, 0 REJECT\n"),
            "{t}"
        );
    }
}
