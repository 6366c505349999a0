//! `-drive` and `-blockdev`: disk images.

use super::*;

const FORMATS: &[(&str, DiskFormat)] = &[("raw", DiskFormat::Raw), ("qcow2", DiskFormat::Qcow2)];
const CACHES: &[(&str, CacheMode)] = &[
    ("writeback", CacheMode::Writeback),
    ("none", CacheMode::None),
    ("writethrough", CacheMode::Writethrough),
];
const AIOS: &[(&str, AioMode)] = &[
    ("threads", AioMode::Threads),
    ("io_uring", AioMode::IoUring),
];
const AIO_EXPECTED: &str = "threads or io_uring (aio=native, Linux AIO, is not implemented: \
                            io_uring does the same job)";

const DISCARDS: &[(&str, bool)] = &[
    ("ignore", false),
    ("off", false),
    ("unmap", true),
    ("on", true),
];

fn add_drive(
    cfg: &mut MachineConfig,
    ids: &mut HashMap<String, IdKind>,
    drive: DriveConfig,
) -> Result<(), OptionError> {
    if ids.insert(drive.id.clone(), IdKind::Drive).is_some() {
        return Err(OptionError::DuplicateId(drive.id));
    }
    cfg.drives.push(drive);
    Ok(())
}

impl Parser {
    /// `-drive if=none,id=…,file=…`.
    pub(super) fn drive(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, ids, .. } = self;
        let mut kv = KeyVals::parse_keys("-drive", "drive", arg)?;
        match kv.take("if").as_deref() {
            None | Some("none") => {}
            Some(other) => {
                return Err(OptionError::BadValue {
                    option: "-drive",
                    key: "if".into(),
                    value: other.into(),
                    expected: "none (attach it with -device virtio-blk-device,drive=ID)",
                });
            }
        }
        let drive = DriveConfig {
            id: kv.require("id")?,
            path: kv.require("file")?.into(),
            format: kv
                .take_choice("format", FORMATS, "raw or qcow2")?
                .unwrap_or(DiskFormat::Raw),
            read_only: kv.take_bool("readonly", false)?,
            cache: kv
                .take_choice("cache", CACHES, "writeback, none or writethrough")?
                .unwrap_or(CacheMode::Writeback),
            discard: kv
                .take_choice("discard", DISCARDS, "ignore, off, unmap or on")?
                .unwrap_or(false),
            aio: kv
                .take_choice("aio", AIOS, AIO_EXPECTED)?
                .unwrap_or_default(),
        };
        kv.finish()?;
        add_drive(cfg, ids, drive)?;
        Ok(())
    }

    /// `-blockdev driver=file|raw|qcow2,node-name=…`.
    pub(super) fn blockdev(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser {
            cfg,
            ids,
            file_nodes,
            ..
        } = self;
        let mut kv = KeyVals::parse_keys("-blockdev", "blockdev", arg)?;
        let driver = kv.require("driver")?;
        let id = kv.require("node-name")?;
        if driver == "file" {
            // A protocol node: named so a format node can sit on it.
            let path = kv.require("filename")?;
            let direct = kv.take_bool("cache.direct", false)?;
            let aio = kv
                .take_choice("aio", AIOS, AIO_EXPECTED)?
                .unwrap_or_default();
            kv.finish()?;
            file_nodes.push((id, path.into(), direct, aio));
            return Ok(());
        }
        let format = FORMATS
            .iter()
            .find(|(n, _)| *n == driver)
            .map(|(_, f)| *f)
            .ok_or_else(|| OptionError::BadValue {
                option: "-blockdev",
                key: "driver".into(),
                value: driver.clone(),
                expected: "file, raw or qcow2",
            })?;
        let (path, direct, aio) = match (kv.take("file"), kv.take("file.filename")) {
            (Some(node), None) => {
                let Some((_, path, direct, aio)) =
                    file_nodes.iter().find(|(n, _, _, _)| *n == node)
                else {
                    return Err(OptionError::UnknownId {
                        by: format!("-blockdev node-name={id}"),
                        key: "file",
                        id: node,
                        expected: "an earlier -blockdev driver=file node",
                    });
                };
                (path.clone(), *direct, *aio)
            }
            (None, Some(path)) => {
                kv.take_choice("file.driver", &[("file", ())], "file")?;
                (
                    path.into(),
                    kv.take_bool("file.cache.direct", false)?,
                    kv.take_choice("file.aio", AIOS, AIO_EXPECTED)?
                        .unwrap_or_default(),
                )
            }
            _ => {
                return Err(OptionError::Conflict(format!(
                    "-blockdev node-name={id}: give exactly one of file=NODE or file.filename=PATH"
                )));
            }
        };
        let direct = kv.take_bool("cache.direct", direct)?;
        let drive = DriveConfig {
            id,
            path,
            format,
            read_only: kv.take_bool("read-only", false)?,
            cache: if direct {
                CacheMode::None
            } else {
                CacheMode::Writeback
            },
            discard: kv
                .take_choice("discard", DISCARDS, "ignore, off, unmap or on")?
                .unwrap_or(false),
            aio,
        };
        kv.finish()?;
        add_drive(cfg, ids, drive)?;
        Ok(())
    }
}
