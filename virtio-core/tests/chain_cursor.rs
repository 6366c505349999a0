//! A copy through a chain's reader or writer that fails midway consumes
//! nothing (issue 16, finding 7): the cursor and the count of bytes left
//! stay where they were, so a later read never returns Ok with part of its
//! buffer unfilled, and a writer's used length (§2.7.8) counts only what
//! was written whole.

use std::cell::Cell;

use virtio_core::GuestMemory;
use virtio_core::memory::{Access, GuestAddress, Mapping, MemoryError};
use virtio_core::split::DescriptorChain;
use virtio_core::split::layout::DescFlags;
use virtio_core::testing::RingFixture;

/// Guest memory whose accesses to one address fail while `fail` is set:
/// memory that goes away after the chain was walked (an IOMMU unmap, a
/// vhost-user region removed).
struct Flaky<'a> {
    inner: &'a virtio_core::testing::OwnedMemory,
    fail: Cell<Option<GuestAddress>>,
}

impl GuestMemory for Flaky<'_> {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        if self.fail.get() == Some(addr) {
            return Err(MemoryError::OutOfBounds { addr, len });
        }
        self.inner.map(addr, len, access)
    }
}

const A: u64 = RingFixture::DATA;
const B: u64 = RingFixture::DATA + 0x1000;

fn two_piece_chain(write: bool) -> RingFixture {
    let f = RingFixture::new(8);
    let w = if write {
        DescFlags::WRITE
    } else {
        DescFlags::empty()
    };
    f.set_desc(0, A, 8, w | DescFlags::NEXT, 1);
    f.set_desc(1, B, 8, w, 0);
    f.mem.write(GuestAddress(A), b"first 8.").unwrap();
    f.mem.write(GuestAddress(B), b"second 8").unwrap();
    f
}

#[test]
fn section_2_7_5_a_read_that_fails_midway_consumes_nothing() {
    let f = two_piece_chain(false);
    let mem = Flaky {
        inner: &f.mem,
        fail: Cell::new(None),
    };
    let chain = DescriptorChain::new(&mem, f.layout.desc_table(), 8, 0, false).unwrap();
    let (mut r, _) = chain.reader_writer::<4>().unwrap();
    mem.fail.set(Some(GuestAddress(B)));
    let mut buf = [0u8; 16];
    assert!(r.read_exact(&mut buf).is_err());
    assert_eq!(r.available(), 16, "a failed read consumed bytes");
    mem.fail.set(None);
    let mut buf = [0u8; 16];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"first 8.second 8");
    assert_eq!(r.available(), 0);
}

#[test]
fn section_2_7_8_a_write_that_fails_midway_is_not_counted() {
    let f = two_piece_chain(true);
    let mem = Flaky {
        inner: &f.mem,
        fail: Cell::new(None),
    };
    let chain = DescriptorChain::new(&mem, f.layout.desc_table(), 8, 0, false).unwrap();
    let (_, mut w) = chain.reader_writer::<4>().unwrap();
    mem.fail.set(Some(GuestAddress(B)));
    assert!(w.write_all(b"0123456789abcdef").is_err());
    assert_eq!((w.available(), w.written()), (16, 0));
    mem.fail.set(None);
    w.write_all(b"0123456789abcdef").unwrap();
    assert_eq!((w.available(), w.written()), (0, 16));
    let mut got = [0u8; 16];
    f.mem.read(GuestAddress(A), &mut got[..8]).unwrap();
    f.mem.read(GuestAddress(B), &mut got[8..]).unwrap();
    assert_eq!(&got, b"0123456789abcdef");
}

/// A parked reader (a request kept across notifications) resumes where it
/// stopped, and reading on loads no descriptor again: only data bytes not
/// read before.
#[test]
fn section_2_7_13_a_parked_reader_resumes_without_walking_the_chain_again() {
    use virtio_core::testing::fetch::FetchTracker;
    let f = two_piece_chain(false);
    let mem = FetchTracker::new(&f.mem);
    let chain = DescriptorChain::new(&mem, f.layout.desc_table(), 8, 0, false).unwrap();
    let (mut r, _) = chain.reader_writer::<4>().unwrap();
    let mut a = [0u8; 6];
    r.read_exact(&mut a).unwrap();
    let parked = r.park();
    assert_eq!(parked.available(), 10);
    let mut r = parked.resume(&mem);
    let mut b = [0u8; 10];
    r.read_exact(&mut b).unwrap();
    assert_eq!([&a[..], &b[..]].concat(), b"first 8.second 8");
    mem.assert_none();
}
