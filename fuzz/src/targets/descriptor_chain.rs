//! `descriptor_chain`: chain walking alone over an adversarial descriptor
//! table (loops, huge lengths, wrapping addresses, nested and empty indirect
//! tables), checking the walk's guarantees (§2.7.5, §2.7.5.3).

use arbitrary::{Arbitrary, Unstructured};
use virtio_core::memory::GuestAddress;
use virtio_core::split::chain::{ChainError, DescriptorChain, MAX_INDIRECT_DESCRIPTORS};
use virtio_core::split::layout::DescFlags;
use virtio_core::testing::OwnedMemory;

/// Size of the fuzzed memory image.
const MEM: usize = 0x4000;

#[derive(Arbitrary, Debug)]
struct Input {
    size_log2: u8,
    head: u16,
    indirect: bool,
    /// Descriptors written at chosen slots of the memory image: (byte
    /// offset / 16, addr, len, flags, next).
    descs: Vec<(u16, u64, u32, u16, u16)>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let size = 1u16 << (input.size_log2 % 9);
    let scratch = super::scratch::memory(MEM);
    let mem: &OwnedMemory = &scratch;
    for &(slot, addr, len, flags, next) in input.descs.iter().take(256) {
        let at = GuestAddress((u64::from(slot) * 16) % MEM as u64);
        let d = virtio_core::split::Descriptor::new(
            GuestAddress(addr),
            len,
            DescFlags::from_bits_retain(flags),
            next,
        );
        let _ = virtio_core::GuestMemory::write_obj(mem, at, &d);
    }
    let chain = match DescriptorChain::new(mem, GuestAddress(0), size, input.head, input.indirect) {
        Ok(c) => c,
        Err(e) => {
            assert!(matches!(e, ChainError::HeadOutOfRange { .. }));
            assert!(input.head >= size);
            return;
        }
    };
    let mut steps = 0u32;
    let mut seen_write = false;
    let mut total = 0u64;
    let mut errored = false;
    for d in chain {
        assert!(!errored, "a chain yields nothing after its error");
        steps += 1;
        assert!(
            steps <= u32::from(size) + MAX_INDIRECT_DESCRIPTORS + 1,
            "walk is bounded"
        );
        match d {
            Ok(d) => {
                assert!(!d.flags().contains(DescFlags::INDIRECT));
                assert!(d.addr().checked_add(u64::from(d.len())).is_some());
                if d.is_write_only() {
                    seen_write = true;
                } else {
                    assert!(!seen_write, "readable after writable");
                }
                total += u64::from(d.len());
                assert!(total <= u64::from(u32::MAX));
            }
            Err(_) => errored = true,
        }
    }
}
