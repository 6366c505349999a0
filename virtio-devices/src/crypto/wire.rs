//! The virtio-crypto request formats (§5.9.7), parsed from the bytes of a
//! request's device-readable part into typed requests that borrow them:
//! pure functions, so a fuzz target reaches them without a ring.
//!
//! Without `VIRTIO_CRYPTO_F_REVISION_1` every opcode-specific fixed part
//! is padded to 56 bytes (control) or 48 bytes (data) (§5.9.7.2, §5.9.7.3);
//! with it each has its own size, and a service whose stateless mode is
//! negotiated takes stateless requests (`flag` without
//! `VIRTIO_CRYPTO_FLAG_SESSION_MODE`) in its stateless layout.

use backends::crypto::{
    AeadAlgo, AkcipherOp, CipherAlgo, Direction, HashAlgo, KeyType, MacAlgo, RsaPadding,
    SessionSpec,
};
use virtio_core::features::CryptoFeatures;

pub use virtio_core::crypto::{
    CTRL_FLF_LEGACY, CTRL_HEADER, DATA_FLF_LEGACY, DATA_HEADER, FLAG_SESSION_MODE, SESSION_INPUT,
    Service, Status, ctrl, data,
};
use virtio_core::crypto::{OP_DECRYPT, OP_ENCRYPT, SYM_OP_CHAINING, SYM_OP_CIPHER, algo, rsa};

/// The cipher of virtio algorithm number `n` (§5.9.2.1).
pub fn cipher_algo(n: u32) -> Option<CipherAlgo> {
    Some(match n {
        algo::CIPHER_AES_ECB => CipherAlgo::AesEcb,
        algo::CIPHER_AES_CBC => CipherAlgo::AesCbc,
        algo::CIPHER_AES_CTR => CipherAlgo::AesCtr,
        algo::CIPHER_AES_XTS => CipherAlgo::AesXts,
        _ => return None,
    })
}

/// The virtio number of `a` (§5.9.2.1).
pub fn cipher_number(a: CipherAlgo) -> u32 {
    match a {
        CipherAlgo::AesEcb => algo::CIPHER_AES_ECB,
        CipherAlgo::AesCbc => algo::CIPHER_AES_CBC,
        CipherAlgo::AesCtr => algo::CIPHER_AES_CTR,
        CipherAlgo::AesXts => algo::CIPHER_AES_XTS,
    }
}

/// The hash of virtio hash number `n` (§5.9.2.2); the MAC numbers of the
/// HMACs are the same (§5.9.2.3).
pub fn hash_algo(n: u32) -> Option<HashAlgo> {
    Some(match n {
        algo::SHA1 => HashAlgo::Sha1,
        algo::SHA224 => HashAlgo::Sha224,
        algo::SHA256 => HashAlgo::Sha256,
        algo::SHA384 => HashAlgo::Sha384,
        algo::SHA512 => HashAlgo::Sha512,
        _ => return None,
    })
}

/// The virtio number of `h` (as a hash, and of its HMAC as a MAC).
pub fn hash_number(h: HashAlgo) -> u32 {
    match h {
        HashAlgo::Sha1 => algo::SHA1,
        HashAlgo::Sha224 => algo::SHA224,
        HashAlgo::Sha256 => algo::SHA256,
        HashAlgo::Sha384 => algo::SHA384,
        HashAlgo::Sha512 => algo::SHA512,
    }
}

/// The hash of an RSA session's `hash_algo` (§5.9.7.2.1.5): `Ok(None)`
/// for NO_HASH, `Err` for one not offered (MD2 to MD5).
fn rsa_hash(n: u32) -> Result<Option<HashAlgo>, Status> {
    Ok(Some(match n {
        rsa::NO_HASH => return Ok(None),
        rsa::SHA1 => HashAlgo::Sha1,
        rsa::SHA256 => HashAlgo::Sha256,
        rsa::SHA384 => HashAlgo::Sha384,
        rsa::SHA512 => HashAlgo::Sha512,
        rsa::SHA224 => HashAlgo::Sha224,
        _ => return Err(Status::NotSupp),
    }))
}

/// Little-endian fields read from a byte slice, each checked.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u32(&self, at: usize) -> Result<u32, Status> {
        let b = self.0.get(at..at + 4).ok_or(Status::Err)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, at: usize) -> Result<u64, Status> {
        let lo = u64::from(self.u32(at)?);
        let hi = u64::from(self.u32(at + 4)?);
        Ok(lo | hi << 32)
    }
}

/// The variable-length part, taken in order.
struct Vlf<'a>(&'a [u8]);

impl<'a> Vlf<'a> {
    fn take(&mut self, n: u32) -> Result<&'a [u8], Status> {
        let n = n as usize;
        if n > self.0.len() {
            return Err(Status::Err);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

/// A control request (§5.9.7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctrl<'a> {
    /// Create a session of `service`.
    Create {
        /// The service.
        service: Service,
        /// What the session is made of.
        spec: SessionSpec<'a>,
    },
    /// Destroy session `id` of `service`.
    Destroy {
        /// The service named by the opcode.
        service: Service,
        /// The session.
        id: u64,
    },
}

/// The opcode of a control request's header, if it has one.
pub fn ctrl_opcode(req: &[u8]) -> Option<u32> {
    Fields(req).u32(0).ok()
}

/// Parses the readable part of a control request under the negotiated
/// `features` (crypto bits).
pub fn parse_ctrl(features: CryptoFeatures, req: &[u8]) -> Result<Ctrl<'_>, Status> {
    let rev1 = features.contains(CryptoFeatures::REVISION_1);
    let h = Fields(req);
    let op = h.u32(0)?;
    let body = req.get(CTRL_HEADER..).ok_or(Status::Err)?;
    // The fixed part's size: its own with REVISION_1, else padded to 56.
    let flf_len = |own: usize| if rev1 { own } else { CTRL_FLF_LEGACY };
    let split = |own: usize| -> Result<(Fields<'_>, Vlf<'_>), Status> {
        let n = flf_len(own);
        if body.len() < n {
            return Err(Status::Err);
        }
        let (f, v) = body.split_at(n);
        Ok((Fields(f), Vlf(v)))
    };
    let service = Service::of_opcode(op).ok_or(Status::NotSupp)?;
    let destroy = |service| -> Result<Ctrl<'_>, Status> {
        let (f, _) = split(8)?;
        Ok(Ctrl::Destroy {
            service,
            id: f.u64(0)?,
        })
    };
    let direction = |op: u32| match op {
        OP_ENCRYPT => Ok(Direction::Encrypt),
        OP_DECRYPT => Ok(Direction::Decrypt),
        _ => Err(Status::Err),
    };
    let spec = match op {
        ctrl::CIPHER_CREATE => {
            // virtio_crypto_sym_create_session_flf: op_flf[48], op_type.
            let (f, mut v) = split(56)?;
            match f.u32(48)? {
                SYM_OP_CIPHER => {}
                SYM_OP_CHAINING => return Err(Status::NotSupp),
                _ => return Err(Status::NotSupp),
            }
            let algo = cipher_algo(f.u32(0)?).ok_or(Status::NotSupp)?;
            let key = v.take(f.u32(4)?)?;
            SessionSpec::Cipher {
                algo,
                key,
                direction: direction(f.u32(8)?)?,
            }
        }
        ctrl::HASH_CREATE => {
            let (f, _) = split(8)?;
            SessionSpec::Hash {
                algo: hash_algo(f.u32(0)?).ok_or(Status::NotSupp)?,
                result_len: f.u32(4)?,
            }
        }
        ctrl::MAC_CREATE => {
            let (f, mut v) = split(16)?;
            let algo = MacAlgo(hash_algo(f.u32(0)?).ok_or(Status::NotSupp)?);
            let result_len = f.u32(4)?;
            let key = v.take(f.u32(8)?)?;
            SessionSpec::Mac {
                algo,
                key,
                result_len,
            }
        }
        ctrl::AEAD_CREATE => {
            let (f, mut v) = split(24)?;
            if f.u32(0)? != algo::AEAD_GCM {
                return Err(Status::NotSupp);
            }
            let key = v.take(f.u32(4)?)?;
            SessionSpec::Aead {
                algo: AeadAlgo::AesGcm,
                key,
                tag_len: f.u32(8)?,
                direction: direction(f.u32(16)?)?,
            }
        }
        ctrl::AKCIPHER_CREATE => {
            let (f, mut v) = split(56)?;
            if f.u32(0)? != algo::AKCIPHER_RSA {
                // Only RSA (ECDSA not offered).
                return Err(Status::NotSupp);
            }
            let key_type = match f.u32(4)? {
                rsa::KEY_TYPE_PUBLIC => KeyType::Public,
                rsa::KEY_TYPE_PRIVATE => KeyType::Private,
                _ => return Err(Status::Err),
            };
            let key = v.take(f.u32(8)?)?;
            // algo_flf: struct virtio_crypto_rsa_session_para.
            let padding = match f.u32(12)? {
                rsa::RAW_PADDING => RsaPadding::Raw,
                rsa::PKCS1_PADDING => RsaPadding::Pkcs1 {
                    hash: rsa_hash(f.u32(16)?)?,
                },
                _ => return Err(Status::NotSupp),
            };
            SessionSpec::Rsa {
                key_type,
                key,
                padding,
            }
        }
        ctrl::CIPHER_DESTROY
        | ctrl::HASH_DESTROY
        | ctrl::MAC_DESTROY
        | ctrl::AEAD_DESTROY
        | ctrl::AKCIPHER_DESTROY => return destroy(service),
        _ => return Err(Status::NotSupp),
    };
    Ok(Ctrl::Create { service, spec })
}

/// Whose parameters a data request runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode<'a> {
    /// A session made on the control queue.
    Session(u64),
    /// Parameters carried in the request (stateless mode, §5.9.7).
    Stateless(SessionSpec<'a>),
}

/// A data request (§5.9.7.3 to §5.9.7.7), borrowing its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data<'a> {
    /// CIPHER_ENCRYPT or CIPHER_DECRYPT.
    Cipher {
        /// Which way.
        direction: Direction,
        /// Under what.
        mode: Mode<'a>,
        /// The IV or counter.
        iv: &'a [u8],
        /// The input.
        src: &'a [u8],
        /// The output's length.
        dst_len: u32,
    },
    /// HASH or MAC.
    Digest {
        /// The service (hash or MAC).
        service: Service,
        /// Under what.
        mode: Mode<'a>,
        /// The input.
        src: &'a [u8],
        /// The result's length.
        result_len: u32,
    },
    /// AEAD_ENCRYPT or AEAD_DECRYPT.
    Aead {
        /// Which way.
        direction: Direction,
        /// Under what.
        mode: Mode<'a>,
        /// The IV.
        iv: &'a [u8],
        /// The additional authenticated data.
        aad: &'a [u8],
        /// The input (with the tag when decrypting).
        src: &'a [u8],
        /// The output's length.
        dst_len: u32,
    },
    /// AKCIPHER_ENCRYPT, _DECRYPT or _SIGN.
    Akcipher {
        /// Which operation.
        op: AkcipherOp,
        /// Under what.
        mode: Mode<'a>,
        /// The input.
        src: &'a [u8],
        /// The output's room.
        dst_len: u32,
    },
    /// AKCIPHER_VERIFY: the signature then the signed digest, both read.
    Verify {
        /// Under what.
        mode: Mode<'a>,
        /// The signature.
        signature: &'a [u8],
        /// The signed digest.
        digest: &'a [u8],
    },
}

impl Data<'_> {
    /// The request's service.
    pub fn service(&self) -> Service {
        match self {
            Data::Cipher { .. } => Service::Cipher,
            Data::Digest { service, .. } => *service,
            Data::Aead { .. } => Service::Aead,
            Data::Akcipher { .. } | Data::Verify { .. } => Service::Akcipher,
        }
    }

    /// Under what the request runs.
    pub fn mode(&self) -> &Mode<'_> {
        match self {
            Data::Cipher { mode, .. }
            | Data::Digest { mode, .. }
            | Data::Aead { mode, .. }
            | Data::Akcipher { mode, .. }
            | Data::Verify { mode, .. } => mode,
        }
    }
}

/// The opcode of a data request's header, if it has one.
pub fn data_opcode(req: &[u8]) -> Option<u32> {
    Fields(req).u32(0).ok()
}

/// Parses the readable part of a data request under the negotiated
/// `features` (crypto bits); `max_size` bounds every length.
pub fn parse_data(features: CryptoFeatures, req: &[u8], max_size: u64) -> Result<Data<'_>, Status> {
    let rev1 = features.contains(CryptoFeatures::REVISION_1);
    let h = Fields(req);
    let op = h.u32(0)?;
    let session_id = h.u64(8)?;
    let flag = h.u32(16)?;
    let body = req.get(DATA_HEADER..).ok_or(Status::Err)?;
    let service = Service::of_opcode(op).ok_or(Status::NotSupp)?;
    // §5.9.7.3: stateless only where negotiated; with REVISION_1 and
    // without it, a request not in session mode is rejected.
    let stateless = if rev1 && flag & FLAG_SESSION_MODE == 0 {
        if !features.contains(service.stateless_feature()) {
            return Err(Status::NotSupp);
        }
        true
    } else {
        false
    };
    let split = |own: usize| -> Result<(Fields<'_>, Vlf<'_>), Status> {
        let n = if rev1 || stateless {
            own
        } else {
            DATA_FLF_LEGACY
        };
        if body.len() < n {
            return Err(Status::Err);
        }
        let (f, v) = body.split_at(n);
        Ok((Fields(f), Vlf(v)))
    };
    let bounded = |n: u32| {
        if u64::from(n) > max_size {
            Err(Status::Err)
        } else {
            Ok(n)
        }
    };
    let direction = |op: u32| match op {
        OP_ENCRYPT => Ok(Direction::Encrypt),
        OP_DECRYPT => Ok(Direction::Decrypt),
        _ => Err(Status::Err),
    };
    let session = Mode::Session(session_id);
    Ok(match op {
        data::CIPHER_ENCRYPT | data::CIPHER_DECRYPT => {
            let dir = if op == data::CIPHER_ENCRYPT {
                Direction::Encrypt
            } else {
                Direction::Decrypt
            };
            if stateless {
                // sym_data_flf_stateless: op_type_flf[72], op_type.
                let (f, mut v) = split(76)?;
                if f.u32(72)? != SYM_OP_CIPHER {
                    return Err(Status::NotSupp);
                }
                let algo = cipher_algo(f.u32(0)?).ok_or(Status::NotSupp)?;
                let key = v.take(bounded(f.u32(4)?)?)?;
                let spec = SessionSpec::Cipher {
                    algo,
                    key,
                    direction: direction(f.u32(8)?)?,
                };
                let iv = v.take(bounded(f.u32(12)?)?)?;
                let src = v.take(bounded(f.u32(16)?)?)?;
                Data::Cipher {
                    direction: dir,
                    mode: Mode::Stateless(spec),
                    iv,
                    src,
                    dst_len: bounded(f.u32(20)?)?,
                }
            } else {
                // sym_data_flf: op_type_flf[40], op_type, padding.
                let (f, mut v) = split(48)?;
                match f.u32(40)? {
                    SYM_OP_CIPHER => {}
                    _ => return Err(Status::NotSupp),
                }
                let iv = v.take(bounded(f.u32(0)?)?)?;
                let src = v.take(bounded(f.u32(4)?)?)?;
                Data::Cipher {
                    direction: dir,
                    mode: session,
                    iv,
                    src,
                    dst_len: bounded(f.u32(8)?)?,
                }
            }
        }
        // Session mode: the hash and MAC parts are the same
        // (`virtio_crypto_mac_data_flf` wraps `_hash_data_flf`).
        data::HASH | data::MAC if !stateless => {
            let (f, mut v) = split(8)?;
            let src = v.take(bounded(f.u32(0)?)?)?;
            Data::Digest {
                service,
                mode: session,
                src,
                result_len: bounded(f.u32(4)?)?,
            }
        }
        data::HASH => {
            let (f, mut v) = split(16)?;
            let algo = hash_algo(f.u32(0)?).ok_or(Status::NotSupp)?;
            let result_len = bounded(f.u32(8)?)?;
            let src = v.take(bounded(f.u32(4)?)?)?;
            Data::Digest {
                service,
                mode: Mode::Stateless(SessionSpec::Hash { algo, result_len }),
                src,
                result_len,
            }
        }
        data::MAC => {
            let (f, mut v) = split(16)?;
            let algo = MacAlgo(hash_algo(f.u32(0)?).ok_or(Status::NotSupp)?);
            let key = v.take(bounded(f.u32(4)?)?)?;
            let src = v.take(bounded(f.u32(8)?)?)?;
            let result_len = bounded(f.u32(12)?)?;
            Data::Digest {
                service,
                mode: Mode::Stateless(SessionSpec::Mac {
                    algo,
                    key,
                    result_len,
                }),
                src,
                result_len,
            }
        }
        data::AEAD_ENCRYPT | data::AEAD_DECRYPT => {
            let dir = if op == data::AEAD_ENCRYPT {
                Direction::Encrypt
            } else {
                Direction::Decrypt
            };
            if stateless {
                let (f, mut v) = split(32)?;
                if f.u32(0)? != algo::AEAD_GCM {
                    return Err(Status::NotSupp);
                }
                let key = v.take(bounded(f.u32(4)?)?)?;
                let spec = SessionSpec::Aead {
                    algo: AeadAlgo::AesGcm,
                    key,
                    tag_len: f.u32(16)?,
                    direction: direction(f.u32(8)?)?,
                };
                let iv = v.take(bounded(f.u32(12)?)?)?;
                let src = v.take(bounded(f.u32(24)?)?)?;
                let aad = v.take(bounded(f.u32(20)?)?)?;
                Data::Aead {
                    direction: dir,
                    mode: Mode::Stateless(spec),
                    iv,
                    aad,
                    src,
                    dst_len: bounded(f.u32(28)?)?,
                }
            } else {
                // iv_len, aad_len, src_len, dst_len, tag_len, reserved.
                let (f, mut v) = split(24)?;
                let iv = v.take(bounded(f.u32(0)?)?)?;
                let src = v.take(bounded(f.u32(8)?)?)?;
                let aad = v.take(bounded(f.u32(4)?)?)?;
                Data::Aead {
                    direction: dir,
                    mode: session,
                    iv,
                    aad,
                    src,
                    dst_len: bounded(f.u32(12)?)?,
                }
            }
        }
        data::AKCIPHER_ENCRYPT
        | data::AKCIPHER_DECRYPT
        | data::AKCIPHER_SIGN
        | data::AKCIPHER_VERIFY => {
            let (mode, src_len, dst_len, mut v) = if stateless {
                // sess_para {algo, key_type, key_len, rsa {padding, hash}},
                // src_data_len, dst_data_len.
                let (f, mut v) = split(28)?;
                if f.u32(0)? != algo::AKCIPHER_RSA {
                    return Err(Status::NotSupp);
                }
                let key_type = match f.u32(4)? {
                    rsa::KEY_TYPE_PUBLIC => KeyType::Public,
                    rsa::KEY_TYPE_PRIVATE => KeyType::Private,
                    _ => return Err(Status::Err),
                };
                let padding = match f.u32(12)? {
                    rsa::RAW_PADDING => RsaPadding::Raw,
                    rsa::PKCS1_PADDING => RsaPadding::Pkcs1 {
                        hash: rsa_hash(f.u32(16)?)?,
                    },
                    _ => return Err(Status::NotSupp),
                };
                let key = v.take(bounded(f.u32(8)?)?)?;
                let spec = SessionSpec::Rsa {
                    key_type,
                    key,
                    padding,
                };
                (
                    Mode::Stateless(spec),
                    bounded(f.u32(20)?)?,
                    bounded(f.u32(24)?)?,
                    v,
                )
            } else {
                let (f, v) = split(8)?;
                (session, bounded(f.u32(0)?)?, bounded(f.u32(4)?)?, v)
            };
            let src = v.take(src_len)?;
            if op == data::AKCIPHER_VERIFY {
                // §5.9.7.7: the signed data follows the signature.
                Data::Verify {
                    mode,
                    signature: src,
                    digest: v.take(dst_len)?,
                }
            } else {
                let op = match op {
                    data::AKCIPHER_ENCRYPT => AkcipherOp::Encrypt,
                    data::AKCIPHER_DECRYPT => AkcipherOp::Decrypt,
                    _ => AkcipherOp::Sign,
                };
                Data::Akcipher {
                    op,
                    mode,
                    src,
                    dst_len,
                }
            }
        }
        _ => return Err(Status::NotSupp),
    })
}

/// The configuration space (§5.9.4): 56 bytes.
pub const CONFIG_LEN: usize = virtio_core::crypto::config::LEN;

/// `VIRTIO_CRYPTO_S_HW_READY`.
pub const S_HW_READY: u32 = virtio_core::crypto::config::S_HW_READY;

/// The configuration space for `caps` with `data_queues` data queues
/// (§5.9.4): every service the backend offers, its algorithms as bits,
/// the key limits and `max_size`.
pub fn config(caps: &backends::crypto::Capabilities, data_queues: u16) -> [u8; CONFIG_LEN] {
    let mut services = 0u32;
    let mut cipher = 0u64;
    for a in caps.cipher {
        cipher |= 1 << cipher_number(*a);
    }
    if cipher != 0 {
        services |= 1 << Service::Cipher as u32;
    }
    let mut hash = 0u32;
    for h in caps.hash {
        hash |= 1 << hash_number(*h);
    }
    if hash != 0 {
        services |= 1 << Service::Hash as u32;
    }
    let mut mac = 0u64;
    for m in caps.mac {
        mac |= 1 << hash_number(m.0);
    }
    if mac != 0 {
        services |= 1 << Service::Mac as u32;
    }
    let aead = if caps.aead.is_empty() { 0u32 } else { 1 << 1 };
    if aead != 0 {
        services |= 1 << Service::Aead as u32;
    }
    let akcipher = if caps.rsa { 1u32 << 1 } else { 0 };
    if akcipher != 0 {
        services |= 1 << Service::Akcipher as u32;
    }
    let words: [u32; 12] = [
        S_HW_READY,
        u32::from(data_queues),
        services,
        cipher as u32,
        (cipher >> 32) as u32,
        hash,
        mac as u32,
        (mac >> 32) as u32,
        aead,
        caps.max_cipher_key_len,
        caps.max_auth_key_len,
        akcipher,
    ];
    let mut out = [0u8; CONFIG_LEN];
    for (i, w) in words.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out[48..56].copy_from_slice(&caps.max_request_size.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn le(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// §5.9.7.2: a legacy CIPHER create-session request (the layout
    /// Linux sends: header, the fixed part padded to 56, the key).
    #[test]
    fn section_5_9_7_2_legacy_cipher_create_session() {
        let mut req = le(&[ctrl::CIPHER_CREATE, 3, 0, 0]);
        let mut flf = le(&[3, 16, OP_ENCRYPT, 0]);
        flf.resize(48, 0);
        flf.extend(le(&[SYM_OP_CIPHER, 0]));
        req.extend(flf);
        req.extend([7u8; 16]);
        match parse_ctrl(CryptoFeatures::empty(), &req) {
            Ok(Ctrl::Create {
                service: Service::Cipher,
                spec:
                    SessionSpec::Cipher {
                        algo: CipherAlgo::AesCbc,
                        key,
                        direction: Direction::Encrypt,
                    },
            }) => assert_eq!(key, &[7; 16]),
            r => panic!("{r:?}"),
        }
        // A key longer than what follows: ERR, not a panic.
        let mut short = req.clone();
        short.truncate(req.len() - 1);
        assert_eq!(
            parse_ctrl(CryptoFeatures::empty(), &short),
            Err(Status::Err)
        );
        // Chaining is not offered.
        let mut chain = req.clone();
        chain[CTRL_HEADER + 48..CTRL_HEADER + 52].copy_from_slice(&SYM_OP_CHAINING.to_le_bytes());
        assert_eq!(
            parse_ctrl(CryptoFeatures::empty(), &chain),
            Err(Status::NotSupp)
        );
    }

    /// §5.9.7.2: with REVISION_1 a hash session's fixed part is its own 8
    /// bytes; without, 56.
    #[test]
    fn section_5_9_7_2_revision_1_sizes_the_fixed_part() {
        let mut req = le(&[ctrl::HASH_CREATE, 4, 0, 0]);
        req.extend(le(&[4, 32]));
        let rev1 = CryptoFeatures::REVISION_1;
        assert!(matches!(
            parse_ctrl(rev1, &req),
            Ok(Ctrl::Create {
                spec: SessionSpec::Hash {
                    algo: HashAlgo::Sha256,
                    result_len: 32
                },
                ..
            })
        ));
        assert_eq!(parse_ctrl(CryptoFeatures::empty(), &req), Err(Status::Err));
        let mut destroy = le(&[ctrl::MAC_DESTROY, 0, 0, 0]);
        destroy.extend(9u64.to_le_bytes());
        assert_eq!(
            parse_ctrl(rev1, &destroy),
            Ok(Ctrl::Destroy {
                service: Service::Mac,
                id: 9
            })
        );
    }

    /// §5.9.7.3: a legacy cipher data request; the header's flag is
    /// ignored without REVISION_1; with it and no stateless mode, a
    /// request without SESSION_MODE is NOTSUPP.
    #[test]
    fn section_5_9_7_3_data_requests_and_stateless_mode() {
        let mut req = le(&[data::CIPHER_DECRYPT, 3]);
        req.extend(5u64.to_le_bytes());
        req.extend(le(&[0, 0]));
        let mut flf = le(&[16, 32, 32, 0]);
        flf.resize(40, 0);
        flf.extend(le(&[SYM_OP_CIPHER, 0]));
        req.extend(flf);
        req.extend([1u8; 16]);
        req.extend([2u8; 32]);
        match parse_data(CryptoFeatures::empty(), &req, 1 << 20) {
            Ok(Data::Cipher {
                direction: Direction::Decrypt,
                mode: Mode::Session(5),
                iv,
                src,
                dst_len: 32,
            }) => {
                assert_eq!(iv, &[1; 16]);
                assert_eq!(src, &[2; 32]);
            }
            r => panic!("{r:?}"),
        }
        let rev1 = CryptoFeatures::REVISION_1;
        assert_eq!(parse_data(rev1, &req, 1 << 20), Err(Status::NotSupp));
        // Lengths past max_size: ERR.
        assert_eq!(
            parse_data(CryptoFeatures::empty(), &req, 16),
            Err(Status::Err)
        );
        // A stateless hash request.
        let mut st = le(&[data::HASH, 0]);
        st.extend(0u64.to_le_bytes());
        st.extend(le(&[0, 0]));
        st.extend(le(&[2, 3, 20, 0]));
        st.extend(b"abc");
        let f = rev1 | CryptoFeatures::HASH_STATELESS_MODE;
        assert_eq!(
            parse_data(f, &st, 1 << 20),
            Ok(Data::Digest {
                service: Service::Hash,
                mode: Mode::Stateless(SessionSpec::Hash {
                    algo: HashAlgo::Sha1,
                    result_len: 20
                }),
                src: b"abc",
                result_len: 20,
            })
        );
    }

    /// §5.9.4: the configuration names each offered service and its
    /// algorithms, sets HW_READY and no undefined bits.
    #[test]
    fn section_5_9_4_configuration_from_capabilities() {
        let caps = backends::crypto::Capabilities {
            cipher: &[CipherAlgo::AesCbc, CipherAlgo::AesXts],
            hash: &[HashAlgo::Sha256],
            mac: &[],
            aead: &[],
            rsa: true,
            max_cipher_key_len: 64,
            max_auth_key_len: 0,
            max_request_size: 1 << 20,
            max_sessions: 4,
        };
        let c = config(&caps, 2);
        let w = |i: usize| u32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(w(0), S_HW_READY);
        assert_eq!(w(1), 2);
        assert_eq!(w(2), 1 << 0 | 1 << 1 | 1 << 4);
        assert_eq!(w(3), 1 << 3 | 1 << 13);
        assert_eq!(w(5), 1 << 4);
        assert_eq!(w(11), 1 << 1);
        assert_eq!(u64::from_le_bytes(c[48..56].try_into().unwrap()), 1 << 20);
    }
}
