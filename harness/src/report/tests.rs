use super::*;
use crate::record::{Figure, Role, Series, SuiteRowRecord, Table, VerdictRecord};

/// A small page's inputs: three suite rows, two devices' verdicts, a
/// conformance run of two targets, one bench run with a plot.
pub(crate) fn sample() -> Inputs {
    let row = |scenario: &str, status: &str, result: &str| SuiteRowRecord {
        scenario: scenario.into(),
        device: "virtio-rng".into(),
        backend: "rng-builtin".into(),
        status: status.into(),
        result: result.into(),
        boot_ms: Some(12.5),
        exits: Some(40),
        kvm_exits: None,
    };
    let verdict = |device: &str, case: &str, v: &str| VerdictRecord {
        device: device.into(),
        case: case.into(),
        verdict: v.into(),
        detail: format!("{case} <detail>"),
    };
    let conform = serde_json::json!({
        "spec": {"commit": "abc", "describe": "v1.3"},
        "statements": [
            {"id": "device:a#1", "side": "device", "level": "MUST", "area": "basic", "section": "2.1", "entry": {"checked_by": ["x"]}},
            {"id": "device:a#2", "side": "device", "level": "SHOULD", "area": "basic", "section": "2.1", "entry": {"checked_by": ["y"]}},
            {"id": "driver:b#1", "side": "driver", "level": "MUST", "area": "split", "section": "2.7", "entry": {"not_applicable": "why"}},
        ],
        "runs": [
            {"target": "ours", "device": "rng", "error": null, "records": [
                {"statement": "device:a#1", "check": "x", "outcome": "pass", "detail": ""},
                {"statement": "device:a#2", "check": "y", "outcome": "fail", "detail": "d"}]},
            {"target": "peer", "device": "rng", "error": "not installed", "records": []},
        ],
    });
    Inputs {
        suite: SuiteRecord {
            provenance: Provenance::default(),
            rows: vec![
                row("rng", "pass", "pass"),
                row("blk", "fail", "FAIL: <broken>"),
                row("tap", "skip", "skip: no netns"),
            ],
            verdicts: vec![
                verdict("rng", "desc-loop", "PASS"),
                verdict("rng", "head-out-of-range", "REJECT"),
                verdict("blk", "desc-loop", "WEDGED"),
            ],
        },
        conform: serde_json::from_value(conform).expect("a report.json"),
        conform_source: "sample".into(),
        bench: vec![BenchRecord {
            provenance: Provenance::default(),
            mode: "user".into(),
            rounds: 3,
            markdown: String::new(),
            tables: vec![Table {
                caption: vec!["what it measures".into()],
                columns: vec!["job".into(), "ours".into()],
                rows: vec![vec!["randread".into(), "1000".into()]],
            }],
            figures: vec![Figure {
                id: "user-blk/page cache".into(),
                title: "IOPS".into(),
                x_label: "depth".into(),
                y_label: "IOPS".into(),
                log_x: true,
                series: vec![Series {
                    name: "ours".into(),
                    role: Role::Ours,
                    points: vec![(1.0, 10.0), (32.0, 100.0)],
                }],
            }],
        }],
    }
}

#[test]
fn the_page_has_every_section_and_escapes_what_it_shows() {
    let page = html(&sample());
    for id in SECTIONS {
        assert!(page.contains(&format!("<section id=\"{id}\"")), "{id}");
    }
    assert!(page.contains("FAIL: &lt;broken&gt;"));
    assert!(!page.contains("<broken>"));
    assert!(page.contains("<figure class=\"plot\" id=\"plot-user-blk-page-cache\"><svg"));
    // No script, no external resource.
    assert!(!page.contains("<script"));
    assert!(!page.contains("src="));
    assert_eq!(
        page.matches("href=").count(),
        page.matches("href=\"#").count(),
        "links only within the page"
    );
}

#[test]
fn the_verdict_map_has_a_cell_per_device_and_case() {
    let page = html(&sample());
    let map = page
        .split("<section id=\"hostile\"")
        .nth(1)
        .and_then(|s| s.split("</section>").next())
        .expect("the hostile section");
    // rng ran both cases, blk only one: one empty cell.
    assert_eq!(map.matches("<td class=\"pass\"").count(), 1);
    assert_eq!(map.matches("<td class=\"reject\"").count(), 1);
    assert_eq!(map.matches("<td class=\"wedged\"").count(), 1);
    assert_eq!(map.matches("<td class=\"none\"></td>").count(), 1);
    assert!(map.contains("title=\"PASS: desc-loop &lt;detail&gt;\""));
}

#[test]
fn conformance_merges_a_targets_records_and_a_should_failure_warns() {
    let page = html(&sample());
    let sec = page
        .split("<section id=\"conformance\"")
        .nth(1)
        .and_then(|s| s.split("</section>").next())
        .expect("the conformance section");
    // basic/device on ours: one pass, the SHOULD failure a warning.
    assert!(
        sec.contains("title=\"1 pass, 0 fail, 1 warn\">1/2</td>"),
        "{sec}"
    );
    assert!(sec.contains("not installed"));
    assert_eq!(merged(["pass", "fail", "warn"].into_iter()), "fail");
    assert_eq!(merged(["not-applicable", "pass"].into_iter()), "pass");
    assert_eq!(merged(std::iter::empty()), "none");
}

#[test]
fn records_round_trip_through_json() {
    let s = sample();
    let j = serde_json::to_string(&s.suite).expect("json");
    let back: SuiteRecord = serde_json::from_str(&j).expect("parsed");
    assert_eq!(back, s.suite);
    let j = serde_json::to_string(&s.bench[0]).expect("json");
    let back: BenchRecord = serde_json::from_str(&j).expect("parsed");
    assert_eq!(back, s.bench[0]);
}

#[test]
fn a_file_that_is_not_a_record_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bench.json");
    std::fs::write(&bad, "{\"rows\": 3}").expect("write");
    let e = Inputs::gather(None, None, std::slice::from_ref(&bad)).expect_err("refused");
    assert!(
        e.contains("bench.json") && e.contains("bench --format json"),
        "{e}"
    );
    let e = Inputs::gather(None, None, &[dir.path().join("absent.json")]).expect_err("refused");
    assert!(e.contains("absent.json"), "{e}");
}

#[test]
fn the_page_loads_in_headless_chromium() {
    if browser::chromium().is_none() {
        assert!(
            std::env::var("HARNESS_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "HARNESS_REQUIRE_CHROMIUM=1 but no Chromium is installed"
        );
        eprintln!("SKIP: no Chromium (Debian's chromium; .ci/setup installs it)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let page = write(dir.path(), &sample()).expect("written");
    let seen = browser::check(&page).expect("the page passes in the browser");
    assert_eq!(seen.sections, SECTIONS.len());
    assert_eq!(seen.plots, 1);
    assert!(seen.screenshot.exists());
    // A page with a console error is caught.
    let bad = dir.path().join("bad.html");
    std::fs::write(
        &bad,
        html(&sample()).replace("</body>", "<script>console.error('boom')</script></body>"),
    )
    .expect("written");
    let e = browser::check(&bad).expect_err("the console message is seen");
    assert!(e.contains("boom"), "{e}");
    // A page without its sections is caught.
    let empty = dir.path().join("empty.html");
    std::fs::write(&empty, "<html><body><p>nothing</p></body></html>").expect("written");
    let e = browser::check(&empty).expect_err("the sections are missing");
    assert!(e.contains("lacks the sections"), "{e}");
}
