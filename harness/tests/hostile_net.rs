//! The hostile virtio-net scenarios under KVM (spec §5.1): malformed
//! transmit, receive and control chains from the `hostile` guest, each
//! followed by a frame that must come back on loopback (§5.1.6.2,
//! §5.1.6.3.1, §5.1.6.5), and a receive queue starved while a host peer
//! sends (`starve` guest: the device keeps a bounded number of frames,
//! the first ones, and traffic resumes once buffers are posted). The
//! scenarios live in `harness::scenarios::hostile_net`, shared with
//! `virtio-harness suite`. Skips with `SKIP: <reason>` where `/dev/kvm`
//! cannot be opened.

use harness::scenarios;
use harness::vm;

fn run(name: &str) {
    if !vm::kvm_or_skip(name) {
        return;
    }
    let sc = scenarios::by_name(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let r = sc.run();
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

/// §5.1.6.2, §5.1.6.3.1, §5.1.6.5: every malformed chain is dropped (or
/// the device asks for a reset) and well-formed traffic continues.
#[test]
fn hostile_net() {
    run("hostile_net");
}

/// §5.1.6.4: a receive queue without buffers keeps the first `rx_pending`
/// frames, drops the rest without growing, and delivers again once the
/// driver posts buffers.
#[test]
fn net_starved_rx() {
    run("net_starved_rx");
}
