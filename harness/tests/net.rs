//! The virtio-net scenarios under KVM (§5.1), one test each, shared with
//! `virtio-harness suite` through `harness::scenarios`: a tap in a network
//! namespace (ping, 16 MiB TCP echo, link down by the HMP monitor), two
//! guests on one hub in this process, two processes on a stream socket,
//! and the receive filter (§5.1.6.5) against a host peer. Skips with
//! `SKIP: <reason>` without `/dev/kvm`, without the `net` guest, or (the
//! tap scenario) without network namespaces, which fails instead under
//! `HARNESS_REQUIRE_NETNS=1` or as root with `HARNESS_REQUIRE_QEMU=1`.

use std::path::PathBuf;

use harness::scenarios::{self, RunEnv};
use harness::vm;

fn run(name: &str) {
    if !vm::kvm_or_skip(name) {
        return;
    }
    let Some(sc) = scenarios::by_name(name) else {
        println!("SKIP: {name}: the net guest is not built");
        return;
    };
    let env = RunEnv {
        harness_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_virtio-harness"))),
    };
    let r = sc.run_with(&env);
    if let Some(why) = &r.skipped {
        println!("SKIP: {name}: {why}");
        return;
    }
    let serial = r.outcome.as_ref().map_or("", |o| o.serial.as_str());
    if let Some(o) = &r.outcome {
        println!(
            "{name}: {} | {} | boot-to-exit {:?}",
            o.verdict, o.exits, o.boot_to_exit
        );
    }
    for n in &r.notes {
        println!("{name}: {n}");
    }
    if let Err(e) = r.result {
        panic!("{name}: {e}\n--- serial ---\n{serial}--------------");
    }
}

#[test]
fn net_tap() {
    run("net_tap");
}

#[test]
fn net_hub_pair() {
    run("net_hub_pair");
}

#[test]
fn net_stream_pair() {
    run("net_stream_pair");
}

#[test]
fn net_filter() {
    run("net_filter");
}

#[test]
fn every_net_scenario_has_a_test() {
    let tested = ["net_tap", "net_hub_pair", "net_stream_pair", "net_filter"];
    for sc in scenarios::all() {
        if sc.name.starts_with("net_") {
            assert!(
                tested.contains(&sc.name),
                "scenario {} has no test",
                sc.name
            );
        }
    }
}
