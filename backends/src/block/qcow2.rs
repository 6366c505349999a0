//! qcow2 images (QEMU's `qcow2` driver) through the `imago` crate, built
//! natively synchronous (its `sync` feature: no async runtime).
//!
//! imago takes Rust slices, and no Rust slice may cover guest memory, so
//! data is copied through one buffer allocated when the image is opened, a
//! window at a time. Flush writes imago's metadata caches back and then
//! syncs the file (§5.2.6.2: stable once FLUSH completes). Backing files
//! named in the image open read-only with it. Not done: creating images,
//! `O_DIRECT` (imago can; not wired), compressed writes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::vec;
use std::vec::Vec;

use imago::file::File;
use imago::{FormatAccess, FormatDriverBuilder, PermissiveImplicitOpenGate};

use super::{BlockBackend, BlockError, check_range, check_segments};
use crate::IoSegment;

/// Bytes in the copy buffer: the largest piece one imago call moves.
const BOUNCE_LEN: usize = 1 << 20;

/// A qcow2 image file.
pub struct Qcow2 {
    access: FormatAccess<File>,
    path: PathBuf,
    size: u64,
    read_only: bool,
    writeback: bool,
    buf: Vec<u8>,
}

impl fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .field("writeback", &self.writeback)
            .finish_non_exhaustive()
    }
}

impl Qcow2 {
    /// Opens the qcow2 image at `path` (and its backing chain, read-only).
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> Result<Self, BlockError> {
        let path = path.as_ref();
        let driver = imago::qcow2::Qcow2::<File>::builder_path(path)
            .write(!read_only)
            .open(PermissiveImplicitOpenGate::default())
            .map_err(|err| match err.kind() {
                io::ErrorKind::InvalidData => {
                    BlockError::Image(format!("{}: {err}", path.display()))
                }
                _ => BlockError::Io {
                    what: format!("opening qcow2 image {}", path.display()),
                    err,
                },
            })?;
        let access = FormatAccess::new(driver);
        let size = access.size();
        Ok(Qcow2 {
            access,
            path: path.to_path_buf(),
            // A disk is whole sectors; a partial tail is not part of it.
            size: size - size % super::SECTOR_SIZE,
            read_only,
            writeback: true,
            buf: vec![0; BOUNCE_LEN],
        })
    }

    fn err(&self, what: &str, err: io::Error) -> BlockError {
        BlockError::Io {
            what: format!("qcow2 {what} on {}", self.path.display()),
            err,
        }
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size)
    }

    fn after_write(&mut self) -> Result<(), BlockError> {
        if self.writeback {
            Ok(())
        } else {
            // Writethrough (§5.2.6.2): stable before the request completes.
            self.flush()
        }
    }
}

impl BlockBackend for Qcow2 {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn supports_discard(&self) -> bool {
        !self.read_only
    }

    fn supports_write_zeroes(&self) -> bool {
        !self.read_only
    }

    fn write_cache(&self) -> bool {
        self.writeback
    }

    fn set_write_cache(&mut self, writeback: bool) {
        self.writeback = writeback;
    }

    unsafe fn read_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        let len = check_segments(offset, segments, self.size)? as usize;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.buf.len());
            if let Err(e) = self.access.read(&mut self.buf[..n], offset + done as u64) {
                return Err(self.err("read", e));
            }
            // SAFETY: the segments are writable and unborrowed
            // (read_vectored's contract); the buffer is ours.
            unsafe { super::copy_to_segments(segments, done, &self.buf[..n]) };
            done += n;
        }
        Ok(())
    }

    unsafe fn write_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        let len = check_segments(offset, segments, self.size)?;
        self.check_writable(offset, len)?;
        let len = len as usize;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.buf.len());
            // SAFETY: the segments are readable (write_vectored's
            // contract); the buffer is ours.
            unsafe { super::copy_from_segments(segments, done, &mut self.buf[..n]) };
            if let Err(e) = self.access.write(&self.buf[..n], offset + done as u64) {
                return Err(self.err("write", e));
            }
            done += n;
        }
        self.after_write()
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.access.flush().map_err(|e| self.err("flush", e))?;
        self.access.sync().map_err(|e| self.err("sync", e))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_writable(offset, len)?;
        // Discarded clusters read as zeroes, like our other backends.
        match self.access.discard_to_zero(offset, len) {
            Ok(()) => self.after_write(),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                Err(BlockError::Unsupported("discard on this image"))
            }
            Err(e) => Err(self.err("discard", e)),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        self.check_writable(offset, len)?;
        let r = if unmap {
            self.access.discard_to_zero(offset, len)
        } else {
            self.access.write_zeroes(offset, len)
        };
        r.map_err(|e| self.err("write-zeroes", e))?;
        self.after_write()
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        // imago's own drop flushes its caches too; sync so that a dropped
        // image is stable. Nothing to report an error to here.
        let _ = self.flush();
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Qcow2>();
}
