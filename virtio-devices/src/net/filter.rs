//! Receive filtering (§5.1.6.5.1, §5.1.6.5.2): promiscuous and
//! all-multicast modes and the MAC tables the driver sets.

use alloc::vec::Vec;

use super::{ETH_ALEN, MAC_TABLE_ENTRIES};

/// Receive filtering state (§5.1.6.5.1, §5.1.6.5.2).
#[derive(Debug)]
pub(super) struct Filter {
    pub(super) promisc: bool,
    pub(super) allmulti: bool,
    pub(super) uni: Vec<[u8; ETH_ALEN]>,
    pub(super) multi: Vec<[u8; ETH_ALEN]>,
    uni_overflow: bool,
    multi_overflow: bool,
}

impl Filter {
    pub(super) fn new() -> Self {
        Filter {
            promisc: true,
            allmulti: false,
            uni: Vec::new(),
            multi: Vec::new(),
            uni_overflow: false,
            multi_overflow: false,
        }
    }

    pub(super) fn reset(&mut self) {
        self.promisc = true;
        self.allmulti = false;
        self.uni.clear();
        self.multi.clear();
        self.uni_overflow = false;
        self.multi_overflow = false;
    }

    pub(super) fn accepts(&self, mac: &[u8; ETH_ALEN], dst: &[u8]) -> bool {
        if self.promisc {
            return true;
        }
        let Ok(dst) = <[u8; ETH_ALEN]>::try_from(dst) else {
            return false;
        };
        if dst == [0xff; ETH_ALEN] {
            return true;
        }
        if dst[0] & 1 != 0 {
            self.allmulti || self.multi_overflow || self.multi.contains(&dst)
        } else {
            dst == *mac || self.uni_overflow || self.uni.contains(&dst)
        }
    }
}

/// `VIRTIO_NET_CTRL_MAC_TABLE_SET` (§5.1.6.5.2): two tables, each `le32
/// entries` then that many addresses, unicast first. A table longer than
/// [`MAC_TABLE_ENTRIES`] accepts every address of its class.
pub(super) fn set_tables(f: &mut Filter, data: &[u8]) -> bool {
    let table = |d: &[u8]| -> Option<(usize, usize)> {
        let n = u32::from_le_bytes(d.get(..4)?.try_into().ok()?) as usize;
        let len = n.checked_mul(ETH_ALEN)?.checked_add(4)?;
        (d.len() >= len).then_some((n, len))
    };
    let Some((nu, lu)) = table(data) else {
        return false;
    };
    let Some((nm, lm)) = table(&data[lu..]) else {
        return false;
    };
    if lu + lm != data.len() {
        return false;
    }
    let fill = |v: &mut Vec<[u8; ETH_ALEN]>, overflow: &mut bool, n: usize, d: &[u8]| {
        v.clear();
        *overflow = n > MAC_TABLE_ENTRIES;
        if !*overflow {
            for m in d[4..].chunks_exact(ETH_ALEN) {
                let mut a = [0u8; ETH_ALEN];
                a.copy_from_slice(m);
                v.push(a);
            }
        }
    };
    fill(&mut f.uni, &mut f.uni_overflow, nu, &data[..lu]);
    fill(&mut f.multi, &mut f.multi_overflow, nm, &data[lu..]);
    true
}
