use super::*;

extern crate std;
use std::vec;
use std::vec::Vec;

/// Two buffers of host memory used as guest RAM in tests.
struct Backing {
    bufs: Vec<Vec<u64>>,
}

impl Backing {
    fn new(sizes: &[usize]) -> Self {
        Backing {
            bufs: sizes.iter().map(|s| vec![0u64; s.div_ceil(8)]).collect(),
        }
    }
    fn region(&mut self, i: usize, base: u64, len: u64) -> Region {
        // SAFETY: the buffer outlives the memory in every test below and
        // is not otherwise accessed while the memory is used.
        unsafe { Region::new(GuestAddress(base), self.bufs[i].as_mut_ptr().cast(), len) }
    }
}

#[test]
fn read_write_roundtrip_within_one_region() {
    let mut b = Backing::new(&[4096]);
    let mut m = RegionMemory::<4>::new();
    m.add(b.region(0, 0x1000, 4096)).unwrap();
    m.write(GuestAddress(0x1010), &[1, 2, 3, 4]).unwrap();
    let mut out = [0u8; 4];
    m.read(GuestAddress(0x1010), &mut out).unwrap();
    assert_eq!(out, [1, 2, 3, 4]);
    m.write_u32(GuestAddress(0x1020), 0xdead_beef).unwrap();
    assert_eq!(m.read_u32(GuestAddress(0x1020)).unwrap(), 0xdead_beef);
    m.store_u16_release(GuestAddress(0x1030), 0x1234).unwrap();
    assert_eq!(m.load_u16_acquire(GuestAddress(0x1030)).unwrap(), 0x1234);
    assert_eq!(m.read_u16(GuestAddress(0x1030)).unwrap(), 0x1234);
}

#[test]
fn range_across_adjacent_regions_maps_to_two_segments() {
    let mut b = Backing::new(&[4096, 4096]);
    let mut m = RegionMemory::<4>::new();
    m.add(b.region(1, 0x2000, 4096)).unwrap();
    m.add(b.region(0, 0x1000, 4096)).unwrap();
    let map = m.map(GuestAddress(0x1ff0), 0x20, Access::Read).unwrap();
    assert_eq!(map.segments().len(), 2);
    assert_eq!(map.len(), 0x20);
    let data: Vec<u8> = (0..0x20).collect();
    m.write(GuestAddress(0x1ff0), &data).unwrap();
    let mut out = [0u8; 0x20];
    m.read(GuestAddress(0x1ff0), &mut out).unwrap();
    assert_eq!(&out[..], &data[..]);
}

/// `RegionMemory::write_obj` stages small values on its slow path: a value
/// across adjacent regions lands whole, staged (16 bytes) or not (40), and
/// one across a hole writes nothing.
#[test]
fn write_obj_across_regions_is_whole_or_nothing() {
    let mut b = Backing::new(&[4096, 4096, 4096]);
    let mut m = RegionMemory::<4>::new();
    m.add(b.region(0, 0x1000, 4096)).unwrap();
    m.add(b.region(1, 0x2000, 4096)).unwrap();
    m.add(b.region(2, 0x4000, 4096)).unwrap();
    let small: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
    m.write_obj(GuestAddress(0x1ff8), &small).unwrap();
    assert_eq!(m.read_obj::<[u8; 16]>(GuestAddress(0x1ff8)).unwrap(), small);
    let large: [u8; 40] = core::array::from_fn(|i| i as u8 + 100);
    m.write_obj(GuestAddress(0x1fec), &large).unwrap();
    assert_eq!(m.read_obj::<[u8; 40]>(GuestAddress(0x1fec)).unwrap(), large);
    for at in [0x2ff8, 0x2ffc] {
        let before = m.read_obj::<[u8; 8]>(GuestAddress(0x2ff8)).unwrap();
        assert!(matches!(
            m.write_obj(GuestAddress(at), &small),
            Err(MemoryError::Hole { .. })
        ));
        assert!(matches!(
            m.write_obj(GuestAddress(at), &large),
            Err(MemoryError::Hole { .. })
        ));
        assert_eq!(m.read_obj::<[u8; 8]>(GuestAddress(0x2ff8)).unwrap(), before);
    }
}

#[test]
fn hole_between_regions_is_refused_whole() {
    let mut b = Backing::new(&[4096, 4096]);
    let mut m = RegionMemory::<4>::new();
    m.add(b.region(0, 0x1000, 4096)).unwrap();
    m.add(b.region(1, 0x3000, 4096)).unwrap();
    assert_eq!(
        m.map(GuestAddress(0x1ff0), 0x20, Access::Read).err(),
        Some(MemoryError::Hole {
            addr: GuestAddress(0x1ff0),
            gap: GuestAddress(0x2000)
        })
    );
    // Nothing was written to the part that is mapped.
    assert!(m.write(GuestAddress(0x1ff0), &[0xff; 0x20]).is_err());
    assert_eq!(m.read_u64(GuestAddress(0x1ff0)).unwrap(), 0);
}

#[test]
fn out_of_bounds_and_wrapping_ranges_fail() {
    let mut b = Backing::new(&[4096]);
    let mut m = RegionMemory::<4>::new();
    m.add(b.region(0, 0, 4096)).unwrap();
    assert!(matches!(
        m.read_u32(GuestAddress(4094)),
        Err(MemoryError::Hole { .. })
    ));
    assert!(matches!(
        m.read_u32(GuestAddress(1 << 40)),
        Err(MemoryError::OutOfBounds { .. })
    ));
    assert!(matches!(
        m.map(GuestAddress(u64::MAX - 1), 4, Access::Read),
        Err(MemoryError::Overflow { .. })
    ));
    assert!(matches!(
        m.load_u16_acquire(GuestAddress(3)),
        Err(MemoryError::Misaligned { .. })
    ));
}

#[test]
fn overlapping_regions_are_refused() {
    let mut b = Backing::new(&[4096, 4096, 16]);
    let mut m = RegionMemory::<2>::new();
    m.add(b.region(0, 0x1000, 4096)).unwrap();
    assert!(matches!(
        m.add(b.region(1, 0x1800, 4096)),
        Err(RegionError::Overlap { .. })
    ));
    assert!(matches!(
        m.add(b.region(1, 0x800, 4096)),
        Err(RegionError::Overlap { .. })
    ));
    assert!(matches!(
        m.add(b.region(1, 0x0, 0)),
        Err(RegionError::Empty { .. })
    ));
    m.add(b.region(1, 0x2000, 4096)).unwrap();
    assert!(matches!(
        m.add(b.region(2, 0x9000, 16)),
        Err(RegionError::TooMany { capacity: 2 })
    ));
}

#[test]
fn iommu_translates_and_checks_permissions() {
    let mut b = Backing::new(&[0x4000]);
    let mut m = RegionMemory::<4>::new();
    m.add(b.region(0, 0, 0x4000)).unwrap();
    let mut iommu = Iommu::<8>::new();
    iommu
        .map(IommuMapping {
            iova: 0x10_0000,
            gpa: GuestAddress(0x2000),
            len: 0x1000,
            perm: Permissions::READ | Permissions::WRITE,
        })
        .unwrap();
    iommu
        .map(IommuMapping {
            iova: 0x10_1000,
            gpa: GuestAddress(0x0),
            len: 0x1000,
            perm: Permissions::READ,
        })
        .unwrap();
    let io = IommuMemory::new(&iommu, &m);
    io.write_u32(GuestAddress(0x10_0010), 7).unwrap();
    assert_eq!(m.read_u32(GuestAddress(0x2010)).unwrap(), 7);
    // A range across two IOVA mappings that are not contiguous in GPA.
    let map = io.map(GuestAddress(0x10_0ff0), 0x20, Access::Read).unwrap();
    assert_eq!(map.segments().len(), 2);
    // Write permission is missing on the second mapping: refused whole.
    assert_eq!(
        io.write(GuestAddress(0x10_0ff0), &[1; 0x20]),
        Err(MemoryError::PermissionDenied {
            iova: 0x10_1000,
            access: Access::Write
        })
    );
    assert_eq!(m.read_u64(GuestAddress(0x2ff0)).unwrap(), 0);
    assert!(matches!(
        io.read_u32(GuestAddress(0x20_0000)),
        Err(MemoryError::IommuFault { .. })
    ));
    assert!(matches!(
        iommu.map(IommuMapping {
            iova: 0x10_0800,
            gpa: GuestAddress(0),
            len: 0x10,
            perm: Permissions::READ
        }),
        Err(IommuError::Overlap { .. })
    ));
}

/// `check` gives the same answer as `map` (and the same error) for any
/// range: inside one region, across adjacent regions, over a hole, past
/// the end, empty, wrapping; two regions with a hole between them.
#[test]
fn check_agrees_with_map_everywhere() {
    let mut b = Backing::new(&[4096, 4096, 4096]);
    let mut m = RegionMemory::<4>::new();
    m.add(b.region(0, 0x1000, 4096)).unwrap();
    m.add(b.region(1, 0x2000, 4096)).unwrap();
    m.add(b.region(2, 0x4000, 4096)).unwrap();
    let addrs = [
        0,
        0xfff,
        0x1000,
        0x1800,
        0x1fff,
        0x2000,
        0x2fff,
        0x3000,
        0x3fff,
        0x4000,
        0x4ff0,
        0x5000,
        u64::MAX - 1,
    ];
    let lens = [
        0,
        1,
        2,
        0x10,
        0x800,
        0x1000,
        0x1001,
        0x2000,
        0x3001,
        u64::MAX,
    ];
    for &a in &addrs {
        for &n in &lens {
            for access in [Access::Read, Access::Write] {
                let mapped = m.map(GuestAddress(a), n, access).map(|_| ());
                assert_eq!(m.check(GuestAddress(a), n, access), mapped, "{a:#x}+{n:#x}");
            }
        }
    }
}
