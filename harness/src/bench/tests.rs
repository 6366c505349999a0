//! The parsers of the guests' bench lines and the statistics helpers.

use super::*;

#[test]
fn median_range_sorts() {
    assert_eq!(median_range(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
    assert_eq!(median_range(vec![5.0]), (5.0, 5.0, 5.0));
}

#[test]
fn the_net_bench_line_gives_kicks_and_interrupts() {
    let serial = "net: ring waits 0\n\
                  net: bench tx 3000 frames 192000 bytes 2100000 us 93 kicks 2 interrupts\n\
                  verdict: pass\n";
    assert_eq!(net_bench_line(serial), Some((93, 2)));
    assert_eq!(net_bench_line("net: ring waits 0\n"), None);
}

#[test]
fn net_rates_are_net_of_the_base_run() {
    let run = |ms: u64, exits: u64, kicks: u64| NetRun {
        wall: Duration::from_millis(ms),
        exits: Some(exits),
        kvm_exits: None,
        kicks,
        interrupts: 0,
    };
    let r = net_rate(run(2300, 500, 103), run(300, 200, 3), 2000);
    assert!((r.pps - 1000.0).abs() < 1e-6);
    assert_eq!(r.exits, Some(0.15));
    assert_eq!(r.kvm_exits, None);
    assert!((r.kicks - 0.05).abs() < 1e-9);
    let f = bench_frame(64);
    assert_eq!(
        (f.len(), &f[..6], &f[12..14]),
        (64, &[0xff; 6][..], &BENCH_ETHERTYPE[..])
    );
    assert_eq!(bench_frame(10).len(), 60);
}

/// The crypto bench's peer computes what the device's backend computes:
/// RustCrypto called directly and the builtin cryptodev agree on both
/// operations (the bench also compares the device's first result with
/// the direct call's before timing).
#[test]
fn the_direct_crypto_call_agrees_with_the_builtin_backend() {
    use backends::crypto::builtin::Builtin;
    use backends::crypto::{AeadAlgo, CipherAlgo, CryptoBackend, Direction, SessionSpec};
    use virtio_user::crypto::{CryptoAlgo, input};
    for which in [CryptoAlgo::AesCbc128, CryptoAlgo::AesGcm256] {
        let size = 4096;
        let (got, _) = super::crypto::direct(which, size, 3).unwrap();
        let mut b = Builtin::default();
        let spec = match which {
            CryptoAlgo::AesCbc128 => SessionSpec::Cipher {
                algo: CipherAlgo::AesCbc,
                key: which.key(),
                direction: Direction::Encrypt,
            },
            CryptoAlgo::AesGcm256 => SessionSpec::Aead {
                algo: AeadAlgo::AesGcm,
                key: which.key(),
                tag_len: 16,
                direction: Direction::Encrypt,
            },
        };
        let id = b.create_session(&spec).unwrap();
        let src = input(size);
        let mut want = vec![0u8; which.result_len(size)];
        match which {
            CryptoAlgo::AesCbc128 => b
                .cipher(id, Direction::Encrypt, which.iv(), &src, &mut want)
                .unwrap(),
            CryptoAlgo::AesGcm256 => {
                b.aead(id, Direction::Encrypt, which.iv(), &[], &src, &mut want)
                    .unwrap();
            }
        }
        assert_eq!(got, want, "{}", which.name());
    }
}
