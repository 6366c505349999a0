//! A hub (QEMU's `-netdev hubport,hubid=…`): any number of ports on one
//! L2 segment; a frame sent on one port is delivered to every other port.
//!
//! Each port has a bounded receive queue; a frame that does not fit in a
//! port's queue is dropped for that port and counted there (a hub never
//! answers [`Sent::Busy`]: one slow port must not stall the others). Each
//! port's readiness fd is an eventfd, readable while frames wait for it.
//! Keeping hubs by id is the caller's job (the harness owns options).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::string::String;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::vec::Vec;

use super::loopback::FrameQueue;
use super::{MAX_FRAME, NetBackend, NetError, Sent};

/// An eventfd that is readable while its port's queue is not empty.
#[derive(Debug)]
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes an initial value and flags; returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh fd that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: the fd is open; `one` is 8 readable bytes, as eventfd writes
        // require. A full counter (EAGAIN) still leaves it readable.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    fn clear(&self) {
        let mut n = [0u8; 8];
        // SAFETY: the fd is open and non-blocking; `n` is 8 writable bytes.
        unsafe { libc::read(self.0.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
    }
}

#[derive(Debug)]
struct PortShared {
    name: String,
    queue: Mutex<FrameQueue>,
    event: EventFd,
}

impl PortShared {
    fn queue(&self) -> MutexGuard<'_, FrameQueue> {
        // A panic elsewhere while holding the lock leaves a consistent queue
        // (push and pop do not unwind half-way), so poison is ignored.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Default)]
struct HubInner {
    ports: Vec<Weak<PortShared>>,
}

/// A hub: create it once, then one [`HubPort`] per attached backend or
/// device. Cloning a `Hub` gives another handle to the same hub.
#[derive(Clone, Debug, Default)]
pub struct Hub {
    inner: Arc<Mutex<HubInner>>,
}

impl Hub {
    /// Default receive queue bound of a port, in frames.
    pub const DEFAULT_FRAMES: usize = 256;
    /// Default receive queue bound of a port, in bytes.
    pub const DEFAULT_BYTES: usize = 16 * MAX_FRAME;

    /// An empty hub.
    pub fn new() -> Self {
        Hub::default()
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a new port with the default queue bounds.
    pub fn port(&self, name: &str) -> Result<HubPort, NetError> {
        self.port_with_capacity(name, Self::DEFAULT_FRAMES, Self::DEFAULT_BYTES)
    }

    /// Attaches a new port whose receive queue holds at most `max_frames`
    /// frames and `max_bytes` bytes.
    pub fn port_with_capacity(
        &self,
        name: &str,
        max_frames: usize,
        max_bytes: usize,
    ) -> Result<HubPort, NetError> {
        let event = EventFd::new().map_err(|err| NetError::Io {
            what: std::format!("hub port {name}: eventfd"),
            err,
        })?;
        let shared = Arc::new(PortShared {
            name: name.into(),
            queue: Mutex::new(FrameQueue::new(max_frames, max_bytes)),
            event,
        });
        let mut inner = self.lock();
        inner.ports.retain(|w| w.strong_count() > 0);
        inner.ports.push(Arc::downgrade(&shared));
        drop(inner);
        Ok(HubPort {
            hub: self.clone(),
            shared,
        })
    }

    /// Number of ports attached now.
    pub fn ports(&self) -> usize {
        self.lock()
            .ports
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// One port of a [`Hub`]; dropping it detaches it.
#[derive(Debug)]
pub struct HubPort {
    hub: Hub,
    shared: Arc<PortShared>,
}

impl HubPort {
    /// The port's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Frames dropped for this port because its receive queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.queue().dropped()
    }

    /// Frames waiting in this port's receive queue.
    pub fn pending(&self) -> usize {
        self.shared.queue().len()
    }
}

impl NetBackend for HubPort {
    /// Delivers a copy to every other port (dropped and counted per port
    /// whose queue is full); always [`Sent::Done`].
    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_FRAME {
            return Err(NetError::TooBig {
                len,
                max: MAX_FRAME,
            });
        }
        let inner = self.hub.lock();
        for peer in inner.ports.iter().filter_map(Weak::upgrade) {
            if Arc::ptr_eq(&peer, &self.shared) {
                continue;
            }
            let mut q = peer.queue();
            if q.push(parts) {
                // Signalled under the queue lock, so a receiver that saw the
                // queue empty and cleared the eventfd cannot miss this frame.
                peer.event.signal();
            }
        }
        Ok(Sent::Done)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        let mut q = self.shared.queue();
        let r = q.pop(buf);
        if q.is_empty() {
            self.shared.event.clear();
        }
        r
    }

    /// The port's eventfd: readable while frames wait in its queue.
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.shared.event.0.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd; timeout 0 never blocks.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn fan_out_to_every_other_port_not_back_to_the_sender() {
        let hub = Hub::new();
        let mut a = hub.port("a").unwrap();
        let mut b = hub.port("b").unwrap();
        let mut c = hub.port("c").unwrap();
        assert_eq!(hub.ports(), 3);
        assert!(!readable(b.readiness_fd().unwrap()));
        assert_eq!(a.send(&[b"hello", b"!"]).unwrap(), Sent::Done);
        let mut buf = [0u8; 64];
        assert!(!readable(a.readiness_fd().unwrap()));
        assert_eq!(a.recv(&mut buf).unwrap(), None);
        for p in [&mut b, &mut c] {
            assert!(readable(p.readiness_fd().unwrap()));
            assert_eq!(p.recv(&mut buf).unwrap(), Some(6));
            assert_eq!(&buf[..6], b"hello!");
            assert!(!readable(p.readiness_fd().unwrap()));
            assert_eq!(p.recv(&mut buf).unwrap(), None);
        }
        c.send(&[b"back"]).unwrap();
        assert_eq!(a.recv(&mut buf).unwrap(), Some(4));
        assert_eq!(b.recv(&mut buf).unwrap(), Some(4));
        assert_eq!(c.recv(&mut buf).unwrap(), None);
    }

    #[test]
    fn a_full_port_drops_and_counts_while_others_still_receive() {
        let hub = Hub::new();
        let mut a = hub.port("a").unwrap();
        let mut slow = hub.port_with_capacity("slow", 2, 1000).unwrap();
        let fast = hub.port("fast").unwrap();
        for i in 0..5u8 {
            assert_eq!(a.send(&[&[i; 10]]).unwrap(), Sent::Done);
        }
        assert_eq!(slow.dropped(), 3);
        assert_eq!(fast.dropped(), 0);
        assert_eq!(fast.pending(), 5);
        let mut buf = [0u8; 64];
        assert_eq!(slow.recv(&mut buf).unwrap(), Some(10));
        assert_eq!(buf[0], 0);
        assert_eq!(slow.recv(&mut buf).unwrap(), Some(10));
        assert_eq!(buf[0], 1);
        assert_eq!(slow.recv(&mut buf).unwrap(), None);
        // Room again: the next frame gets through.
        a.send(&[b"x"]).unwrap();
        assert_eq!(slow.recv(&mut buf).unwrap(), Some(1));
    }

    #[test]
    fn a_dropped_port_is_detached() {
        let hub = Hub::new();
        let mut a = hub.port("a").unwrap();
        let b = hub.port("b").unwrap();
        assert_eq!(b.name(), "b");
        drop(b);
        assert_eq!(hub.ports(), 1);
        assert_eq!(a.send(&[b"nobody"]).unwrap(), Sent::Done);
    }

    #[test]
    fn ports_work_across_threads() {
        let hub = Hub::new();
        let mut a = hub.port("a").unwrap();
        let mut b = hub.port("b").unwrap();
        let t = std::thread::spawn(move || {
            for i in 0..100u32 {
                a.send(&[&i.to_be_bytes()]).unwrap();
            }
        });
        t.join().unwrap();
        let mut buf = [0u8; 4];
        for i in 0..100u32 {
            assert_eq!(b.recv(&mut buf).unwrap(), Some(4));
            assert_eq!(u32::from_be_bytes(buf), i);
        }
    }
}
