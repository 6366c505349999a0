//! TPM 2.0 commands the TPM backend tests send (TPM 2.0 Part 3's
//! layouts), shared by `tpm_emulator.rs` and `tpm_passthrough.rs`.
#![allow(dead_code)]

/// TPM2_Startup(CLEAR) (Part 3, 9.3): tag, size, command code, type.
pub const STARTUP_CLEAR: [u8; 12] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44, 0, 0];

/// TPM2_GetRandom of `n` bytes (Part 3, 16.1).
pub fn get_random(n: u16) -> Vec<u8> {
    let mut c = vec![0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b];
    c.extend_from_slice(&n.to_be_bytes());
    c
}

/// The response code (bytes 6..10).
pub fn rc(resp: &[u8]) -> u32 {
    u32::from_be_bytes(resp[6..10].try_into().unwrap())
}
