//! `dma_map`: region layouts with holes, IOMMU mappings with permissions,
//! and mapping requests of arbitrary address and length, checked against a
//! byte-by-byte reference model: a request succeeds exactly when every byte
//! translates (with the permission asked for) to a byte some region backs,
//! and the host segments then cover exactly those bytes in order.

use arbitrary::{Arbitrary, Unstructured};
use virtio_core::memory::{
    Access, GuestAddress, GuestMemory, Iommu, IommuMapping, IommuMemory, Permissions, Region,
    RegionMemory,
};

/// Guest addresses live below this, so the model can go byte by byte.
const SPACE: u64 = 0x1_0000;

#[derive(Arbitrary, Debug)]
struct Input {
    regions: Vec<(u16, u16)>,
    iommu: Option<Vec<(u16, u16, u16, u8)>>,
    requests: Vec<(u64, u16, bool)>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    // Host backing: one buffer per region, owned here, freed at the end.
    let mut backing: Vec<Vec<u8>> = Vec::new();
    let mut mem = RegionMemory::<4>::new();
    let mut model: Vec<(u64, u64, *mut u8)> = Vec::new();
    for &(base, len) in input.regions.iter().take(6) {
        let (base, len) = (u64::from(base), u64::from(len) % 0x2000);
        let mut buf = vec![0u8; len as usize];
        let host = buf.as_mut_ptr();
        // SAFETY: `buf` lives in `backing` until the end of this function,
        // after `mem` (declared earlier, dropped later, but never used after
        // the loop below) is last used; nothing else touches it.
        let region = unsafe { Region::new(GuestAddress(base), host, len) };
        let overlaps = model
            .iter()
            .any(|&(b, l, _)| base < b + l && b < base + len);
        let full = model.len() == 4;
        match mem.add(region) {
            Ok(()) => {
                assert!(len > 0 && !overlaps && !full, "bad region accepted");
                model.push((base, len, host));
            }
            Err(_) => assert!(len == 0 || overlaps || full, "good region refused"),
        }
        backing.push(buf);
    }
    let host_of = |gpa: u64| -> Option<*mut u8> {
        model
            .iter()
            .find(|&&(b, l, _)| gpa >= b && gpa < b + l)
            .map(|&(b, _, h)| h.wrapping_add((gpa - b) as usize))
    };
    let mut iommu = Iommu::<8>::new();
    let mut iommu_model: Vec<(u64, u64, u64, Permissions)> = Vec::new();
    if let Some(maps) = &input.iommu {
        for &(iova, gpa, len, perm) in maps.iter().take(10) {
            let m = IommuMapping {
                iova: u64::from(iova),
                gpa: GuestAddress(u64::from(gpa)),
                len: u64::from(len) % 0x3000,
                perm: Permissions::from_bits_truncate(perm),
            };
            if iommu.map(m).is_ok() {
                iommu_model.push((m.iova, m.gpa.0, m.len, m.perm));
            }
        }
    }
    for &(addr, len, write) in input.requests.iter().take(16) {
        let addr = if addr > SPACE { addr } else { addr % SPACE };
        let len = u64::from(len) % 0x3000;
        let access = if write { Access::Write } else { Access::Read };
        let need = if write {
            Permissions::WRITE
        } else {
            Permissions::READ
        };
        // The model: the host byte for each guest (or IO virtual) byte.
        let expected: Option<Vec<*mut u8>> = (0..len)
            .map(|i| {
                let a = addr.checked_add(i)?;
                let gpa = if input.iommu.is_some() {
                    let &(iova, gpa, _, perm) = iommu_model
                        .iter()
                        .find(|&&(iova, _, l, _)| a >= iova && a - iova < l)?;
                    if !perm.contains(need) {
                        return None;
                    }
                    gpa + (a - iova)
                } else {
                    a
                };
                host_of(gpa)
            })
            .collect();
        let got = if input.iommu.is_some() {
            IommuMemory::new(&iommu, &mem).map(GuestAddress(addr), len, access)
        } else {
            mem.map(GuestAddress(addr), len, access)
        };
        match (got, expected) {
            (Ok(m), Some(bytes)) => {
                let flat: Vec<*mut u8> = m
                    .segments()
                    .iter()
                    .flat_map(|s| (0..s.len()).map(move |i| s.as_ptr().wrapping_add(i)))
                    .collect();
                assert_eq!(flat, bytes, "mapping differs from the model");
            }
            (Err(e), None) => {
                let _ = e.to_string();
            }
            // Too many segments is a legal refusal the model does not count.
            (Err(virtio_core::MemoryError::TooManySegments { .. }), Some(_)) => {}
            (Ok(_), None) => panic!("mapped a range the model refuses"),
            (Err(e), Some(_)) => panic!("refused a range the model maps: {e}"),
        }
    }
    drop(mem);
    drop(backing);
}
