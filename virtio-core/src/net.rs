//! The virtio-net wire format both sides share (§5.1): the per-frame
//! header (§5.1.6) with its flags and GSO types, the control queue's
//! classes, commands and acks (§5.1.6.5), link status bits and the
//! configuration layout (§5.1.4). The device in `virtio-devices` and a
//! driver use these same definitions. Nothing here parses guest memory.

/// Bytes of `struct virtio_net_hdr` with `num_buffers` (§5.1.6: present
/// with `VIRTIO_F_VERSION_1` or `VIRTIO_NET_F_MRG_RXBUF`).
pub const HDR_LEN: usize = 12;
/// Bytes of the legacy header without `num_buffers` (§5.1.6.1).
pub const HDR_LEN_LEGACY: usize = 10;

/// Header `flags` (§5.1.6).
pub mod flags {
    /// The checksum at `csum_start + csum_offset` is partial and must be
    /// completed (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum has been validated (`VIRTIO_NET_HDR_F_DATA_VALID`).
    pub const DATA_VALID: u8 = 2;
    /// Receive segment coalescing info is present (`VIRTIO_NET_HDR_F_RSC_INFO`).
    pub const RSC_INFO: u8 = 4;
}

/// Header `gso_type` values (§5.1.6).
pub mod gso {
    /// Not a GSO frame.
    pub const NONE: u8 = 0;
    /// TCP over IPv4 segmentation.
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation.
    pub const UDP: u8 = 3;
    /// TCP over IPv6 segmentation.
    pub const TCPV6: u8 = 4;
    /// UDP segmentation (USO).
    pub const UDP_L4: u8 = 5;
    /// Flag bit: the TCP segments carry ECN (`VIRTIO_NET_HDR_GSO_ECN`).
    pub const ECN: u8 = 0x80;
}

/// `struct virtio_net_hdr` decoded (§5.1.6); multi-byte fields are
/// little-endian on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// [`flags`] bits.
    pub flags: u8,
    /// One of [`gso`].
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset from `csum_start` where the checksum is stored.
    pub csum_offset: u16,
    /// Buffers used for this frame (receive, with `num_buffers` present).
    pub num_buffers: u16,
}

impl NetHdr {
    /// Decodes the first [`HDR_LEN`] bytes (`num_buffers` reads 0 from a
    /// shorter legacy header); `None` if `b` is shorter than
    /// [`HDR_LEN_LEGACY`].
    pub fn parse(b: &[u8]) -> Option<NetHdr> {
        if b.len() < HDR_LEN_LEGACY {
            return None;
        }
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: if b.len() >= HDR_LEN { u(10) } else { 0 },
        })
    }

    /// Encodes the header into [`HDR_LEN`] bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut o = [0u8; HDR_LEN];
        o[0] = self.flags;
        o[1] = self.gso_type;
        o[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        o[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        o[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        o[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        o[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        o
    }
}

/// Link status bits of the configuration `status` field (§5.1.4).
pub mod status {
    /// The link is up (`VIRTIO_NET_S_LINK_UP`).
    pub const LINK_UP: u16 = 1;
    /// The driver should send a gratuitous announcement
    /// (`VIRTIO_NET_S_ANNOUNCE`).
    pub const ANNOUNCE: u16 = 2;
}

/// Configuration field offsets (§5.1.4, `struct virtio_net_config`).
pub mod config {
    /// `u8 mac[6]`.
    pub const MAC: u64 = 0;
    /// `le16 status`.
    pub const STATUS: u64 = 6;
    /// `le16 max_virtqueue_pairs`.
    pub const MAX_VIRTQUEUE_PAIRS: u64 = 8;
    /// `le16 mtu`.
    pub const MTU: u64 = 10;
    /// `le32 speed`.
    pub const SPEED: u64 = 12;
    /// `u8 duplex`.
    pub const DUPLEX: u64 = 16;
    /// `u8 rss_max_key_size`.
    pub const RSS_MAX_KEY_SIZE: u64 = 17;
    /// `le16 rss_max_indirection_table_length`.
    pub const RSS_MAX_INDIRECTION_TABLE_LENGTH: u64 = 18;
    /// `le32 supported_hash_types`.
    pub const SUPPORTED_HASH_TYPES: u64 = 20;
}

/// Control queue classes, commands and acks (§5.1.6.5).
pub mod ctrl {
    /// `VIRTIO_NET_OK`.
    pub const OK: u8 = 0;
    /// `VIRTIO_NET_ERR`.
    pub const ERR: u8 = 1;

    /// Receive filtering class (`VIRTIO_NET_CTRL_RX`, §5.1.6.5.1).
    pub const CLASS_RX: u8 = 0;
    /// Promiscuous mode on/off.
    pub const RX_PROMISC: u8 = 0;
    /// All-multicast on/off.
    pub const RX_ALLMULTI: u8 = 1;
    /// All-unicast on/off (`CTRL_RX_EXTRA`).
    pub const RX_ALLUNI: u8 = 2;
    /// No multicast (`CTRL_RX_EXTRA`).
    pub const RX_NOMULTI: u8 = 3;
    /// No unicast (`CTRL_RX_EXTRA`).
    pub const RX_NOUNI: u8 = 4;
    /// No broadcast (`CTRL_RX_EXTRA`).
    pub const RX_NOBCAST: u8 = 5;

    /// MAC class (`VIRTIO_NET_CTRL_MAC`, §5.1.6.5.2).
    pub const CLASS_MAC: u8 = 1;
    /// Sets the unicast and multicast filter tables.
    pub const MAC_TABLE_SET: u8 = 0;
    /// Sets the device's MAC address (`CTRL_MAC_ADDR`).
    pub const MAC_ADDR_SET: u8 = 1;

    /// VLAN class (`VIRTIO_NET_CTRL_VLAN`, §5.1.6.5.3).
    pub const CLASS_VLAN: u8 = 2;
    /// Announcement class (`VIRTIO_NET_CTRL_ANNOUNCE`, §5.1.6.5.4).
    pub const CLASS_ANNOUNCE: u8 = 3;
    /// Acknowledges an announcement.
    pub const ANNOUNCE_ACK: u8 = 0;

    /// Multiqueue class (`VIRTIO_NET_CTRL_MQ`, §5.1.6.5.5).
    pub const CLASS_MQ: u8 = 4;
    /// Sets the number of queue pairs in use (`le16 virtqueue_pairs`).
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    /// Fewest pairs `VQ_PAIRS_SET` accepts.
    pub const MQ_VQ_PAIRS_MIN: u16 = 1;
    /// Most pairs `VQ_PAIRS_SET` accepts.
    pub const MQ_VQ_PAIRS_MAX: u16 = 0x8000;

    /// Guest offloads class (`VIRTIO_NET_CTRL_GUEST_OFFLOADS`, §5.1.6.5.6).
    pub const CLASS_GUEST_OFFLOADS: u8 = 5;
}

/// Bytes of an Ethernet address.
pub const ETH_ALEN: usize = 6;

/// The Internet checksum (RFC 1071): the one's-complement sum of `data`
/// as big-endian 16-bit words (an odd last byte padded with zero), folded
/// and complemented. This is what a device stores at `csum_start +
/// csum_offset` for a `NEEDS_CSUM` frame, summing from `csum_start` to the
/// end with the partial (pseudo-header) sum already in the field.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !ones_sum(data, 0)
}

/// The one's-complement sum of `data` as big-endian 16-bit words (an
/// odd last byte padded with zero) added to `initial`, folded to 16 bits
/// and not complemented. Sums 8 bytes per step with end-around carry (the
/// one's-complement sum does not depend on the word size), so a guest
/// whose instructions are emulated pays little per byte.
pub fn ones_sum(data: &[u8], initial: u32) -> u16 {
    let mut acc = u64::from(initial);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_be_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let (s, carry) = acc.overflowing_add(v);
        acc = s + u64::from(carry);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        // Zero padding after the last bytes, as for an odd byte.
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        let (s, carry) = acc.overflowing_add(u64::from_be_bytes(last));
        acc = s + u64::from(carry);
    }
    let mut sum = (acc & 0xffff_ffff) + (acc >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Bytes of an Ethernet header without VLAN tag.
pub const ETH_HLEN: usize = 14;
/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// An untagged Ethernet frame carrying a whole (unfragmented) IPv4 TCP or
/// UDP segment: (start of the L4 header, IP protocol, L4 bytes, the
/// pseudo-header sum). The L4 bytes end where the IPv4 total length says
/// (Ethernet padding after it is ignored).
fn ipv4_l4(frame: &[u8]) -> Option<(usize, u8, usize, u16)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETH_HLEN..)?;
    let vihl = *ip.first()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // More fragments, or a fragment offset: not a whole segment.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 || total < ihl || total > ip.len() {
        return None;
    }
    let proto = ip[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let l4_len = total - ihl;
    let min = if proto == IPPROTO_TCP { 20 } else { 8 };
    if l4_len < min {
        return None;
    }
    // Source and destination address, protocol, L4 length.
    let pseudo = ones_sum(&ip[12..20], u32::from(proto) + l4_len as u32);
    Some((ETH_HLEN + ihl, proto, l4_len, pseudo))
}

/// Where a transmit checksum offload (§5.1.6.2, `NEEDS_CSUM`) of `frame`
/// goes: `(csum_start, csum_offset, pseudo_sum)` for an untagged Ethernet
/// frame with a whole IPv4 TCP or UDP segment, `None` for anything else.
/// The driver stores `pseudo_sum` (big-endian) in the checksum field; the
/// device then sums from `csum_start` to the end and stores the result
/// there, which gives the full TCP/UDP checksum.
pub fn l4_checksum_offsets(frame: &[u8]) -> Option<(u16, u16, u16)> {
    let (start, proto, _, pseudo) = ipv4_l4(frame)?;
    let offset = if proto == IPPROTO_TCP { 16 } else { 6 };
    Some((u16::try_from(start).ok()?, offset, pseudo))
}

/// Whether the TCP or UDP checksum of `frame` (untagged Ethernet, whole
/// IPv4 segment) is right; `None` when the frame is not such a segment.
/// A UDP checksum of 0 means none was computed (RFC 768) and counts as
/// right.
pub fn verify_l4_checksum(frame: &[u8]) -> Option<bool> {
    let (start, proto, len, pseudo) = ipv4_l4(frame)?;
    let l4 = frame.get(start..start + len)?;
    if proto == IPPROTO_UDP && l4[6] == 0 && l4[7] == 0 {
        return Some(true);
    }
    Some(ones_sum(l4, u32::from(pseudo)) == 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = NetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso::TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        assert_eq!(NetHdr::parse(&h.to_bytes()), Some(h));
        assert_eq!(NetHdr::parse(&[0u8; 9]), None);
        let legacy = NetHdr::parse(&h.to_bytes()[..HDR_LEN_LEGACY]).unwrap();
        assert_eq!(legacy.num_buffers, 0);
    }

    fn hex(s: &str) -> [u8; 128] {
        let mut out = [0u8; 128];
        for (i, o) in out.iter_mut().enumerate().take(s.len() / 2) {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    // Real frames: written by Linux 6.18 (kernel-computed checksums) to a
    // tap device without IFF_VNET_HDR in a scratch network namespace
    // (10.0.0.1 -> 10.0.0.2): a UDP datagram "virtio-net checksum vector"
    // to port 7777 and a TCP SYN to port 8888.
    const UDP: &str = "020000000002020000000001080045000036b0e34000401175d10a0000010a000002\
                       ee0f1e610022e3f076697274696f2d6e657420636865636b73756d20766563746f72";
    const UDP_LEN: usize = 68;
    const TCP: &str = "02000000000202000000000108004500003c067d40004006203d0a0000010a000002\
                       b59622b80337e36600000000a002faf0ec3c0000020405b40402080a4672476e0000\
                       00000103030a";
    const TCP_LEN: usize = 74;

    #[test]
    fn l4_checksums_of_real_frames_verify() {
        let udp = hex(UDP);
        let tcp = hex(TCP);
        assert_eq!(verify_l4_checksum(&udp[..UDP_LEN]), Some(true));
        assert_eq!(verify_l4_checksum(&tcp[..TCP_LEN]), Some(true));
        // Ethernet padding after the IPv4 total length is ignored.
        assert_eq!(verify_l4_checksum(&udp[..UDP_LEN + 10]), Some(true));
        for (f, len) in [(udp, UDP_LEN), (tcp, TCP_LEN)] {
            for i in [ETH_HLEN + 12, 40, len - 1] {
                let mut bad = f;
                bad[i] ^= 0x40;
                assert_eq!(verify_l4_checksum(&bad[..len]), Some(false), "byte {i}");
            }
        }
    }

    #[test]
    fn l4_checksum_offsets_rebuild_the_real_checksum_5_1_6_2() {
        for (f, len, offset) in [(hex(UDP), UDP_LEN, 6u16), (hex(TCP), TCP_LEN, 16)] {
            let mut f = f;
            let f = &mut f[..len];
            let (start, off, pseudo) = l4_checksum_offsets(f).unwrap();
            assert_eq!((start, off), (34, offset));
            let at = usize::from(start + off);
            let real = [f[at], f[at + 1]];
            // What a driver sends with NEEDS_CSUM, and what the device
            // stores after summing from csum_start.
            f[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
            let sum = internet_checksum(&f[usize::from(start)..]);
            assert_eq!(sum.to_be_bytes(), real);
        }
    }

    #[test]
    fn l4_helpers_refuse_what_is_not_a_whole_ipv4_tcp_udp_segment() {
        let udp = hex(UDP);
        // Not IPv4.
        let mut v6 = udp;
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(verify_l4_checksum(&v6[..UDP_LEN]), None);
        // A fragment (more fragments set).
        let mut frag = udp;
        frag[20] |= 0x20;
        assert_eq!(l4_checksum_offsets(&frag[..UDP_LEN]), None);
        // Truncated below the IPv4 total length.
        assert_eq!(verify_l4_checksum(&udp[..UDP_LEN - 1]), None);
        assert_eq!(verify_l4_checksum(&udp[..20]), None);
        assert_eq!(verify_l4_checksum(&[]), None);
        // ICMP.
        let mut icmp = udp;
        icmp[23] = 1;
        assert_eq!(verify_l4_checksum(&icmp[..UDP_LEN]), None);
        // UDP without a checksum (RFC 768).
        let mut none = udp;
        none[40] = 0;
        none[41] = 0;
        assert_eq!(verify_l4_checksum(&none[..UDP_LEN]), Some(true));
        // ones_sum agrees with internet_checksum on odd lengths.
        let d = [1u8, 2, 3, 4, 5, 6, 7];
        assert_eq!(!ones_sum(&d, 0), internet_checksum(&d));
    }

    /// The 16-bit reference: word by word, carries folded at the end.
    fn ones_sum_16(data: &[u8], initial: u32) -> u16 {
        let mut sum = u64::from(initial);
        for c in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn ones_sum_matches_the_16_bit_sum() {
        let mut x = 0x1234_5678u32;
        let data: alloc::vec::Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in (0..64).chain([1499, 1500, 2999, 3000]) {
            for init in [0, 1, 0xffff, 0x1_fffe, u32::MAX] {
                assert_eq!(
                    ones_sum(&data[..len], init),
                    ones_sum_16(&data[..len], init),
                    "len {len} init {init:#x}"
                );
            }
        }
        assert_eq!(ones_sum(&[0xff; 4096], 0), 0xffff);
    }

    #[test]
    fn rfc_1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&d), !0xddf2);
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
    }
}
