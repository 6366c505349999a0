//! The VM with hand-made guests: memory layout, exits, verdicts.

use super::*;

#[test]
fn ram_splits_around_the_mmio_hole() {
    assert_eq!(
        ram_layout(64 << 20),
        vec![RamRange {
            base: 0,
            size: 64 << 20
        }]
    );
    assert_eq!(
        ram_layout(4 << 30),
        vec![
            RamRange {
                base: 0,
                size: 3 << 30
            },
            RamRange {
                base: 4 << 30,
                size: 1 << 30
            }
        ]
    );
}

#[test]
fn fail_messages_come_from_com1() {
    assert_eq!(
        fail_message("boot\nverdict: fail: queue 0 broke\n", EXIT_FAIL),
        "queue 0 broke"
    );
    assert!(fail_message("nothing", 0x11).contains("0x11"));
}

#[test]
fn counts_and_reports_print() {
    let c = ExitCounts {
        io_out: 3,
        mmio_read: 1,
        ..Default::default()
    };
    assert_eq!(c.total(), 4);
    assert_eq!(c.to_string(), "4 exits (io-out 3, mmio-read 1)");
    let r = Report {
        detail: "triple fault".into(),
        cr0: 0x11,
        cs: 0x10,
        cs_32: true,
        ..Default::default()
    };
    let s = Verdict::Shutdown(r).to_string();
    assert!(s.starts_with("shutdown: triple fault: rip=0x0"), "{s}");
    assert!(s.contains("cs=0x10 (32-bit"), "{s}");
}
