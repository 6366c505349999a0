//! Pointer input for the serial pointing devices ([`msmouse`](super::msmouse),
//! [`wctablet`](super::wctablet)): the events a monitor command (QEMU's
//! `mouse_move`, `mouse_button`, QMP `input-send-event`) produces, and the
//! sink each device hands out to receive them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec::Vec;

/// Largest absolute coordinate (QEMU's `INPUT_EVENT_ABS_MAX`); 0 is the
/// top left.
pub const ABS_MAX: i32 = 0x7fff;

/// A pointer axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Left to right.
    X,
    /// Top to bottom.
    Y,
}

/// A pointer button.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Button {
    /// The left button (the pen tip on a tablet).
    Left,
    /// The right button.
    Right,
    /// The middle button.
    Middle,
}

/// One pointer event; a batch ends with [`InputSink::sync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputEvent {
    /// A relative movement (mice).
    Rel(Axis, i32),
    /// An absolute position, 0..=[`ABS_MAX`] (tablets).
    Abs(Axis, i32),
    /// A button went down (`true`) or up.
    Button(Button, bool),
}

/// What receives pointer events: each device takes the kinds it
/// understands and ignores the rest (a mouse ignores absolute positions).
pub trait InputSink: Send + Sync {
    /// One event of a batch.
    fn event(&self, ev: InputEvent);
    /// The batch is complete: the device reports it.
    fn sync(&self);
    /// The device's name, for the monitor.
    fn name(&self) -> &str;
}

/// The pointing devices of a machine, which monitor commands feed; every
/// registered sink gets every event.
#[derive(Clone, Default)]
pub struct InputRouter {
    sinks: Arc<Mutex<Vec<Arc<dyn InputSink>>>>,
}

impl core::fmt::Debug for InputRouter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InputRouter")
            .field("sinks", &self.names())
            .finish()
    }
}

impl InputRouter {
    /// Adds a device.
    pub fn register(&self, sink: Arc<dyn InputSink>) {
        if let Ok(mut s) = self.sinks.lock() {
            s.push(sink);
        }
    }

    /// The devices' names.
    pub fn names(&self) -> Vec<std::string::String> {
        self.sinks
            .lock()
            .map(|s| s.iter().map(|k| k.name().into()).collect())
            .unwrap_or_default()
    }

    /// Whether no device takes input.
    pub fn is_empty(&self) -> bool {
        self.sinks.lock().map(|s| s.is_empty()).unwrap_or(true)
    }

    /// Delivers `events` to every device, then syncs them.
    pub fn send(&self, events: &[InputEvent]) {
        let sinks = match self.sinks.lock() {
            Ok(s) => s.clone(),
            Err(_) => return,
        };
        for s in &sinks {
            for e in events {
                s.event(*e);
            }
            s.sync();
        }
    }
}

/// A device's state, shared by its chardev and its input side; a panic
/// elsewhere does not make it unusable.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Moves what a device has queued for the UART into `buf`; how much.
pub(super) fn drain_into(out: &mut VecDeque<u8>, buf: &mut [u8]) -> usize {
    let n = buf.len().min(out.len());
    for (d, b) in buf.iter_mut().zip(out.drain(..n)) {
        *d = b;
    }
    n
}
