//! `virtio-harness report`: one static HTML page (no server, no script)
//! from a suite run, a conformance run and bench runs, with the plots as
//! inline SVG ([`plot`]) and a check of the page in headless Chromium
//! ([`browser`]).
//!
//! Sections (each a `<section id=…>` that [`browser::check`] looks for,
//! [`SECTIONS`]): the summary with where each record was taken, the suite
//! table, the hostile verdicts as a device × case map, the conformance
//! coverage per area and side with every target's results beside it, and
//! the benchmarks (plots, then the tables).

pub mod browser;
pub mod plot;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::record::{BenchRecord, Provenance, SuiteRecord};

/// The sections every page has, by id, in order.
pub const SECTIONS: &[&str] = &["summary", "bench", "hostile", "conformance", "suite"];

/// A conformance run's `report.json`, the parts the page shows.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConformDoc {
    /// The specification's revision.
    #[serde(default)]
    pub spec: SpecRev,
    /// Every catalogue statement with its entry.
    #[serde(default)]
    pub statements: Vec<StatementDoc>,
    /// Every target's records.
    #[serde(default)]
    pub runs: Vec<RunDoc>,
}

/// The specification's revision the catalogue was read from.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SpecRev {
    /// Its commit.
    #[serde(default)]
    pub commit: String,
    /// `git describe` of it.
    #[serde(default)]
    pub describe: String,
}

/// One statement of the catalogue.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StatementDoc {
    /// Its id.
    pub id: String,
    /// `device`, `driver` or `either`.
    #[serde(default)]
    pub side: String,
    /// `MUST`, `SHOULD`, `MAY`, …
    #[serde(default)]
    pub level: String,
    /// The catalogue area.
    #[serde(default)]
    pub area: String,
    /// `checked_by`, `not_applicable`, `not_implemented` or `missing`.
    #[serde(default)]
    pub entry: serde_json::Value,
}

/// One target's (implementation with one device) records.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RunDoc {
    /// The implementation.
    pub target: String,
    /// The device.
    #[serde(default)]
    pub device: String,
    /// Why it could not be checked, if so.
    #[serde(default)]
    pub error: Option<String>,
    /// What the checks found.
    #[serde(default)]
    pub records: Vec<RecordDoc>,
}

/// One check's outcome for one statement.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RecordDoc {
    /// The statement.
    pub statement: String,
    /// `pass`, `fail`, `warn`, `not-applicable`, `not-observable`.
    pub outcome: String,
}

/// What the page is made from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// The suite run.
    pub suite: SuiteRecord,
    /// The conformance run, and when and where it was read or taken.
    pub conform: ConformDoc,
    /// Where the conformance run came from.
    pub conform_source: String,
    /// The bench runs.
    pub bench: Vec<BenchRecord>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "reading {}: {e} (expected the output of `virtio-harness {what}`)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not {what} ({e}); expected the output of `virtio-harness {what}`",
            path.display()
        )
    })
}

impl Inputs {
    /// Reads the given records; runs the suite and the in-process
    /// conformance checks where none is given.
    pub fn gather(
        suite: Option<&Path>,
        conform: Option<&Path>,
        bench: &[PathBuf],
    ) -> Result<Inputs, String> {
        // Files first: a bad one is refused before anything runs.
        let bench = bench
            .iter()
            .map(|p| read_json::<BenchRecord>(p, "bench --format json"))
            .collect::<Result<Vec<_>, _>>()?;
        let conform_read = conform
            .map(|p| {
                read_json::<ConformDoc>(p, "conform run").map(|d| (d, p.display().to_string()))
            })
            .transpose()?;
        let suite = match suite {
            Some(p) => read_json::<SuiteRecord>(p, "suite --format json")?,
            None => {
                let rows = crate::suite_with(&mut |ev| {
                    if let crate::SuiteEvent::Starting { name, done, total } = ev {
                        let _ = crate::progress::step_of(done, total, format!("suite: {name}"));
                    }
                });
                if crate::progress::interrupted() {
                    return Err("interrupted by Ctrl-C; no page written".into());
                }
                SuiteRecord {
                    provenance: Provenance::here(),
                    rows: rows.iter().map(Into::into).collect(),
                    verdicts: crate::verdict::recorded().iter().map(Into::into).collect(),
                }
            }
        };
        let (conform, conform_source) = match conform_read {
            Some(c) => c,
            None => {
                let runs = crate::conform::collect(&crate::conform::Selection::default())
                    .map_err(|e| format!("{e}; no page written"))?;
                let cat = crate::conform::catalogue::Catalogue::parse(crate::conform::CATALOGUE)
                    .map_err(|e| format!("catalogue.tsv {e}"))?;
                let scope = crate::conform::catalogue::Scope::parse(crate::conform::SCOPE)
                    .map_err(|e| format!("scope.tsv {e}"))?;
                let entries =
                    crate::conform::report::entries(&cat, &scope, &crate::conform::checks());
                let value = crate::conform::report::json(&cat, &entries, &runs);
                let doc = serde_json::from_value(value)
                    .map_err(|e| format!("the conformance report as data: {e}"))?;
                (
                    doc,
                    format!("in-process checks, {}", Provenance::here().line()),
                )
            }
        };
        Ok(Inputs {
            suite,
            conform,
            conform_source,
            bench,
        })
    }
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "
body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px auto;max-width:1200px;color:#1b1b1b;padding:0 16px}
h1{font-size:26px}h2{font-size:20px;margin-top:36px;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin-top:22px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{background:#d8f0d8}.fail{background:#f7c9c9}.skip{background:#eeeeee;color:#555}
.reject{background:#cfe3f7}.wedged{background:#fbe2b8}.crash{background:#f09a9a}
.warn{background:#fbf0b8}.na{background:#f4f4f4;color:#777}.hidden{background:#e6e0f0}
.none{background:#fff;color:#bbb}
.wide{overflow-x:auto;max-width:100%}
.hm td{min-width:15px;height:16px;padding:0;text-align:center;font-size:9px}
.hm th{white-space:nowrap}
.strip{display:flex;flex-wrap:wrap;gap:2px;margin:6px 0}.strip i{display:block;width:14px;height:14px}
nav a{margin-right:14px}
.hm th.case{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;font-size:10px;max-height:160px}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:18px;height:10px;margin-right:4px;vertical-align:middle}
.prov{color:#555;font-size:12px}
.note{font-size:13px;background:#f6f6f6;padding:4px 8px;border-left:3px solid #bbb}
pre{font-size:11px;overflow-x:auto}
figure{margin:12px 0;display:inline-block;vertical-align:top}
figcaption{font-size:12px;max-width:560px}
";

/// The page.
pub fn html(inputs: &Inputs) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>virtio, from both ends: report</title><style>{STYLE}</style></head><body>\n"
    );
    // The plots first after the summary: they are what a glance takes in;
    // the long suite table last.
    summary(&mut h, inputs);
    bench(&mut h, &inputs.bench);
    hostile(&mut h, &inputs.suite);
    conformance(&mut h, &inputs.conform);
    suite(&mut h, &inputs.suite);
    h.push_str("</body></html>\n");
    h
}

/// Writes `index.html` into `dir` and returns its path.
pub fn write(dir: &Path, inputs: &Inputs) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let page = dir.join("index.html");
    std::fs::write(&page, html(inputs)).map_err(|e| format!("{}: {e}", page.display()))?;
    Ok(page)
}

fn status_class(status: &str) -> &'static str {
    match status {
        "pass" => "pass",
        "fail" => "fail",
        _ => "skip",
    }
}

fn summary(h: &mut String, i: &Inputs) {
    let count = |s: &str| i.suite.rows.iter().filter(|r| r.status == s).count();
    let bad_verdicts = i
        .suite
        .verdicts
        .iter()
        .filter(|v| v.verdict == "WEDGED" || v.verdict == "CRASH")
        .count();
    let _ = write!(
        h,
        "<section id=\"summary\"><h1>virtio, from both ends</h1>\
         <p>Suite: <b>{}</b> pass, <b>{}</b> fail, <b>{}</b> skip. \
         Hostile cases: {} verdicts, {} wedged or crashed. \
         Conformance: {} statements, {} targets. \
         Benchmarks: {} runs, {} plots.</p><ul class=\"prov\">",
        count("pass"),
        count("fail"),
        count("skip"),
        i.suite.verdicts.len(),
        bad_verdicts,
        i.conform.statements.len(),
        i.conform
            .runs
            .iter()
            .map(|r| &r.target)
            .collect::<BTreeSet<_>>()
            .len(),
        i.bench.len(),
        i.bench.iter().map(|b| b.figures.len()).sum::<usize>(),
    );
    let _ = write!(
        h,
        "<li>suite: {}</li><li>conformance: {} (specification {})</li>",
        esc(&i.suite.provenance.line()),
        esc(&i.conform_source),
        esc(&i.conform.spec.describe)
    );
    for b in &i.bench {
        let _ = write!(
            h,
            "<li>bench ({}, {} rounds): {}</li>",
            esc(&b.mode),
            b.rounds,
            esc(&b.provenance.line())
        );
    }
    h.push_str("</ul><div class=\"strip\" title=\"the suite's rows\">");
    for r in &i.suite.rows {
        let _ = write!(
            h,
            "<i class=\"{}\" title=\"{}: {}\"></i>",
            status_class(&r.status),
            esc(&r.scenario),
            esc(&r.result)
        );
    }
    h.push_str("</div><nav>");
    for (id, name) in [
        ("bench", "benchmarks"),
        ("hostile", "hostile verdicts"),
        ("conformance", "conformance"),
        ("suite", "suite table"),
    ] {
        let _ = write!(h, "<a href=\"#{id}\">{name}</a>");
    }
    h.push_str("</nav></section>\n");
}

fn suite(h: &mut String, s: &SuiteRecord) {
    h.push_str(
        "<section id=\"suite\"><h2>Suite: tiny guests against every device</h2>\
         <table><tr><th>scenario</th><th>device</th><th>backend</th><th>boot ms</th>\
         <th>exits</th><th>KVM exits</th><th>result</th></tr>\n",
    );
    let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    for r in &s.rows {
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            status_class(&r.status),
            esc(&r.scenario),
            esc(&r.device),
            esc(&r.backend),
            r.boot_ms.map_or("-".into(), |v| format!("{v:.2}")),
            opt(r.exits),
            opt(r.kvm_exits),
            esc(&r.result)
        );
    }
    h.push_str("</table></section>\n");
}

fn verdict_class(v: &str) -> &'static str {
    match v {
        "PASS" => "pass",
        "REJECT" => "reject",
        "WEDGED" => "wedged",
        "CRASH" => "crash",
        _ => "none",
    }
}

fn hostile(h: &mut String, s: &SuiteRecord) {
    h.push_str(
        "<section id=\"hostile\"><h2>Hostile peers: verdict per device and case</h2>\
         <p class=\"legend\"><span><i class=\"pass\"></i>PASS (handled as the spec says)</span>\
         <span><i class=\"reject\"></i>REJECT (DEVICE_NEEDS_RESET or an error status)</span>\
         <span><i class=\"wedged\"></i>WEDGED</span><span><i class=\"crash\"></i>CRASH</span>\
         <span><i class=\"none\"></i>not run on this device</span> (hover a cell for the detail)</p>",
    );
    if s.verdicts.is_empty() {
        h.push_str("<p>No hostile verdicts in this suite run.</p></section>\n");
        return;
    }
    let mut devices: Vec<&str> = Vec::new();
    let mut cases: Vec<&str> = Vec::new();
    let mut cell: BTreeMap<(&str, &str), (&str, &str)> = BTreeMap::new();
    for v in &s.verdicts {
        if !devices.contains(&v.device.as_str()) {
            devices.push(&v.device);
        }
        if !cases.contains(&v.case.as_str()) {
            cases.push(&v.case);
        }
        cell.insert((&v.device, &v.case), (&v.verdict, &v.detail));
    }
    h.push_str("<div class=\"wide\"><table class=\"hm\"><tr><th>device</th>");
    for c in &cases {
        let _ = write!(h, "<th class=\"case\">{}</th>", esc(c));
    }
    h.push_str("</tr>\n");
    for d in &devices {
        let _ = write!(h, "<tr><th>{}</th>", esc(d));
        for c in &cases {
            match cell.get(&(*d, *c)) {
                Some((v, detail)) => {
                    let _ = write!(
                        h,
                        "<td class=\"{}\" title=\"{}: {}\">{}</td>",
                        verdict_class(v),
                        esc(v),
                        esc(detail),
                        esc(&v.chars().next().map(String::from).unwrap_or_default())
                    );
                }
                None => h.push_str("<td class=\"none\"></td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table></div></section>\n");
}

/// One statement's merged outcome on one target, as a CSS class: the
/// outcomes read back and merged by `conform run`'s own rule
/// ([`crate::conform::report::merge`]).
fn merged<'a>(outcomes: impl Iterator<Item = &'a str>) -> &'static str {
    use crate::conform::report::{Cell, merge, outcome_of_word};
    let read: Vec<_> = outcomes
        .filter_map(|w| outcome_of_word(w, String::new()))
        .collect();
    match merge(read.iter().map(|o| ("", o))) {
        Cell::Pass => "pass",
        Cell::Fail(_) => "fail",
        Cell::Warn(_) => "warn",
        Cell::NotObservable(_) => "hidden",
        Cell::NotApplicable(_) => "na",
        Cell::NotChecked => "none",
    }
}

fn conformance(h: &mut String, c: &ConformDoc) {
    h.push_str(
        "<section id=\"conformance\"><h2>Conformance: the specification's normative statements</h2>\
         <p class=\"legend\">Catalogue: <span><i style=\"background:#4c9a4c\"></i>checked</span>\
         <span><i style=\"background:#bbbbbb\"></i>not applicable</span>\
         <span><i style=\"background:#e0a030\"></i>not implemented</span>\
         <span><i style=\"background:#d04040\"></i>no entry</span>. \
         Per target, statements (all of its devices merged) that \
         <span><i class=\"pass\"></i>pass</span><span><i class=\"fail\"></i>fail (a MUST)</span>\
         <span><i class=\"warn\"></i>warn (or a SHOULD failed)</span>; the cell's colour is the pass share of those judged.</p>",
    );
    if c.statements.is_empty() {
        h.push_str("<p>No conformance run given.</p></section>\n");
        return;
    }
    let level: BTreeMap<&str, &str> = c
        .statements
        .iter()
        .map(|s| (s.id.as_str(), s.level.as_str()))
        .collect();
    // target -> statement -> merged
    let mut by: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for r in &c.runs {
        let t = by.entry(&r.target).or_default();
        for rec in &r.records {
            t.entry(&rec.statement).or_default().push(&rec.outcome);
        }
    }
    let cells: BTreeMap<&str, BTreeMap<&str, &str>> = by
        .iter()
        .map(|(t, m)| {
            (
                *t,
                m.iter()
                    .map(|(s, v)| {
                        let mut o = merged(v.iter().copied());
                        if o == "fail" && level.get(s).is_some_and(|l| *l == "SHOULD") {
                            o = "warn";
                        }
                        (*s, o)
                    })
                    .collect(),
            )
        })
        .collect();
    let mut areas: BTreeMap<(&str, &str), Vec<&StatementDoc>> = BTreeMap::new();
    for s in &c.statements {
        areas.entry((&s.area, &s.side)).or_default().push(s);
    }
    let targets: Vec<&str> = cells.keys().copied().collect();
    h.push_str("<table><tr><th>area</th><th>side</th><th>statements</th><th>catalogue</th>");
    for t in &targets {
        let _ = write!(h, "<th>{}</th>", esc(t));
    }
    h.push_str("</tr>\n");
    for ((area, side), st) in &areas {
        let kind = |k: &str| st.iter().filter(|s| s.entry.get(k).is_some()).count();
        let parts = [
            (kind("checked_by"), "#4c9a4c"),
            (kind("not_applicable"), "#bbbbbb"),
            (kind("not_implemented"), "#e0a030"),
            (kind("missing"), "#d04040"),
        ];
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td>",
            esc(area),
            esc(side),
            st.len(),
            bar(&parts, st.len())
        );
        for t in &targets {
            let m = &cells[t];
            let n = |o: &str| {
                st.iter()
                    .filter(|s| m.get(s.id.as_str()) == Some(&o))
                    .count()
            };
            let (p, f, w) = (n("pass"), n("fail"), n("warn"));
            if p + f + w == 0 {
                h.push_str("<td class=\"none\">-</td>");
                continue;
            }
            let share = p as f64 / (p + f + w) as f64;
            let _ = write!(
                h,
                "<td style=\"background:{}\" title=\"{} pass, {} fail, {} warn\">{p}/{}</td>",
                heat(share, f > 0),
                p,
                f,
                w,
                p + f + w
            );
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>");
    let errors: Vec<&RunDoc> = c.runs.iter().filter(|r| r.error.is_some()).collect();
    if !errors.is_empty() {
        h.push_str("<h3>Targets not checked</h3><ul>");
        for r in errors {
            let _ = write!(
                h,
                "<li>{} ({}): {}</li>",
                esc(&r.target),
                esc(&r.device),
                esc(r.error.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("</section>\n");
}

/// A stacked bar of `parts` out of `total`, as inline SVG.
fn bar(parts: &[(usize, &str)], total: usize) -> String {
    let width = 160.0;
    let mut x = 0.0;
    let mut s = format!("<svg width=\"{width}\" height=\"12\" role=\"img\">");
    for (n, colour) in parts {
        let w = width * *n as f64 / total.max(1) as f64;
        if w > 0.0 {
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"0\" width=\"{w:.1}\" height=\"12\" fill=\"{colour}\"><title>{n}</title></rect>"
            );
        }
        x += w;
    }
    s.push_str("</svg>");
    s
}

/// A background from red (0) through yellow to green (1); a share with a
/// MUST failure never shows as full green.
fn heat(share: f64, failed: bool) -> String {
    let share = if failed { share.min(0.9) } else { share };
    let hue = 120.0 * share.clamp(0.0, 1.0);
    format!("hsl({hue:.0},60%,80%)")
}

fn bench(h: &mut String, runs: &[BenchRecord]) {
    h.push_str("<section id=\"bench\"><h2>Benchmarks: ours against peers, in the same run</h2>");
    if runs.is_empty() {
        h.push_str(
            "<p>No bench run given: <code>virtio-harness bench --format json &gt; bench.json</code>, \
             then <code>report --bench bench.json</code> (repeatable: <code>bench --user</code>, \
             <code>--crypto</code>, <code>--tpm</code> runs too).</p>",
        );
    }
    // Without a guest in the way first: those rows compare the devices;
    // the tiny guests' rows come out alike for every monitor on this machine.
    let rank = |m: &str| {
        ["user", "crypto", "vhost", "all", "net", "tpm"]
            .iter()
            .position(|x| *x == m)
            .unwrap_or(usize::MAX)
    };
    let mut runs: Vec<&BenchRecord> = runs.iter().collect();
    runs.sort_by_key(|b| rank(&b.mode));
    for b in runs {
        let _ = write!(
            h,
            "<h3>bench {} (--rounds {}; each table says what it is a median of)</h3><p class=\"prov\">{}</p>",
            esc(&b.mode),
            b.rounds,
            esc(&b.provenance.line())
        );
        // What the run said beside its tables: placement, peers not
        // measured, ceilings, goals.
        for note in crate::record::notes(&b.markdown) {
            let _ = write!(h, "<p class=\"note\">{}</p>", esc(&note));
        }
        for f in &b.figures {
            match plot::svg(f) {
                Ok(svg) => {
                    let _ = write!(
                        h,
                        "<figure class=\"plot\" id=\"plot-{}\">{svg}<figcaption>{}</figcaption></figure>",
                        esc(&f.id.replace(['/', ' '], "-")),
                        plot::legend(f)
                    );
                }
                // Still a plot figure, without its SVG: `--check` fails on it.
                Err(e) => {
                    let _ = write!(
                        h,
                        "<figure class=\"plot\"><figcaption>{}: not drawn: {}</figcaption></figure>",
                        esc(&f.title),
                        esc(&e)
                    );
                }
            }
        }
        for t in &b.tables {
            if !t.caption.is_empty() {
                let _ = write!(h, "<p class=\"prov\">{}</p>", esc(&t.caption.join(" ")));
            }
            h.push_str("<table><tr>");
            for c in &t.columns {
                let _ = write!(h, "<th>{}</th>", esc(c));
            }
            h.push_str("</tr>");
            for r in &t.rows {
                h.push_str("<tr>");
                for (i, c) in r.iter().enumerate() {
                    let class = if i > 0 && c.starts_with(|ch: char| ch.is_ascii_digit()) {
                        " class=\"num\""
                    } else {
                        ""
                    };
                    let _ = write!(h, "<td{class}>{}</td>", esc(c));
                }
                h.push_str("</tr>");
            }
            h.push_str("</table>\n");
        }
        let _ = write!(
            h,
            "<details><summary>the run's output as printed</summary><pre>{}</pre></details>",
            esc(&b.markdown)
        );
    }
    h.push_str("</section>\n");
}

#[cfg(test)]
mod tests;
