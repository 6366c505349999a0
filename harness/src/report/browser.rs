//! The page in a real browser: headless Chromium (Debian's `chromium`)
//! loads it, says whether anything reached its console, gives back the
//! DOM it rendered (each of [`super::SECTIONS`] must be there, and an SVG
//! in every plot), and saves a screenshot beside the page.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the browser saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserCheck {
    /// Sections found.
    pub sections: usize,
    /// Plots rendered with their SVG.
    pub plots: usize,
    /// The screenshot.
    pub screenshot: PathBuf,
}

/// Longest one browser run may take.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The browser: `$HARNESS_CHROMIUM`, else the first of Chromium's usual
/// names on the `PATH`.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HARNESS_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| {
            [
                "chromium",
                "chromium-browser",
                "google-chrome",
                "chrome-headless-shell",
            ]
            .map(|n| d.join(n))
        })
        .find(|p| p.is_file())
}

/// Runs the browser headless on `url` with `args`: (stdout, stderr).
fn headless(
    browser: &Path,
    profile: &Path,
    args: &[String],
    url: &str,
) -> Result<(String, String), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a scratch directory: {e}"))?;
    let out = dir.path().join("out");
    let err = dir.path().join("err");
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut child = Command::new(browser)
        .args([
            "--headless",
            // Root in a container has no user namespace for the sandbox;
            // the page is our own file.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(file(&out)?)
        .stderr(file(&err)?)
        .spawn()
        .map_err(|e| format!("{}: {e}", browser.display()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not finish within {} s",
                    browser.display(),
                    TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("{}: {e}", browser.display())),
        }
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out), read(&err));
    if !status.success() {
        return Err(format!(
            "{} exited with {status}:\n{}",
            browser.display(),
            stderr.lines().rev().take(10).collect::<Vec<_>>().join("\n")
        ));
    }
    Ok((stdout, stderr))
}

/// The console messages in Chromium's log (`…:CONSOLE…] "message", source: …`).
pub fn console_messages(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// Loads `page` in headless Chromium: no console message, every section
/// present, every plot with its SVG; saves `screenshot.png` beside it.
pub fn check(page: &Path) -> Result<BrowserCheck, String> {
    let browser = chromium().ok_or(
        "no Chromium found (Debian's chromium; .ci/setup installs it, HARNESS_CHROMIUM names another)",
    )?;
    let page = page
        .canonicalize()
        .map_err(|e| format!("{}: {e}", page.display()))?;
    let url = format!("file://{}", page.display());
    let profile = tempfile::tempdir().map_err(|e| format!("a browser profile: {e}"))?;
    let (dom, log) = headless(&browser, profile.path(), &["--dump-dom".into()], &url)?;
    let console = console_messages(&log);
    if !console.is_empty() {
        return Err(format!(
            "the page logged to the console:\n{}",
            console.join("\n")
        ));
    }
    let missing: Vec<&str> = super::SECTIONS
        .iter()
        .copied()
        .filter(|id| !dom.contains(&format!("<section id=\"{id}\"")))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the rendered page lacks the sections {missing:?} ({} bytes of DOM)",
            dom.len()
        ));
    }
    let figures: Vec<&str> = dom.split("<figure class=\"plot\"").skip(1).collect();
    let drawn = figures
        .iter()
        .filter(|f| {
            f.split("</figure>")
                .next()
                .is_some_and(|f| f.contains("<svg"))
        })
        .count();
    if drawn != figures.len() {
        return Err(format!(
            "{} of {} plots rendered without their SVG",
            figures.len() - drawn,
            figures.len()
        ));
    }
    let dir = page.parent().unwrap_or(Path::new("."));
    let shot = dir.join("screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let (_, log) = headless(
        &browser,
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600".into(),
        ],
        &url,
    )?;
    let console = console_messages(&log);
    if !console.is_empty() {
        return Err(format!(
            "the page logged to the console while drawn:\n{}",
            console.join("\n")
        ));
    }
    let png =
        std::fs::read(&shot).map_err(|e| format!("the screenshot {}: {e}", shot.display()))?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") || png.len() < 10_000 {
        return Err(format!(
            "the screenshot {} is not a drawn page ({} bytes)",
            shot.display(),
            png.len()
        ));
    }
    Ok(BrowserCheck {
        sections: super::SECTIONS.len(),
        plots: figures.len(),
        screenshot: shot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_found_in_chromiums_log() {
        let log = "\
[1:1:1206/162340.496781:ERROR:dbus/object_proxy.cc:572] Failed to call method
[2:2:1206/162343.765399:INFO:CONSOLE:1] \"boom\", source: file:///tmp/t.html (1)
";
        assert_eq!(console_messages(log).len(), 1);
        assert!(console_messages("nothing here\n").is_empty());
    }
}
