//! Conformance: the specification's normative statements as data
//! ([`catalogue`], generated from the spec's source by [`spec`]) and what
//! we say about each.

pub mod catalogue;
pub mod drivers;
pub mod entropy;
pub mod guests;
pub mod kick_probe;
pub mod kvm_drivers;
pub mod legacy_face;
pub mod linux;
pub mod peer_drivers;
pub mod report;
pub mod run;
pub mod spec;
pub mod targets;

/// The catalogue as checked in (`harness/conform/catalogue.tsv`).
pub const CATALOGUE: &str = include_str!("../../conform/catalogue.tsv");
/// The scope as checked in (`harness/conform/scope.tsv`).
pub const SCOPE: &str = include_str!("../../conform/scope.tsv");

/// Every check, device side then driver side.
pub fn checks() -> Vec<&'static [conform::Check]> {
    vec![conform::device::CHECKS, conform::driver::CHECKS]
}

/// Which targets a conformance run checks (`conform run`'s flags).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// The installed vhost-user peers, started from `exe` (ours) and
    /// found on the `PATH` (the others).
    pub peers: Option<std::path::PathBuf>,
    /// Inside tiny guests: our monitor under KVM, QEMU microvm.
    pub guests: bool,
    /// Linux's drivers under QEMU TCG.
    pub linux: bool,
    /// Other vhost-user backends: (device kind, socket).
    pub vhost_user: Vec<(targets::Kind, std::path::PathBuf)>,
}

/// Runs the checks against the targets `sel` names, the in-process ones
/// always, with a progress line per group; Ctrl-C stops between groups.
pub fn collect(sel: &Selection) -> Result<Vec<report::Run>, crate::progress::Interrupted> {
    type Group<'a> = (String, Box<dyn FnOnce() -> Vec<report::Run> + 'a>);
    let mut groups: Vec<Group<'_>> = vec![
        ("our devices in process".into(), Box::new(run::in_process)),
        ("drivers in process".into(), Box::new(drivers::in_process)),
        (
            "peer drivers in process".into(),
            Box::new(peer_drivers::in_process),
        ),
        ("provoked devices".into(), Box::new(drivers::provoked)),
        (
            "provoked peer devices".into(),
            Box::new(peer_drivers::provoked),
        ),
        (
            "kick probes".into(),
            Box::new(|| kick_probe::in_process(kick_probe::Effort::REPORT)),
        ),
    ];
    for (kind, sock) in &sel.vhost_user {
        let name = sock.display().to_string();
        groups.push((
            format!("vhost-user backend {name}"),
            Box::new(move || vec![run::over_vhost_user(&name, *kind, sock)]),
        ));
    }
    if let Some(exe) = &sel.peers {
        groups.push(("installed peers".into(), Box::new(|| run::peers(exe))));
    }
    if sel.guests {
        groups.push(("inside tiny guests".into(), Box::new(guests::all)));
        groups.push(("drivers under KVM".into(), Box::new(kvm_drivers::all)));
        groups.push((
            "kick probe under KVM".into(),
            Box::new(|| vec![kick_probe::guest_driver_under_kvm()]),
        ));
    }
    if sel.linux {
        groups.push(("Linux under QEMU TCG".into(), Box::new(linux::runs)));
    }
    let total = groups.len();
    let mut runs = Vec::new();
    for (i, (name, group)) in groups.into_iter().enumerate() {
        crate::progress::step_of(i, total, format!("conformance: {name}"))?;
        runs.extend(group());
    }
    // Ctrl-C during the last group: its children died with it.
    if crate::progress::interrupted() {
        return Err(crate::progress::Interrupted);
    }
    Ok(runs)
}
