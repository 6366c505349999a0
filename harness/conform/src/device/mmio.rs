//! virtio-mmio device requirements (§4.2.2.1).

use alloc::format;

use virtio_core::mmio::regs::{self, InterruptStatus};

use super::{Dev, live};
use crate::{Check, Ctx, Patience};

const MAGIC: &str = "device:mmio/mmio-device-register-layout#1";
const VERSION: &str = "device:mmio/mmio-device-register-layout#2";
const EVENT_UNTIL_ACK: &str = "device:mmio/mmio-device-register-layout#3";
const UNDEFINED_ZERO: &str = "device:mmio/mmio-device-register-layout#4";
const RESET_CLEARS_ID: &str = "device:mmio/mmio-device-register-layout#5";
const NOT_READY: &str = "device:mmio/mmio-device-register-layout#7";

/// `MagicValue` and `Version`.
pub const IDENTITY: Check = Check {
    name: "mmio-identity",
    statements: &[MAGIC, VERSION],
    run: |ctx| {
        let d = Dev::open(ctx.bus());
        if let Some(w) = d.registers_hidden() {
            ctx.not_observable(&[MAGIC, VERSION], w);
            return;
        }
        let magic = d.r32(regs::MAGIC_VALUE);
        ctx.expect(MAGIC, magic == regs::MAGIC, || {
            format!("MagicValue {magic:#x}")
        });
        if d.version == 1 {
            ctx.not_applicable(&[VERSION], "legacy interface: virtio-mmio version 1");
        } else {
            ctx.expect(VERSION, d.version == 2, || format!("Version {}", d.version));
        }
    },
};

/// A used buffer notification shows in `InterruptStatus` from when it is
/// sent until the driver acknowledges it; undefined bits read zero.
pub const INTERRUPT_STATUS: Check = Check {
    name: "mmio-interrupt-status",
    statements: &[EVENT_UNTIL_ACK, UNDEFINED_ZERO],
    run: interrupt_status,
};

fn interrupt_status(ctx: &mut Ctx<'_>) {
    let all = [EVENT_UNTIL_ACK, UNDEFINED_ZERO];
    if let Some(w) = Dev::open(ctx.bus()).registers_hidden() {
        ctx.not_observable(&all, w);
        return;
    }
    let Some((mut d, q)) = live(ctx, &all, 0) else {
        return;
    };
    let undefined = !InterruptStatus::all().bits();
    let mut stray = d.isr() & undefined;
    let Some(p) = d.post_probe() else {
        ctx.blocked(&all, "no room for the probe request");
        return;
    };
    d.notify(p.queue);
    if !d.wait_used(q, 1) {
        ctx.blocked(&all, "the probe request was not completed");
        return;
    }
    let used = InterruptStatus::USED_BUFFER.bits();
    let bus = ctx.bus();
    let seen = bus.wait(&mut || d.isr() & used != 0, Patience::Expect);
    let first = d.isr();
    d.settle();
    let second = d.isr();
    d.w32(regs::INTERRUPT_ACK, used);
    let after = d.isr();
    stray |= (first | second | after) & undefined;
    ctx.expect(EVENT_UNTIL_ACK, seen && second & used != 0 && after & used == 0, || {
        format!(
            "InterruptStatus after the used buffer {first:#x}, a while later {second:#x}, after the acknowledgement {after:#x}"
        )
    });
    ctx.expect(UNDEFINED_ZERO, stray == 0, || {
        format!("undefined InterruptStatus bits set: {stray:#x}")
    });
}

/// A reset clears `InterruptStatus` and every `QueueReady`.
pub const RESET_CLEARS: Check = Check {
    name: "mmio-reset-clears",
    statements: &[RESET_CLEARS_ID],
    run: |ctx| {
        if let Some(w) = Dev::open(ctx.bus()).registers_hidden() {
            ctx.not_observable(&[RESET_CLEARS_ID], w);
            return;
        }
        let Some((mut d, q)) = live(ctx, &[RESET_CLEARS_ID], 0) else {
            return;
        };
        if let Some(p) = d.post_probe() {
            d.notify(p.queue);
            d.wait_used(q, 1);
        }
        let queues = d.rings.len() as u16;
        let isr_before = d.isr();
        d.reset();
        let isr = d.isr();
        let mut ready = 0;
        for i in 0..queues {
            d.w32(regs::QUEUE_SEL, u32::from(i));
            ready |= d.r32(regs::QUEUE_READY) << i;
        }
        ctx.expect(RESET_CLEARS_ID, isr == 0 && ready == 0, || {
            format!("after the reset InterruptStatus {isr:#x} (before {isr_before:#x}), QueueReady bits {ready:#b}")
        });
    },
};

/// A queue whose `QueueReady` the driver set back to zero is not
/// touched: a request made available there and notified stays unused.
pub const QUEUE_READY_ZERO: Check = Check {
    name: "mmio-queue-ready-zero",
    statements: &[NOT_READY],
    run: |ctx| {
        let Some((mut d, q)) = live(ctx, &[NOT_READY], 0) else {
            return;
        };
        d.w32(regs::QUEUE_SEL, u32::from(q));
        d.w32(regs::QUEUE_READY, 0);
        if d.r32(regs::QUEUE_READY) != 0 {
            ctx.record(
                NOT_READY,
                crate::Outcome::Fail("QueueReady does not read back 0 after 0 was written".into()),
            );
            return;
        }
        let Some(p) = d.post_probe() else {
            ctx.blocked(&[NOT_READY], "no room for the probe request");
            return;
        };
        d.notify(p.queue);
        d.settle();
        let mem = ctx.bus().mem();
        let used = d.ring(q).map_or(0, |r| r.used_idx(mem));
        ctx.expect(NOT_READY, used == 0 && d.readable_intact(&p), || {
            format!("the device completed {used} request(s) on the disabled queue")
        });
    },
};
