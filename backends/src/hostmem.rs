//! Host memory backends (QEMU's `-object memory-backend-ram|file|memfd`):
//! one `mmap` of anonymous memory, of a file, or of a sealed memfd, owned by a
//! [`HostMemory`] and unmapped when it drops.
//!
//! Properties follow QEMU: `size`, `share` (`MAP_SHARED` instead of
//! `MAP_PRIVATE`) and `prealloc` (every page populated up front, so a later
//! guest access never faults for lack of memory). This module hands out a raw
//! base pointer and length, never a Rust slice: the memory is meant to be
//! shared with a running guest. It knows nothing of guest addresses.

use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicU64, Ordering};

/// Which kind of host memory backs a [`HostMemory`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMemoryKind {
    /// `memory-backend-ram`: anonymous memory.
    Ram,
    /// `memory-backend-file,mem-path=…`: a mapping of a file. If the path is
    /// a directory, an unnamed file is created in it (and unlinked at once),
    /// as QEMU does for hugetlbfs mounts.
    File {
        /// The `mem-path`.
        path: PathBuf,
    },
    /// `memory-backend-memfd`: an anonymous memory file, sealed against
    /// shrinking and growing (`seal=on`), so its fd can be handed to another
    /// process (vhost-user) without that process being able to pull pages
    /// from under the guest.
    Memfd {
        /// `seal=on|off`.
        seal: bool,
    },
}

/// What to create: QEMU's backend properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMemoryConfig {
    /// The kind.
    pub kind: HostMemoryKind,
    /// Size in bytes: non-zero and a multiple of the page size.
    pub size: u64,
    /// `share=on`: `MAP_SHARED` (writes reach the file or memfd and other
    /// mappings of it); `share=off`: `MAP_PRIVATE` (copy on write).
    pub share: bool,
    /// `prealloc=on`: populate every page now.
    pub prealloc: bool,
}

/// Why host memory could not be set up. Each names the backend (`ram`,
/// the file's path or the memfd) and the size involved.
#[derive(Debug)]
pub enum HostMemoryError {
    /// `size=0`.
    ZeroSize {
        /// The backend.
        what: String,
    },
    /// The size is not a multiple of the host page size.
    SizeNotPageAligned {
        /// The backend.
        what: String,
        /// The size asked for.
        size: u64,
        /// The host page size.
        page: u64,
    },
    /// The size does not fit this host's address space.
    SizeTooLarge {
        /// The backend.
        what: String,
        /// The size asked for.
        size: u64,
    },
    /// The `mem-path` could not be opened or created.
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// The `mem-path` is neither a regular file nor a directory.
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file has data but fewer bytes than `size` (QEMU refuses this too:
    /// growing a file that holds something is probably a mistaken size).
    FileTooSmall {
        /// The path.
        path: PathBuf,
        /// Its current size.
        file_size: u64,
        /// The size asked for.
        size: u64,
    },
    /// Setting the size of the file or memfd failed.
    Resize {
        /// The backend.
        what: String,
        /// The size asked for.
        size: u64,
        /// Why.
        err: io::Error,
    },
    /// `memfd_create` failed.
    MemfdCreate {
        /// The memfd's name.
        name: String,
        /// Why.
        err: io::Error,
    },
    /// Adding the seals to the memfd failed.
    Seal {
        /// The memfd's name.
        name: String,
        /// Why.
        err: io::Error,
    },
    /// `mmap` failed.
    Map {
        /// The backend.
        what: String,
        /// The size.
        size: u64,
        /// Why.
        err: io::Error,
    },
    /// Populating the pages failed (out of memory, or a full filesystem
    /// under the file).
    Prealloc {
        /// The backend.
        what: String,
        /// The size.
        size: u64,
        /// Why.
        err: io::Error,
    },
}

impl fmt::Display for HostMemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMemoryError::ZeroSize { what } => write!(f, "{what}: size is 0"),
            HostMemoryError::SizeNotPageAligned { what, size, page } => write!(
                f,
                "{what}: size {size:#x} is not a multiple of the page size {page:#x}"
            ),
            HostMemoryError::SizeTooLarge { what, size } => {
                write!(
                    f,
                    "{what}: size {size:#x} does not fit the host address space"
                )
            }
            HostMemoryError::Open { path, err } => {
                write!(
                    f,
                    "memory-backend-file: cannot open {}: {err}",
                    path.display()
                )
            }
            HostMemoryError::NotAFile { path } => write!(
                f,
                "memory-backend-file: {} is neither a regular file nor a directory",
                path.display()
            ),
            HostMemoryError::FileTooSmall {
                path,
                file_size,
                size,
            } => write!(
                f,
                "memory-backend-file: {} has {file_size:#x} bytes, fewer than size {size:#x}",
                path.display()
            ),
            HostMemoryError::Resize { what, size, err } => {
                write!(f, "{what}: cannot set the size to {size:#x}: {err}")
            }
            HostMemoryError::MemfdCreate { name, err } => {
                write!(f, "memfd '{name}': memfd_create failed: {err}")
            }
            HostMemoryError::Seal { name, err } => {
                write!(f, "memfd '{name}': cannot add seals: {err}")
            }
            HostMemoryError::Map { what, size, err } => {
                write!(f, "{what}: mmap of {size:#x} bytes failed: {err}")
            }
            HostMemoryError::Prealloc { what, size, err } => {
                write!(f, "{what}: preallocating {size:#x} bytes failed: {err}")
            }
        }
    }
}

impl std::error::Error for HostMemoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HostMemoryError::Open { err, .. }
            | HostMemoryError::Resize { err, .. }
            | HostMemoryError::MemfdCreate { err, .. }
            | HostMemoryError::Seal { err, .. }
            | HostMemoryError::Map { err, .. }
            | HostMemoryError::Prealloc { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// The host page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is
    // passed.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).unwrap_or(4096).max(1)
}

/// One mapping of host memory, unmapped on drop.
///
/// It hands out only a raw base pointer and length (and the fd behind it,
/// if any): whoever places guest memory on it decides how to reach the
/// bytes, and no Rust reference into the mapping is ever formed here.
#[derive(Debug)]
pub struct HostMemory {
    ptr: NonNull<u8>,
    len: usize,
    fd: Option<OwnedFd>,
    kind: HostMemoryKind,
    share: bool,
}

// SAFETY: `HostMemory` owns its mapping exclusively (it is unmapped only in
// `drop`) and never forms references into it; moving the owner to another
// thread moves nothing that is tied to the creating thread.
unsafe impl Send for HostMemory {}
// SAFETY: `&HostMemory` exposes only the pointer value, length and fd, all
// read-only; accesses through the pointer are the caller's raw accesses.
unsafe impl Sync for HostMemory {}

/// Distinguishes the unnamed files this process creates in a directory.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl HostMemory {
    /// Creates the memory `config` describes.
    pub fn new(config: &HostMemoryConfig) -> Result<HostMemory, HostMemoryError> {
        match &config.kind {
            HostMemoryKind::Ram => HostMemory::ram(config.size, config.share, config.prealloc),
            HostMemoryKind::File { path } => {
                HostMemory::file(path, config.size, config.share, config.prealloc)
            }
            HostMemoryKind::Memfd { seal } => HostMemory::memfd(
                "guest-ram",
                config.size,
                config.share,
                *seal,
                config.prealloc,
            ),
        }
    }

    /// `memory-backend-ram`: `size` bytes of anonymous memory, zeroed.
    /// `share` maps it `MAP_SHARED` (inherited shared across `fork`).
    pub fn ram(size: u64, share: bool, prealloc: bool) -> Result<HostMemory, HostMemoryError> {
        let what = "memory-backend-ram";
        let len = check_size(what, size)?;
        let flags = libc::MAP_ANONYMOUS
            | if share {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        let ptr = map(what, None, len, flags)?;
        let mem = HostMemory {
            ptr,
            len,
            fd: None,
            kind: HostMemoryKind::Ram,
            share,
        };
        mem.finish(prealloc)
    }

    /// `memory-backend-file,mem-path=path`: a mapping of the first `size`
    /// bytes of the file at `path`, created if missing. An empty file is
    /// extended to `size`; a non-empty file must already hold at least
    /// `size` bytes. If `path` is a directory, an unnamed file is created in
    /// it and removed at once (the mapping keeps it alive).
    pub fn file(
        path: &Path,
        size: u64,
        share: bool,
        prealloc: bool,
    ) -> Result<HostMemory, HostMemoryError> {
        let what = format!("memory-backend-file {}", path.display());
        let len = check_size(&what, size)?;
        let file = open_backing_file(path)?;
        let open_err = |err| HostMemoryError::Open {
            path: path.to_path_buf(),
            err,
        };
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(HostMemoryError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let file_size = meta.len();
        if file_size == 0 {
            file.set_len(size).map_err(|err| HostMemoryError::Resize {
                what: what.clone(),
                size,
                err,
            })?;
        } else if file_size < size {
            return Err(HostMemoryError::FileTooSmall {
                path: path.to_path_buf(),
                file_size,
                size,
            });
        }
        let fd = OwnedFd::from(file);
        let flags = if share {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        let ptr = map(&what, Some(fd.as_fd()), len, flags)?;
        let mem = HostMemory {
            ptr,
            len,
            fd: Some(fd),
            kind: HostMemoryKind::File {
                path: path.to_path_buf(),
            },
            share,
        };
        mem.finish(prealloc)
    }

    /// `memory-backend-memfd`: a memfd named `name` of `size` bytes, sealed
    /// against shrinking and growing if `seal`, mapped shared if `share`
    /// (QEMU's default for memfd).
    pub fn memfd(
        name: &str,
        size: u64,
        share: bool,
        seal: bool,
        prealloc: bool,
    ) -> Result<HostMemory, HostMemoryError> {
        let what = format!("memory-backend-memfd '{name}'");
        let len = check_size(&what, size)?;
        let cname = CString::new(name.replace('\0', "?")).unwrap_or_default();
        let mut flags = libc::MFD_CLOEXEC;
        if seal {
            flags |= libc::MFD_ALLOW_SEALING;
        }
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the
        // call; memfd_create reads only it.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if raw < 0 {
            return Err(HostMemoryError::MemfdCreate {
                name: name.to_string(),
                err: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        file.set_len(size).map_err(|err| HostMemoryError::Resize {
            what: what.clone(),
            size,
            err,
        })?;
        if seal {
            // SAFETY: F_ADD_SEALS on an fd we own, with an integer argument.
            let rc = unsafe {
                libc::fcntl(
                    file.as_raw_fd(),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
                )
            };
            if rc < 0 {
                return Err(HostMemoryError::Seal {
                    name: name.to_string(),
                    err: io::Error::last_os_error(),
                });
            }
        }
        let fd = OwnedFd::from(file);
        let flags = if share {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        let ptr = map(&what, Some(fd.as_fd()), len, flags)?;
        let mem = HostMemory {
            ptr,
            len,
            fd: Some(fd),
            kind: HostMemoryKind::Memfd { seal },
            share,
        };
        mem.finish(prealloc)
    }

    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes (never 0).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The file or memfd behind the mapping (for vhost-user, which sends it
    /// to the backend process); `None` for anonymous memory.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Which kind of backend this is.
    pub fn kind(&self) -> &HostMemoryKind {
        &self.kind
    }

    /// True if mapped `MAP_SHARED`.
    pub fn is_shared(&self) -> bool {
        self.share
    }

    /// A short name for messages: `memory-backend-ram`, the file's path, …
    pub fn describe(&self) -> String {
        match &self.kind {
            HostMemoryKind::Ram => "memory-backend-ram".into(),
            HostMemoryKind::File { path } => format!("memory-backend-file {}", path.display()),
            HostMemoryKind::Memfd { .. } => "memory-backend-memfd".into(),
        }
    }

    /// Preallocates if asked; on failure `self` drops and unmaps.
    fn finish(self, prealloc: bool) -> Result<HostMemory, HostMemoryError> {
        if prealloc {
            self.populate().map_err(|err| HostMemoryError::Prealloc {
                what: self.describe(),
                size: self.len as u64,
                err,
            })?;
        }
        Ok(self)
    }

    /// Faults every page in for writing. `MADV_POPULATE_WRITE` (Linux 5.14)
    /// reports failure, unlike `MAP_POPULATE`; older kernels get every page
    /// touched instead.
    fn populate(&self) -> io::Result<()> {
        // SAFETY: the range is exactly our own live mapping; the advice
        // changes no contents.
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err);
        }
        let page = usize::try_from(page_size()).unwrap_or(4096);
        let mut off = 0;
        while off < self.len {
            // SAFETY: `off < len`, inside our mapping, which nothing else
            // uses yet; reading a byte and writing it back keeps the
            // contents and faults the page in for writing.
            unsafe {
                let p = self.ptr.as_ptr().add(off);
                p.write_volatile(p.read_volatile());
            }
            off += page;
        }
        Ok(())
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping `map` returned, owned by
        // `self` alone and unmapped only here. A failure cannot be reported
        // from `drop` and leaves only a leak.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Checks a size against QEMU's rules and this host; returns it as `usize`.
fn check_size(what: &str, size: u64) -> Result<usize, HostMemoryError> {
    if size == 0 {
        return Err(HostMemoryError::ZeroSize {
            what: what.to_string(),
        });
    }
    let page = page_size();
    if !size.is_multiple_of(page) {
        return Err(HostMemoryError::SizeNotPageAligned {
            what: what.to_string(),
            size,
            page,
        });
    }
    match usize::try_from(size) {
        Ok(len) if len <= isize::MAX as usize => Ok(len),
        _ => Err(HostMemoryError::SizeTooLarge {
            what: what.to_string(),
            size,
        }),
    }
}

/// Opens (creating if needed) the file at `path`, or a fresh unnamed file
/// if `path` is a directory.
fn open_backing_file(path: &Path) -> Result<File, HostMemoryError> {
    let open_err = |err| HostMemoryError::Open {
        path: path.to_path_buf(),
        err,
    };
    if path.is_dir() {
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = path.join(format!("virtio-hostmem-{}-{n}", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&name)
            {
                Ok(file) => {
                    // The mapping keeps the inode alive; nobody else needs
                    // the name.
                    std::fs::remove_file(&name).map_err(open_err)?;
                    return Ok(file);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(open_err(e)),
            }
        }
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(open_err)
}

/// `mmap`s `len` bytes read-write with `flags`, of `fd` at offset 0 if given.
fn map(
    what: &str,
    fd: Option<BorrowedFd<'_>>,
    len: usize,
    flags: libc::c_int,
) -> Result<NonNull<u8>, HostMemoryError> {
    let raw_fd = fd.map_or(-1, |fd| fd.as_raw_fd());
    // SAFETY: a fresh mapping at an address of the kernel's choosing
    // (NULL hint, no MAP_FIXED), so no existing memory is affected; `raw_fd`
    // is either -1 with MAP_ANONYMOUS or an open fd borrowed for the call.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            raw_fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(HostMemoryError::Map {
            what: what.to_string(),
            size: len as u64,
            err: io::Error::last_os_error(),
        });
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| HostMemoryError::Map {
        what: what.to_string(),
        size: len as u64,
        err: io::Error::other("mmap returned NULL"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    const MIB: u64 = 1 << 20;

    /// A scratch directory of this test, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("backends-hostmem-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn poke(mem: &HostMemory, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= mem.len());
        // SAFETY: in bounds (asserted), our own mapping, no references.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), mem.as_ptr().add(off), bytes.len())
        };
    }

    fn peek(mem: &HostMemory, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= mem.len());
        let mut v = vec![0; len];
        // SAFETY: in bounds (asserted), our own mapping, no references.
        unsafe { std::ptr::copy_nonoverlapping(mem.as_ptr().add(off), v.as_mut_ptr(), len) };
        v
    }

    #[test]
    fn ram_is_zeroed_and_writable_with_and_without_prealloc() {
        for (share, prealloc) in [(false, false), (true, true), (false, true)] {
            let mem = HostMemory::ram(2 * MIB, share, prealloc).unwrap();
            assert_eq!(mem.len(), 2 << 20);
            assert!(mem.fd().is_none());
            assert_eq!(mem.is_shared(), share);
            assert_eq!(peek(&mem, (MIB as usize) - 2, 4), [0; 4]);
            poke(&mem, 4096, b"guest");
            assert_eq!(peek(&mem, 4096, 5), b"guest");
        }
    }

    #[test]
    fn sizes_are_checked_and_named() {
        let e = HostMemory::ram(0, false, false).unwrap_err();
        assert!(matches!(e, HostMemoryError::ZeroSize { .. }));
        assert_eq!(e.to_string(), "memory-backend-ram: size is 0");
        let e = HostMemory::ram(4097, false, false).unwrap_err();
        assert!(
            e.to_string().contains("size 0x1001 is not a multiple"),
            "{e}"
        );
        let e = HostMemory::memfd("m", !0xfff_u64, true, true, false).unwrap_err();
        assert!(e.to_string().contains("memory-backend-memfd 'm'"), "{e}");
    }

    #[test]
    fn shared_file_receives_writes_and_an_empty_file_grows() {
        let dir = Scratch::new("shared");
        let path = dir.0.join("ram");
        let mem = HostMemory::file(&path, MIB, true, false).unwrap();
        assert!(mem.fd().is_some());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), MIB);
        poke(&mem, 0x1234, b"shared");
        let mut f = File::open(&path).unwrap();
        f.seek(SeekFrom::Start(0x1234)).unwrap();
        let mut buf = [0u8; 6];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"shared");
    }

    #[test]
    fn private_file_sees_the_file_but_keeps_its_writes() {
        let dir = Scratch::new("private");
        let path = dir.0.join("ram");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0xaa; 2 * MIB as usize]).unwrap();
        drop(f);
        // A larger file is fine: the first `size` bytes are mapped.
        let mem = HostMemory::file(&path, MIB, false, true).unwrap();
        assert_eq!(peek(&mem, 10, 2), [0xaa, 0xaa]);
        poke(&mem, 10, b"zz");
        assert_eq!(peek(&mem, 10, 2), b"zz");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 2 * MIB as usize);
        assert_eq!(&on_disk[10..12], &[0xaa, 0xaa]);
    }

    #[test]
    fn a_short_file_with_data_is_refused_by_path() {
        let dir = Scratch::new("short");
        let path = dir.0.join("ram");
        std::fs::write(&path, vec![1u8; 4096]).unwrap();
        let e = HostMemory::file(&path, MIB, true, false).unwrap_err();
        match &e {
            HostMemoryError::FileTooSmall {
                path: p,
                file_size,
                size,
            } => {
                assert_eq!(p, &path);
                assert_eq!((*file_size, *size), (4096, MIB));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(&path.display().to_string()));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
    }

    #[test]
    fn a_directory_gets_an_unnamed_file_and_a_missing_one_is_named() {
        let dir = Scratch::new("dir");
        let mem = HostMemory::file(&dir.0, MIB, true, false).unwrap();
        poke(&mem, 0, b"x");
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
        let missing = dir.0.join("no/such/dir/ram");
        let e = HostMemory::file(&missing, MIB, true, false).unwrap_err();
        assert!(matches!(e, HostMemoryError::Open { .. }));
        assert!(e.to_string().contains("no/such/dir/ram"), "{e}");
        let e = HostMemory::file(Path::new("/dev/null"), MIB, true, false).unwrap_err();
        assert!(matches!(e, HostMemoryError::NotAFile { .. }), "{e:?}");
    }

    #[test]
    fn memfd_is_sealed_against_shrinking_and_shares_its_pages() {
        let mem = HostMemory::memfd("test-ram", 2 * MIB, true, true, true).unwrap();
        let fd = mem.fd().unwrap();
        // SAFETY: F_GET_SEALS on a live fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(
            seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
        );
        let file = File::from(fd.try_clone_to_owned().unwrap());
        let e = file.set_len(MIB).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        // Another mapping of the fd (as a vhost-user backend would make)
        // sees what the guest side wrote.
        poke(&mem, 0x10_0000, b"vhost");
        let mut f = file;
        f.seek(SeekFrom::Start(0x10_0000)).unwrap();
        let mut buf = [0u8; 5];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"vhost");
    }

    #[test]
    fn unsealed_memfd_and_config_dispatch() {
        let mem = HostMemory::new(&HostMemoryConfig {
            kind: HostMemoryKind::Memfd { seal: false },
            size: MIB,
            share: true,
            prealloc: false,
        })
        .unwrap();
        let fd = mem.fd().unwrap();
        // SAFETY: F_GET_SEALS on a live fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        // Without MFD_ALLOW_SEALING the memfd carries F_SEAL_SEAL only.
        assert_eq!(seals, libc::F_SEAL_SEAL);
        assert_eq!(mem.kind(), &HostMemoryKind::Memfd { seal: false });
        let ram = HostMemory::new(&HostMemoryConfig {
            kind: HostMemoryKind::Ram,
            size: MIB,
            share: false,
            prealloc: false,
        })
        .unwrap();
        assert_eq!(ram.describe(), "memory-backend-ram");
    }
}
