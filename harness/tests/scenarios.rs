//! The suite's scenarios under KVM, one test each: tiny guests driving our
//! devices (virtio-rng §5.4, virtio-console §5.3, virtio-blk §5.2,
//! virtio-net §5.1, virtio-crypto §5.9) through our monitor, in
//! front of real backends, with both notification paths (ioeventfd worker,
//! inline) and both completion modes (interrupt, polling). The scenarios
//! themselves live in `harness::scenarios`, shared with `virtio-harness
//! suite`. Skips with `SKIP: <reason>` where `/dev/kvm` cannot be opened,
//! and the tap scenario without network namespaces (a failure instead
//! under `HARNESS_REQUIRE_NETNS=1`).

use std::path::PathBuf;

use harness::scenarios::{self, RunEnv};
use monitor::vm;

fn run(name: &str) {
    if !vm::kvm_or_skip(name) {
        return;
    }
    let Some(sc) = scenarios::by_name(name) else {
        println!("SKIP: {name}: its guest is not built");
        return;
    };
    // The stream-pair scenario starts a second monitor process.
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

macro_rules! scenario_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*

        #[test]
        fn every_scenario_has_a_test() {
            let tested = [$(stringify!($name)),*];
            for sc in scenarios::all().into_iter().chain(scenarios::net()) {
                assert!(tested.contains(&sc.name), "scenario {} has no test", sc.name);
            }
        }
    };
}

scenario_tests!(
    // §5.9: the crypto guest's known answers against our device.
    tpm_crb_swtpm,
    crypto_builtin_irq_ioeventfd,
    crypto_builtin_poll_inline_2q,
    rng_deterministic_irq_ioeventfd,
    rng_deterministic_poll_inline,
    rng_deterministic_irq_inline,
    rng_deterministic_poll_ioeventfd,
    rng_builtin,
    rng_random_urandom,
    rng_guest_ram_memfd,
    rng_guest_ram_file,
    rng_random_short_file,
    rng_egd_socket,
    console_write_64k_file_irq,
    console_write_64k_file_poll,
    console_echo_socket_irq,
    console_echo_socket_poll,
    console_echo_udp,
    console_echo_serial_tty,
    console_echo_mux,
    uart_com2_echo_socket,
    uart_com1_to_file,
    console_multiport_two_files,
    lifecycle_reset_and_refusals,
    // Issue 6: the hostile guest's cases per device, each PASS or REJECT,
    // the other three devices still serving.
    hostile_rng,
    hostile_console,
    blk_pattern_raw_irq_depth8,
    blk_pattern_raw_poll_inline_depth1,
    blk_pattern_raw_cache_none,
    blk_pattern_raw_writethrough,
    blk_pattern_qcow2,
    blk_readonly,
    blk_out_of_range,
    blk_get_id,
    blk_write_zeroes_discard,
    blk_mq_4_queues,
    blk_two_disks,
    hostile_blk,
    // §5.1.6.2, §5.1.6.3.1, §5.1.6.5: malformed net chains dropped,
    // traffic continues; §5.1.6.4: a starved receive queue stays bounded.
    hostile_net,
    net_starved_rx,
    // §5.1 end to end: a tap in a netns (ping, 16 MiB TCP echo, link down
    // by the HMP monitor), two guests on one hub, two monitor processes on
    // a stream socket, the receive filter (§5.1.6.5) against a host peer.
    net_tap,
    net_bridge,
    net_user,
    net_hub_pair,
    net_stream_pair,
    net_filter,
    // Issue 6, hostile devices: each driver against every misbehave= mode
    // (§2.7.8, §2.7.8.2, §2.7.14 used-ring lies; §2.5.1 generation churn;
    // §2.4 a reset that never clears; §4.2.2 an interrupt storm).
    misbehave_rng,
    misbehave_console,
    misbehave_blk,
    misbehave_net,
    // Issue 16, hostile vhost-user peers: a raw frontend against our
    // daemon (truncated memory, a flood of bad requests, a disconnect at
    // every step, bad ring addresses), each case followed by a guest the
    // daemon must serve; lying backends against our monitor's frontend.
    hostile_vhost_frontend_rng,
    hostile_vhost_frontend_blk,
    hostile_vhost_backend,
);
