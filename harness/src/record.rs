//! What a run leaves behind for scripts and for the report page
//! (`--format json`, `virtio-harness report`): the suite's rows and the
//! hostile verdicts ([`SuiteRecord`]), a bench run's tables and plot
//! series ([`BenchRecord`]), each with where and when it was taken
//! ([`Provenance`]).
//!
//! The bench code keeps writing its Markdown tables; [`tables`] reads them
//! back as data, and the series a plot needs are recorded beside them
//! through a [`Plot`] while the numbers are at hand ([`take_figures`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Where and when a record was taken: a figure means little without the
/// machine it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// UTC time, `YYYY-MM-DD HH:MM`.
    pub taken: String,
    /// The host's name.
    pub host: String,
    /// The CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// This harness's version.
    pub version: String,
}

impl Provenance {
    /// This machine, now.
    pub fn here() -> Provenance {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Provenance {
            taken: utc(secs),
            host: read("/proc/sys/kernel/hostname").trim().to_string(),
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// One line for a caption.
    pub fn line(&self) -> String {
        format!(
            "{} UTC on {} ({}, {} CPUs, Linux {})",
            self.taken, self.host, self.cpu, self.cpus, self.kernel
        )
    }
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM` (UTC), by the proleptic
/// Gregorian calendar's 400-year cycle of 146097 days.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (hh, mm) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Days since 0000-03-01: years start in March so the leap day is last.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hh:02}:{mm:02}")
}

/// One row of the suite, as data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuiteRowRecord {
    /// Scenario name.
    pub scenario: String,
    /// Device under test.
    pub device: String,
    /// Backend behind it.
    pub backend: String,
    /// `pass`, `fail` or `skip`.
    pub status: String,
    /// The row's whole result text (`pass`, `FAIL: …`, `skip: …`).
    pub result: String,
    /// First `KVM_RUN` to the verdict, in ms, if the guest ran.
    pub boot_ms: Option<f64>,
    /// VM exits the monitor saw.
    pub exits: Option<u64>,
    /// VM exits KVM counted.
    pub kvm_exits: Option<u64>,
}

impl From<&crate::SuiteRow> for SuiteRowRecord {
    fn from(r: &crate::SuiteRow) -> Self {
        SuiteRowRecord {
            scenario: r.scenario.clone(),
            device: r.device.clone(),
            backend: r.backend.clone(),
            status: if r.failed() {
                "fail"
            } else if r.result.starts_with("skip") {
                "skip"
            } else {
                "pass"
            }
            .into(),
            result: r.result.clone(),
            boot_ms: r.boot_to_exit.map(|d| d.as_secs_f64() * 1e3),
            exits: r.exits,
            kvm_exits: r.kvm_exits,
        }
    }
}

/// One hostile case's verdict, as data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// The device (or hostile peer) the case ran against.
    pub device: String,
    /// The case.
    pub case: String,
    /// `PASS`, `REJECT`, `WEDGED` or `CRASH`.
    pub verdict: String,
    /// Why.
    pub detail: String,
}

impl From<&crate::verdict::Verdict> for VerdictRecord {
    fn from(v: &crate::verdict::Verdict) -> Self {
        VerdictRecord {
            device: v.device.clone(),
            case: v.case.clone(),
            verdict: v.kind.to_string(),
            detail: v.detail.clone(),
        }
    }
}

/// A suite run (`virtio-harness suite --format json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SuiteRecord {
    /// Where and when.
    pub provenance: Provenance,
    /// The rows, in the order they ran.
    pub rows: Vec<SuiteRowRecord>,
    /// The hostile cases' verdicts.
    pub verdicts: Vec<VerdictRecord>,
}

/// A Markdown table of a bench run, as data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// The text lines just before the table (what it measures), if any.
    pub caption: Vec<String>,
    /// The header cells.
    pub columns: Vec<String>,
    /// The rows' cells, as printed.
    pub rows: Vec<Vec<String>>,
}

/// Reads the tables out of `markdown`, with the non-table lines before
/// each as its caption (a blank line ends a caption paragraph; the last
/// paragraph before a table is its caption).
pub fn tables(markdown: &str) -> Vec<Table> {
    fn cells(line: &str) -> Vec<String> {
        let inner = line.trim().trim_start_matches('|');
        let inner = inner.strip_suffix('|').unwrap_or(inner);
        // `\|` is a literal bar inside a cell.
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'|') => {
                    cur.push('|');
                    chars.next();
                }
                '|' => out.push(std::mem::take(&mut cur).trim().to_string()),
                _ => cur.push(c),
            }
        }
        out.push(cur.trim().to_string());
        out
    }
    let is_rule = |line: &str| {
        let t = line.trim();
        t.starts_with('|') && t.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
    };
    let mut out = Vec::new();
    // The current paragraph, and whether a blank line has ended it.
    let mut para: Vec<String> = Vec::new();
    let mut ended = false;
    let mut lines = markdown.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t.starts_with('|') && lines.peek().is_some_and(|n| is_rule(n)) {
            lines.next();
            let mut table = Table {
                caption: std::mem::take(&mut para),
                columns: cells(t),
                rows: Vec::new(),
            };
            while let Some(row) = lines.next_if(|l| l.trim().starts_with('|')) {
                table.rows.push(cells(row));
            }
            out.push(table);
            ended = false;
        } else if t.is_empty() {
            ended = true;
        } else {
            if ended {
                para.clear();
                ended = false;
            }
            para.push(t.to_string());
        }
    }
    out
}

/// The paragraphs of `markdown` that are neither a table nor a table's
/// caption: what a run said beside its tables (where it ran, a peer not
/// measured and why, a ceiling, a goal).
pub fn notes(markdown: &str) -> Vec<String> {
    let captions: Vec<String> = tables(markdown)
        .into_iter()
        .filter(|t| !t.caption.is_empty())
        .map(|t| t.caption.join(" "))
        .collect();
    let mut out = Vec::new();
    let mut para: Vec<&str> = Vec::new();
    let mut flush = |para: &mut Vec<&str>| {
        if !para.is_empty() {
            let text = para.join(" ");
            if !captions.contains(&text) {
                out.push(text);
            }
            para.clear();
        }
    };
    for line in markdown.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('|') {
            flush(&mut para);
        } else {
            para.push(t);
        }
    }
    flush(&mut para);
    out
}

/// Who a plotted series measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Our implementation.
    Ours,
    /// A peer nobody here wrote (QEMU, qemu-storage-daemon, DPDK, …).
    Peer,
    /// A ceiling measured with no virtio in the way: the same work done
    /// directly (drawn dashed).
    Limit,
}

/// One line of a plot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// Who it measures.
    pub role: Role,
    /// `(x, y)` in the order measured.
    pub points: Vec<(f64, f64)>,
}

/// A plot's data: one y against one x for several series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// A stable key (`user-blk-iops-depth/page cache`).
    pub id: String,
    /// The title.
    pub title: String,
    /// The x axis's label.
    pub x_label: String,
    /// The y axis's label.
    pub y_label: String,
    /// Whether x is spread on a log scale (queue depths, sizes).
    pub log_x: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// A kind of plot a bench fills in as it measures (a constant beside the
/// code that measures it).
#[derive(Clone, Copy, Debug)]
pub struct Plot {
    /// The key.
    pub id: &'static str,
    /// The title.
    pub title: &'static str,
    /// The x axis's label.
    pub x_label: &'static str,
    /// The y axis's label.
    pub y_label: &'static str,
    /// Log-scaled x.
    pub log_x: bool,
}

/// The figures recorded since the last [`take_figures`], by id.
static FIGURES: Mutex<BTreeMap<String, Figure>> = Mutex::new(BTreeMap::new());

impl Plot {
    /// Records a point of `series` on this plot.
    pub fn point(&self, series: &str, role: Role, x: f64, y: f64) {
        self.point_in("", series, role, x, y);
    }

    /// Records a point on this plot's `variant` (a figure of its own,
    /// titled `title (variant)`, e.g. one per cache mode).
    pub fn point_in(&self, variant: &str, series: &str, role: Role, x: f64, y: f64) {
        if !x.is_finite() || !y.is_finite() {
            return;
        }
        let (id, title) = if variant.is_empty() {
            (self.id.to_string(), self.title.to_string())
        } else {
            (
                format!("{}/{variant}", self.id),
                format!("{} ({variant})", self.title),
            )
        };
        let Ok(mut figs) = FIGURES.lock() else { return };
        let fig = figs.entry(id.clone()).or_insert_with(|| Figure {
            id,
            title,
            x_label: self.x_label.into(),
            y_label: self.y_label.into(),
            log_x: self.log_x,
            series: Vec::new(),
        });
        match fig.series.iter_mut().find(|s| s.name == series) {
            Some(s) => s.points.push((x, y)),
            None => fig.series.push(Series {
                name: series.into(),
                role,
                points: vec![(x, y)],
            }),
        }
    }
}

/// The figures recorded so far, emptying the record.
pub fn take_figures() -> Vec<Figure> {
    match FIGURES.lock() {
        Ok(mut f) => std::mem::take(&mut *f).into_values().collect(),
        Err(_) => Vec::new(),
    }
}

/// A bench run (`virtio-harness bench --format json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    /// Where and when.
    pub provenance: Provenance,
    /// Which rows: `all`, `net`, `vhost`, `user`, `crypto` or `tpm`.
    pub mode: String,
    /// Runs per measurement asked for.
    pub rounds: usize,
    /// The tables as printed.
    pub markdown: String,
    /// The same tables as data.
    pub tables: Vec<Table>,
    /// The plots' data.
    pub figures: Vec<Figure>,
}

impl BenchRecord {
    /// The record of a run that printed `markdown` and recorded figures.
    pub fn new(mode: &str, rounds: usize, markdown: String) -> BenchRecord {
        BenchRecord {
            provenance: Provenance::here(),
            mode: mode.into(),
            rounds,
            tables: tables(&markdown),
            markdown,
            figures: take_figures(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        // 2000-02-29 (a leap day in a year divisible by 400) 12:34.
        assert_eq!(utc(951_827_640), "2000-02-29 12:34");
        assert_eq!(utc(1_796_601_600), "2026-12-07 00:00");
    }

    #[test]
    fn tables_with_their_captions() {
        let md = "\
placement: not pinned

vhost-user-blk through virtio-user (median of 3)

| job | ours | qsd |
| --- | ---: | ---: |
| randread 4 KiB, depth 1 | 100 (1 µs) | 90 |
| a \\| b | 1 | 2 |
| x | 2 | 3 |

| second | table |
|---|---|
| 1 | 2 |

goal: within 1.2x
";
        let t = tables(md);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0].caption,
            vec!["vhost-user-blk through virtio-user (median of 3)"]
        );
        assert_eq!(t[0].columns, vec!["job", "ours", "qsd"]);
        assert_eq!(t[0].rows.len(), 3);
        assert_eq!(t[0].rows[1], vec!["a | b", "1", "2"]);
        assert!(t[1].caption.is_empty());
        assert_eq!(t[1].rows, vec![vec!["1", "2"]]);
        assert_eq!(
            notes(md),
            vec!["placement: not pinned", "goal: within 1.2x"],
            "what is not a table or a caption"
        );
    }

    #[test]
    fn plots_collect_series_by_variant() {
        const P: Plot = Plot {
            id: "test-plot",
            title: "T",
            x_label: "x",
            y_label: "y",
            log_x: true,
        };
        P.point_in("a", "ours", Role::Ours, 1.0, 10.0);
        P.point_in("a", "ours", Role::Ours, 2.0, 20.0);
        P.point_in("a", "peer", Role::Peer, 1.0, 5.0);
        P.point_in("b", "ours", Role::Ours, 1.0, f64::NAN);
        let figs: Vec<Figure> = take_figures()
            .into_iter()
            .filter(|f| f.id.starts_with("test-plot"))
            .collect();
        assert_eq!(figs.len(), 1, "the NaN point makes no figure");
        assert_eq!(figs[0].title, "T (a)");
        assert_eq!(figs[0].series.len(), 2);
        assert_eq!(figs[0].series[0].points, vec![(1.0, 10.0), (2.0, 20.0)]);
    }
}
