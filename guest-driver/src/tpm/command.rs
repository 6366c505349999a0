//! TPM 2.0 commands over a [`Crb`], marshalled as TPM 2.0 Part 3
//! specifies each (the section is named on each method) with Part 2's
//! types, big endian. Commands that need authorization use one password
//! session (`TPM_RS_PW`) with an empty password.

use virtio_core::mmio::driver::RegisterAccess;

use super::{Crb, HEADER_LEN, TpmError};
use crate::wait::Wait;

/// `TPM_ST_NO_SESSIONS` (Part 2, 6.9).
const ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`.
const ST_SESSIONS: u16 = 0x8002;
/// `TPM_RS_PW`: the password session (Part 2, 7.4).
const RS_PW: u32 = 0x4000_0009;
/// `TPM_RH_OWNER` (Part 2, 7.4).
const RH_OWNER: u32 = 0x4000_0001;
/// `TPM_ALG_SHA256` (Part 2, 6.3).
pub const ALG_SHA256: u16 = 0x000b;
/// `TPM_CAP_TPM_PROPERTIES` (Part 2, 6.12).
pub const CAP_TPM_PROPERTIES: u32 = 6;
/// `TPM_PT_MANUFACTURER` (Part 2, 6.13).
pub const PT_MANUFACTURER: u32 = 0x105;
/// `TPM_RC_INITIALIZE`: TPM2_Startup already done, or not yet.
pub const RC_INITIALIZE: u32 = 0x100;
/// `TPM_RC_NV_DEFINED`: the NV index exists already.
pub const RC_NV_DEFINED: u32 = 0x14c;

/// Command codes (Part 2, 6.5.2).
mod cc {
    pub const NV_UNDEFINE_SPACE: u32 = 0x122;
    pub const NV_DEFINE_SPACE: u32 = 0x12a;
    pub const NV_WRITE: u32 = 0x137;
    pub const SELF_TEST: u32 = 0x143;
    pub const STARTUP: u32 = 0x144;
    pub const SHUTDOWN: u32 = 0x145;
    pub const NV_READ: u32 = 0x14e;
    pub const GET_CAPABILITY: u32 = 0x17a;
    pub const GET_RANDOM: u32 = 0x17b;
    pub const PCR_READ: u32 = 0x17e;
    pub const PCR_EXTEND: u32 = 0x182;
}

/// NV attributes (Part 2, `TPMA_NV`): written and read with the index's
/// own (empty) authorization, no dictionary-attack lockout.
const NV_AUTHWRITE: u32 = 1 << 2;
const NV_AUTHREAD: u32 = 1 << 18;
const NV_NO_DA: u32 = 1 << 25;

/// The startup and shutdown types (`TPM_SU`, Part 2, 6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Startup {
    /// `TPM_SU_CLEAR`: a TPM Reset (Startup) or a Shutdown that keeps
    /// nothing volatile.
    Clear = 0,
    /// `TPM_SU_STATE`: keep (Shutdown) or resume (Startup) the saved
    /// state: a TPM Resume keeps the PCRs.
    State = 1,
}

/// The largest command this driver builds.
const COMMAND_MAX: usize = 1024;
/// The largest response it reads (a CRB page's buffer).
const RESPONSE_MAX: usize = 0x1000 - 0x80;

/// Builds a command in a fixed buffer; overflowing is an argument error.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), TpmError> {
        let end = self.len + b.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(TpmError::Argument(
                "a command longer than the driver's buffer",
            ))?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }
    fn u8(&mut self, v: u8) -> Result<(), TpmError> {
        self.bytes(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), TpmError> {
        self.bytes(&v.to_be_bytes())
    }
    fn u32(&mut self, v: u32) -> Result<(), TpmError> {
        self.bytes(&v.to_be_bytes())
    }
    /// A `TPM2B`: a 16-bit size, then the bytes.
    fn sized(&mut self, b: &[u8]) -> Result<(), TpmError> {
        let n = u16::try_from(b.len()).map_err(|_| TpmError::Argument("a TPM2B over 64 KiB"))?;
        self.u16(n)?;
        self.bytes(b)
    }
    /// One password session with an empty password (`TPMS_AUTH_COMMAND`:
    /// handle, empty nonce, attributes 0, empty HMAC), behind its size.
    fn password_session(&mut self) -> Result<(), TpmError> {
        self.u32(4 + 2 + 1 + 2)?;
        self.u32(RS_PW)?;
        self.u16(0)?;
        self.u8(0)?;
        self.u16(0)
    }
    /// Writes the size into the header.
    fn finish(self) -> usize {
        let size = (self.len as u32).to_be_bytes();
        self.buf[2..6].copy_from_slice(&size);
        self.len
    }
}

/// Reads a response; running off its end is [`TpmError::Malformed`].
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TpmError> {
        let end = self.at.checked_add(n).ok_or(TpmError::Malformed(what))?;
        let b = self
            .buf
            .get(self.at..end)
            .ok_or(TpmError::Malformed(what))?;
        self.at = end;
        Ok(b)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, TpmError> {
        Ok(self.bytes(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, TpmError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, TpmError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn sized(&mut self, what: &'static str) -> Result<&'a [u8], TpmError> {
        let n = self.u16(what)?;
        self.bytes(n as usize, what)
    }
}

/// A TPM 2.0 behind a CRB interface, with the buffers its commands are
/// built and its responses read in.
pub struct Tpm<R> {
    crb: Crb<R>,
    cmd: [u8; COMMAND_MAX],
    rsp: [u8; RESPONSE_MAX],
}

impl<R> core::fmt::Debug for Tpm<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tpm").finish_non_exhaustive()
    }
}

impl<R: RegisterAccess> Tpm<R> {
    /// A TPM on `crb` (its locality granted and the TPM ready are the
    /// caller's: [`Crb::request_locality`], [`Crb::ready`]).
    pub fn new(crb: Crb<R>) -> Self {
        Tpm {
            crb,
            cmd: [0; COMMAND_MAX],
            rsp: [0; RESPONSE_MAX],
        }
    }

    /// The transport.
    pub fn crb(&self) -> &Crb<R> {
        &self.crb
    }

    /// A command with header `tag` and `code`, the rest built by `body`.
    fn command(
        &mut self,
        tag: u16,
        code: u32,
        body: impl FnOnce(&mut Writer<'_>) -> Result<(), TpmError>,
    ) -> Result<usize, TpmError> {
        let mut w = Writer {
            buf: &mut self.cmd,
            len: 0,
        };
        w.u16(tag)?;
        w.u32(0)?;
        w.u32(code)?;
        body(&mut w)?;
        Ok(w.finish())
    }

    /// Runs the command in `cmd[..len]`; on success, the response's
    /// parameter area (after the header, and after `parameterSize` when
    /// the response has sessions).
    fn run(&mut self, len: usize, wait: &mut impl Wait) -> Result<Reader<'_>, TpmError> {
        let n = self.crb.transact(&self.cmd[..len], &mut self.rsp, wait)?;
        let r = &self.rsp[..n];
        let tag = u16::from_be_bytes([r[0], r[1]]);
        let rc = u32::from_be_bytes([r[6], r[7], r[8], r[9]]);
        if rc != 0 {
            return Err(TpmError::Response(rc));
        }
        let mut reader = Reader {
            buf: r,
            at: HEADER_LEN,
        };
        match tag {
            ST_NO_SESSIONS => Ok(reader),
            ST_SESSIONS => {
                let size = reader.u32("parameterSize")? as usize;
                let end = reader
                    .at
                    .checked_add(size)
                    .filter(|e| *e <= n)
                    .ok_or(TpmError::Malformed("a parameterSize past the response"))?;
                Ok(Reader {
                    buf: &r[..end],
                    at: reader.at,
                })
            }
            _ => Err(TpmError::Malformed(
                "a tag neither NO_SESSIONS nor SESSIONS",
            )),
        }
    }

    /// TPM2_Startup (Part 3, 9.3).
    pub fn startup(&mut self, su: Startup, wait: &mut impl Wait) -> Result<(), TpmError> {
        let n = self.command(ST_NO_SESSIONS, cc::STARTUP, |w| w.u16(su as u16))?;
        self.run(n, wait).map(drop)
    }

    /// TPM2_Shutdown (Part 3, 9.4).
    pub fn shutdown(&mut self, su: Startup, wait: &mut impl Wait) -> Result<(), TpmError> {
        let n = self.command(ST_NO_SESSIONS, cc::SHUTDOWN, |w| w.u16(su as u16))?;
        self.run(n, wait).map(drop)
    }

    /// TPM2_SelfTest (Part 3, 10.2): `full` tests everything.
    pub fn self_test(&mut self, full: bool, wait: &mut impl Wait) -> Result<(), TpmError> {
        let n = self.command(ST_NO_SESSIONS, cc::SELF_TEST, |w| w.u8(u8::from(full)))?;
        self.run(n, wait).map(drop)
    }

    /// TPM2_GetRandom (Part 3, 16.1): fills the front of `out` (at most 64
    /// bytes asked at once); returns how many bytes the TPM gave.
    pub fn get_random(&mut self, out: &mut [u8], wait: &mut impl Wait) -> Result<usize, TpmError> {
        let want = out.len().min(64);
        let n = self.command(ST_NO_SESSIONS, cc::GET_RANDOM, |w| w.u16(want as u16))?;
        let mut r = self.run(n, wait)?;
        let got = r.sized("randomBytes")?;
        if got.len() > want {
            return Err(TpmError::Malformed("more random bytes than asked"));
        }
        out[..got.len()].copy_from_slice(got);
        Ok(got.len())
    }

    /// TPM2_GetCapability (Part 3, 30.2) of one TPM property
    /// (`TPM_CAP_TPM_PROPERTIES`): its value.
    pub fn tpm_property(&mut self, property: u32, wait: &mut impl Wait) -> Result<u32, TpmError> {
        let n = self.command(ST_NO_SESSIONS, cc::GET_CAPABILITY, |w| {
            w.u32(CAP_TPM_PROPERTIES)?;
            w.u32(property)?;
            w.u32(1)
        })?;
        let mut r = self.run(n, wait)?;
        let _more = r.u8("moreData")?;
        if r.u32("capability")? != CAP_TPM_PROPERTIES {
            return Err(TpmError::Malformed("another capability than asked"));
        }
        if r.u32("count")? == 0 {
            return Err(TpmError::Malformed("no property in the list"));
        }
        if r.u32("property")? != property {
            return Err(TpmError::Malformed("another property than asked"));
        }
        r.u32("value")
    }

    /// TPM2_PCR_Extend (Part 3, 22.2) of PCR `pcr` with one SHA-256
    /// digest.
    pub fn pcr_extend(
        &mut self,
        pcr: u32,
        digest: &[u8; 32],
        wait: &mut impl Wait,
    ) -> Result<(), TpmError> {
        let n = self.command(ST_SESSIONS, cc::PCR_EXTEND, |w| {
            w.u32(pcr)?;
            w.password_session()?;
            w.u32(1)?;
            w.u16(ALG_SHA256)?;
            w.bytes(digest)
        })?;
        self.run(n, wait).map(drop)
    }

    /// TPM2_PCR_Read (Part 3, 22.4) of PCR `pcr` (0 to 23) in the
    /// SHA-256 bank.
    pub fn pcr_read_sha256(
        &mut self,
        pcr: u32,
        wait: &mut impl Wait,
    ) -> Result<[u8; 32], TpmError> {
        if pcr > 23 {
            return Err(TpmError::Argument("a PCR above 23"));
        }
        let mut select = [0u8; 3];
        select[(pcr / 8) as usize] = 1 << (pcr % 8);
        let n = self.command(ST_NO_SESSIONS, cc::PCR_READ, |w| {
            w.u32(1)?;
            w.u16(ALG_SHA256)?;
            w.u8(3)?;
            w.bytes(&select)
        })?;
        let mut r = self.run(n, wait)?;
        let _update_counter = r.u32("pcrUpdateCounter")?;
        let banks = r.u32("pcrSelectionOut count")?;
        if banks != 1 {
            return Err(TpmError::Malformed("not the one bank asked"));
        }
        if r.u16("hash")? != ALG_SHA256 {
            return Err(TpmError::Malformed("another bank than SHA-256"));
        }
        let size = r.u8("sizeofSelect")?;
        let out_select = r.bytes(size as usize, "pcrSelect")?;
        if out_select.get(..3) != Some(&select[..]) {
            return Err(TpmError::Malformed("another PCR than asked"));
        }
        if r.u32("pcrValues count")? != 1 {
            return Err(TpmError::Malformed("not one digest"));
        }
        let d = r.sized("digest")?;
        d.try_into()
            .map_err(|_| TpmError::Malformed("a SHA-256 digest not 32 bytes"))
    }

    /// TPM2_NV_DefineSpace (Part 3, 31.3): an ordinary index of `size`
    /// bytes under the owner hierarchy, read and written with its own
    /// empty authorization.
    pub fn nv_define(
        &mut self,
        index: u32,
        size: u16,
        wait: &mut impl Wait,
    ) -> Result<(), TpmError> {
        let n = self.command(ST_SESSIONS, cc::NV_DEFINE_SPACE, |w| {
            w.u32(RH_OWNER)?;
            w.password_session()?;
            w.sized(&[])?;
            // TPM2B_NV_PUBLIC: its size, then TPMS_NV_PUBLIC.
            w.u16(4 + 2 + 4 + 2 + 2)?;
            w.u32(index)?;
            w.u16(ALG_SHA256)?;
            w.u32(NV_AUTHWRITE | NV_AUTHREAD | NV_NO_DA)?;
            w.sized(&[])?;
            w.u16(size)
        })?;
        self.run(n, wait).map(drop)
    }

    /// TPM2_NV_UndefineSpace (Part 3, 31.4).
    pub fn nv_undefine(&mut self, index: u32, wait: &mut impl Wait) -> Result<(), TpmError> {
        let n = self.command(ST_SESSIONS, cc::NV_UNDEFINE_SPACE, |w| {
            w.u32(RH_OWNER)?;
            w.u32(index)?;
            w.password_session()
        })?;
        self.run(n, wait).map(drop)
    }

    /// TPM2_NV_Write (Part 3, 31.7) of `data` at `offset`.
    pub fn nv_write(
        &mut self,
        index: u32,
        offset: u16,
        data: &[u8],
        wait: &mut impl Wait,
    ) -> Result<(), TpmError> {
        let n = self.command(ST_SESSIONS, cc::NV_WRITE, |w| {
            w.u32(index)?;
            w.u32(index)?;
            w.password_session()?;
            w.sized(data)?;
            w.u16(offset)
        })?;
        self.run(n, wait).map(drop)
    }

    /// TPM2_NV_Read (Part 3, 31.13) of `out.len()` bytes at `offset`.
    pub fn nv_read(
        &mut self,
        index: u32,
        offset: u16,
        out: &mut [u8],
        wait: &mut impl Wait,
    ) -> Result<(), TpmError> {
        let size = u16::try_from(out.len()).map_err(|_| TpmError::Argument("over 64 KiB"))?;
        let n = self.command(ST_SESSIONS, cc::NV_READ, |w| {
            w.u32(index)?;
            w.u32(index)?;
            w.password_session()?;
            w.u16(size)?;
            w.u16(offset)
        })?;
        let mut r = self.run(n, wait)?;
        let d = r.sized("data")?;
        if d.len() != out.len() {
            return Err(TpmError::Malformed("NV data of another size than asked"));
        }
        out.copy_from_slice(d);
        Ok(())
    }
}
