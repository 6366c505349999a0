//! Reads the normative statements out of the virtio specification's LaTeX
//! source (oasis-tcs/virtio-spec) for the conformance catalogue.
//!
//! The model:
//! - The document is `main.tex` with every `\input` expanded, comments
//!   dropped, up to `\appendix`. Headings (`\chapter` … `\subparagraph`,
//!   and the spec's own `\devicenormative`, `\drivernormative` and
//!   `\conformance`, which expand to headings) are numbered as LaTeX
//!   numbers them, so a statement carries its section number (§2.1.1).
//! - A normative block is the text of a `\devicenormative` or
//!   `\drivernormative` heading up to the next heading. The blocks that
//!   apply to a target are those the conformance chapter lists for it
//!   ([`CLAUSES`]: the general driver and device clauses, MMIO, and the
//!   network, block, console, entropy and crypto devices).
//! - A statement is one sentence with MUST, MUST NOT, SHOULD, SHOULD NOT
//!   or SHALL (RFC 2119's synonym of MUST); an item of a list whose
//!   lead-in carries the keyword is a statement with that lead-in as its
//!   context (and the lead-in is not counted again). Outside the blocks,
//!   in the areas we implement ([`DESCRIPTIVE_AREAS`]), sentences with
//!   MUST are taken too, marked descriptive.
//! - Listings, notes, tables and footnotes are informative and dropped;
//!   markup is removed so the text reads as the rendered sentence (a
//!   reference becomes the referenced section's title in brackets).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use regex::Regex;

use super::catalogue::{Kind, Level, Side, Statement};

/// The conformance clauses whose normative blocks the catalogue takes:
/// the clause title and the short target name.
pub const CLAUSES: &[(&str, &str)] = &[
    ("Driver Conformance", "general"),
    ("Device Conformance", "general"),
    ("MMIO Driver Conformance", "mmio"),
    ("MMIO Device Conformance", "mmio"),
    ("Network Driver Conformance", "net"),
    ("Network Device Conformance", "net"),
    ("Block Driver Conformance", "blk"),
    ("Block Device Conformance", "blk"),
    ("Console Driver Conformance", "console"),
    ("Console Device Conformance", "console"),
    ("Entropy Driver Conformance", "rng"),
    ("Entropy Device Conformance", "rng"),
    ("Crypto Driver Conformance", "crypto"),
    ("Crypto Device Conformance", "crypto"),
];

/// The areas whose MUST sentences outside normative blocks are taken
/// (descriptive statements).
pub const DESCRIPTIVE_AREAS: &[&str] = &[
    "basic/status",
    "basic/features",
    "basic/notifications",
    "basic/config",
    "basic/reset",
    "basic/virtqueues",
    "split",
    "general/init",
    "general/operation",
    "general/cleanup",
    "mmio",
    "net",
    "blk",
    "console",
    "rng",
    "crypto",
    "reserved-features",
];

/// Why the specification could not be read.
#[derive(Debug)]
pub enum SpecError {
    /// `git` could not be run or refused.
    Git {
        /// The command line.
        what: String,
        /// Its error output or the spawn error.
        why: String,
    },
    /// A file was not valid UTF-8.
    NotUtf8(String),
    /// The text did not look like the specification (no conformance
    /// chapter, no statements).
    Unexpected(String),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Git { what, why } => write!(f, "{what}: {why}"),
            SpecError::NotUtf8(p) => write!(f, "{p} is not UTF-8"),
            SpecError::Unexpected(why) => write!(f, "not the expected specification source: {why}"),
        }
    }
}

impl std::error::Error for SpecError {}

/// A specification checkout (or bare clone) at one commit, read with
/// `git show` so no work tree is needed.
#[derive(Debug, Clone)]
pub struct SpecTree {
    dir: PathBuf,
    /// The full commit hash.
    pub commit: String,
    /// `git describe --tags --always` of the commit.
    pub describe: String,
}

impl SpecTree {
    /// Opens `dir` (a clone of oasis-tcs/virtio-spec) at revision `rev`.
    pub fn open(dir: &Path, rev: &str) -> Result<SpecTree, SpecError> {
        let mut t = SpecTree {
            dir: dir.to_path_buf(),
            commit: String::new(),
            describe: String::new(),
        };
        t.commit = t.git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])?;
        t.describe = t
            .git(&["describe", "--tags", "--always", &t.commit.clone()])
            .unwrap_or_else(|_| t.commit.clone());
        Ok(t)
    }

    fn git(&self, args: &[&str]) -> Result<String, SpecError> {
        let what = format!("git -C {} {}", self.dir.display(), args.join(" "));
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .output()
            .map_err(|e| SpecError::Git {
                what: what.clone(),
                why: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(SpecError::Git {
                what,
                why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        String::from_utf8(out.stdout)
            .map(|s| s.trim_end().to_string())
            .map_err(|_| SpecError::NotUtf8(what))
    }

    /// The file at `path` in the commit.
    pub fn read(&self, path: &str) -> Result<String, SpecError> {
        self.git(&["show", &format!("{}:{path}", self.commit)])
    }
}

/// Strips `%` comments (an escaped `\%` stays).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let b = line.as_bytes();
        let mut cut = line.len();
        for i in 0..b.len() {
            if b[i] == b'%' && (i == 0 || b[i - 1] != b'\\') {
                cut = i;
                break;
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// `main.tex` with every `\input` expanded, comments stripped, cut at
/// `\appendix`. `read` gives a file's text by path.
pub fn expand(
    read: &mut dyn FnMut(&str) -> Result<String, SpecError>,
) -> Result<String, SpecError> {
    let input = Regex::new(r"\\input\{([^}]+)\}").expect("static regex");
    let mut depth = 0;
    fn go(
        path: &str,
        read: &mut dyn FnMut(&str) -> Result<String, SpecError>,
        input: &Regex,
        depth: &mut u32,
    ) -> Result<String, SpecError> {
        *depth += 1;
        if *depth > 16 {
            return Err(SpecError::Unexpected(format!(
                "\\input nested too deep at {path}"
            )));
        }
        let text = strip_comments(&read(path)?);
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in input.captures_iter(&text) {
            let whole = m.get(0).expect("match");
            out.push_str(&text[last..whole.start()]);
            let name = m[1].trim();
            let file = if name.ends_with(".tex") {
                name.to_string()
            } else {
                format!("{name}.tex")
            };
            // Generated files (setup-generated.tex) are not in the tree
            // and hold no statements.
            match go(&file, read, input, depth) {
                Ok(t) => out.push_str(&t),
                Err(SpecError::Git { .. }) => {}
                Err(e) => return Err(e),
            }
            last = whole.end();
        }
        out.push_str(&text[last..]);
        *depth -= 1;
        Ok(out)
    }
    let mut doc = go("main.tex", read, &input, &mut depth)?;
    if let Some(at) = doc.find("\\appendix") {
        doc.truncate(at);
    }
    Ok(doc)
}

/// Index just past the group `{…}` that opens at `open` (`text[open]` is
/// `{`); escaped braces do not count.
fn group_end(text: &str, open: usize) -> usize {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The `n` brace groups from `at` (skipping whitespace before each): their
/// contents and the index after the last.
fn groups(text: &str, mut at: usize, n: usize) -> Option<(Vec<&str>, usize)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        while text.as_bytes().get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        if text.as_bytes().get(at) != Some(&b'{') {
            return None;
        }
        let end = group_end(text, at);
        out.push(&text[at + 1..end.saturating_sub(1).max(at + 1)]);
        at = end;
    }
    Some((out, at))
}

const LEVELS: &[&str] = &[
    "chapter",
    "section",
    "subsection",
    "subsubsection",
    "paragraph",
    "subparagraph",
];

/// A heading of the document.
#[derive(Clone, Debug)]
pub struct Heading {
    /// 0 for a chapter … 5 for a subparagraph.
    pub level: usize,
    /// The title as printed (markup removed).
    pub title: String,
    /// Its label as written (`sec:…`, `devicenormative:…`), white space
    /// collapsed.
    pub label: Option<String>,
    /// The section number (`2.1.1`), empty for an unnumbered heading.
    pub number: String,
    /// A normative block: whose requirements.
    pub normative: Option<Side>,
    /// The titles of this heading and its ancestors, outermost first.
    pub path: Vec<String>,
    /// Where its text starts and ends in the document.
    pub body: (usize, usize),
}

/// The headings of the document in order, numbered.
pub fn headings(doc: &str) -> Vec<Heading> {
    let head = Regex::new(
        r"\\(devicenormative|drivernormative|conformance|chapter|section|subsection|subsubsection|paragraph|subparagraph)(\*?)\s*\{",
    )
    .expect("static regex");
    let label = Regex::new(r"^\s*\\label\{([^}]*)\}").expect("static regex");
    let mut counters = [0u32; 6];
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out: Vec<Heading> = Vec::new();
    let mut search = 0;
    while let Some(m) = head.captures_at(doc, search) {
        let whole = m.get(0).expect("match");
        let open = whole.end() - 1;
        let kind = &m[1];
        let starred = !m[2].is_empty();
        let (level, title, lab, normative, end) = match kind {
            "devicenormative" | "drivernormative" => {
                let Some((g, end)) = groups(doc, open, 3) else {
                    search = whole.end();
                    continue;
                };
                let level = LEVELS
                    .iter()
                    .position(|l| g[0].trim().trim_start_matches('\\') == *l)
                    .unwrap_or(3);
                let side = if kind == "devicenormative" {
                    Side::Device
                } else {
                    Side::Driver
                };
                let title = format!(
                    "{} Requirements: {}",
                    if side == Side::Device {
                        "Device"
                    } else {
                        "Driver"
                    },
                    clean_inline(g[1])
                );
                (
                    level,
                    title,
                    Some(format!("{kind}:{}", squash(g[2]))),
                    Some(side),
                    end,
                )
            }
            "conformance" => {
                let Some((g, end)) = groups(doc, open, 2) else {
                    search = whole.end();
                    continue;
                };
                let level = LEVELS
                    .iter()
                    .position(|l| g[0].trim().trim_start_matches('\\') == *l)
                    .unwrap_or(1);
                let (lab, end) = match label.captures(&doc[end..]) {
                    Some(c) => (Some(squash(&c[1])), end + c.get(0).expect("match").end()),
                    None => (None, end),
                };
                (level, clean_inline(g[1]), lab, None, end)
            }
            _ => {
                let level = LEVELS.iter().position(|l| *l == kind).unwrap_or(0);
                let end = group_end(doc, open);
                let title = clean_inline(&doc[open + 1..end.saturating_sub(1).max(open + 1)]);
                let (lab, end) = match label.captures(&doc[end..]) {
                    Some(c) => (Some(squash(&c[1])), end + c.get(0).expect("match").end()),
                    None => (None, end),
                };
                (level, title, lab, None, end)
            }
        };
        let number = if starred {
            String::new()
        } else {
            counters[level] += 1;
            for c in counters.iter_mut().skip(level + 1) {
                *c = 0;
            }
            counters[..=level]
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(".")
        };
        while stack.last().is_some_and(|(l, _)| *l >= level) {
            stack.pop();
        }
        stack.push((level, title.clone()));
        if let Some(prev) = out.last_mut() {
            prev.body.1 = whole.start();
        }
        out.push(Heading {
            level,
            title,
            label: lab,
            number,
            normative,
            path: stack.iter().map(|(_, t)| t.clone()).collect(),
            body: (end, doc.len()),
        });
        search = end.max(whole.end());
    }
    out
}

/// Collapses whitespace runs to one space and trims.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Markup removed from a short piece of text (a title).
fn clean_inline(s: &str) -> String {
    let mut t = s.to_string();
    for cmd in ["field", "texttt", "emph", "textbf", "textit", "mbox"] {
        t = t.replace(&format!("\\{cmd}{{"), "{");
    }
    let t = t
        .replace("\\_", "_")
        .replace("\\&", "&")
        .replace('~', " ")
        .replace(['{', '}'], "");
    squash(&t)
}

/// The area of a heading, from its chapter and section titles.
pub fn area(path: &[String]) -> String {
    let chapter = path.first().map(String::as_str).unwrap_or("");
    let section = path.get(1).map(String::as_str).unwrap_or("");
    let named = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .find(|(t, _)| section == *t)
            .map(|(_, a)| (*a).to_string())
    };
    match chapter {
        "Basic Facilities of a Virtio Device" => named(&[
            ("Device Status Field", "basic/status"),
            ("Feature Bits", "basic/features"),
            ("Notifications", "basic/notifications"),
            ("Device Configuration Space", "basic/config"),
            ("Device Reset", "basic/reset"),
            ("Virtqueues", "basic/virtqueues"),
            ("Split Virtqueues", "split"),
            ("Packed Virtqueues", "packed"),
            ("Driver Notifications", "basic/notifications"),
            ("Shared Memory Regions", "basic/shm"),
            ("Device groups", "basic/admin"),
        ])
        .unwrap_or_else(|| format!("basic/{}", slug(section))),
        "General Initialization And Device Operation" => named(&[
            ("Device Initialization", "general/init"),
            ("Device Operation", "general/operation"),
            ("Device Cleanup", "general/cleanup"),
        ])
        .unwrap_or_else(|| format!("general/{}", slug(section))),
        "Virtio Transport Options" => named(&[
            ("Virtio Over MMIO", "mmio"),
            ("Virtio Over PCI Bus", "pci"),
            ("Virtio Over Channel I/O", "ccw"),
        ])
        .unwrap_or_else(|| format!("transport/{}", slug(section))),
        "Device Types" => named(&[
            ("Network Device", "net"),
            ("Block Device", "blk"),
            ("Console Device", "console"),
            ("Entropy Device", "rng"),
            ("Crypto Device", "crypto"),
        ])
        .unwrap_or_else(|| format!("device/{}", slug(section))),
        "Reserved Feature Bits" => "reserved-features".to_string(),
        other => slug(other),
    }
}

/// Lower case, runs of other characters as one `-`.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// The stable part of a statement id from a spec label: each `/`
/// component slugged, the long common prefixes shortened.
pub fn label_slug(label: &str) -> String {
    const PREFIXES: &[(&str, &str)] = &[
        ("Basic Facilities of a Virtio Device", "basic"),
        ("General Initialization And Device Operation", "general"),
        ("Virtio Transport Options / Virtio Over MMIO", "mmio"),
        ("Virtio Transport Options / Virtio Over PCI Bus", "pci"),
        ("Device Types / Network Device", "net"),
        ("Device Types / Block Device", "blk"),
        ("Device Types / Console Device", "console"),
        ("Device Types / Entropy Device", "rng"),
        ("Device Types / Crypto Device", "crypto"),
        ("Reserved Feature Bits", "reserved-features"),
    ];
    let l = squash(label);
    let (head, rest) = PREFIXES
        .iter()
        .find_map(|(p, s)| l.strip_prefix(p).map(|r| (s.to_string(), r.to_string())))
        .unwrap_or((String::new(), l.clone()));
    let mut parts: Vec<String> = if head.is_empty() { vec![] } else { vec![head] };
    parts.extend(rest.split('/').map(slug).filter(|s| !s.is_empty()));
    parts.join("/")
}

/// Normative blocks the conformance chapter does not list although they
/// are of a clause's device: v1.4's crypto clauses name every service's
/// blocks but AKCIPHER's (§5.9.7.7.1, §5.9.7.7.2). Side, label, target.
pub const UNLISTED: &[(&str, &str, &str)] = &[
    (
        "device",
        "Device Types / Crypto Device / Device Operation / AKCIPHER Service Operation",
        "crypto",
    ),
    (
        "driver",
        "Device Types / Crypto Device / Device Operation / AKCIPHER Service Operation",
        "crypto",
    ),
];

/// Which normative labels each clause of [`CLAUSES`] lists (and
/// [`UNLISTED`] adds): label → targets.
pub fn conformance_refs(doc: &str, heads: &[Heading]) -> BTreeMap<String, BTreeSet<String>> {
    let r =
        Regex::new(r"\\ref\{(devicenormative|drivernormative):([^}]*)\}").expect("static regex");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for h in heads {
        if h.path.first().map(String::as_str) != Some("Conformance") {
            continue;
        }
        let title = h.title.as_str();
        let Some((_, target)) = CLAUSES.iter().find(|(t, _)| *t == title) else {
            continue;
        };
        let side = if title.contains("Driver") {
            "driver"
        } else {
            "device"
        };
        for c in r.captures_iter(&doc[h.body.0..h.body.1]) {
            let kind = if &c[1] == "devicenormative" {
                "device"
            } else {
                "driver"
            };
            if kind != side {
                continue;
            }
            out.entry(format!("{kind}:{}", squash(&c[2])))
                .or_default()
                .insert((*target).to_string());
        }
    }
    for (side, label, target) in UNLISTED {
        out.entry(format!("{side}:{}", squash(label)))
            .or_default()
            .insert((*target).to_string());
    }
    out
}

/// One sentence of running text and the lead-in of the list it is an item
/// of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sentence {
    /// The sentence as printed.
    pub text: String,
    /// The sentence that introduced the enclosing list, if any.
    pub lead_in: Option<String>,
}

/// Markup of a block of running text removed; list structure and
/// paragraph breaks kept as the control characters `\x02` (list begins),
/// `\x03` (list ends) and `\x00` (item or paragraph boundary).
fn clean_block(text: &str, titles: &BTreeMap<String, String>) -> String {
    let mut t = text.to_string();
    for env in [
        "lstlisting",
        "note",
        "tabular",
        "tabularx",
        "longtable",
        "figure",
        "table",
    ] {
        let re = Regex::new(&format!(r"(?s)\\begin\{{{env}\}}.*?\\end\{{{env}\}}")).expect("regex");
        t = re.replace_all(&t, " ").into_owned();
    }
    while let Some(at) = t.find("\\footnote{") {
        let end = group_end(&t, at + "\\footnote".len());
        t.replace_range(at..end, "");
    }
    let label = Regex::new(r"\\label\{[^}]*\}").expect("regex");
    t = label.replace_all(&t, "").into_owned();
    let hyper = Regex::new(r"\\hyperref\[[^\]]*\]").expect("regex");
    t = hyper.replace_all(&t, "").into_owned();
    let reference = Regex::new(r"\\(?:ref|nameref)\{([^}]*)\}").expect("regex");
    t = reference
        .replace_all(&t, |c: &regex::Captures<'_>| {
            let key = squash(&c[1]);
            let title = titles
                .get(&key)
                .cloned()
                .unwrap_or_else(|| key.rsplit('/').next().unwrap_or(&key).trim().to_string());
            format!("[{title}]")
        })
        .into_owned();
    for cmd in [
        "field", "texttt", "emph", "textbf", "textit", "mbox", "textsf", "url",
    ] {
        t = t.replace(&format!("\\{cmd}{{"), "{");
    }
    let list_begin =
        Regex::new(r"\\begin\{(?:itemize|enumerate|description)\}(?:\[[^\]]*\])?").expect("regex");
    t = list_begin.replace_all(&t, "\x00\x02\x00").into_owned();
    let list_end = Regex::new(r"\\end\{(?:itemize|enumerate|description)\}").expect("regex");
    t = list_end.replace_all(&t, "\x00\x03\x00").into_owned();
    let item = Regex::new(r"\\item(?:\s*\[([^\]]*)\])?").expect("regex");
    t = item
        .replace_all(&t, |c: &regex::Captures<'_>| match c.get(1) {
            Some(tag) => format!("\x00{}: ", tag.as_str().trim()),
            None => "\x00".to_string(),
        })
        .into_owned();
    let env = Regex::new(r"\\(?:begin|end)\{[^}]*\}").expect("regex");
    t = env.replace_all(&t, "\x00").into_owned();
    t = t
        .replace("\\_", "_")
        .replace("\\&", "&")
        .replace("\\%", "%")
        .replace("\\#", "#")
        .replace("\\\\", " ")
        .replace("\\ldots", "...")
        .replace("\\dots", "...")
        .replace("``", "\"")
        .replace("''", "\"")
        .replace("---", "-")
        .replace("--", "-")
        .replace('~', " ")
        .replace('$', "");
    // Other commands (\newline, \hline, \virtqueue…) carry no words here.
    let cmd = Regex::new(r"\\[A-Za-z]+\*?").expect("regex");
    t = cmd.replace_all(&t, "").into_owned();
    t = t.replace(['{', '}'], "");
    let para = Regex::new(r"\n[ \t]*\n").expect("regex");
    para.replace_all(&t, "\x00").into_owned()
}

/// Words after which a full stop does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "etc", "cf", "vs", "Fig", "No", "approx", "resp",
];

/// Splits running text into sentences at `.`, `?` or `!` followed by
/// white space and a capital, `[` or `(`, not after an abbreviation.
fn split_sentences(para: &str) -> Vec<String> {
    let chars: Vec<char> = para.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        cur.push(c);
        if matches!(c, '.' | '?' | '!') {
            let mut j = i + 1;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let boundary = j > i + 1
                && j < chars.len()
                && (chars[j].is_uppercase() || matches!(chars[j], '[' | '(' | '"'));
            let word: String = cur
                .trim_end_matches('.')
                .rsplit(|ch: char| ch.is_whitespace() || ch == '(')
                .next()
                .unwrap_or("")
                .to_string();
            let abbreviation =
                c == '.' && ABBREVIATIONS.iter().any(|a| word.eq_ignore_ascii_case(a));
            if (boundary && !abbreviation) || j >= chars.len() {
                let s = squash(&cur);
                if !s.is_empty() {
                    out.push(s);
                }
                cur.clear();
                i = j;
                continue;
            }
        }
        i += 1;
    }
    let s = squash(&cur);
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// The sentences of a block, each with the lead-in of its list.
pub fn sentences(text: &str, titles: &BTreeMap<String, String>) -> Vec<Sentence> {
    let t = clean_block(text, titles);
    let mut out = Vec::new();
    let mut stack: Vec<Option<String>> = Vec::new();
    let mut last: Option<String> = None;
    for piece in t.split('\x00') {
        match piece {
            "\x02" => stack.push(last.clone()),
            "\x03" => {
                stack.pop();
            }
            _ => {
                for s in split_sentences(piece) {
                    out.push(Sentence {
                        text: s.clone(),
                        lead_in: stack.last().cloned().flatten(),
                    });
                    last = Some(s);
                }
            }
        }
    }
    out
}

/// The RFC 2119 keywords of a sentence, as written (`MUST not` counts as
/// `MUST NOT`), in order.
pub fn keywords(s: &str) -> Vec<String> {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\b(MUST|SHOULD|SHALL)(\s+(?:NOT|not)\b)?").expect("regex"));
    RE.captures_iter(s)
        .map(|c| {
            if c.get(2).is_some() {
                format!("{} NOT", &c[1])
            } else {
                c[1].to_string()
            }
        })
        .collect()
}

/// The feature bits a sentence names.
pub fn features(s: &str) -> Vec<String> {
    static RE: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\bVIRTIO_[A-Z0-9_]*F_[A-Z0-9_]+\b").expect("regex"));
    let mut out: Vec<String> = Vec::new();
    for m in RE.find_iter(s) {
        // Header flags (VIRTIO_NET_HDR_F_…) are not feature bits.
        if m.as_str().contains("_HDR_F_") {
            continue;
        }
        let f = m.as_str().trim_end_matches('_').to_string();
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// Whose requirement a descriptive sentence states: the subject before
/// its first keyword.
fn subject(s: &str) -> Side {
    static RE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)\b(device|driver)s?\b[^.]*?\b(MUST|SHOULD|SHALL)\b").expect("regex")
    });
    match RE.captures(s).map(|c| c[1].to_ascii_lowercase()) {
        Some(w) if w == "device" => Side::Device,
        Some(_) => Side::Driver,
        None => Side::Either,
    }
}

/// The statements of the specification text `doc` (see the module
/// documentation).
pub fn statements(doc: &str) -> Result<Vec<Statement>, SpecError> {
    let heads = headings(doc);
    let refs = conformance_refs(doc, &heads);
    if refs.is_empty() {
        return Err(SpecError::Unexpected(
            "no conformance clause lists a normative block".into(),
        ));
    }
    let titles: BTreeMap<String, String> = heads
        .iter()
        .filter_map(|h| h.label.clone().map(|l| (l, h.title.clone())))
        .collect();
    let mut out = Vec::new();
    let mut ordinals: BTreeMap<String, u32> = BTreeMap::new();
    let mut seen_blocks = BTreeSet::new();
    // The nearest labelled heading, for descriptive ids.
    let mut labelled: Vec<(usize, String)> = Vec::new();
    for h in &heads {
        while labelled.last().is_some_and(|(l, _)| *l >= h.level) {
            labelled.pop();
        }
        if h.normative.is_none()
            && let Some(l) = &h.label
        {
            labelled.push((h.level, l.clone()));
        }
        if h.path.first().map(String::as_str) == Some("Conformance") {
            continue;
        }
        let area = area(&h.path);
        let legacy = h.path.iter().any(|t| t.contains("Legacy Interface"));
        let body = &doc[h.body.0..h.body.1];
        let (kind, side, prefix, targets) = match (h.normative, &h.label) {
            (Some(side), Some(label)) => {
                let label = label.split_once(':').map_or(label.as_str(), |(_, l)| l);
                let key = format!("{side}:{label}");
                let Some(targets) = refs.get(&key) else {
                    continue;
                };
                seen_blocks.insert(key);
                (
                    Kind::Normative,
                    Some(side),
                    format!("{side}:{}", label_slug(label)),
                    targets.iter().cloned().collect::<Vec<_>>(),
                )
            }
            (Some(_), None) => continue,
            (None, _) => {
                if !DESCRIPTIVE_AREAS.contains(&area.as_str()) {
                    continue;
                }
                let Some((_, l)) = labelled.last() else {
                    continue;
                };
                let kind = if legacy {
                    Kind::DescriptiveLegacy
                } else {
                    Kind::Descriptive
                };
                let l = l.strip_prefix("sec:").unwrap_or(l);
                (kind, None, format!("desc:{}", label_slug(l)), vec![])
            }
        };
        let found = sentences(body, &titles);
        // Items inherit a lead-in's keyword; such a lead-in is not a
        // statement of its own.
        let inherited: BTreeSet<String> = found
            .iter()
            .filter(|s| keywords(&s.text).is_empty())
            .filter_map(|s| s.lead_in.clone())
            .filter(|l| !keywords(l).is_empty() && !l.ends_with('.'))
            .collect();
        for s in &found {
            let own = keywords(&s.text);
            let words = if own.is_empty() {
                match &s.lead_in {
                    Some(l) if inherited.contains(l) => keywords(l),
                    _ => continue,
                }
            } else {
                if inherited.contains(&s.text) {
                    continue;
                }
                own
            };
            let level = if words
                .iter()
                .any(|w| w.starts_with("MUST") || w.starts_with("SHALL"))
            {
                Level::Must
            } else {
                Level::Should
            };
            if kind != Kind::Normative && level != Level::Must {
                continue;
            }
            let n = ordinals.entry(prefix.clone()).or_insert(0);
            *n += 1;
            let mut feats = features(&s.text);
            if let Some(l) = &s.lead_in {
                for f in features(l) {
                    if !feats.contains(&f) {
                        feats.push(f);
                    }
                }
            }
            out.push(Statement {
                id: format!("{prefix}#{n}"),
                side: side.unwrap_or_else(|| subject(&s.text)),
                kind,
                level,
                keywords: words,
                area: area.clone(),
                section: h.number.clone(),
                title: h.title.clone(),
                targets: targets.clone(),
                features: feats,
                text: s.text.clone(),
                context: s.lead_in.clone().unwrap_or_default(),
            });
        }
    }
    // A block of UNLISTED is added where the text has it, not demanded.
    let unlisted: BTreeSet<String> = UNLISTED
        .iter()
        .map(|(side, label, _)| format!("{side}:{}", squash(label)))
        .collect();
    let missing: Vec<&String> = refs
        .keys()
        .filter(|k| !seen_blocks.contains(*k) && !unlisted.contains(*k))
        .collect();
    if !missing.is_empty() {
        return Err(SpecError::Unexpected(format!(
            "conformance lists blocks that are not in the text: {missing:?}"
        )));
    }
    Ok(out)
}

/// The statements of the specification at `tree`'s commit.
pub fn read_statements(tree: &SpecTree) -> Result<Vec<Statement>, SpecError> {
    let doc = expand(&mut |p| tree.read(p))?;
    statements(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small document in the specification's style (our own text).
    const DOC: &str = r"
\chapter{Introduction}
Words.
\chapter{Basic Facilities of a Virtio Device}\label{sec:Basic Facilities of a Virtio Device}
\section{Device Status Field}\label{sec:Basic Facilities of a Virtio Device / Device Status Field}
The device MUST keep the field, e.g. by storing it. It is 8 bits wide.
\begin{note}
The driver MUST ignore this note.
\end{note}
\drivernormative{\subsection}{Device Status Field}{Basic Facilities of a Virtio Device / Device Status Field}
The driver MUST NOT clear a bit.
The driver SHOULD set
bits in order, see \ref{sec:Basic Facilities of a Virtio Device / Device Status Field}.
If VIRTIO_F_EXAMPLE is negotiated, the driver MUST:
\begin{itemize}
\item write \field{status} once,
\item read it back.
\end{itemize}
The driver MAY do anything else.
\devicenormative{\subsection}{Device Status Field}{Basic Facilities of a Virtio Device / Device Status Field}
The device MUST not lose
the value.\footnote{The device MUST be kind.}
\chapter{Conformance}\label{sec:Conformance}
\conformance{\section}{Driver Conformance}\label{sec:Conformance / Driver Conformance}
\begin{itemize}
\item \ref{drivernormative:Basic Facilities of a Virtio Device / Device Status Field}
\end{itemize}
\conformance{\section}{Device Conformance}\label{sec:Conformance / Device Conformance}
\begin{itemize}
\item \ref{devicenormative:Basic Facilities of a Virtio Device / Device Status Field}
\end{itemize}
";

    #[test]
    fn headings_are_numbered_as_latex_numbers_them() {
        let h = headings(DOC);
        let n: Vec<(&str, &str)> = h
            .iter()
            .map(|h| (h.number.as_str(), h.title.as_str()))
            .collect();
        assert_eq!(n[0], ("1", "Introduction"));
        assert_eq!(n[2], ("2.1", "Device Status Field"));
        assert_eq!(n[3], ("2.1.1", "Driver Requirements: Device Status Field"));
        assert_eq!(n[4], ("2.1.2", "Device Requirements: Device Status Field"));
        assert_eq!(n[6], ("3.1", "Driver Conformance"));
    }

    #[test]
    fn statements_are_sentences_with_keywords_in_listed_blocks() {
        let s = statements(DOC).unwrap();
        let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "desc:basic/device-status-field#1",
                "driver:basic/device-status-field#1",
                "driver:basic/device-status-field#2",
                "driver:basic/device-status-field#3",
                "driver:basic/device-status-field#4",
                "device:basic/device-status-field#1",
            ]
        );
        assert_eq!(
            s[0].text,
            "The device MUST keep the field, e.g. by storing it."
        );
        assert_eq!(s[0].side, Side::Device);
        assert_eq!(s[0].kind, Kind::Descriptive);
        assert_eq!(s[1].keywords, ["MUST NOT"]);
        assert_eq!(
            s[2].text,
            "The driver SHOULD set bits in order, see [Device Status Field]."
        );
        assert_eq!(s[2].level, Level::Should);
        assert_eq!(s[3].text, "write status once,");
        assert_eq!(
            s[3].context,
            "If VIRTIO_F_EXAMPLE is negotiated, the driver MUST:"
        );
        assert_eq!(s[3].features, ["VIRTIO_F_EXAMPLE"]);
        assert_eq!(s[3].keywords, ["MUST"]);
        assert_eq!(s[5].text, "The device MUST not lose the value.");
        assert_eq!(s[5].keywords, ["MUST NOT"]);
        assert_eq!(s[5].section, "2.1.2");
        assert_eq!(s[5].targets, ["general"]);
    }

    #[test]
    fn ids_shorten_the_long_prefixes() {
        assert_eq!(
            label_slug("Virtio Transport Options / Virtio Over MMIO / MMIO Device Register Layout"),
            "mmio/mmio-device-register-layout"
        );
        assert_eq!(
            label_slug(
                "Device Types / Network Device / Device Operation / Receive-side scaling (RSS) "
            ),
            "net/device-operation/receive-side-scaling-rss"
        );
    }

    #[test]
    fn sentence_splitting_keeps_abbreviations_and_numbers() {
        let t = BTreeMap::new();
        let s = sentences("A is 1.0 i.e. one. B MUST be. (C) is next", &t);
        let texts: Vec<&str> = s.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["A is 1.0 i.e. one.", "B MUST be.", "(C) is next"]);
    }
}
