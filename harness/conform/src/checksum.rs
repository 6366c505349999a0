//! The Internet checksum (RFC 1071) the network checks and watches
//! compute: a 16-bit ones' complement sum over big-endian words.

/// The ones' complement sum of `data` (big-endian words, an odd byte
/// padded with zero) added to `sum`, not yet folded.
pub fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

/// `sum` folded to 16 bits (the carries added back in).
pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §3's example: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc_1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum16(&data, 0)), 0xddf2);
        // An odd byte is padded on the right.
        assert_eq!(fold(sum16(&[0xab], 0)), 0xab00);
    }
}
