//! One module per fuzz target; [`TARGETS`] lists them for the corpus replay.

pub mod blk_request;
pub mod chain_rig;
pub mod chardev_mux;
pub mod console_control;
pub mod crypto_parse;
pub mod crypto_request;
pub mod descriptor_chain;
pub mod device_requests;
pub mod dma_map;
pub mod driver_used_ring;
pub mod l2tpv3_packet;
pub mod machine_options;
pub mod mmio_registers;
pub mod mmio_transport;
pub mod monitor_session;
pub mod net_rig;
pub mod net_rx;
pub mod net_tx;
pub mod net_user;
pub mod pvh_loader;
pub mod rng_request;
pub mod scratch;
pub mod serial_pointer;
pub mod split_queue_device;
pub mod tpm_backend;
pub mod tpm_crb;
pub mod vhost_user_codec;
pub mod vhost_user_session;

/// A fuzz target: its name (the corpus folder and cargo-fuzz binary) and its
/// body.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Name, as in `corpus/<name>/` and `fuzz_targets/<name>.rs`.
    pub name: &'static str,
    /// The body: must not panic on any input.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "serial_pointer",
        run: serial_pointer::run,
    },
    Target {
        name: "net_user",
        run: net_user::run,
    },
    Target {
        name: "l2tpv3_packet",
        run: l2tpv3_packet::run,
    },
    Target {
        name: "chardev_mux",
        run: chardev_mux::run,
    },
    Target {
        name: "tpm_crb",
        run: tpm_crb::run,
    },
    Target {
        name: "tpm_backend",
        run: tpm_backend::run,
    },
    Target {
        name: "split_queue_device",
        run: split_queue_device::run,
    },
    Target {
        name: "descriptor_chain",
        run: descriptor_chain::run,
    },
    Target {
        name: "dma_map",
        run: dma_map::run,
    },
    Target {
        name: "driver_used_ring",
        run: driver_used_ring::run,
    },
    Target {
        name: "mmio_registers",
        run: mmio_registers::run,
    },
    Target {
        name: "mmio_transport",
        run: mmio_transport::run,
    },
    Target {
        name: "machine_options",
        run: machine_options::run,
    },
    Target {
        name: "rng_request",
        run: rng_request::run,
    },
    Target {
        name: "console_control",
        run: console_control::run,
    },
    Target {
        name: "blk_request",
        run: blk_request::run,
    },
    Target {
        name: "net_tx",
        run: net_tx::run,
    },
    Target {
        name: "net_rx",
        run: net_rx::run,
    },
    Target {
        name: "pvh_loader",
        run: pvh_loader::run,
    },
    Target {
        name: "monitor_session",
        run: monitor_session::run,
    },
    Target {
        name: "vhost_user_codec",
        run: vhost_user_codec::run,
    },
    Target {
        name: "vhost_user_session",
        run: vhost_user_session::run,
    },
    Target {
        name: "crypto_request",
        run: crypto_request::run,
    },
    Target {
        name: "crypto_parse",
        run: crypto_parse::run,
    },
];
