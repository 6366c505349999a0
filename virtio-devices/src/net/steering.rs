//! Automatic receive steering in multiqueue mode (spec §5.1.6.5.5,
//! "Automatic receive steering in multiqueue mode"): "After the driver
//! transmitted a packet of a flow on transmitqX, the device SHOULD cause
//! incoming packets for that flow to be steered to receiveqX. For
//! uni-directional protocols, or where no packets have been transmitted
//! yet, the device MAY steer a packet to a random queue out of the
//! specified receiveq1…receiveqn."
//!
//! A flow is an IPv4 or IPv6 conversation seen from the guest: protocol,
//! the guest's address and port, the peer's address and port (ports for
//! TCP and UDP only, and not for IPv4 fragments past the first, which carry
//! none). A transmitted frame teaches the table which queue pair its flow
//! used; a received frame of the same flow (addresses and ports swapped)
//! finds it there. Frames that are not IP (ARP, say) have no flow. The
//! table is fixed-size and direct-mapped, allocated once: a collision
//! forgets the older flow, which then goes to the queue its hash picks.
//! Not here: RSS and hash reports (`VIRTIO_NET_F_RSS`,
//! `VIRTIO_NET_F_HASH_REPORT`), which are not offered.

use alloc::vec::Vec;

/// Flows the table remembers at once.
pub const FLOW_SLOTS: usize = 1024;

const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Which way a frame crosses the device, from the guest's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the driver (a transmit queue): its source is the guest.
    Transmit,
    /// To the driver (a receive queue): its destination is the guest.
    Receive,
}

/// A flow's identity: a 64-bit hash of protocol, guest endpoint and peer
/// endpoint (never 0, so that 0 marks an empty slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow(u64);

impl Flow {
    /// The hash.
    pub fn hash(self) -> u64 {
        self.0
    }
}

/// FNV-1a over `bytes`, continuing from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The flow of Ethernet frame `frame` crossing in `dir`, or `None` for a
/// frame that is not IPv4 or IPv6 (or too short to tell).
pub fn flow_of(frame: &[u8], dir: Direction) -> Option<Flow> {
    let mut l3 = 14;
    let mut ty = be16(frame, 12)?;
    if ty == ETHERTYPE_VLAN {
        ty = be16(frame, 16)?;
        l3 = 18;
    }
    let ip = frame.get(l3..)?;
    let (proto, src, dst, l4): (u8, &[u8], &[u8], Option<&[u8]>) = match ty {
        ETHERTYPE_IPV4 => {
            if ip.first()? >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0xf) * 4;
            if ihl < 20 {
                return None;
            }
            let frag = be16(ip, 6)?;
            // More fragments, or an offset: no ports in this one (the
            // whole datagram still goes one way: its addresses agree).
            let first_whole = frag & 0x3fff == 0;
            (
                *ip.get(9)?,
                ip.get(12..16)?,
                ip.get(16..20)?,
                first_whole.then(|| ip.get(ihl..)).flatten(),
            )
        }
        ETHERTYPE_IPV6 => {
            if ip.first()? >> 4 != 6 {
                return None;
            }
            (*ip.get(6)?, ip.get(8..24)?, ip.get(24..40)?, ip.get(40..))
        }
        _ => return None,
    };
    let ports = match (proto, l4) {
        (PROTO_TCP | PROTO_UDP, Some(l4)) => l4.get(..4),
        _ => None,
    };
    let (sport, dport) = match ports {
        Some(p) => (&p[..2], &p[2..4]),
        None => (&[0u8, 0][..], &[0u8, 0][..]),
    };
    let ((guest, gport), (peer, pport)) = match dir {
        Direction::Transmit => ((src, sport), (dst, dport)),
        Direction::Receive => ((dst, dport), (src, sport)),
    };
    let mut h = fnv(0xcbf2_9ce4_8422_2325, &[proto]);
    for part in [guest, gport, peer, pport] {
        h = fnv(h, part);
    }
    Some(Flow(h.max(1)))
}

/// The flow table: which queue pair each flow last transmitted on.
#[derive(Clone, Debug)]
pub struct Steering {
    slots: Vec<(u64, u16)>,
}

impl Default for Steering {
    fn default() -> Self {
        Self::new()
    }
}

impl Steering {
    /// An empty table of [`FLOW_SLOTS`] flows.
    pub fn new() -> Steering {
        Steering {
            slots: alloc::vec![(0, 0); FLOW_SLOTS],
        }
    }

    /// Forgets every flow (device reset, §2.4).
    pub fn clear(&mut self) {
        self.slots.fill((0, 0));
    }

    fn slot(&self, f: Flow) -> usize {
        (f.0 % FLOW_SLOTS as u64) as usize
    }

    /// Records that the flow of transmitted `frame` used queue `pair`.
    pub fn learn(&mut self, frame: &[u8], pair: u16) {
        if let Some(f) = flow_of(frame, Direction::Transmit) {
            let i = self.slot(f);
            self.slots[i] = (f.0, pair);
        }
    }

    /// The pair that received `frame` goes to, among those `usable` says
    /// exist (`n` candidates, `0..n`): the pair its flow last transmitted
    /// on; for a flow not seen yet, one its hash picks among the usable
    /// pairs; for a frame that is no flow, pair 0 (receiveq1). Pair 0 when
    /// nothing else is usable.
    pub fn steer(&self, frame: &[u8], n: u16, usable: impl Fn(u16) -> bool) -> u16 {
        let Some(f) = flow_of(frame, Direction::Receive) else {
            return 0;
        };
        let (hash, pair) = self.slots[self.slot(f)];
        if hash == f.0 && pair < n && usable(pair) {
            return pair;
        }
        let live = (0..n).filter(|p| usable(*p)).count() as u64;
        if live == 0 {
            return 0;
        }
        let pick = f.0 % live;
        (0..n)
            .filter(|p| usable(*p))
            .nth(pick as usize)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP/UDP frame from `src:sport` to `dst:dport`.
    fn ipv4(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = alloc::vec![0u8; 14];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = alloc::vec![0u8; 20];
        ip[0] = 0x45;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0; 16]);
        f
    }

    const GUEST: [u8; 4] = [10, 0, 2, 15];
    const HOST: [u8; 4] = [10, 0, 2, 2];

    #[test]
    fn a_reply_has_the_flow_of_what_was_sent() {
        let out = ipv4(PROTO_TCP, GUEST, 40000, HOST, 5001);
        let back = ipv4(PROTO_TCP, HOST, 5001, GUEST, 40000);
        assert_eq!(
            flow_of(&out, Direction::Transmit),
            flow_of(&back, Direction::Receive)
        );
        let other = ipv4(PROTO_TCP, HOST, 5001, GUEST, 40001);
        assert_ne!(
            flow_of(&out, Direction::Transmit),
            flow_of(&other, Direction::Receive)
        );
        // UDP is another flow than TCP on the same ports.
        let udp = ipv4(PROTO_UDP, HOST, 5001, GUEST, 40000);
        assert_ne!(
            flow_of(&back, Direction::Receive),
            flow_of(&udp, Direction::Receive)
        );
    }

    #[test]
    fn section_5_1_6_5_5_received_frames_follow_their_flows_transmit_queue() {
        let mut s = Steering::new();
        let all = |_| true;
        for (pair, port) in [(0u16, 40000u16), (1, 40001), (3, 40002)] {
            s.learn(&ipv4(PROTO_TCP, GUEST, port, HOST, 5001), pair);
        }
        for (pair, port) in [(0u16, 40000u16), (1, 40001), (3, 40002)] {
            let back = ipv4(PROTO_TCP, HOST, 5001, GUEST, port);
            assert_eq!(s.steer(&back, 4, all), pair, "port {port}");
        }
        // The flow moves with its sender.
        s.learn(&ipv4(PROTO_TCP, GUEST, 40000, HOST, 5001), 2);
        assert_eq!(
            s.steer(&ipv4(PROTO_TCP, HOST, 5001, GUEST, 40000), 4, all),
            2
        );
        // A learned pair beyond what is usable now is not used.
        assert_eq!(
            s.steer(&ipv4(PROTO_TCP, HOST, 5001, GUEST, 40002), 2, all),
            s.steer(&ipv4(PROTO_TCP, HOST, 5001, GUEST, 40002), 2, |p| p < 2)
        );
        assert!(s.steer(&ipv4(PROTO_TCP, HOST, 5001, GUEST, 40002), 2, all) < 2);
        s.clear();
        let unseen = ipv4(PROTO_TCP, HOST, 5001, GUEST, 40001);
        let p = s.steer(&unseen, 4, all);
        assert!(p < 4);
        assert_eq!(s.steer(&unseen, 4, all), p, "the same flow, the same queue");
    }

    #[test]
    fn flows_never_seen_spread_over_the_usable_pairs_only() {
        let s = Steering::new();
        let mut seen = [0u32; 4];
        for port in 0..400u16 {
            let f = ipv4(PROTO_UDP, HOST, 53, GUEST, 1000 + port);
            let p = s.steer(&f, 4, |p| p != 2);
            assert_ne!(p, 2);
            seen[usize::from(p)] += 1;
        }
        assert!(seen[0] > 50 && seen[1] > 50 && seen[3] > 50, "{seen:?}");
        // Nothing usable: receiveq1.
        let f = ipv4(PROTO_UDP, HOST, 53, GUEST, 1000);
        assert_eq!(s.steer(&f, 4, |_| false), 0);
    }

    #[test]
    fn frames_without_a_flow_go_to_receiveq1_and_nothing_panics() {
        let s = Steering::new();
        let mut arp = alloc::vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(flow_of(&arp, Direction::Receive), None);
        assert_eq!(s.steer(&arp, 4, |_| true), 0);
        let full = ipv4(PROTO_TCP, HOST, 1, GUEST, 2);
        for cut in 0..full.len() {
            let _ = flow_of(&full[..cut], Direction::Receive);
            let _ = s.steer(&full[..cut], 4, |_| true);
        }
        // A bad IHL, a version that is not 4.
        let mut bad = full.clone();
        bad[14] = 0x41;
        assert_eq!(flow_of(&bad, Direction::Receive), None);
        bad[14] = 0x65;
        assert_eq!(flow_of(&bad, Direction::Receive), None);
    }

    #[test]
    fn fragments_after_the_first_and_vlan_tags_and_ipv6_have_flows() {
        let mut frag = ipv4(PROTO_UDP, HOST, 53, GUEST, 1000);
        frag[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert!(flow_of(&frag, Direction::Receive).is_some());
        let mut tagged = alloc::vec![0u8; 12];
        tagged.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        tagged.extend_from_slice(&[0, 5]);
        let plain = ipv4(PROTO_TCP, HOST, 1, GUEST, 2);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(
            flow_of(&tagged, Direction::Receive),
            flow_of(&plain, Direction::Receive)
        );
        let mut v6 = alloc::vec![0u8; 14];
        v6[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let mut ip = alloc::vec![0u8; 40];
        ip[0] = 0x60;
        ip[6] = PROTO_TCP;
        ip[8..24].copy_from_slice(&[1; 16]);
        ip[24..40].copy_from_slice(&[2; 16]);
        v6.extend_from_slice(&ip);
        v6.extend_from_slice(&[0, 80, 0x9c, 0x40]);
        let out = flow_of(&v6, Direction::Transmit);
        assert!(out.is_some());
        let mut back = v6.clone();
        back[14 + 8..14 + 24].copy_from_slice(&[2; 16]);
        back[14 + 24..14 + 40].copy_from_slice(&[1; 16]);
        back[54..58].copy_from_slice(&[0x9c, 0x40, 0, 80]);
        assert_eq!(flow_of(&back, Direction::Receive), out);
    }
}
