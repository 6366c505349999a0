//! The virtio-blk wire format both sides share (§5.2): request types and
//! status values, the request header and discard/write-zeroes segment
//! sizes, and the configuration layout. The device in `virtio-devices` and
//! the driver in `guest-driver` use these same definitions.

/// Request types (§5.2.6, `VIRTIO_BLK_T_*`).
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush the write cache.
    pub const FLUSH: u32 = 4;
    /// The device's identifier string.
    pub const GET_ID: u32 = 8;
    /// Discard ranges.
    pub const DISCARD: u32 = 11;
    /// Write zeroes to ranges.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status values (§5.2.6, `VIRTIO_BLK_S_*`).
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request unsupported by the device.
    pub const UNSUPP: u8 = 2;
}

/// Configuration field offsets (§5.2.4, `struct virtio_blk_config`).
pub mod config {
    /// `le64 capacity` in 512-byte sectors.
    pub const CAPACITY: u64 = 0;
    /// `le32 size_max`.
    pub const SIZE_MAX: u64 = 8;
    /// `le32 seg_max`.
    pub const SEG_MAX: u64 = 12;
    /// `le32 blk_size`.
    pub const BLK_SIZE: u64 = 20;
    /// `u8 writeback`.
    pub const WRITEBACK: u64 = 32;
    /// `le16 num_queues`.
    pub const NUM_QUEUES: u64 = 34;
    /// `le32 max_discard_sectors`.
    pub const MAX_DISCARD_SECTORS: u64 = 36;
    /// `le32 max_discard_seg`.
    pub const MAX_DISCARD_SEG: u64 = 40;
    /// `le32 discard_sector_alignment`.
    pub const DISCARD_SECTOR_ALIGNMENT: u64 = 44;
    /// `le32 max_write_zeroes_sectors`.
    pub const MAX_WRITE_ZEROES_SECTORS: u64 = 48;
    /// `le32 max_write_zeroes_seg`.
    pub const MAX_WRITE_ZEROES_SEG: u64 = 52;
    /// `u8 write_zeroes_may_unmap`.
    pub const WRITE_ZEROES_MAY_UNMAP: u64 = 56;
}

/// The `flags` bit of a discard / write-zeroes segment that allows
/// deallocation (`VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`, §5.2.6).
pub const FLAG_UNMAP: u32 = 1;

/// Bytes of the request header (`le32 type, le32 reserved, le64 sector`).
pub const HEADER_LEN: u64 = 16;

/// Bytes of a discard / write-zeroes segment (`le64 sector, le32
/// num_sectors, le32 flags`).
pub const DWZ_SEGMENT_LEN: u64 = 16;

/// Bytes of the GET_ID answer (§5.2.6: a 20-byte serial, NUL-padded).
pub const ID_LEN: usize = 20;
