//! `crypto_parse`: the crypto device's request parsers alone
//! (`virtio_devices::crypto::wire::parse_ctrl` and `parse_data`, §5.9.7)
//! over any bytes and any feature set: they never panic, and the IV,
//! source, AAD, signature and digest a parsed data request borrows are
//! within `max_size`.

use virtio_core::features::CryptoFeatures;
use virtio_devices::crypto::wire::{Data, parse_ctrl, parse_data};

/// The `max_size` the parse runs under.
const MAX_SIZE: u64 = 4096;

/// Runs one input: byte 0 picks the features (crypto bits 0 to 5) and
/// which parser (bit 7), the rest is the request's readable part.
pub fn run(input: &[u8]) {
    let Some((&head, req)) = input.split_first() else {
        return;
    };
    let features = CryptoFeatures::from_bits_truncate(u64::from(head & 0x3f));
    if head & 0x80 == 0 {
        let _ = parse_ctrl(features, req);
        return;
    }
    if let Ok(d) = parse_data(features, req, MAX_SIZE) {
        let within = |s: &[u8]| s.len() as u64 <= MAX_SIZE;
        let ok = match d {
            Data::Cipher {
                iv, src, dst_len, ..
            } => within(iv) && within(src) && u64::from(dst_len) <= MAX_SIZE,
            Data::Digest { src, .. } => within(src),
            Data::Aead { iv, aad, src, .. } => within(iv) && within(aad) && within(src),
            Data::Akcipher { src, .. } => within(src),
            Data::Verify {
                signature, digest, ..
            } => within(signature) && within(digest),
        };
        assert!(ok, "a parsed request past max_size: {d:?}");
    }
}
