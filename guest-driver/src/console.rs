//! The console device driver (spec §5.3): port 0 on receiveq/transmitq,
//! the `cols`/`rows` configuration with `VIRTIO_CONSOLE_F_SIZE`, emergency
//! write, and with `VIRTIO_CONSOLE_F_MULTIPORT` the control queues
//! (DEVICE_READY, DEVICE_ADD → PORT_READY, CONSOLE_PORT → PORT_OPEN,
//! RESIZE, PORT_NAME, DEVICE_REMOVE) and up to `PORTS` ports.
//!
//! Every control message is checked (length, event, port, §5.3.6.2.1);
//! a bad one is counted in [`ConsoleStats`] and ignored, never trusted. Port
//! hot-plug beyond the queues set up at initialisation is refused with
//! PORT_READY 0. Legacy (version 1) devices are driven with little-endian
//! control messages and configuration, i.e. on little-endian guests.

use heapless::Deque;
use virtio_core::features::{ConsoleFeatures, DeviceType, TransportFeatures};
use virtio_core::mmio::InterruptStatus;
use virtio_core::mmio::driver::RegisterAccess;

use crate::error::Error;
use crate::hal::{Hal, PAGE_SIZE};
use crate::queue::{DmaQueue, Filled, take_filled};
use crate::transport::{Completion, Transport};
use crate::wait::Wait;

/// Descriptors (and buffer slots) per queue, at most.
pub const QUEUE_SIZE: usize = 16;

/// Bytes per data buffer (receiveq and transmitq).
pub const DATA_SLOT: u32 = 512;

/// Bytes per control receiveq buffer: a message and what follows it
/// (`virtio_console_resize`, a port name).
pub const CONTROL_RX_SLOT: u32 = 128;

/// Bytes of `struct virtio_console_control` (§5.3.6.2).
pub const CONTROL_LEN: usize = ControlMsg::LEN;

/// The longest port name kept (PORT_NAME, §5.3.6.2); longer ones are cut at
/// a character boundary.
pub const NAME_LEN: usize = 32;

use virtio_core::console::Control as ControlMsg;
/// The wire format shared with the device side: queue indices (§5.3.2)
/// and control events (§5.3.6.2).
pub use virtio_core::console::{event, queues};

/// DMA pages a console with `ports` ports allocates at most (`ports` ≥ 1;
/// the control queues only with MULTIPORT): per queue two pages of rings
/// (one on a version 2 device) plus its buffers.
pub const fn dma_pages(ports: usize) -> usize {
    let data = (QUEUE_SIZE * DATA_SLOT as usize).div_ceil(PAGE_SIZE);
    let ctrl_rx = (QUEUE_SIZE * CONTROL_RX_SLOT as usize).div_ceil(PAGE_SIZE);
    let ctrl_tx = (QUEUE_SIZE * CONTROL_LEN).div_ceil(PAGE_SIZE);
    ports * 2 * (2 + data) + (2 + ctrl_rx) + (2 + ctrl_tx)
}

/// How to drive the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// Polling or interrupt-driven completion.
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered (§2.7.10).
    pub event_idx: bool,
    /// Negotiate `VIRTIO_CONSOLE_F_MULTIPORT` when offered (§5.3.3).
    pub multiport: bool,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        ConsoleOptions {
            completion: Completion::Polling,
            event_idx: true,
            multiport: true,
        }
    }
}

/// A console size (§5.3.4 `cols`/`rows`, §5.3.6.2 RESIZE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConsoleSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// What the driver knows of one port (§5.3.6.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortInfo {
    /// The device added the port (DEVICE_ADD; always true for port 0
    /// without MULTIPORT) and has not removed it.
    pub added: bool,
    /// The device nominated it a console (CONSOLE_PORT).
    pub console: bool,
    /// The host side is open (the device's PORT_OPEN; always true without
    /// MULTIPORT).
    pub host_open: bool,
    /// The driver told the device the guest side is open (PORT_OPEN 1).
    pub guest_open: bool,
    /// The last size the device sent for the port (RESIZE).
    pub size: Option<ConsoleSize>,
    name: heapless::String<NAME_LEN>,
}

impl PortInfo {
    /// The name the device gave the port (PORT_NAME), empty if none.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Counters of what the device did wrong or the driver had to drop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Control messages that broke §5.3.6.2 / §5.3.6.2.1 (too short, an
    /// event only the driver sends, an unknown event or port, a port added
    /// twice or beyond `max_nr_ports`); each was ignored.
    pub bad_control: u32,
    /// Control messages to the device dropped because the outbox was full.
    pub control_dropped: u32,
    /// Receive buffers the device returned with no bytes (recycled).
    pub empty_rx: u32,
}

/// One port's queues and state.
struct Port {
    queues: Option<(DmaQueue<QUEUE_SIZE>, DmaQueue<QUEUE_SIZE>)>,
    ready: Deque<Filled, QUEUE_SIZE>,
    info: PortInfo,
}

impl Port {
    fn empty() -> Self {
        Port {
            queues: None,
            ready: Deque::new(),
            info: PortInfo {
                added: false,
                console: false,
                host_open: false,
                guest_open: false,
                size: None,
                name: heapless::String::new(),
            },
        }
    }
}

/// The control queues and the messages waiting for a transmit slot.
struct Control {
    rx: DmaQueue<QUEUE_SIZE>,
    tx: DmaQueue<QUEUE_SIZE>,
    outbox: Deque<[u8; CONTROL_LEN], 32>,
}

/// A driver for a virtio console (§5.3) on virtio-mmio, with up to `PORTS`
/// ports when the device offers MULTIPORT.
pub struct Console<H: Hal, R: RegisterAccess, const PORTS: usize = 4> {
    hal: H,
    transport: Transport<R>,
    options: ConsoleOptions,
    features: u64,
    max_nr_ports: u32,
    ports: [Port; PORTS],
    control: Option<Control>,
    stats: ConsoleStats,
}

impl<H: Hal, R: RegisterAccess, const PORTS: usize> core::fmt::Debug for Console<H, R, PORTS> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Console")
            .field("features", &self.features)
            .field("max_nr_ports", &self.max_nr_ports)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// `struct virtio_console_control` (§5.3.6.2), as bytes.
fn control_bytes(id: u32, event: u16, value: u16) -> [u8; CONTROL_LEN] {
    ControlMsg::new(id, event, value).to_bytes()
}

/// The port `port` if its queues are set up and the device added it.
fn live_port(ports: &mut [Port], port: u32) -> Result<&mut Port, Error> {
    let p = usize::try_from(port)
        .ok()
        .and_then(|p| ports.get_mut(p))
        .filter(|p| p.queues.is_some())
        .ok_or(Error::NoSuchPort { port })?;
    if !p.info.added {
        return Err(Error::PortNotReady { port });
    }
    Ok(p)
}

/// The queue a port operation would use, for errors.
fn port_index(port: u32) -> u16 {
    u16::try_from(port).unwrap_or(u16::MAX)
}

impl<H: Hal, R: RegisterAccess, const PORTS: usize> Console<H, R, PORTS> {
    /// Probes `regs` for a console and initialises it (§3.1.1, §5.3.5):
    /// port 0's queues, and with MULTIPORT the control queues and the
    /// queues of ports 1 to `min(max_nr_ports, PORTS) - 1` (as far as the
    /// device has them); receive buffers are posted, and with MULTIPORT
    /// DEVICE_READY is sent. Ports then arrive by DEVICE_ADD, handled by
    /// every later call ([`poll`](Self::poll), [`wait_for`](Self::wait_for)).
    pub fn new(hal: H, regs: R, options: ConsoleOptions) -> Result<Self, Error> {
        const { assert!(PORTS >= 1, "a console has at least port 0 (§5.3.2)") };
        let transport = Transport::probe(regs, DeviceType::Console)?;
        let mut c = Console {
            hal,
            transport,
            options,
            features: 0,
            max_nr_ports: 1,
            ports: core::array::from_fn(|_| Port::empty()),
            control: None,
            stats: ConsoleStats::default(),
        };
        if let Err(e) = c.init() {
            // §3.1.1: give up with FAILED; `drop` then resets the device
            // and frees what was allocated.
            c.transport.fail();
            return Err(e);
        }
        Ok(c)
    }

    fn wanted(&self) -> u64 {
        let mut f = (ConsoleFeatures::SIZE | ConsoleFeatures::EMERG_WRITE).bits();
        if self.options.multiport {
            f |= ConsoleFeatures::MULTIPORT.bits();
        }
        if self.options.event_idx {
            f |= TransportFeatures::RING_EVENT_IDX.bits();
        }
        f
    }

    /// Whether MULTIPORT was negotiated.
    pub fn is_multiport(&self) -> bool {
        self.features & ConsoleFeatures::MULTIPORT.bits() != 0
    }

    fn init(&mut self) -> Result<(), Error> {
        self.features = self.transport.begin_init(self.wanted())?;
        let multiport = self.is_multiport();
        self.max_nr_ports = if multiport {
            self.transport.driver().read_config_u32(4)?
        } else {
            1
        };
        let nports = usize::try_from(self.max_nr_ports)
            .unwrap_or(usize::MAX)
            .clamp(1, PORTS.max(1));
        for p in 0..nports {
            // p < PORTS; ports beyond u16 have no queue index anyway.
            let Ok(p16) = u16::try_from(p) else {
                break;
            };
            // §5.3.2: the control queues (2, 3) come between port 0 and
            // port 1.
            if p == 1 {
                self.setup_control()?;
            }
            let pair =
                match self.setup_pair((queues::rx(p16), DATA_SLOT), (queues::tx(p16), DATA_SLOT)) {
                    Ok(pair) => pair,
                    // A port whose queues the device lacks is not used
                    // (§4.2.3.2: QueueNumMax 0); port 0's must exist.
                    Err(Error::Transport(virtio_core::mmio::DriverError::QueueUnavailable {
                        ..
                    })) if p > 0 => break,
                    Err(e) => return Err(e),
                };
            if let Some(port) = self.ports.get_mut(p) {
                port.queues = Some(pair);
            }
        }
        // MULTIPORT needs the control queues even with one port.
        if multiport && self.control.is_none() {
            self.setup_control()?;
        }
        self.transport.finish_init()?;
        self.start()
    }

    /// Sets up two queues (a receive and a transmit queue) as one: if the
    /// second fails after the first was given to the device, the device is
    /// reset before the first one's memory is given back (kept if it does
    /// not reset).
    fn setup_pair(
        &mut self,
        (rx_index, rx_slot): (u16, u32),
        (tx_index, tx_slot): (u16, u32),
    ) -> Result<(DmaQueue<QUEUE_SIZE>, DmaQueue<QUEUE_SIZE>), Error> {
        let completion = self.options.completion;
        let mut rx = DmaQueue::new(
            &self.hal,
            &mut self.transport,
            rx_index,
            rx_slot,
            completion,
        )?;
        match DmaQueue::new(
            &self.hal,
            &mut self.transport,
            tx_index,
            tx_slot,
            completion,
        ) {
            Ok(tx) => Ok((rx, tx)),
            Err(e) => {
                if self.transport.reset().is_ok() {
                    // SAFETY: the device was just reset (§2.4): it no
                    // longer uses the queue; the memory came from
                    // `self.hal`.
                    unsafe { rx.free(&self.hal) };
                }
                Err(e)
            }
        }
    }

    /// Sets up the control receiveq and transmitq (§5.3.2, MULTIPORT).
    fn setup_control(&mut self) -> Result<(), Error> {
        let (rx, tx) = self.setup_pair(
            (queues::CONTROL_RX, CONTROL_RX_SLOT),
            (queues::CONTROL_TX, CONTROL_LEN as u32),
        )?;
        self.control = Some(Control {
            rx,
            tx,
            outbox: Deque::new(),
        });
        Ok(())
    }

    /// After DRIVER_OK: posts every receive buffer (§5.3.5 step 4), and
    /// with MULTIPORT sends DEVICE_READY (§5.3.6.2.2); without it, port 0
    /// is live at once.
    fn start(&mut self) -> Result<(), Error> {
        for port in self.ports.iter_mut() {
            if let Some((rx, _)) = port.queues.as_mut() {
                while rx.push_writable()? {}
                rx.kick(&self.transport)?;
            }
        }
        if let Some(ctrl) = self.control.as_mut() {
            while ctrl.rx.push_writable()? {}
            ctrl.rx.kick(&self.transport)?;
            self.send(0, event::DEVICE_READY, 1);
            self.flush_control()?;
        } else if let Some(port0) = self.ports.first_mut() {
            port0.info.added = true;
            port0.info.console = true;
            port0.info.host_open = true;
            port0.info.guest_open = true;
        }
        Ok(())
    }

    /// Resets the device (§2.4) and initialises it again with the same
    /// memory; ports must be added again (MULTIPORT) and unread input is
    /// dropped. Fails with [`Error::FeaturesChanged`] if the device now
    /// negotiates different features.
    pub fn reinit(&mut self) -> Result<(), Error> {
        self.transport.reset()?;
        let features = self.transport.begin_init(self.wanted())?;
        if features != self.features {
            self.transport.fail();
            return Err(Error::FeaturesChanged {
                before: self.features,
                after: features,
            });
        }
        for port in self.ports.iter_mut() {
            port.ready.clear();
            port.info = PortInfo::default();
            if let Some((rx, tx)) = port.queues.as_mut() {
                rx.attach(&self.transport)?;
                tx.attach(&self.transport)?;
            }
        }
        if let Some(ctrl) = self.control.as_mut() {
            ctrl.outbox.clear();
            ctrl.rx.attach(&self.transport)?;
            ctrl.tx.attach(&self.transport)?;
        }
        self.transport.finish_init()?;
        self.start()
    }

    /// The transport, for status and configuration.
    pub fn transport(&self) -> &Transport<R> {
        &self.transport
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// `max_nr_ports` as the device reported it (1 without MULTIPORT).
    pub fn max_nr_ports(&self) -> u32 {
        self.max_nr_ports
    }

    /// What the device did wrong so far.
    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }

    /// Port `port`, if its queues were set up.
    pub fn port(&self, port: u32) -> Option<&PortInfo> {
        let p = self.ports.get(usize::try_from(port).ok()?)?;
        p.queues.as_ref().map(|_| &p.info)
    }

    /// Every port whose queues were set up, with its number.
    pub fn ports(&self) -> impl Iterator<Item = (u32, &PortInfo)> {
        (0u32..)
            .zip(self.ports.iter())
            .filter(|(_, p)| p.queues.is_some())
            .map(|(i, p)| (i, &p.info))
    }

    /// The console size from the configuration (§5.3.4), if
    /// `VIRTIO_CONSOLE_F_SIZE` was negotiated; read afresh each time
    /// (§2.5.1), since a configuration change may update it.
    pub fn size(&self) -> Result<Option<ConsoleSize>, Error> {
        if self.features & ConsoleFeatures::SIZE.bits() == 0 {
            return Ok(None);
        }
        // Offsets as Linux and QEMU lay them out: cols, then rows.
        let d = self.transport.driver();
        Ok(Some(ConsoleSize {
            cols: d.read_config_u16(0)?,
            rows: d.read_config_u16(2)?,
        }))
    }

    /// Writes one byte through `emerg_wr` (§5.3.4, §5.3.5), without the
    /// queues; `false` if `VIRTIO_CONSOLE_F_EMERG_WRITE` was not negotiated.
    pub fn emergency_write(&self, byte: u8) -> Result<bool, Error> {
        if self.features & ConsoleFeatures::EMERG_WRITE.bits() == 0 {
            return Ok(false);
        }
        self.transport
            .driver()
            .write_config_u32(8, u32::from(byte))?;
        Ok(true)
    }

    /// Reads and acknowledges `InterruptStatus` (§4.2.3.4), for an
    /// interrupt handler that can reach the driver; the next call takes the
    /// used buffers.
    pub fn on_interrupt(&self) -> InterruptStatus {
        self.transport.on_interrupt()
    }

    /// Queues a control message for the device; counted and dropped if the
    /// outbox is full.
    fn send(&mut self, id: u32, ev: u16, value: u16) {
        if let Some(ctrl) = self.control.as_mut()
            && ctrl.outbox.push_back(control_bytes(id, ev, value)).is_err()
        {
            self.stats.control_dropped += 1;
        }
    }

    /// Takes back used control transmit buffers and sends what waits in
    /// the outbox as far as slots allow.
    fn flush_control(&mut self) -> Result<(), Error> {
        let Some(ctrl) = self.control.as_mut() else {
            return Ok(());
        };
        while let Some(done) = ctrl.tx.pop()? {
            ctrl.tx.release(done.slot);
        }
        let mut sent = false;
        while let Some(msg) = ctrl.outbox.front() {
            if ctrl.tx.push_readable(msg)? == 0 {
                break;
            }
            ctrl.outbox.pop_front();
            sent = true;
        }
        if sent {
            ctrl.tx.kick(&self.transport)?;
        }
        Ok(())
    }

    /// Takes and handles every control message the device sent, reposting
    /// each buffer (§5.3.6.2), then flushes replies.
    fn poll_control(&mut self) -> Result<(), Error> {
        let mut reposted = false;
        loop {
            let Some(ctrl) = self.control.as_mut() else {
                return Ok(());
            };
            let Some(done) = ctrl.rx.pop()? else {
                break;
            };
            let mut buf = [0u8; CONTROL_RX_SLOT as usize];
            let len = (done.len as usize).min(buf.len());
            let msg = buf.get_mut(..len).unwrap_or_default();
            let read = ctrl.rx.read_slot(done.slot, 0, msg);
            ctrl.rx.release(done.slot);
            ctrl.rx.push_writable()?;
            reposted = true;
            read?;
            self.on_control(buf.get(..len).unwrap_or_default());
        }
        if reposted && let Some(ctrl) = self.control.as_mut() {
            ctrl.rx.kick(&self.transport)?;
        }
        self.flush_control()
    }

    /// Handles one control message from the device (§5.3.6.2), checking
    /// it against §5.3.6.2.1 and the driver's own state.
    fn on_control(&mut self, msg: &[u8]) {
        let Some(control) = ControlMsg::parse(msg) else {
            self.stats.bad_control += 1;
            return;
        };
        let (id, ev, value) = (control.id(), control.event(), control.value());
        let extra = msg.get(CONTROL_LEN..).unwrap_or_default();
        if ev == event::DEVICE_ADD {
            self.on_add(id);
            return;
        }
        // Every other device event names a port the device added.
        let port = usize::try_from(id)
            .ok()
            .and_then(|p| self.ports.get_mut(p))
            .filter(|p| p.queues.is_some() && p.info.added);
        let Some(port) = port else {
            self.stats.bad_control += 1;
            return;
        };
        match ev {
            event::DEVICE_REMOVE => {
                port.info = PortInfo::default();
            }
            event::CONSOLE_PORT => {
                port.info.console = true;
                // §5.3.6.2.2: MUST answer with PORT_OPEN 1.
                port.info.guest_open = true;
                self.send(id, event::PORT_OPEN, 1);
            }
            event::RESIZE => {
                let cols = extra.get(0..2).and_then(|b| b.try_into().ok());
                let rows = extra.get(2..4).and_then(|b| b.try_into().ok());
                match (cols, rows) {
                    (Some(c), Some(r)) => {
                        port.info.size = Some(ConsoleSize {
                            cols: u16::from_le_bytes(c),
                            rows: u16::from_le_bytes(r),
                        });
                    }
                    _ => self.stats.bad_control += 1,
                }
            }
            event::PORT_OPEN if value <= 1 => port.info.host_open = value == 1,
            event::PORT_NAME => {
                let raw = extra.split(|b| *b == 0).next().unwrap_or_default();
                let raw = raw.get(..raw.len().min(NAME_LEN)).unwrap_or_default();
                let text = match core::str::from_utf8(raw) {
                    Ok(s) => s,
                    Err(e) => raw
                        .get(..e.valid_up_to())
                        .and_then(|v| core::str::from_utf8(v).ok())
                        .unwrap_or_default(),
                };
                port.info.name.clear();
                // At most NAME_LEN bytes: fits.
                let _ = port.info.name.push_str(text);
            }
            // DEVICE_READY and PORT_READY are the driver's to send; other
            // values are not events (§5.3.6.2).
            _ => self.stats.bad_control += 1,
        }
    }

    /// DEVICE_ADD (§5.3.6.2): answers PORT_READY 1 and opens the guest
    /// side for a port whose queues are set up, PORT_READY 0 for one the
    /// driver cannot drive; a port at or beyond `max_nr_ports` or added
    /// twice breaks §5.3.6.2.1 and is ignored.
    fn on_add(&mut self, id: u32) {
        if id >= self.max_nr_ports {
            self.stats.bad_control += 1;
            return;
        }
        let port = usize::try_from(id)
            .ok()
            .and_then(|p| self.ports.get_mut(p))
            .filter(|p| p.queues.is_some());
        match port {
            None => self.send(id, event::PORT_READY, 0),
            Some(p) if p.info.added => self.stats.bad_control += 1,
            Some(p) => {
                p.info = PortInfo {
                    added: true,
                    guest_open: true,
                    ..PortInfo::default()
                };
                self.send(id, event::PORT_READY, 1);
                // A tiny guest uses every port it accepts: open it.
                self.send(id, event::PORT_OPEN, 1);
            }
        }
    }

    /// Takes every used buffer of every queue: control messages are
    /// handled, received data is queued for reading, transmitted buffers
    /// are freed. Never waits.
    pub fn poll(&mut self) -> Result<(), Error> {
        self.poll_control()?;
        for port in self.ports.iter_mut() {
            let Some((rx, tx)) = port.queues.as_mut() else {
                continue;
            };
            let mut reposted = false;
            while let Some(done) = rx.pop()? {
                if done.len == 0 {
                    self.stats.empty_rx += 1;
                    rx.release(done.slot);
                    rx.push_writable()?;
                    reposted = true;
                    continue;
                }
                let chunk = Filled {
                    slot: done.slot,
                    len: done.len,
                    off: 0,
                };
                if port.ready.push_back(chunk).is_err() {
                    // Cannot happen (one entry per slot); recycle.
                    rx.release(done.slot);
                    rx.push_writable()?;
                    reposted = true;
                }
            }
            if reposted {
                rx.kick(&self.transport)?;
            }
            while let Some(done) = tx.pop()? {
                tx.release(done.slot);
            }
        }
        Ok(())
    }

    /// Copies received bytes of `port` into `buf`, reposting drained
    /// buffers; never waits.
    fn take(&mut self, port: u32, buf: &mut [u8]) -> Result<usize, Error> {
        let p = live_port(&mut self.ports, port)?;
        let Some((rx, _)) = p.queues.as_mut() else {
            return Err(Error::NoSuchPort { port });
        };
        let (n, released) = take_filled(rx, &mut p.ready, buf)?;
        for _ in 0..released {
            rx.push_writable()?;
        }
        if released > 0 {
            rx.kick(&self.transport)?;
        }
        Ok(n)
    }

    /// Reads what `port` has received without waiting (possibly 0 bytes).
    pub fn try_read_port(&mut self, port: u32, buf: &mut [u8]) -> Result<usize, Error> {
        self.poll()?;
        self.take(port, buf)
    }

    /// Reads at least one byte from `port` into `buf`, waiting within
    /// `wait`; returns the count (0 only for an empty `buf`).
    pub fn read_port(
        &mut self,
        port: u32,
        buf: &mut [u8],
        wait: &mut impl Wait,
    ) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        crate::wait::drive(
            self,
            wait,
            |c| Ok(Some(c.try_read_port(port, buf)?).filter(|n| *n > 0)),
            |c| c.arm(port, true),
            |c| c.transport.timeout(queues::rx(port_index(port))),
        )
    }

    /// Writes all of `data` to `port` and waits within `wait` until the
    /// device has used every buffer (§5.3.6: output goes to the port's
    /// transmitq). On timeout the part not yet queued is not sent; what was
    /// queued stays in flight.
    pub fn write_port(
        &mut self,
        port: u32,
        data: &[u8],
        wait: &mut impl Wait,
    ) -> Result<(), Error> {
        let mut sent = 0;
        crate::wait::drive(
            self,
            wait,
            |c| Ok(c.push_tx(port, data, &mut sent)?.then_some(())),
            |c| c.arm(port, false),
            |c| c.transport.timeout(queues::tx(port_index(port))),
        )
    }

    /// One step of [`write_port`](Self::write_port): takes used buffers,
    /// queues what fits of `data` from `*sent` on and notifies; `true` once
    /// everything was sent and used.
    fn push_tx(&mut self, port: u32, data: &[u8], sent: &mut usize) -> Result<bool, Error> {
        self.poll()?;
        let p = live_port(&mut self.ports, port)?;
        let Some((_, tx)) = p.queues.as_mut() else {
            return Err(Error::NoSuchPort { port });
        };
        let mut queued = false;
        while let Some(rest) = data.get(*sent..).filter(|r| !r.is_empty()) {
            let n = tx.push_readable(rest)?;
            if n == 0 {
                break;
            }
            *sent += n;
            queued = true;
        }
        if queued {
            tx.kick(&self.transport)?;
        }
        Ok(*sent >= data.len() && tx.in_flight() == 0)
    }

    /// [`read_port`](Self::read_port) on port 0.
    pub fn read(&mut self, buf: &mut [u8], wait: &mut impl Wait) -> Result<usize, Error> {
        self.read_port(0, buf, wait)
    }

    /// [`write_port`](Self::write_port) on port 0.
    pub fn write(&mut self, data: &[u8], wait: &mut impl Wait) -> Result<(), Error> {
        self.write_port(0, data, wait)
    }

    /// Polls until `cond` holds, waiting within `wait` (e.g. for ports to
    /// be added and opened: `|c| c.port(1).is_some_and(|p| p.host_open)`).
    pub fn wait_for(
        &mut self,
        mut cond: impl FnMut(&Self) -> bool,
        wait: &mut impl Wait,
    ) -> Result<(), Error> {
        crate::wait::drive(
            self,
            wait,
            |c| {
                c.poll()?;
                Ok(cond(c).then_some(()))
            },
            |c| match c.control.as_mut() {
                Some(ctrl) => ctrl.rx.arm(),
                None => c.arm(0, true),
            },
            |c| {
                let q = if c.control.is_some() {
                    queues::CONTROL_RX
                } else {
                    queues::rx(0)
                };
                c.transport.timeout(q)
            },
        )
    }

    /// Waits until the device has added `port` (§5.3.6.2 DEVICE_ADD).
    pub fn wait_for_port(&mut self, port: u32, wait: &mut impl Wait) -> Result<(), Error> {
        if self.port(port).is_none() {
            return Err(Error::NoSuchPort { port });
        }
        self.wait_for(|c| c.port(port).is_some_and(|p| p.added), wait)
    }

    /// Interrupt mode: re-enables notifications on the port's receive
    /// (`rx`) or transmit queue and says whether buffers are already used.
    fn arm(&mut self, port: u32, rx: bool) -> Result<bool, Error> {
        let p = usize::try_from(port)
            .ok()
            .and_then(|p| self.ports.get_mut(p))
            .and_then(|p| p.queues.as_mut())
            .ok_or(Error::NoSuchPort { port })?;
        if rx { p.0.arm() } else { p.1.arm() }
    }
}

impl<H: Hal, R: RegisterAccess, const PORTS: usize> Drop for Console<H, R, PORTS> {
    /// Resets the device (§2.4) and, once it reads back 0, gives the DMA
    /// memory back; a device that does not reset keeps it.
    fn drop(&mut self) {
        if self.transport.reset().is_err() {
            return;
        }
        for port in self.ports.iter_mut() {
            if let Some((rx, tx)) = port.queues.as_mut() {
                // SAFETY: the device was reset, so it no longer uses the
                // queues; the memory came from `self.hal`.
                unsafe {
                    rx.free(&self.hal);
                    tx.free(&self.hal);
                }
            }
        }
        if let Some(ctrl) = self.control.as_mut() {
            // SAFETY: as above.
            unsafe {
                ctrl.rx.free(&self.hal);
                ctrl.tx.free(&self.hal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_indices_of_5_3_2() {
        assert_eq!((queues::rx(0), queues::tx(0)), (0, 1));
        assert_eq!((queues::rx(1), queues::tx(1)), (4, 5));
        assert_eq!((queues::rx(3), queues::tx(3)), (8, 9));
    }

    #[test]
    fn control_message_layout_of_5_3_6_2() {
        assert_eq!(
            control_bytes(0x0102_0304, event::PORT_OPEN, 1),
            [4, 3, 2, 1, 6, 0, 1, 0]
        );
    }

    #[test]
    fn dma_pages_covers_two_ports() {
        // 2 ports * 2 queues * (2 ring + 2 data) + (2 + 1) + (2 + 1).
        assert_eq!(dma_pages(2), 22);
    }
}
