//! The DHCP server of `-netdev user` (RFC 2131 on smoltcp's wire format):
//! each client MAC keeps one address from `dhcpstart` up, with the
//! gateway, the mask and the DNS forwarder as options.

use std::net::Ipv4Addr;
use std::vec::Vec;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress};

use super::config::UserConfig;

/// Addresses handed out at most (QEMU's slirp keeps 16).
pub const MAX_LEASES: usize = 16;
/// The lease time told to clients, in seconds (a day, as slirp).
pub const LEASE_SECS: u32 = 86_400;
/// DHCP option 12, the host name.
const OPT_HOSTNAME: u8 = 12;

/// The addresses given out, by client MAC.
#[derive(Debug, Default)]
pub struct Leases {
    by_mac: Vec<(EthernetAddress, Ipv4Addr)>,
}

impl Leases {
    /// The address `mac` holds or would be offered (`None`: the pool is
    /// used up).
    pub fn lookup_or_assign(&mut self, cfg: &UserConfig, mac: EthernetAddress) -> Option<Ipv4Addr> {
        if let Some((_, a)) = self.by_mac.iter().find(|(m, _)| *m == mac) {
            return Some(*a);
        }
        let start = u32::from(cfg.dhcp_start);
        let a = (0..MAX_LEASES as u32)
            .map(|i| Ipv4Addr::from(start.wrapping_add(i)))
            .find(|a| {
                cfg.is_host_address(*a)
                    && *a != cfg.host
                    && *a != cfg.dns
                    && !cfg.guestfwd.iter().any(|g| g.addr == *a)
                    && !self.by_mac.iter().any(|(_, b)| b == a)
            })?;
        self.by_mac.push((mac, a));
        Some(a)
    }

    /// The first address given out, else `dhcpstart` (where `hostfwd`
    /// without a guest address goes).
    pub fn first(&self, cfg: &UserConfig) -> Ipv4Addr {
        self.by_mac.first().map_or(cfg.dhcp_start, |(_, a)| *a)
    }
}

/// The answer to one client message: the DHCP payload to broadcast.
pub fn answer(cfg: &UserConfig, leases: &mut Leases, msg: &[u8]) -> Option<Vec<u8>> {
    let packet = DhcpPacket::new_checked(msg).ok()?;
    let req = DhcpRepr::parse(&packet).ok()?;
    let mac = req.client_hardware_address;
    let (kind, ip) = match req.message_type {
        DhcpMessageType::Discover => (DhcpMessageType::Offer, leases.lookup_or_assign(cfg, mac)?),
        DhcpMessageType::Request => {
            // RFC 2131 §4.3.2: a REQUEST for another server's offer is
            // not ours to answer.
            if req.server_identifier.is_some_and(|s| s != cfg.host) {
                return None;
            }
            let ours = leases.lookup_or_assign(cfg, mac);
            let wanted = req
                .requested_ip
                .or((!req.client_ip.is_unspecified()).then_some(req.client_ip));
            match (ours, wanted) {
                (Some(a), Some(w)) if a == w => (DhcpMessageType::Ack, a),
                (Some(a), None) => (DhcpMessageType::Ack, a),
                _ => (DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED),
            }
        }
        // DECLINE, RELEASE, INFORM: the lease stays (a client that comes
        // back gets the same address).
        _ => return None,
    };
    let nak = kind == DhcpMessageType::Nak;
    let mut dns = heapless::Vec::new();
    if !nak {
        dns.push(cfg.dns).ok()?;
    }
    let hostname;
    let extra: &[DhcpOption<'_>] = match (&cfg.hostname, nak) {
        (Some(h), false) => {
            hostname = [DhcpOption {
                kind: OPT_HOSTNAME,
                data: h.as_bytes(),
            }];
            &hostname
        }
        _ => &[],
    };
    let reply = DhcpRepr {
        message_type: kind,
        transaction_id: req.transaction_id,
        secs: 0,
        client_hardware_address: mac,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: ip,
        server_ip: cfg.host,
        router: (!nak).then_some(cfg.host),
        subnet_mask: (!nak).then_some(cfg.mask()),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: req.broadcast,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(cfg.host),
        parameter_request_list: None,
        dns_servers: (!nak).then_some(dns),
        max_size: None,
        lease_duration: (!nak).then_some(LEASE_SECS),
        renew_duration: None,
        rebind_duration: None,
        additional_options: extra,
    };
    let mut buf = vec![0u8; reply.buffer_len()];
    let mut out = DhcpPacket::new_unchecked(&mut buf[..]);
    reply.emit(&mut out).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: DhcpMessageType, mac: [u8; 6], wanted: Option<Ipv4Addr>) -> Vec<u8> {
        let r = DhcpRepr {
            message_type: kind,
            transaction_id: 0x1234,
            secs: 0,
            client_hardware_address: EthernetAddress(mac),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: wanted,
            client_identifier: None,
            server_identifier: None,
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf
    }

    fn parse(buf: &[u8]) -> (DhcpMessageType, Ipv4Addr) {
        let p = DhcpPacket::new_checked(buf).unwrap();
        let r = DhcpRepr::parse(&p).unwrap();
        (r.message_type, r.your_ip)
    }

    /// RFC 2131 §3.1: DISCOVER → OFFER, REQUEST → ACK, with the options
    /// QEMU's slirp gives (router, mask, DNS, a day's lease).
    #[test]
    fn discover_offer_request_ack() {
        let cfg = UserConfig::default();
        let mut l = Leases::default();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let offer = answer(&cfg, &mut l, &request(DhcpMessageType::Discover, mac, None)).unwrap();
        assert_eq!(
            parse(&offer),
            (DhcpMessageType::Offer, Ipv4Addr::new(10, 0, 2, 15))
        );
        let p = DhcpPacket::new_checked(&offer[..]).unwrap();
        let r = DhcpRepr::parse(&p).unwrap();
        assert_eq!(r.router, Some(cfg.host));
        assert_eq!(r.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(r.dns_servers.as_deref(), Some(&[cfg.dns][..]));
        assert_eq!(r.lease_duration, Some(LEASE_SECS));
        let ack = answer(
            &cfg,
            &mut l,
            &request(
                DhcpMessageType::Request,
                mac,
                Some(Ipv4Addr::new(10, 0, 2, 15)),
            ),
        )
        .unwrap();
        assert_eq!(
            parse(&ack),
            (DhcpMessageType::Ack, Ipv4Addr::new(10, 0, 2, 15))
        );
        // A second client gets the next address; a wrong request a NAK.
        let other = [0x52, 0x54, 0, 0x12, 0x34, 0x57];
        let offer = answer(
            &cfg,
            &mut l,
            &request(DhcpMessageType::Discover, other, None),
        )
        .unwrap();
        assert_eq!(parse(&offer).1, Ipv4Addr::new(10, 0, 2, 16));
        let nak = answer(
            &cfg,
            &mut l,
            &request(
                DhcpMessageType::Request,
                other,
                Some(Ipv4Addr::new(10, 0, 2, 15)),
            ),
        )
        .unwrap();
        assert_eq!(parse(&nak).0, DhcpMessageType::Nak);
    }

    /// The pool holds [`MAX_LEASES`]; the next client gets no answer.
    #[test]
    fn pool_runs_out_quietly() {
        let cfg = UserConfig::default();
        let mut l = Leases::default();
        for i in 0..MAX_LEASES as u8 {
            let m = [2, 0, 0, 0, 0, i];
            assert!(answer(&cfg, &mut l, &request(DhcpMessageType::Discover, m, None)).is_some());
        }
        let m = [2, 0, 0, 0, 1, 0];
        assert!(answer(&cfg, &mut l, &request(DhcpMessageType::Discover, m, None)).is_none());
        assert!(answer(&cfg, &mut l, b"not dhcp").is_none());
    }
}
