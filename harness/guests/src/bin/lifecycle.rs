//! Scenario `lifecycle`: not written yet; fails so that nobody mistakes it for a
//! pass.
#![no_std]
#![no_main]

use guest_rt::{BootInfo, exit};

guest_rt::entry!(main);

fn main(_boot: &'static BootInfo) {
    exit::fail(format_args!("scenario lifecycle is not written yet"));
}
