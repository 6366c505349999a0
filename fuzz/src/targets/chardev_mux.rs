//! `chardev_mux`: what a person types at a shared chardev (`mux=on`,
//! `backends::chardev::mux`), escapes and all, arriving in pieces while
//! any of several ports read and write in any order. Checks that no input
//! byte is invented (what the ports receive is at most what was typed)
//! and that the focus stays a port.

use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use backends::chardev::mux::{MuxPort, mux};
use backends::chardev::{Chardev, ChardevError};

/// A backend fed from the input.
#[derive(Clone, Default)]
struct Wire(Arc<Mutex<(Vec<u8>, usize)>>);

impl Chardev for Wire {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        // Takes at most 7 bytes at once: partial writes happen.
        Ok(buf.len().min(7))
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        let mut w = self.0.lock().unwrap();
        let n = buf.len().min(w.0.len());
        buf[..n].copy_from_slice(&w.0[..n]);
        w.0.drain(..n);
        w.1 += n;
        Ok(n)
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Type(Vec<u8>),
    Read { port: u8, len: u8 },
    Write { port: u8, data: Vec<u8> },
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(n) = u.int_in_range(1..=4usize) else {
        return;
    };
    let wire = Wire::default();
    let mut ports: Vec<MuxPort<Wire>> = mux(wire.clone(), n);
    let (mut typed, mut got) = (0usize, 0usize);
    for _ in 0..128 {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        match op {
            Op::Type(b) => {
                typed += b.len();
                wire.0.lock().unwrap().0.extend_from_slice(&b);
            }
            Op::Read { port, len } => {
                let p = &mut ports[usize::from(port) % n];
                let mut buf = vec![0u8; usize::from(len)];
                let k = p.read(&mut buf).unwrap();
                assert!(k <= buf.len());
                got += k;
            }
            Op::Write { port, data } => {
                let p = &mut ports[usize::from(port) % n];
                let k = p.write(&data).unwrap();
                assert!(k <= data.len());
            }
        }
        assert!(ports[0].focus() < n);
        assert!(got <= typed, "bytes invented");
        // Nothing is dropped: what was typed is read, queued, still in the
        // wire, or an escape.
        let waiting: usize = ports.iter().map(|p| p.queued()).sum();
        assert!(got + waiting <= typed, "bytes invented");
    }
}
