//! What `-netdev user` is told: the virtual network's addresses, the
//! forwarding rules (`hostfwd`, `guestfwd`) and their QEMU spellings.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::string::{String, ToString};
use std::vec::Vec;

/// Why a `-netdev user` setting was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting (`hostfwd`, `net`, …).
    pub key: &'static str,
    /// What it was given.
    pub value: String,
    /// What it should have been.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}: expected {}", self.key, self.value, self.expected)
    }
}

impl core::error::Error for ConfigError {}

fn bad(key: &'static str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError {
        key,
        value: value.to_string(),
        expected,
    }
}

/// A transport a forwarding rule carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
}

/// `hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`: a host
/// port whose connections (or datagrams) go to a port of the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFwd {
    /// TCP or UDP.
    pub proto: Proto,
    /// Where the host listens (QEMU's default host address is any).
    pub host: SocketAddr,
    /// The guest's address; `None`: the first DHCP address (`dhcpstart`).
    pub guest: Option<Ipv4Addr>,
    /// The guest's port.
    pub guest_port: u16,
}

impl HostFwd {
    /// Parses QEMU's `hostfwd=` value.
    pub fn parse(s: &str) -> Result<HostFwd, ConfigError> {
        let what = "[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport";
        let (proto, rest) = match s.split_once(':') {
            Some(("tcp" | "", rest)) => (Proto::Tcp, rest),
            Some(("udp", rest)) => (Proto::Udp, rest),
            _ => return Err(bad("hostfwd", s, what)),
        };
        let (host, guest) = rest
            .split_once('-')
            .ok_or_else(|| bad("hostfwd", s, what))?;
        let (haddr, hport) = host
            .rsplit_once(':')
            .ok_or_else(|| bad("hostfwd", s, what))?;
        let haddr: Ipv4Addr = if haddr.is_empty() {
            Ipv4Addr::UNSPECIFIED
        } else {
            haddr
                .parse()
                .map_err(|_| bad("hostfwd", s, "an IPv4 host address"))?
        };
        let hport: u16 = hport
            .parse()
            .map_err(|_| bad("hostfwd", s, "a host port number"))?;
        let (gaddr, gport) = guest
            .rsplit_once(':')
            .ok_or_else(|| bad("hostfwd", s, what))?;
        let guest_addr = if gaddr.is_empty() {
            None
        } else {
            Some(
                gaddr
                    .parse()
                    .map_err(|_| bad("hostfwd", s, "an IPv4 guest address"))?,
            )
        };
        let guest_port: u16 = match gport.parse() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad("hostfwd", s, "a guest port number (1-65535)")),
        };
        Ok(HostFwd {
            proto,
            host: SocketAddr::new(IpAddr::V4(haddr), hport),
            guest: guest_addr,
            guest_port,
        })
    }
}

/// Where a `guestfwd` rule's connections go on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestFwdTarget {
    /// `tcp:HOST:PORT`: a TCP connection per guest connection.
    Tcp(String),
    /// `unix:PATH`: a unix stream connection per guest connection.
    Unix(PathBuf),
    /// `cmd:COMMAND`: `sh -c COMMAND` per guest connection, its stdin and
    /// stdout the connection.
    Cmd(String),
}

/// `guestfwd=[tcp]:server:port-dev`: guest connections to a virtual
/// `server:port` reach a host service (QEMU's `dev` is a chardev, `cmd:`
/// a command).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFwd {
    /// The virtual address the guest connects to.
    pub addr: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// What answers.
    pub target: GuestFwdTarget,
}

impl GuestFwd {
    /// Parses QEMU's `guestfwd=` value.
    pub fn parse(s: &str) -> Result<GuestFwd, ConfigError> {
        let what = "[tcp]:server:port-tcp:HOST:PORT|unix:PATH|cmd:COMMAND";
        let rest = match s.split_once(':') {
            Some(("tcp" | "", rest)) => rest,
            Some(("udp", _)) => {
                return Err(bad("guestfwd", s, "a tcp rule (QEMU has no udp guestfwd)"));
            }
            _ => return Err(bad("guestfwd", s, what)),
        };
        let (server, target) = rest
            .split_once('-')
            .ok_or_else(|| bad("guestfwd", s, what))?;
        let (addr, port) = server
            .rsplit_once(':')
            .ok_or_else(|| bad("guestfwd", s, what))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad("guestfwd", s, "an IPv4 server address"))?;
        let port: u16 = match port.parse() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad("guestfwd", s, "a server port number (1-65535)")),
        };
        let target = if let Some(c) = target.strip_prefix("cmd:") {
            if c.is_empty() {
                return Err(bad("guestfwd", s, "a command after cmd:"));
            }
            GuestFwdTarget::Cmd(c.to_string())
        } else if let Some(p) = target.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(bad("guestfwd", s, "a path after unix:"));
            }
            GuestFwdTarget::Unix(PathBuf::from(p))
        } else if let Some(t) = target.strip_prefix("tcp:") {
            match t.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                    GuestFwdTarget::Tcp(t.to_string())
                }
                _ => return Err(bad("guestfwd", s, "tcp:HOST:PORT")),
            }
        } else {
            return Err(bad("guestfwd", s, what));
        };
        Ok(GuestFwd { addr, port, target })
    }
}

/// The virtual network of `-netdev user` and its rules; [`Default`] is
/// QEMU's: 10.0.2.0/24, the host at 10.0.2.2, DNS at 10.0.2.3, the guest
/// given 10.0.2.15 and up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserConfig {
    /// The network (`net=`).
    pub net: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The gateway, which stands for the host (`host=`).
    pub host: Ipv4Addr,
    /// The DNS forwarder (`dns=`).
    pub dns: Ipv4Addr,
    /// The first address DHCP hands out (`dhcpstart=`).
    pub dhcp_start: Ipv4Addr,
    /// The host name DHCP tells the guest (`hostname=`).
    pub hostname: Option<String>,
    /// Isolates the guest (`restrict=on`): nothing reaches the host or
    /// beyond except `hostfwd` and `guestfwd`.
    pub restrict: bool,
    /// `hostfwd=` rules.
    pub hostfwd: Vec<HostFwd>,
    /// `guestfwd=` rules.
    pub guestfwd: Vec<GuestFwd>,
    /// Where DNS queries go; `None`: the first `nameserver` of
    /// `/etc/resolv.conf` (QEMU's choice too), else 127.0.0.1.
    pub dns_upstream: Option<SocketAddr>,
}

impl Default for UserConfig {
    fn default() -> Self {
        UserConfig {
            net: Ipv4Addr::new(10, 0, 2, 0),
            prefix: 24,
            host: Ipv4Addr::new(10, 0, 2, 2),
            dns: Ipv4Addr::new(10, 0, 2, 3),
            dhcp_start: Ipv4Addr::new(10, 0, 2, 15),
            hostname: None,
            restrict: false,
            hostfwd: Vec::new(),
            guestfwd: Vec::new(),
            dns_upstream: None,
        }
    }
}

impl UserConfig {
    /// The network mask.
    pub fn mask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }

    /// Whether `a` is inside the virtual network.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let m = u32::from(self.mask());
        u32::from(a) & m == u32::from(self.net) & m
    }

    /// Whether `a` is a host address of the network (inside it, neither
    /// the network's own address nor its broadcast).
    pub fn is_host_address(&self, a: Ipv4Addr) -> bool {
        let host_bits = !u32::from(self.mask());
        let h = u32::from(a) & host_bits;
        self.contains(a) && h != 0 && h != host_bits
    }

    /// Sets `net=` from `ADDR[/PREFIX|/MASK]` and moves the host, DNS and
    /// DHCP addresses into it as QEMU does (`.2`, `.3`, `.15`).
    pub fn set_net(&mut self, s: &str) -> Result<(), ConfigError> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: Ipv4Addr = a.parse().map_err(|_| bad("net", s, "ADDR[/PREFIX]"))?;
        let prefix = match p {
            None => 24,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= 30 => n,
                Ok(_) => return Err(bad("net", s, "a prefix of at most 30 bits")),
                Err(_) => {
                    let m: Ipv4Addr = p.parse().map_err(|_| bad("net", s, "ADDR[/PREFIX]"))?;
                    let m = u32::from(m);
                    if m.leading_ones() + m.trailing_zeros() != 32 || m.leading_ones() > 30 {
                        return Err(bad("net", s, "a contiguous mask of at most 30 bits"));
                    }
                    m.leading_ones() as u8
                }
            },
        };
        self.prefix = prefix;
        let base = u32::from(net) & u32::from(self.mask());
        self.net = Ipv4Addr::from(base);
        self.host = Ipv4Addr::from(base | 2);
        self.dns = Ipv4Addr::from(base | 3);
        self.dhcp_start = Ipv4Addr::from(base | 15);
        Ok(())
    }

    /// Checks that the addresses sit in the network and do not collide.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.prefix > 30 {
            return Err(bad(
                "net",
                &std::format!("{}/{}", self.net, self.prefix),
                "a prefix of at most 30 bits",
            ));
        }
        for (key, a) in [
            ("host", self.host),
            ("dns", self.dns),
            ("dhcpstart", self.dhcp_start),
        ] {
            if !self.contains(a) {
                return Err(bad(key, &a.to_string(), "an address inside net="));
            }
        }
        if self.host == self.dns {
            return Err(bad(
                "dns",
                &self.dns.to_string(),
                "an address other than host=",
            ));
        }
        for g in &self.guestfwd {
            if g.addr == self.host || g.addr == self.dns || !self.contains(g.addr) {
                return Err(bad(
                    "guestfwd",
                    &g.addr.to_string(),
                    "a server address inside net= other than host= and dns=",
                ));
            }
        }
        Ok(())
    }
}

/// The first IPv4 `nameserver` of `/etc/resolv.conf`, port 53.
pub fn resolv_conf_nameserver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == "nameserver")
            .then(|| w.next()?.parse::<Ipv4Addr>().ok())
            .flatten()
            .map(|a| SocketAddr::new(IpAddr::V4(a), 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfwd_spellings() {
        let f = HostFwd::parse("tcp::5555-:22").unwrap();
        assert_eq!(f.proto, Proto::Tcp);
        assert_eq!(f.host, "0.0.0.0:5555".parse().unwrap());
        assert_eq!((f.guest, f.guest_port), (None, 22));
        let f = HostFwd::parse("udp:127.0.0.1:6000-10.0.2.16:7").unwrap();
        assert_eq!(f.proto, Proto::Udp);
        assert_eq!(f.guest, Some(Ipv4Addr::new(10, 0, 2, 16)));
        assert!(HostFwd::parse(":127.0.0.1:1-:2").is_ok());
        for bad in [
            "",
            "sctp::1-:2",
            "tcp::1",
            "tcp::x-:2",
            "tcp::1-:0",
            "tcp:h:1-:2",
            "tcp::1-:70000",
        ] {
            assert!(HostFwd::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn guestfwd_spellings() {
        let g = GuestFwd::parse("tcp:10.0.2.100:1234-tcp:127.0.0.1:4321").unwrap();
        assert_eq!(g.addr, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(g.target, GuestFwdTarget::Tcp("127.0.0.1:4321".into()));
        let g = GuestFwd::parse(":10.0.2.5:80-cmd:cat -u").unwrap();
        assert_eq!(g.target, GuestFwdTarget::Cmd("cat -u".into()));
        let g = GuestFwd::parse(":10.0.2.5:80-unix:/tmp/s").unwrap();
        assert_eq!(g.target, GuestFwdTarget::Unix("/tmp/s".into()));
        for bad in [
            "10.0.2.5:80-cmd:cat",
            "udp:10.0.2.5:1-cmd:x",
            ":10.0.2.5:1-cmd:",
            ":10.0.2.5-cmd:x",
            ":10.0.2.5:1-file:x",
            ":10.0.2.5:1-tcp:h",
        ] {
            assert!(GuestFwd::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn net_moves_the_addresses() {
        let mut c = UserConfig::default();
        c.set_net("192.168.76.0/255.255.255.0").unwrap();
        assert_eq!(c.host, Ipv4Addr::new(192, 168, 76, 2));
        assert_eq!(c.dhcp_start, Ipv4Addr::new(192, 168, 76, 15));
        c.set_net("172.16.0.9/16").unwrap();
        assert_eq!((c.net, c.prefix), (Ipv4Addr::new(172, 16, 0, 0), 16));
        assert!(c.check().is_ok());
        assert!(c.set_net("10.0.0.0/31").is_err());
        assert!(c.set_net("10.0.0.0/255.0.255.0").is_err());
        c.dns = Ipv4Addr::new(8, 8, 8, 8);
        assert!(c.check().is_err());
    }
}
