//! The conformance report: per statement and per target, pass, fail (with
//! what was seen), warn, not applicable, not observable, or not
//! implemented (no check yet); coverage per area and side; written as
//! Markdown, JSON and JUnit XML.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use conform::{Check, Outcome, Record};

use super::catalogue::{Catalogue, Level, Scope, Side, Statement, Verdict};

/// The records of one target (an implementation with one device).
#[derive(Clone, Debug)]
pub struct Run {
    /// The implementation (`ours, in process`, `qemu-storage-daemon`).
    pub target: String,
    /// The device type.
    pub device: String,
    /// What the checks recorded.
    pub records: Vec<Record>,
    /// Why the target could not be checked at all, if so.
    pub error: Option<String>,
}

/// One statement on one target, all its records merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Every record passed (some may be not applicable).
    Pass,
    /// At least one failed: the details.
    Fail(Vec<String>),
    /// None failed, at least one warned.
    Warn(Vec<String>),
    /// Every record says not applicable: why.
    NotApplicable(String),
    /// The path hides it (and nothing passed or failed).
    NotObservable(String),
    /// No check covers the statement (see the scope).
    NotChecked,
}

impl Cell {
    fn short(&self) -> &'static str {
        match self {
            Cell::Pass => "pass",
            Cell::Fail(_) => "FAIL",
            Cell::Warn(_) => "warn",
            Cell::NotApplicable(_) => "n/a",
            Cell::NotObservable(_) => "hidden",
            Cell::NotChecked => "-",
        }
    }

    fn detail(&self) -> String {
        match self {
            Cell::Pass | Cell::NotChecked => String::new(),
            Cell::Fail(d) | Cell::Warn(d) => d.join("; "),
            Cell::NotApplicable(w) | Cell::NotObservable(w) => w.clone(),
        }
    }
}

/// Merges the records for one statement (over a target's devices and
/// checks).
pub fn merge<'a>(records: impl Iterator<Item = (&'a str, &'a Outcome)>) -> Cell {
    let (mut fail, mut warn, mut pass) = (Vec::new(), Vec::new(), false);
    let (mut na, mut hidden) = (None, None);
    for (device, o) in records {
        match o {
            Outcome::Pass => pass = true,
            Outcome::Fail(w) => fail.push(format!("{device}: {w}")),
            Outcome::Warn(w) => warn.push(format!("{device}: {w}")),
            Outcome::NotApplicable(w) => na = Some(w.clone()),
            Outcome::NotObservable(w) => hidden = Some(w.clone()),
        }
    }
    if !fail.is_empty() {
        Cell::Fail(fail)
    } else if !warn.is_empty() {
        Cell::Warn(warn)
    } else if pass {
        Cell::Pass
    } else if let Some(w) = hidden {
        Cell::NotObservable(w)
    } else if let Some(w) = na {
        Cell::NotApplicable(w)
    } else {
        Cell::NotChecked
    }
}

/// Where each statement stands without running anything: covered by a
/// check, or the scope's verdict, or nothing (an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Checks cover it: their names.
    Checked(Vec<&'static str>),
    /// The scope says it does not apply.
    NotApplicable(String),
    /// The scope says nothing checks it yet.
    NotImplemented(String),
    /// Nothing says anything: the catalogue check fails.
    Missing,
}

/// Every statement's entry, from the checks (read from the code) and the
/// scope.
pub fn entries(cat: &Catalogue, scope: &Scope, checks: &[&[Check]]) -> BTreeMap<String, Entry> {
    let mut by_statement: BTreeMap<&str, Vec<&'static str>> = BTreeMap::new();
    for list in checks {
        for c in *list {
            for s in c.statements {
                by_statement.entry(s).or_default().push(c.name);
            }
        }
    }
    cat.statements
        .iter()
        .map(|s| {
            let e = match (by_statement.get(s.id.as_str()), scope.verdict(s)) {
                (Some(c), _) => Entry::Checked(c.clone()),
                (None, Some(Verdict::NotApplicable(w))) => Entry::NotApplicable(w.clone()),
                (None, Some(Verdict::NotImplemented(w))) => Entry::NotImplemented(w.clone()),
                (None, None) => Entry::Missing,
            };
            (s.id.clone(), e)
        })
        .collect()
}

/// Statement ids named by checks that the catalogue does not have.
pub fn unknown_ids(cat: &Catalogue, checks: &[&[Check]]) -> Vec<&'static str> {
    let ids: BTreeSet<&str> = cat.statements.iter().map(|s| s.id.as_str()).collect();
    let mut out: Vec<&'static str> = checks
        .iter()
        .flat_map(|l| l.iter())
        .flat_map(|c| c.statements.iter().copied())
        .filter(|s| !ids.contains(s))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Coverage of one area and side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Statements.
    pub total: usize,
    /// With MUST.
    pub must: usize,
    /// Covered by a check.
    pub checked: usize,
    /// MUST statements covered by a check.
    pub must_checked: usize,
    /// Not applicable.
    pub not_applicable: usize,
    /// Not implemented (applies, no check yet).
    pub not_implemented: usize,
    /// MUST statements not implemented.
    pub must_not_implemented: usize,
    /// With no entry at all.
    pub missing: usize,
}

/// Coverage by (area, side).
pub fn coverage(
    cat: &Catalogue,
    entries: &BTreeMap<String, Entry>,
) -> BTreeMap<(String, Side), Coverage> {
    let mut out: BTreeMap<(String, Side), Coverage> = BTreeMap::new();
    for s in &cat.statements {
        let c = out.entry((s.area.clone(), s.side)).or_default();
        let must = s.level == Level::Must;
        c.total += 1;
        c.must += usize::from(must);
        match entries.get(&s.id) {
            Some(Entry::Checked(_)) => {
                c.checked += 1;
                c.must_checked += usize::from(must);
            }
            Some(Entry::NotApplicable(_)) => c.not_applicable += 1,
            Some(Entry::NotImplemented(_)) => {
                c.not_implemented += 1;
                c.must_not_implemented += usize::from(must);
            }
            Some(Entry::Missing) | None => c.missing += 1,
        }
    }
    out
}

/// The merged cell of every statement for every target (implementation).
pub fn cells(runs: &[Run]) -> BTreeMap<String, BTreeMap<String, Cell>> {
    /// Per target, per statement: (device, outcome) of every record.
    type Seen<'a> = BTreeMap<String, BTreeMap<String, Vec<(&'a str, &'a Outcome)>>>;
    let mut by: Seen<'_> = BTreeMap::new();
    for r in runs {
        let t = by.entry(r.target.clone()).or_default();
        for rec in &r.records {
            t.entry(rec.statement.to_string())
                .or_default()
                .push((r.device.as_str(), &rec.outcome));
        }
    }
    by.into_iter()
        .map(|(t, m)| {
            (
                t,
                m.into_iter()
                    .map(|(s, v)| (s, merge(v.into_iter())))
                    .collect(),
            )
        })
        .collect()
}

/// MUST statements that failed on `target`s: (target, statement, detail).
pub fn must_failures<'a>(
    cat: &'a Catalogue,
    cells: &'a BTreeMap<String, BTreeMap<String, Cell>>,
    targets: &[&str],
) -> Vec<(String, &'a Statement, String)> {
    let mut out = Vec::new();
    for t in targets {
        let Some(m) = cells.get(*t) else { continue };
        for (id, c) in m {
            if let (Cell::Fail(d), Some(s)) = (c, cat.get(id))
                && s.level == Level::Must
            {
                out.push((t.to_string(), s, d.join("; ")));
            }
        }
    }
    out
}

/// A cell as the tables show it: a SHOULD statement's failure is a
/// warning.
fn shown(c: &Cell, level: Level) -> &'static str {
    match (c, level) {
        (Cell::Fail(_), Level::Should) => "warn",
        _ => c.short(),
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The Markdown report.
pub fn markdown(cat: &Catalogue, entries: &BTreeMap<String, Entry>, runs: &[Run]) -> String {
    let cells = cells(runs);
    let targets: Vec<&String> = cells.keys().collect();
    let mut t = String::new();
    let _ = writeln!(t, "# virtio conformance report\n");
    let _ = writeln!(
        t,
        "Specification: oasis-tcs/virtio-spec {} ({}); {} statements in the catalogue.\n",
        cat.describe,
        cat.commit,
        cat.statements.len()
    );
    let _ = writeln!(t, "## Targets\n");
    for r in runs {
        match &r.error {
            Some(e) => {
                let _ = writeln!(
                    t,
                    "- {} ({}): not checked: {}",
                    r.target,
                    r.device,
                    md_escape(e)
                );
            }
            None => {
                let _ = writeln!(
                    t,
                    "- {} ({}): {} records",
                    r.target,
                    r.device,
                    r.records.len()
                );
            }
        }
    }
    let _ = writeln!(t, "\n## Coverage per area and side\n");
    let _ = writeln!(
        t,
        "| area | side | statements | MUST | checked | MUST checked | not applicable | not implemented | MUST not implemented |"
    );
    let _ = writeln!(
        t,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for ((area, side), c) in coverage(cat, entries) {
        let _ = writeln!(
            t,
            "| {area} | {side} | {} | {} | {} | {} | {} | {} | {} |",
            c.total,
            c.must,
            c.checked,
            c.must_checked,
            c.not_applicable,
            c.not_implemented,
            c.must_not_implemented
        );
    }
    let _ = writeln!(t, "\n## Checked statements, side by side\n");
    let _ = write!(t, "| statement | § | level |");
    for name in &targets {
        let _ = write!(t, " {} |", md_escape(name));
    }
    let _ = writeln!(t);
    let _ = write!(t, "| --- | --- | --- |");
    for _ in &targets {
        let _ = write!(t, " --- |");
    }
    let _ = writeln!(t);
    for s in &cat.statements {
        if !matches!(entries.get(&s.id), Some(Entry::Checked(_))) {
            continue;
        }
        let _ = write!(t, "| `{}` | {} | {} |", s.id, s.section, s.level);
        for name in &targets {
            let c = cells[*name].get(&s.id).cloned().unwrap_or(Cell::NotChecked);
            let _ = write!(t, " {} |", shown(&c, s.level));
        }
        let _ = writeln!(t);
    }
    let _ = writeln!(t, "\n## Findings\n");
    let mut any = false;
    for name in &targets {
        for (id, c) in &cells[*name] {
            if matches!(c, Cell::Fail(_) | Cell::Warn(_)) {
                any = true;
                let s = cat.get(id);
                let _ = writeln!(
                    t,
                    "- **{}** `{id}` ({}, §{}): {} — \"{}\"",
                    md_escape(name),
                    shown(c, s.map_or(Level::Must, |s| s.level)),
                    s.map_or("", |s| s.section.as_str()),
                    md_escape(&c.detail()),
                    md_escape(s.map_or("", |s| s.text.as_str()))
                );
            }
        }
    }
    if !any {
        let _ = writeln!(t, "None.");
    }
    t
}

/// An outcome's word in `report.json`.
pub fn outcome_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail(_) => "fail",
        Outcome::Warn(_) => "warn",
        Outcome::NotApplicable(_) => "not-applicable",
        Outcome::NotObservable(_) => "not-observable",
    }
}

/// The outcome `report.json` calls `word` (with its `detail`), read back.
pub fn outcome_of_word(word: &str, detail: String) -> Option<Outcome> {
    Some(match word {
        "pass" => Outcome::Pass,
        "fail" => Outcome::Fail(detail),
        "warn" => Outcome::Warn(detail),
        "not-applicable" => Outcome::NotApplicable(detail),
        "not-observable" => Outcome::NotObservable(detail),
        _ => return None,
    })
}

/// The JSON report.
pub fn json(cat: &Catalogue, entries: &BTreeMap<String, Entry>, runs: &[Run]) -> serde_json::Value {
    use serde_json::json;
    let statements: Vec<_> = cat
        .statements
        .iter()
        .map(|s| {
            let entry = match entries.get(&s.id) {
                Some(Entry::Checked(c)) => json!({"checked_by": c}),
                Some(Entry::NotApplicable(w)) => json!({"not_applicable": w}),
                Some(Entry::NotImplemented(w)) => json!({"not_implemented": w}),
                Some(Entry::Missing) | None => json!({"missing": true}),
            };
            json!({
                "id": s.id, "side": s.side.to_string(), "kind": s.kind.to_string(),
                "level": s.level.to_string(), "area": s.area, "section": s.section,
                "features": s.features, "entry": entry,
            })
        })
        .collect();
    let runs: Vec<_> = runs
        .iter()
        .map(|r| {
            json!({
                "target": r.target, "device": r.device, "error": r.error,
                "records": r.records.iter().map(|x| json!({
                    "statement": x.statement, "check": x.check,
                    "outcome": outcome_word(&x.outcome),
                    "detail": match &x.outcome {
                        Outcome::Pass => String::new(),
                        Outcome::Fail(w) | Outcome::Warn(w) | Outcome::NotApplicable(w) | Outcome::NotObservable(w) => w.clone(),
                    },
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "spec": {"commit": cat.commit, "describe": cat.describe},
        "statements": statements,
        "runs": runs,
    })
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The JUnit XML report: one suite per target, one case per statement
/// with records; a MUST fail is a failure, a SHOULD fail or a warning is
/// reported as skipped with the detail (JUnit has no warning).
pub fn junit(cat: &Catalogue, runs: &[Run]) -> String {
    let cells = cells(runs);
    let mut t = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"virtio conformance\">\n",
    );
    for (target, m) in &cells {
        let failures = m
            .iter()
            .filter(|(id, c)| {
                matches!(c, Cell::Fail(_)) && cat.get(id).is_some_and(|s| s.level == Level::Must)
            })
            .count();
        let _ = writeln!(
            t,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
            xml(target),
            m.len()
        );
        for (id, c) in m {
            let must = cat.get(id).is_some_and(|s| s.level == Level::Must);
            let _ = write!(
                t,
                "    <testcase classname=\"{}\" name=\"{}\"",
                xml(target),
                xml(id)
            );
            match c {
                Cell::Pass => {
                    let _ = writeln!(t, "/>");
                }
                Cell::Fail(_) if must => {
                    let _ = writeln!(t, "><failure message=\"{}\"/></testcase>", xml(&c.detail()));
                }
                _ => {
                    let _ = writeln!(
                        t,
                        "><skipped message=\"{}: {}\"/></testcase>",
                        c.short(),
                        xml(&c.detail())
                    );
                }
            }
        }
        let _ = writeln!(t, "  </testsuite>");
    }
    t.push_str("</testsuites>\n");
    t
}

/// Writes `report.md`, `report.json` and `junit.xml` into `dir`.
pub fn write(
    dir: &Path,
    cat: &Catalogue,
    entries: &BTreeMap<String, Entry>,
    runs: &[Run],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.md"), markdown(cat, entries, runs))?;
    let j = serde_json::to_string_pretty(&json(cat, entries, runs)).unwrap_or_default();
    std::fs::write(dir.join("report.json"), j)?;
    std::fs::write(dir.join("junit.xml"), junit(cat, runs))
}
