//! The CRB transport (PTP 6.5.3): register access through virtio-core's
//! [`RegisterAccess`] (32-bit and byte accesses at offsets from the
//! interface's base, `0xFED4_0000` on a PC), one locality's page at a time.

use core::cell::Cell;

use virtio_core::mmio::driver::RegisterAccess;

use super::{HEADER_LEN, TpmError};
use crate::wait::Wait;

/// The interface's usual base address (PTP: locality 0's page).
pub const CRB_BASE: u64 = 0xFED4_0000;
/// The PC's TPM address range from [`CRB_BASE`]: the five locality pages
/// and whatever the interface puts after them (its buffers may be
/// anywhere in it).
pub const CRB_SPAN: u64 = 0x1_0000;

/// Register offsets in a locality's page (PTP's CRB register table).
pub mod reg {
    /// `TPM_LOC_STATE_x`.
    pub const LOC_STATE: u64 = 0x00;
    /// `TPM_LOC_CTRL_x`.
    pub const LOC_CTRL: u64 = 0x08;
    /// `TPM_LOC_STS_x`.
    pub const LOC_STS: u64 = 0x0c;
    /// `TPM_CRB_INTF_ID_x`.
    pub const INTF_ID: u64 = 0x30;
    /// `TPM_CRB_CTRL_REQ_x`.
    pub const CTRL_REQ: u64 = 0x40;
    /// `TPM_CRB_CTRL_STS_x`.
    pub const CTRL_STS: u64 = 0x44;
    /// `TPM_CRB_CTRL_CANCEL_x`.
    pub const CTRL_CANCEL: u64 = 0x48;
    /// `TPM_CRB_CTRL_START_x`.
    pub const CTRL_START: u64 = 0x4c;
    /// `TPM_CRB_CTRL_CMD_SIZE_x`.
    pub const CMD_SIZE: u64 = 0x58;
    /// `TPM_CRB_CTRL_CMD_LADDR_x`.
    pub const CMD_LADDR: u64 = 0x5c;
    /// `TPM_CRB_CTRL_CMD_HADDR_x`.
    pub const CMD_HADDR: u64 = 0x60;
    /// `TPM_CRB_CTRL_RSP_SIZE_x`.
    pub const RSP_SIZE: u64 = 0x64;
    /// `TPM_CRB_CTRL_RSP_ADDR_x` (64 bits).
    pub const RSP_ADDR: u64 = 0x68;
    /// `TPM_CRB_DATA_BUFFER_x`.
    pub const DATA_BUFFER: u64 = 0x80;
}

/// `TPM_LOC_STATE_x.locAssigned`.
const LOC_ASSIGNED: u32 = 1 << 1;
/// `TPM_LOC_STATE_x.tpmRegValidSts`.
const REG_VALID: u32 = 1 << 7;
/// `TPM_LOC_STS_x.Granted`.
const GRANTED: u32 = 1;
/// `CTRL_STS.tpmSts` (fatal error).
const STS_FATAL: u32 = 1;
/// `CTRL_STS.tpmIdle`.
const STS_IDLE: u32 = 1 << 1;

/// One locality's view of a CRB interface.
#[derive(Debug)]
pub struct Crb<R> {
    regs: R,
    locality: u8,
    /// The command buffer: offset from the base, size.
    cmd: (u64, usize),
    /// The response buffer.
    rsp: (u64, usize),
    /// `CANCEL` was written 1 and not yet cleared.
    cancelled: Cell<bool>,
    /// A command timed out with `START` still set: the next one waits for
    /// it to clear first, so that its answer is not taken for the next.
    busy: Cell<bool>,
}

impl<R: RegisterAccess> Crb<R> {
    /// The interface at `regs` (the TPM range from [`CRB_BASE`]) as
    /// `locality` (0 to 4). Reads where the locality's control area puts
    /// the command and response buffers (`CMD_LADDR`, `RSP_ADDR`: they
    /// may be anywhere in the range, PTP 6.5.3); one outside it is
    /// refused.
    pub fn new(regs: R, locality: u8) -> Result<Self, TpmError> {
        Self::at(regs, CRB_BASE, locality)
    }

    /// [`new`](Self::new) for an interface at `base`.
    pub fn at(regs: R, base: u64, locality: u8) -> Result<Self, TpmError> {
        if locality > 4 {
            return Err(TpmError::Argument("a locality above 4"));
        }
        let page = u64::from(locality) * 0x1000;
        let r32 = |r: u64| u64::from(regs.read32(page + r));
        let buffer = |addr: u64, size: u64, what| {
            let off = addr
                .checked_sub(base)
                .filter(|o| o.checked_add(size).is_some_and(|end| end <= CRB_SPAN))
                .ok_or(TpmError::Malformed(what))?;
            if size < HEADER_LEN as u64 || !off.is_multiple_of(4) {
                return Err(TpmError::Malformed(what));
            }
            Ok((off, size as usize))
        };
        let cmd = buffer(
            r32(reg::CMD_HADDR) << 32 | r32(reg::CMD_LADDR),
            r32(reg::CMD_SIZE),
            "a command buffer outside the TPM range, unaligned or too small",
        )?;
        let rsp = buffer(
            r32(reg::RSP_ADDR + 4) << 32 | r32(reg::RSP_ADDR),
            r32(reg::RSP_SIZE),
            "a response buffer outside the TPM range, unaligned or too small",
        )?;
        Ok(Crb {
            regs,
            locality,
            cmd,
            rsp,
            cancelled: Cell::new(false),
            busy: Cell::new(false),
        })
    }

    /// The register access underneath.
    pub fn regs(&self) -> &R {
        &self.regs
    }

    /// This view's locality.
    pub fn locality(&self) -> u8 {
        self.locality
    }

    fn off(&self, r: u64) -> u64 {
        u64::from(self.locality) * 0x1000 + r
    }

    /// Reads one of this locality's registers.
    pub fn read(&self, r: u64) -> u32 {
        self.regs.read32(self.off(r))
    }

    fn write(&self, r: u64, v: u32) {
        self.regs.write32(self.off(r), v)
    }

    /// `TPM_LOC_STATE_x`'s active locality, if one is assigned and the
    /// register is valid.
    pub fn active_locality(&self) -> Option<u8> {
        let s = self.read(reg::LOC_STATE);
        (s & (LOC_ASSIGNED | REG_VALID) == LOC_ASSIGNED | REG_VALID).then_some(((s >> 2) & 7) as u8)
    }

    /// Requests this locality and waits until it is granted.
    pub fn request_locality(&self, wait: &mut impl Wait) -> Result<(), TpmError> {
        self.write(reg::LOC_CTRL, 1);
        loop {
            if self.read(reg::LOC_STS) & GRANTED != 0
                && self.active_locality() == Some(self.locality)
            {
                return Ok(());
            }
            if !wait.wait() {
                return Err(TpmError::LocalityNotGranted(self.locality));
            }
        }
    }

    /// Lets the locality go.
    pub fn relinquish(&self) {
        self.write(reg::LOC_CTRL, 1 << 1);
    }

    /// Asks the TPM to leave idle (`cmdReady`) and waits until it has.
    pub fn ready(&self, wait: &mut impl Wait) -> Result<(), TpmError> {
        self.write(reg::CTRL_REQ, 1);
        loop {
            let sts = self.read(reg::CTRL_STS);
            if sts & STS_FATAL != 0 {
                return Err(TpmError::Fatal);
            }
            if sts & STS_IDLE == 0 && self.read(reg::CTRL_REQ) == 0 {
                return Ok(());
            }
            if !wait.wait() {
                return Err(TpmError::NotReady);
            }
        }
    }

    /// Sends the TPM to idle (`goIdle`).
    pub fn go_idle(&self) {
        self.write(reg::CTRL_REQ, 1 << 1);
    }

    /// Asks the TPM to cancel the running command (its response says
    /// whether it could).
    pub fn cancel(&self) {
        self.cancelled.set(true);
        self.write(reg::CTRL_CANCEL, 1);
    }

    /// The command buffer's size as the interface gives it.
    pub fn command_limit(&self) -> usize {
        self.cmd.1
    }

    /// Where the command and response buffers are (offsets from the
    /// interface's base).
    pub fn buffers(&self) -> (u64, u64) {
        (self.cmd.0, self.rsp.0)
    }

    /// Writes `command` to the data buffer, starts it, waits for `START`
    /// to clear, and reads the response into `response`; returns its
    /// length. The locality must be granted and the TPM ready.
    pub fn transact(
        &self,
        command: &[u8],
        response: &mut [u8],
        wait: &mut impl Wait,
    ) -> Result<usize, TpmError> {
        let limit = self.command_limit();
        if command.len() > limit {
            return Err(TpmError::CommandTooLarge {
                len: command.len(),
                limit,
            });
        }
        if self.busy.get() {
            while self.read(reg::CTRL_START) & 1 != 0 {
                if !wait.wait() {
                    return Err(TpmError::Timeout);
                }
            }
            self.busy.set(false);
        }
        if self.cancelled.replace(false) {
            self.write(reg::CTRL_CANCEL, 0);
        }
        self.put(command);
        self.write(reg::CTRL_START, 1);
        while self.read(reg::CTRL_START) & 1 != 0 {
            if !wait.wait() {
                self.busy.set(true);
                return Err(TpmError::Timeout);
            }
        }
        if self.read(reg::CTRL_STS) & STS_FATAL != 0 {
            return Err(TpmError::Fatal);
        }
        let rsp_limit = self.rsp.1;
        // The header and the next two bytes (three dword reads), then the
        // rest from offset 12, so that every dword read stays aligned.
        let mut head = [0u8; HEADER_LEN + 2];
        self.get(0, &mut head);
        let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
        if size < HEADER_LEN || size > rsp_limit {
            return Err(TpmError::Malformed("a response size outside the buffer"));
        }
        if size > response.len() {
            return Err(TpmError::Argument(
                "a response buffer smaller than the response",
            ));
        }
        let first = size.min(head.len());
        response[..first].copy_from_slice(&head[..first]);
        if size > head.len() {
            self.get(head.len(), &mut response[head.len()..size]);
        }
        Ok(size)
    }

    /// Writes `bytes` to the data buffer: dwords, then the tail by bytes.
    fn put(&self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(4);
        let mut at = self.cmd.0;
        for w in &mut words {
            self.regs
                .write32(at, u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            at += 4;
        }
        for b in words.remainder() {
            self.regs.write8(at, *b);
            at += 1;
        }
    }

    /// Reads the data buffer from `from` (a multiple of 4) into `out`,
    /// the same way.
    fn get(&self, from: usize, out: &mut [u8]) {
        let mut at = self.rsp.0 + from as u64;
        let mut words = out.chunks_exact_mut(4);
        for w in &mut words {
            w.copy_from_slice(&self.regs.read32(at).to_le_bytes());
            at += 4;
        }
        for b in words.into_remainder() {
            *b = self.regs.read8(at);
            at += 1;
        }
    }
}
