//! The virtio-console wire format both sides share (§5.3): queue indices,
//! configuration layout and the control messages of
//! `VIRTIO_CONSOLE_F_MULTIPORT` (§5.3.6.2). The device in `virtio-devices`
//! and the driver in `guest-driver` read and write these same types, so the
//! two cannot drift apart.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Queue indices (§5.3.2): port 0's pair, then the control pair, then a
/// pair per further port.
pub mod queues {
    /// The control receiveq (device to driver), with MULTIPORT.
    pub const CONTROL_RX: u16 = 2;
    /// The control transmitq (driver to device), with MULTIPORT.
    pub const CONTROL_TX: u16 = 3;

    /// The receiveq of `port`: 0 for port 0, `2 + 2 * port` after.
    pub const fn rx(port: u16) -> u16 {
        if port == 0 { 0 } else { 2 + 2 * port }
    }

    /// The transmitq of `port`: the receiveq's index + 1.
    pub const fn tx(port: u16) -> u16 {
        rx(port) + 1
    }

    /// Queues of a device with room for `max_ports` ports: 2 without
    /// MULTIPORT, `2 + 2 * max_ports` with it (§5.3.2).
    pub const fn count(max_ports: u16, multiport: bool) -> u16 {
        if multiport { 2 + 2 * max_ports } else { 2 }
    }
}

/// Offsets in the configuration space (§5.3.4). Linux and QEMU put `cols`
/// before `rows`; so do we.
pub mod config {
    /// `cols` (le16), valid with `VIRTIO_CONSOLE_F_SIZE`.
    pub const COLS: u64 = 0;
    /// `rows` (le16), valid with `VIRTIO_CONSOLE_F_SIZE`.
    pub const ROWS: u64 = 2;
    /// `max_nr_ports` (le32), valid with `VIRTIO_CONSOLE_F_MULTIPORT`.
    pub const MAX_NR_PORTS: u64 = 4;
    /// `emerg_wr` (le32, write-only), with `VIRTIO_CONSOLE_F_EMERG_WRITE`.
    pub const EMERG_WR: u64 = 8;
    /// Bytes of configuration space.
    pub const LEN: usize = 12;
}

/// Control events (§5.3.6.2, `VIRTIO_CONSOLE_*`).
pub mod event {
    /// Driver → device: the driver is ready (value 1) or failed (0).
    pub const DEVICE_READY: u16 = 0;
    /// Device → driver: a port was added.
    pub const DEVICE_ADD: u16 = 1;
    /// Device → driver: a port was removed.
    pub const DEVICE_REMOVE: u16 = 2;
    /// Driver → device: the port is ready (value 1) or failed (0).
    pub const PORT_READY: u16 = 3;
    /// Device → driver: the port is a console.
    pub const CONSOLE_PORT: u16 = 4;
    /// Device → driver: the console size changed.
    pub const RESIZE: u16 = 5;
    /// Both ways: the port was opened (1) or closed (0) on that side.
    pub const PORT_OPEN: u16 = 6;
    /// Device → driver: the port's name follows the message.
    pub const PORT_NAME: u16 = 7;
}

/// A control message (§5.3.6.2, `struct virtio_console_control`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Control {
    id: U32,
    event: U16,
    value: U16,
}

impl Control {
    /// Bytes of a control message on the wire.
    pub const LEN: usize = 8;

    /// A message about port `id`.
    pub fn new(id: u32, event: u16, value: u16) -> Self {
        Control {
            id: U32::new(id),
            event: U16::new(event),
            value: U16::new(value),
        }
    }

    /// The message at the start of `bytes`, or `None` if there are fewer
    /// than [`Control::LEN`] (§5.3.6.2.1: a short message is ignored).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        Control::read_from_prefix(bytes).ok().map(|(c, _)| c)
    }

    /// The message as bytes.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b.copy_from_slice(self.as_bytes());
        b
    }

    /// The port.
    pub fn id(&self) -> u32 {
        self.id.get()
    }

    /// The event.
    pub fn event(&self) -> u16 {
        self.event.get()
    }

    /// The value.
    pub fn value(&self) -> u16 {
        self.value.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_5_3_6_2_control_is_le32_le16_le16() {
        let c = Control::new(0x0102_0304, event::PORT_NAME, 1);
        assert_eq!(c.to_bytes(), [4, 3, 2, 1, 7, 0, 1, 0]);
        assert_eq!(Control::parse(&c.to_bytes()), Some(c));
        assert_eq!(Control::parse(&[0; 7]), None);
        let long = [4, 3, 2, 1, 7, 0, 1, 0, b'x'];
        assert_eq!(Control::parse(&long), Some(c), "a name may follow");
    }

    #[test]
    fn section_5_3_2_queue_indices() {
        assert_eq!((queues::rx(0), queues::tx(0)), (0, 1));
        assert_eq!((queues::rx(1), queues::tx(1)), (4, 5));
        assert_eq!(queues::count(4, true), 10);
        assert_eq!(queues::count(4, false), 2);
    }
}
