//! `virtio-harness bench --vhost-only` runs end to end with a tiny
//! request count (`HARNESS_BENCH_VHOST_COUNT`): both vhost-user blk
//! backends (ours and `qemu-storage-daemon`) start, serve QEMU's
//! `vhost-user-blk` for the blk guest at depth 1 and 32, and stop; the
//! table has its rows. A smoke test of the bench, not a measurement: no
//! figure is checked.
//!
//! Skips, saying why, without `qemu-system-x86_64` or `/dev/kvm`, unless
//! `HARNESS_REQUIRE_QEMU=1` makes that a failure.

use std::process::Command;

use harness::qemu::qemu_or_skip;

#[test]
fn bench_vhost_only_prints_both_depths() {
    let test = "bench_vhost_only_prints_both_depths";
    if !qemu_or_skip(test) {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_virtio-harness"))
        .args(["bench", "--vhost-only", "--rounds", "1"])
        .env("HARNESS_BENCH_VHOST_COUNT", "32")
        .output()
        .expect("running virtio-harness bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("| vhost-user-blk, QEMU microvm frontend"),
        "{stdout}"
    );
    for depth in [1, 32] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| randread 4 KiB, depth {depth}, 32 requests |")))
            .unwrap_or_else(|| panic!("no depth {depth} row:\n{stdout}"));
        // Ours always has a figure; qemu-storage-daemon's column is n/a
        // only with a line saying why.
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let first = |c: &str| c.split_whitespace().next().map(str::parse::<f64>);
        assert!(matches!(first(cells[2]), Some(Ok(_))), "{row}");
        if cells[3].starts_with("n/a") {
            assert!(
                stdout.contains("qemu-storage-daemon column: skipped ("),
                "{stdout}"
            );
        }
    }
    // Our monitor's own rows: in process against over our vhost-user
    // frontend, both with a figure, at each depth.
    let ours_at = stdout
        .find("| our monitor, virtio-blk on the same file")
        .unwrap_or_else(|| panic!("no in-process/vhost-user table:\n{stdout}"));
    for depth in [1, 32] {
        let row = stdout[ours_at..]
            .lines()
            .find(|l| l.starts_with(&format!("| randread 4 KiB, depth {depth}, 32 requests |")))
            .unwrap_or_else(|| panic!("no depth {depth} row in our monitor's table:\n{stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for c in [cells[2], cells[3]] {
            let v = c.split_whitespace().next().map(str::parse::<f64>);
            assert!(matches!(v, Some(Ok(_))), "{row}");
        }
    }
}
