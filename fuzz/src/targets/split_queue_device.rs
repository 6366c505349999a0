//! `split_queue_device`: an arbitrary guest memory image and queue
//! configuration; pop, walk chains (direct and indirect), read and write
//! through the chain reader/writer, add_used, publish and the notification
//! decisions, with and without EVENT_IDX (§2.7).

use arbitrary::{Arbitrary, Unstructured};
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::split::{DeviceQueue, QueueError};
use virtio_core::testing::OwnedMemory;

/// Size of the fuzzed memory image.
const MEM: usize = 0x1_0000;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Pop a chain, read `read` bytes and write `write` bytes through it,
    /// then return it as used.
    Serve { read: u16, write: u16 },
    /// Pop a chain and return it unread with a claimed length.
    PopAndUse { len: u32 },
    /// Publish the used index.
    Publish,
    /// Ask whether the driver must be notified.
    Notify,
    /// Suppress driver notifications.
    Disable,
    /// Re-enable driver notifications.
    Enable,
    /// The hostile driver overwrites bytes of memory mid-run.
    Poke { at: u16, bytes: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    size_log2: u8,
    event_idx: bool,
    indirect: bool,
    /// Where the three areas go, in 16-byte units of the image.
    desc: u16,
    avail: u16,
    used: u16,
    /// The initial memory image (rings and buffers).
    image: Vec<u8>,
    ops: Vec<Op>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let Ok(size) = QueueSize::new(1 << (input.size_log2 % 9)) else {
        return;
    };
    let area = |u: u16| GuestAddress((u64::from(u) * 16) % MEM as u64);
    let Ok(layout) = QueueLayout::new(size, area(input.desc), area(input.avail), area(input.used))
    else {
        return;
    };
    let scratch = super::scratch::memory(MEM);
    let mem: &OwnedMemory = &scratch;
    let n = input.image.len().min(MEM);
    mem.write(GuestAddress(0), &input.image[..n])
        .expect("image fits");
    if layout.check_memory(mem).is_err() {
        return;
    }
    let mut q = DeviceQueue::new(layout, input.event_idx, input.indirect);
    let mut scratch = [0u8; 512];
    for op in input.ops.iter().take(512) {
        match op {
            Op::Serve { read, write } => match q.pop(mem) {
                Ok(Some(chain)) => {
                    let head = chain.head();
                    let len = match chain.reader_writer::<64>() {
                        Ok((mut r, mut w)) => {
                            let want = usize::from(*read).min(scratch.len());
                            let got = r.read(&mut scratch[..want]).expect("within bounds");
                            assert!(got as u64 <= r.total());
                            let want = usize::from(*write).min(scratch.len());
                            let put = w.write(&scratch[..want]).expect("within bounds");
                            assert!(put as u64 <= w.total());
                            assert_eq!(u64::from(w.written()), put as u64);
                            w.written()
                        }
                        Err(_) => 0,
                    };
                    q.add_used(mem, head, len).expect("head was validated");
                }
                Ok(None) => {}
                Err(QueueError::Chain(_) | QueueError::AvailIndexJump { .. }) => {}
                Err(e) => panic!("unexpected queue error {e}"),
            },
            Op::PopAndUse { len } => {
                if let Ok(Some(chain)) = q.pop(mem) {
                    let head = chain.head();
                    q.add_used(mem, head, *len).expect("head was validated");
                }
            }
            Op::Publish => q.publish_used(mem).expect("used ring is mapped"),
            Op::Notify => {
                q.needs_notification(mem).expect("rings are mapped");
            }
            Op::Disable => q.disable_notification(mem).expect("rings are mapped"),
            Op::Enable => {
                let _ = q.enable_notification(mem);
            }
            Op::Poke { at, bytes } => {
                let at = usize::from(*at) % MEM;
                let n = bytes.len().min(MEM - at).min(64);
                mem.write(GuestAddress(at as u64), &bytes[..n])
                    .expect("inside memory");
            }
        }
    }
}
