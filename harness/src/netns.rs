//! Network namespaces for the net scenarios: a uniquely named namespace
//! (`ip netns add`), a tap moved into it with an address and an MTU,
//! `ping` from inside it, and a TCP client that runs inside it (a thread
//! that `setns`es in) and checks an echo of the console pattern. Removed
//! on drop, with whatever interface was moved in.
//!
//! Needs root, `ip` (iproute2), `ping` (iputils) and `/dev/net/tun`;
//! [`unavailable`] says which is missing, and [`netns_or_skip`] turns that
//! into a printed skip, or a failure where the environment says these
//! tests must run (see [`REQUIRE_ENV`]).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::scenarios::pattern_byte;

/// Set to `1`, a missing netns facility is a failure instead of a skip.
/// `HARNESS_REQUIRE_QEMU=1` (what `.ci/test` sets where `/dev/kvm` exists)
/// does the same when running as root.
pub const REQUIRE_ENV: &str = "HARNESS_REQUIRE_NETNS";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(program).is_file())
}

/// Why network namespaces with a tap cannot be used here, or `None`.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("not root (network namespaces and taps need CAP_NET_ADMIN)".into());
    }
    if !have("ip") {
        return Some("`ip` (iproute2) is missing".into());
    }
    if !have("ping") {
        return Some("`ping` (iputils-ping) is missing".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    None
}

/// Whether a missing facility must fail the test ([`REQUIRE_ENV`]).
pub fn required() -> bool {
    let set = |k: &str| std::env::var(k).as_deref() == Ok("1");
    set(REQUIRE_ENV) || (set("HARNESS_REQUIRE_QEMU") && is_root())
}

/// True if test `name` can use network namespaces; otherwise prints
/// `SKIP: <name>: <reason>` and returns false, or panics when
/// [`required`].
pub fn netns_or_skip(name: &str) -> bool {
    match unavailable() {
        None => true,
        Some(why) if required() => panic!("{name}: {why} ({REQUIRE_ENV} or root CI)"),
        Some(why) => {
            println!("SKIP: {name}: {why}");
            false
        }
    }
}

/// Runs `program args`, returning stdout, or an error with stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// What one `ping` run reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
}

/// Parses ping's summary line (`3 packets transmitted, 3 received, …`).
pub fn parse_ping(output: &str) -> Option<PingResult> {
    let line = output.lines().find(|l| l.contains("packets transmitted"))?;
    let mut parts = line.split(',');
    let tx = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let rx = parts.next()?.split_whitespace().next()?.parse().ok()?;
    Some(PingResult {
        transmitted: tx,
        received: rx,
    })
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `vh-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<Netns, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "vh-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        // The loopback, so that local tools behave.
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS args…`.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec NS program args…`.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Moves interface `ifname` (e.g. a tap the machine opened: its fd
    /// stays valid) into the namespace, sets its MTU, gives it `cidr`
    /// (`10.0.2.2/24`) and brings it up.
    pub fn adopt(&self, ifname: &str, cidr: &str, mtu: u32) -> Result<(), String> {
        run("ip", &["link", "set", ifname, "netns", &self.name])?;
        self.ip(&["link", "set", ifname, "mtu", &mtu.to_string()])?;
        self.ip(&["addr", "add", cidr, "dev", ifname])?;
        self.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// `ping -c count -W 2 ip` inside the namespace; the summary parsed
    /// (a run with lost replies is not an error here).
    pub fn ping(&self, ip: &str, count: u32) -> Result<PingResult, String> {
        let mut all = vec!["netns", "exec", self.name.as_str(), "ping", "-n"];
        let count = count.to_string();
        all.extend_from_slice(&["-c", &count, "-W", "2", ip]);
        let out = Command::new("ip")
            .args(&all)
            .output()
            .map_err(|e| format!("ip {}: {e}", all.join(" ")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_ping(&text).ok_or_else(|| {
            format!(
                "ping {ip}: no summary: {}{}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }

    /// Pings `ip` once a second until one reply comes back, within
    /// `limit` (the guest may still be booting).
    pub fn wait_for_ping(&self, ip: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.ping(ip, 1)?;
            if r.received > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{ip} did not answer a ping within {limit:?}"));
            }
        }
    }

    /// Runs `f` on a new thread inside the namespace (`setns`), returning
    /// its handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> JoinHandle<Result<T, String>> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: a valid namespace fd; setns changes only this
            // thread's network namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            f()
        })
    }

    /// A TCP client inside the namespace: connects to `addr` (retrying
    /// until `limit`), writes `bytes` bytes of the console pattern while
    /// reading the echo on another thread, compares, closes. Returns a
    /// note.
    pub fn tcp_echo(
        &self,
        addr: SocketAddr,
        bytes: usize,
        limit: Duration,
    ) -> JoinHandle<Result<String, String>> {
        self.spawn(move || tcp_echo(addr, bytes, limit))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Interfaces moved in are destroyed with it (a tap goes back to
        // nothing once its fd is closed too).
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Connects to `addr` within `limit` (refusals and timeouts retried).
pub fn connect_within(addr: SocketAddr, limit: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + limit;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(format!("connect {addr}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The TCP echo check of [`Netns::tcp_echo`], in the caller's namespace.
pub fn tcp_echo(addr: SocketAddr, bytes: usize, limit: Duration) -> Result<String, String> {
    tcp_echo_on(connect_within(addr, limit)?, bytes, limit)
}

/// The TCP echo check of [`tcp_echo`] on a connection already made.
pub fn tcp_echo_on(mut s: TcpStream, bytes: usize, limit: Duration) -> Result<String, String> {
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < bytes {
            let n = chunk.len().min(bytes - at);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern_byte(at + i);
            }
            w.write_all(&chunk[..n])
                .map_err(|e| format!("send at byte {at}: {e}"))?;
            at += n;
        }
        Ok(())
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut bad: Option<usize> = None;
    while got < bytes {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = s.shutdown(Shutdown::Both);
                let _ = writer.join();
                return Err(
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) {
                        format!(
                            "reading the echo: nothing more came back within the socket's timeout ({got} of {bytes} bytes back)"
                        )
                    } else {
                        format!("reading the echo after {got} of {bytes} bytes: {e}")
                    },
                );
            }
        };
        if bad.is_none()
            && let Some(i) = buf[..n]
                .iter()
                .enumerate()
                .position(|(i, b)| *b != pattern_byte(got + i))
        {
            bad = Some(got + i);
        }
        got += n;
    }
    let sent = writer
        .join()
        .unwrap_or_else(|_| Err("the writer panicked".into()));
    if let Err(e) = sent {
        let _ = s.shutdown(Shutdown::Both);
        return Err(e);
    }
    if let Some(at) = bad {
        return Err(format!("the echo differs from the pattern at byte {at}"));
    }
    if got != bytes {
        return Err(format!("the echo ended after {got} of {bytes} bytes"));
    }
    // Close our side and wait for the peer's FIN: the connection is then
    // closed on both sides (what a server counting closed connections
    // waits for).
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => return Err(format!("{n} bytes beyond the echo")),
        Err(e) => return Err(format!("waiting for the peer's FIN: {e}")),
    }
    Ok(format!("TCP echo of {bytes} bytes matched"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summaries_parse() {
        let out = "PING 10.0.2.15 (10.0.2.15) 56(84) bytes of data.\n\
                   64 bytes from 10.0.2.15: icmp_seq=1 ttl=64 time=1.2 ms\n\n\
                   --- 10.0.2.15 ping statistics ---\n\
                   3 packets transmitted, 2 received, 33% packet loss, time 2003ms\n";
        assert_eq!(
            parse_ping(out),
            Some(PingResult {
                transmitted: 3,
                received: 2
            })
        );
        assert_eq!(parse_ping("nothing"), None);
    }

    #[test]
    fn a_namespace_is_created_and_removed() {
        if unavailable().is_some() {
            return;
        }
        let ns = Netns::new("t").unwrap();
        let name = ns.name().to_string();
        assert!(ns.ip(&["link", "show", "lo"]).unwrap().contains("UP"));
        // Its own loopback answers.
        assert_eq!(ns.ping("127.0.0.1", 1).unwrap().received, 1);
        drop(ns);
        let list = run("ip", &["netns", "list"]).unwrap();
        assert!(!list.contains(&name), "{list}");
    }
}
