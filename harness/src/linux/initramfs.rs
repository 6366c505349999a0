//! The initramfs: a `newc` cpio archive built in memory, with busybox, the
//! modules in dependency order, the helper, the init script and the plan.

use super::*;

/// A `newc` cpio archive (the initramfs format the kernel unpacks), built
/// in memory. Entries are written as given; a parent directory must come
/// before what it holds.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio::default()
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            let _ = write!(HexTo(&mut self.buf), "{f:08x}");
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> &mut Cpio {
        self.entry(name, 0o040_755, (0, 0), &[]);
        self
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> &mut Cpio {
        self.entry(name, 0o100_000 | (perm & 0o7777), (0, 0), data);
        self
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> &mut Cpio {
        self.entry(name, 0o020_600, (major, minor), &[]);
        self
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// `fmt::Write` into a byte buffer (cpio's hex fields).
pub(super) struct HexTo<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for HexTo<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// What goes into one boot's initramfs.
#[derive(Debug)]
pub struct Initramfs<'a> {
    /// The kit (busybox and modules).
    pub kit: &'a Kit,
    /// Modules to load, dependencies added and ordered here.
    pub modules: &'a [&'a str],
    /// The static helper ([`build_helper`]), put at `/vt/vtio`.
    pub helper: &'a Path,
    /// Shell lines the init script sources after loading the modules.
    pub plan: &'a str,
}

impl Initramfs<'_> {
    /// The archive.
    pub fn build(&self) -> Result<Vec<u8>, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mods = self.kit.modules_in_order(self.modules)?;
        let mut c = Cpio::new();
        for d in [
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "vt",
            "lib",
            "lib/modules",
        ] {
            c.dir(d);
        }
        c.char_dev("dev/console", 5, 1);
        c.char_dev("dev/null", 1, 3);
        c.file("init", 0o755, INIT_SH.as_bytes());
        c.file("bin/busybox", 0o755, &read(&self.kit.busybox)?);
        c.file("vt/vtio", 0o755, &read(self.helper)?);
        c.file("vt/plan.sh", 0o644, self.plan.as_bytes());
        let mut list = String::new();
        for (name, path) in &mods {
            c.file(&format!("lib/modules/{name}.ko"), 0o644, &read(path)?);
            let _ = writeln!(list, "{name}");
        }
        c.file("vt/modules", 0o644, list.as_bytes());
        Ok(c.finish())
    }
}
