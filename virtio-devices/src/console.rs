//! virtio-console (spec §5.3): port 0 on receiveq/transmitq, the `cols`/
//! `rows` configuration (`VIRTIO_CONSOLE_F_SIZE`), emergency write, and
//! `VIRTIO_CONSOLE_F_MULTIPORT` with the control queues and more ports, each
//! port in front of a [`Chardev`].
//!
//! Nothing is lost and nothing blocks: guest output the chardev cannot take
//! yet stays in its chain (the chain completes when every byte is out); host
//! input is read only when the guest has a receive buffer for it.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use backends::chardev::Chardev;
use virtio_core::GuestMemory;
use virtio_core::console::queues;
use virtio_core::features::{ConsoleFeatures, DeviceType, TransportFeatures};
use virtio_core::split::layout::QueueSize;
use virtio_core::split::{DeviceQueue, ParkedReader, QueueError};

use crate::device::{Budget, DeviceError, QueueConfig, Served, VirtioDevice};

/// Each queue's maximum size unless [`Console::set_queue_size`] sets
/// another.
pub const QUEUE_SIZE: u16 = crate::device::DEFAULT_QUEUE_SIZE;

/// Bytes moved through the bounce buffer at once.
const CHUNK: usize = 4096;

pub use virtio_core::console::{Control, event};

/// One port: a chardev and what each side knows about it.
pub struct Port {
    chardev: Box<dyn Chardev + Send>,
    name: Option<String>,
    console: bool,
    /// The driver acknowledged the port (PORT_READY 1).
    ready: bool,
    /// The guest has the port open (PORT_OPEN from the driver).
    guest_open: bool,
    /// A transmit chain partly written to the chardev: its head and its
    /// readable buffers from where the chardev stopped, as read from the
    /// descriptor table once (boxed: most ports never block).
    tx_partial: Option<(u16, Box<ParkedReader<64>>)>,
    /// Bytes of that chain read from guest memory that the chardev has not
    /// taken yet (at most one chunk).
    tx_held: Vec<u8>,
    /// Host input read from the chardev, waiting for a receive buffer.
    rx_stash: Vec<u8>,
}

impl Port {
    /// A port in front of `chardev`; `console` marks it as a console
    /// (`VIRTIO_CONSOLE_CONSOLE_PORT`), `name` is sent with PORT_NAME.
    pub fn new(chardev: Box<dyn Chardev + Send>, console: bool, name: Option<String>) -> Self {
        Port {
            chardev,
            name,
            console,
            ready: false,
            guest_open: false,
            tx_partial: None,
            tx_held: Vec::new(),
            rx_stash: Vec::new(),
        }
    }

    /// Whether the guest has the port open.
    pub fn guest_open(&self) -> bool {
        self.guest_open
    }

    /// Whether the driver acknowledged the port.
    pub fn ready(&self) -> bool {
        self.ready
    }
}

impl core::fmt::Debug for Port {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Port")
            .field("name", &self.name)
            .field("console", &self.console)
            .field("ready", &self.ready)
            .field("guest_open", &self.guest_open)
            .finish_non_exhaustive()
    }
}

/// Counters for the harness report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Bytes from the guest written to chardevs.
    pub tx_bytes: u64,
    /// Bytes from chardevs delivered to the guest.
    pub rx_bytes: u64,
    /// Chains returned because they were malformed (wrong direction, bad
    /// descriptors).
    pub malformed: u64,
    /// Control messages from the driver that named no port or no event.
    pub bad_control: u64,
    /// Chardev errors (the data stays pending).
    pub chardev_errors: u64,
}

/// Most ports a console has room for: two queues each and two for control
/// (§5.3.2) must keep queue indices within 16 bits.
pub const MAX_PORTS: usize = (u16::MAX as usize - 2) / 2;

/// The console device over guest memory `M`.
#[derive(Debug)]
pub struct Console<M> {
    mem: M,
    ports: Vec<Port>,
    /// `max_nr_ports`: ports the queues have room for (`>= ports.len()`).
    max_ports: usize,
    multiport: bool,
    cols: u16,
    rows: u16,
    features: u64,
    sizes: Vec<u16>,
    queues: Vec<Option<DeviceQueue>>,
    /// Control messages for the driver, with PORT_NAME's name bytes.
    ctrl_out: VecDeque<(Control, Vec<u8>)>,
    stats: ConsoleStats,
}

/// Queue indices of §5.3.2: port 0 on 0/1, control on 2/3, port `p` ≥ 1 on
/// `2 + 2p` / `3 + 2p`.
fn rx_queue(port: usize) -> usize {
    usize::from(queues::rx(u16::try_from(port).unwrap_or(u16::MAX)))
}

fn tx_queue(port: usize) -> usize {
    rx_queue(port) + 1
}

const CTRL_RX: usize = queues::CONTROL_RX as usize;
const CTRL_TX: usize = queues::CONTROL_TX as usize;

impl<M: GuestMemory> Console<M> {
    /// A single-port console (no MULTIPORT offered) on `chardev`.
    pub fn new(mem: M, chardev: Box<dyn Chardev + Send>) -> Self {
        Self::with_ports(mem, vec![Port::new(chardev, true, None)], false)
    }

    /// A console with these ports; `multiport` offers
    /// `VIRTIO_CONSOLE_F_MULTIPORT` (needed for more than one port).
    pub fn with_ports(mem: M, ports: Vec<Port>, multiport: bool) -> Self {
        let max = ports.len();
        Self::with_max_ports(mem, ports, multiport, max)
    }

    /// A console with these ports and room for `max_ports` (QEMU's
    /// `virtio-serial-device,max_ports=N`): with MULTIPORT the device has
    /// queues for `max_ports` ports and reports it as `max_nr_ports`
    /// (§5.3.4, §5.3.2), the ports beyond `ports` are never added. Fewer
    /// than `ports.len()` is raised to it; more than [`MAX_PORTS`] is
    /// lowered to that.
    pub fn with_max_ports(mem: M, ports: Vec<Port>, multiport: bool, max_ports: usize) -> Self {
        let multiport = multiport || ports.len() > 1;
        let max_ports = max_ports.max(ports.len()).clamp(1, MAX_PORTS);
        let nq = if multiport { 2 + 2 * max_ports } else { 2 };
        Console {
            mem,
            ports,
            max_ports,
            multiport,
            cols: 80,
            rows: 25,
            features: 0,
            sizes: vec![QUEUE_SIZE; nq],
            queues: Vec::new(),
            ctrl_out: VecDeque::new(),
            stats: ConsoleStats::default(),
        }
    }

    /// Makes every queue at most `size` entries (QEMU's `queue-size`; §2.7:
    /// any power of two up to 32768, which [`QueueSize`] guarantees). Takes
    /// effect at the next activation; call it before the driver reads
    /// `QueueNumMax`.
    pub fn set_queue_size(&mut self, size: QueueSize) {
        self.sizes.fill(size.get());
    }

    /// Sets the console size reported with `VIRTIO_CONSOLE_F_SIZE`.
    pub fn set_size(&mut self, cols: u16, rows: u16) {
        self.cols = cols;
        self.rows = rows;
    }

    /// The counters.
    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }

    /// The ports.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    fn negotiated(&self, f: ConsoleFeatures) -> bool {
        self.features & f.bits() != 0
    }

    /// Moves guest output of `port` to its chardev.
    fn tx(&mut self, port: usize, served: &mut Served) -> Result<(), DeviceError> {
        self.with_queue(tx_queue(port), served, |dev, q, served, budget| {
            let mut buf = [0u8; CHUNK];
            loop {
                let (head, mut r) = match dev.ports[port].tx_partial.take() {
                    Some((head, parked)) => (head, parked.resume(&dev.mem)),
                    None => {
                        let Some(head) = budget.next_head(q, &dev.mem, &mut dev.stats.malformed)?
                        else {
                            break;
                        };
                        let walked = q
                            .chain(&dev.mem, head)
                            .and_then(|c| c.reader_writer::<64>());
                        let Ok((r, _)) = walked else {
                            dev.stats.malformed += 1;
                            q.add_used(&dev.mem, head, 0)?;
                            served.completed += 1;
                            continue;
                        };
                        (head, r)
                    }
                };
                let mut blocked = false;
                loop {
                    let p = &mut dev.ports[port];
                    if p.tx_held.is_empty() {
                        let n = (r.available() as usize).min(CHUNK);
                        if n == 0 || r.read_exact(&mut buf[..n]).is_err() {
                            break;
                        }
                        p.tx_held.extend_from_slice(&buf[..n]);
                    }
                    let took = match p.chardev.write(&p.tx_held) {
                        Ok(t) => t.min(p.tx_held.len()),
                        Err(_) => {
                            dev.stats.chardev_errors += 1;
                            0
                        }
                    };
                    p.tx_held.drain(..took);
                    dev.stats.tx_bytes += took as u64;
                    if !p.tx_held.is_empty() {
                        // The rest waits in `tx_held`, the chain's unread
                        // buffers in `tx_partial`: nothing is read twice.
                        p.tx_partial = Some((head, Box::new(r.park())));
                        blocked = true;
                        break;
                    }
                }
                if blocked {
                    // Resume this chain when the chardev is writable again.
                    break;
                }
                q.add_used(&dev.mem, head, 0)?;
                served.completed += 1;
            }
            Ok(())
        })
    }

    /// Moves host input of `port` into the guest's receive buffers.
    fn rx(&mut self, port: usize, served: &mut Served) -> Result<(), DeviceError> {
        self.with_queue(rx_queue(port), served, |dev, q, served, budget| {
            let mut buf = [0u8; CHUNK];
            loop {
                if dev.ports[port].rx_stash.is_empty() {
                    let n = match dev.ports[port].chardev.read(&mut buf) {
                        Ok(n) => n.min(CHUNK),
                        Err(_) => {
                            dev.stats.chardev_errors += 1;
                            0
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    dev.ports[port].rx_stash.extend_from_slice(&buf[..n]);
                }
                // No buffer: the input waits in the stash; nothing more is
                // read from the chardev until the guest adds buffers.
                let Some(head) = budget.next_head(q, &dev.mem, &mut dev.stats.malformed)? else {
                    break;
                };
                let walked = q
                    .chain(&dev.mem, head)
                    .and_then(|c| c.reader_writer::<64>());
                let written = match walked {
                    Ok((_, mut w)) if w.total() > 0 => {
                        let stash = &mut dev.ports[port].rx_stash;
                        let n = w.write(stash).unwrap_or(0);
                        stash.drain(..n);
                        dev.stats.rx_bytes += n as u64;
                        w.written()
                    }
                    _ => {
                        dev.stats.malformed += 1;
                        0
                    }
                };
                q.add_used(&dev.mem, head, written)?;
                served.completed += 1;
            }
            Ok(())
        })
    }

    /// Handles the driver's control messages (§5.3.6.2).
    fn control_tx(&mut self, served: &mut Served) -> Result<(), DeviceError> {
        self.with_queue(CTRL_TX, served, |dev, q, served, budget| {
            while let Some(head) = budget.next_head(q, &dev.mem, &mut dev.stats.malformed)? {
                let msg = q
                    .chain(&dev.mem, head)
                    .ok()
                    .and_then(|c| c.reader_writer::<16>().ok())
                    .and_then(|(mut r, _)| r.read_obj::<Control>().ok());
                match msg {
                    Some(msg) => dev.on_control(msg),
                    None => dev.stats.malformed += 1,
                }
                q.add_used(&dev.mem, head, 0)?;
                served.completed += 1;
            }
            Ok(())
        })
    }

    /// Queues a control message for the driver. A message for the same
    /// port and event still waiting is replaced, not repeated: the driver
    /// learns the latest state once, and a driver that repeats
    /// DEVICE_READY or PORT_READY without posting control receive buffers
    /// holds at most one message per port and event (§5.3.6.2).
    fn queue_control(&mut self, msg: Control, extra: Vec<u8>) {
        let same =
            |(m, _): &&mut (Control, Vec<u8>)| m.id() == msg.id() && m.event() == msg.event();
        match self.ctrl_out.iter_mut().find(same) {
            Some(waiting) => *waiting = (msg, extra),
            None => self.ctrl_out.push_back((msg, extra)),
        }
    }

    fn on_control(&mut self, msg: Control) {
        let port = usize::try_from(msg.id())
            .ok()
            .filter(|&p| p < self.ports.len());
        match (msg.event(), port) {
            (event::DEVICE_READY, _) if msg.value() == 1 => {
                for id in 0..self.ports.len() {
                    self.queue_control(Control::new(id as u32, event::DEVICE_ADD, 0), Vec::new());
                }
            }
            (event::DEVICE_READY, _) => {}
            (event::PORT_READY, Some(p)) => {
                self.ports[p].ready = msg.value() == 1;
                if msg.value() != 1 {
                    return;
                }
                let id = p as u32;
                if self.ports[p].console {
                    self.queue_control(Control::new(id, event::CONSOLE_PORT, 1), Vec::new());
                }
                if let Some(name) = &self.ports[p].name {
                    let mut bytes = name.as_bytes().to_vec();
                    bytes.push(0);
                    self.queue_control(Control::new(id, event::PORT_NAME, 1), bytes);
                }
                // The host side of every port is connected.
                self.queue_control(Control::new(id, event::PORT_OPEN, 1), Vec::new());
            }
            (event::PORT_OPEN, Some(p)) => self.ports[p].guest_open = msg.value() == 1,
            _ => self.stats.bad_control += 1,
        }
    }

    /// Delivers queued control messages to the driver (§5.3.6.2).
    fn control_rx(&mut self, served: &mut Served) -> Result<(), DeviceError> {
        self.with_queue(CTRL_RX, served, |dev, q, served, budget| {
            while !dev.ctrl_out.is_empty() {
                let Some(head) = budget.next_head(q, &dev.mem, &mut dev.stats.malformed)? else {
                    break;
                };
                let mut len = 0;
                match q
                    .chain(&dev.mem, head)
                    .and_then(|c| c.reader_writer::<16>())
                {
                    Ok((_, mut w)) => {
                        let (msg, extra) = dev.ctrl_out.front().cloned().unwrap_or_default();
                        if w.write_obj(&msg).is_ok() {
                            let _ = w.write(&extra);
                            len = w.written();
                            dev.ctrl_out.pop_front();
                        } else {
                            dev.stats.malformed += 1;
                        }
                    }
                    Err(_) => dev.stats.malformed += 1,
                }
                q.add_used(&dev.mem, head, len)?;
                served.completed += 1;
            }
            Ok(())
        })
    }

    /// Runs `f` on queue `qi` taken out of the device, within a work
    /// budget (issue 16, finding 2), then publishes its
    /// used entries and folds in its interrupt decision. The queue goes
    /// back whatever `f` returns (issue 16, finding 8): chains it completed
    /// before an error stay completed and are not served again.
    fn with_queue(
        &mut self,
        qi: usize,
        served: &mut Served,
        f: impl FnOnce(&mut Self, &mut DeviceQueue, &mut Served, &mut Budget) -> Result<(), QueueError>,
    ) -> Result<(), DeviceError> {
        let Some(mut q) = self.queues.get_mut(qi).and_then(Option::take) else {
            return Ok(());
        };
        let mut budget = Budget::default();
        let ran = f(self, &mut q, served, &mut budget);
        served.again |= budget.exhausted;
        // Publish what was completed even after an error, so the driver
        // gets back every buffer the device is done with.
        let published = q.publish_used(&self.mem);
        let r = ran.and(published).and_then(|()| {
            if q.needs_notification(&self.mem)? {
                served.interrupt_queue(qi as u16);
            }
            Ok(())
        });
        if let Some(slot) = self.queues.get_mut(qi) {
            *slot = Some(q);
        }
        r.map_err(|err| DeviceError::Queue {
            queue: qi as u16,
            err,
        })
    }

    fn serve_all(&mut self) -> Result<Served, DeviceError> {
        let mut served = Served::default();
        if self.negotiated(ConsoleFeatures::MULTIPORT) {
            self.control_tx(&mut served)?;
            self.control_rx(&mut served)?;
        }
        for p in 0..self.active_ports() {
            self.tx(p, &mut served)?;
            self.rx(p, &mut served)?;
        }
        Ok(served)
    }

    fn active_ports(&self) -> usize {
        if self.negotiated(ConsoleFeatures::MULTIPORT) {
            self.ports.len()
        } else {
            self.ports.len().min(1)
        }
    }
}

impl<M: GuestMemory> VirtioDevice for Console<M> {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        alloc::vec![
            ("tx_bytes", s.tx_bytes),
            ("rx_bytes", s.rx_bytes),
            ("malformed", s.malformed),
            ("bad_control", s.bad_control),
            ("chardev_errors", s.chardev_errors),
        ]
    }

    fn device_type(&self) -> DeviceType {
        DeviceType::Console
    }

    fn device_features(&self) -> u64 {
        let mut f = (TransportFeatures::VERSION_1
            | TransportFeatures::RING_INDIRECT_DESC
            | TransportFeatures::RING_EVENT_IDX)
            .bits()
            | (ConsoleFeatures::SIZE | ConsoleFeatures::EMERG_WRITE).bits();
        if self.multiport {
            f |= ConsoleFeatures::MULTIPORT.bits();
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // §5.3.4: cols, rows, max_nr_ports, emerg_wr.
        let mut cfg = [0u8; 12];
        cfg[0..2].copy_from_slice(&self.cols.to_le_bytes());
        cfg[2..4].copy_from_slice(&self.rows.to_le_bytes());
        let max = u32::try_from(self.max_ports).unwrap_or(u32::MAX);
        cfg[4..8].copy_from_slice(&max.to_le_bytes());
        crate::device::read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // §5.3.4: a write to emerg_wr puts one character on port 0.
        // §5.3.5.1 (1.4; device:console/device-initialization#1): the write
        // is allowed "even on an unconfigured device", so it does not wait for the feature's
        // negotiation (the driver may use it without acknowledging the
        // feature, §5.3.4); the device always offers it.
        if offset == 8
            && !data.is_empty()
            && let Some(p) = self.ports.first_mut()
            && p.chardev.write(&data[..1]).is_err()
        {
            self.stats.chardev_errors += 1;
        }
    }

    fn config_len(&self) -> usize {
        12
    }

    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        self.features = features;
        let multiport = self.negotiated(ConsoleFeatures::MULTIPORT);
        let used = if multiport {
            queues.len()
        } else {
            queues.len().min(2)
        };
        let mut qs = Vec::with_capacity(used);
        for (i, c) in queues.iter().take(used).enumerate() {
            let q = c.device_queue(features);
            if let Some(q) = &q {
                q.layout().check_memory(&self.mem).map_err(|err| {
                    DeviceError::QueueNotInMemory {
                        queue: i as u16,
                        err,
                    }
                })?;
            }
            qs.push(q);
        }
        let required: &[usize] = if multiport { &[0, 1, 2, 3] } else { &[0, 1] };
        for &i in required {
            if qs.get(i).and_then(|q| q.as_ref()).is_none() {
                return Err(DeviceError::QueueNotReady { queue: i as u16 });
            }
        }
        self.queues = qs;
        self.ctrl_out.clear();
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        if usize::from(queue) >= self.queues.len() {
            return Err(DeviceError::NoSuchQueue { queue });
        }
        // Every queue's work is cheap to re-check; serving all keeps control
        // replies and port data flowing whichever queue was kicked.
        self.serve_all()
    }

    fn backend_ready(&mut self) -> Result<Served, DeviceError> {
        if self.queues.is_empty() {
            return Ok(Served::default());
        }
        self.serve_all()
    }

    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        let q = usize::from(queue);
        if let Some(slot) = self.queues.get_mut(q) {
            *slot = None;
        }
        // A transmit chain held for a blocked chardev went with its queue;
        // the bytes already taken from it stay in `tx_held` and still go
        // out (nothing lost).
        for (p, port) in self.ports.iter_mut().enumerate() {
            if tx_queue(p) == q {
                port.tx_partial = None;
            }
        }
        Ok(Served::default())
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.features = 0;
        self.ctrl_out.clear();
        for p in &mut self.ports {
            p.ready = false;
            p.guest_open = false;
            p.tx_partial = None;
            p.tx_held.clear();
            // Host input already read stays for the next driver: nothing is
            // lost across a reset.
        }
    }

    fn avail_taken(&self, queue: u16) -> Option<u16> {
        Some(self.queues.get(usize::from(queue))?.as_ref()?.next_avail())
    }

    /// The next available index, rewound past a transmit chain partly
    /// written to a blocked chardev: the transmit loop pops nothing else
    /// while that chain waits, so it is the last one popped. Receive and
    /// control chains are completed in the pass that popped them (host
    /// input waits in the port's stash, not in a chain).
    fn queue_position(&self, queue: u16) -> Option<u16> {
        let q = self.queues.get(usize::from(queue))?.as_ref()?;
        let held = self
            .ports
            .iter()
            .enumerate()
            .any(|(p, port)| tx_queue(p) == usize::from(queue) && port.tx_partial.is_some());
        Some(q.next_avail().wrapping_sub(u16::from(held)))
    }

    /// Starts `queue` at `next_avail`. A transmit chain the port still held
    /// is dropped and popped again from the ring, so the bytes of it that
    /// already reached the chardev are written again (at least once, never
    /// lost).
    fn set_queue_position(&mut self, queue: u16, next_avail: u16) -> Result<(), DeviceError> {
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .and_then(Option::as_mut)
            .ok_or(DeviceError::PositionUnsupported { queue })?;
        q.set_position(next_avail, next_avail);
        for (p, port) in self.ports.iter_mut().enumerate() {
            if tx_queue(p) == usize::from(queue) {
                port.tx_partial = None;
                port.tx_held.clear();
            }
        }
        Ok(())
    }
}
