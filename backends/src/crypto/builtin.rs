//! The builtin cryptodev (QEMU's `cryptodev-backend-builtin`), in
//! software on RustCrypto crates: AES in ECB, CBC, CTR and XTS modes;
//! SHA-1 and SHA-2; HMAC over them; AES-GCM; RSA with raw or PKCS#1 v1.5
//! padding. QEMU's builtin advertises AES-CBC and RSA; this one offers
//! the other AES modes, the hashes, the MACs and GCM too.
//!
//! PKCS#1 v1.5 decryption of a ciphertext whose padding is wrong answers
//! with a synthetic plaintext, not an error (rsa 0.10's implicit
//! rejection, which keeps the padding check from leaking through timing);
//! QEMU answers ERR there. RSA moduli from 1024 to 4096 bits.
//!
//! Keys live in the session until it is closed: AES key schedules wipe
//! themselves when dropped (the `zeroize` features), MAC keys sit in a
//! wiping buffer, RSA keys wipe their private parts on drop.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{
    BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, InnerIvInit,
    KeyInit, StreamCipher,
};
use aes::{Aes128, Aes192, Aes256};
use aes_gcm::aead::AeadInOut;
use aes_gcm::aead::inout::InOutBuf;
use hmac::{Hmac, Mac};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, Pkcs1v15Encrypt, Pkcs1v15Sign, PrivateKey, PublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

use super::{
    AeadAlgo, AkcipherOp, Capabilities, CipherAlgo, CryptoBackend, CryptoError, Direction,
    HashAlgo, KeyType, MacAlgo, RsaPadding, SessionId, SessionSpec,
};

/// Sessions open at once by default (QEMU's builtin keeps 256).
pub const DEFAULT_MAX_SESSIONS: u32 = 256;

/// The most bytes one operation takes or gives (each request's buffers
/// are copied out of guest memory, so this bounds the memory one request
/// can make the host hold).
pub const MAX_REQUEST_SIZE: u64 = 4 << 20;

/// The smallest RSA modulus accepted, in bits.
pub const RSA_MIN_BITS: usize = 1024;

/// The largest RSA modulus accepted, in bits: one operation's cost is
/// bounded by it (a modulus of any size parses).
pub const RSA_MAX_BITS: usize = 4096;

/// The longest cipher key: AES-256-XTS's two keys.
pub const MAX_CIPHER_KEY_LEN: u32 = 64;

/// The longest MAC key accepted (HMAC hashes longer keys down; this bounds
/// what a session holds).
pub const MAX_AUTH_KEY_LEN: u32 = 512;

const CIPHERS: &[CipherAlgo] = &[
    CipherAlgo::AesEcb,
    CipherAlgo::AesCbc,
    CipherAlgo::AesCtr,
    CipherAlgo::AesXts,
];
const HASHES: &[HashAlgo] = &[
    HashAlgo::Sha1,
    HashAlgo::Sha224,
    HashAlgo::Sha256,
    HashAlgo::Sha384,
    HashAlgo::Sha512,
];
const MACS: &[MacAlgo] = &[
    MacAlgo(HashAlgo::Sha1),
    MacAlgo(HashAlgo::Sha224),
    MacAlgo(HashAlgo::Sha256),
    MacAlgo(HashAlgo::Sha384),
    MacAlgo(HashAlgo::Sha512),
];
const AEADS: &[AeadAlgo] = &[AeadAlgo::AesGcm];

/// An AES key schedule of any size.
#[derive(Clone)]
enum AesKey {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl AesKey {
    fn new(key: &[u8]) -> Result<AesKey, CryptoError> {
        let bad = |_| CryptoError::Invalid("an AES key is 16, 24 or 32 bytes");
        Ok(match key.len() {
            16 => AesKey::A128(Aes128::new_from_slice(key).map_err(bad)?),
            24 => AesKey::A192(Aes192::new_from_slice(key).map_err(bad)?),
            32 => AesKey::A256(Aes256::new_from_slice(key).map_err(bad)?),
            _ => return Err(CryptoError::Invalid("an AES key is 16, 24 or 32 bytes")),
        })
    }
}

/// Runs `$body` with `$k` bound to the concrete AES type of `$key`.
macro_rules! with_aes {
    ($key:expr, $k:ident => $body:expr) => {
        match $key {
            AesKey::A128($k) => $body,
            AesKey::A192($k) => $body,
            AesKey::A256($k) => $body,
        }
    };
}

/// An AES-GCM instance of any key size.
enum Gcm {
    A128(aes_gcm::Aes128Gcm),
    A256(aes_gcm::Aes256Gcm),
}

/// What a session keeps.
enum Session {
    Cipher {
        algo: CipherAlgo,
        key: Box<AesKey>,
        /// The tweak key of XTS.
        tweak: Option<Box<AesKey>>,
    },
    Hash {
        algo: HashAlgo,
        result_len: usize,
    },
    Mac {
        algo: HashAlgo,
        key: Zeroizing<Vec<u8>>,
        result_len: usize,
    },
    Aead {
        gcm: Box<Gcm>,
        tag_len: usize,
    },
    Rsa {
        public: Box<PublicKey>,
        private: Option<Box<PrivateKey>>,
        padding: RsaPadding,
    },
}

/// The software cryptodev.
pub struct Builtin {
    sessions: BTreeMap<u64, Session>,
    next: u64,
    max_sessions: u32,
}

impl Default for Builtin {
    fn default() -> Self {
        Builtin::new(DEFAULT_MAX_SESSIONS)
    }
}

impl core::fmt::Debug for Builtin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // No key material in logs.
        f.debug_struct("Builtin")
            .field("sessions", &self.sessions.len())
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

impl Builtin {
    /// A backend that keeps at most `max_sessions` sessions open.
    pub fn new(max_sessions: u32) -> Self {
        Builtin {
            sessions: BTreeMap::new(),
            next: 1,
            max_sessions,
        }
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    fn session(&self, id: SessionId) -> Result<&Session, CryptoError> {
        self.sessions
            .get(&id.0)
            .ok_or(CryptoError::InvalidSession(id))
    }
}

/// The digest of `src` under `algo`, whole.
fn hash(algo: HashAlgo, src: &[u8], out: &mut [u8; 64]) {
    match algo {
        HashAlgo::Sha1 => out[..20].copy_from_slice(&Sha1::digest(src)),
        HashAlgo::Sha224 => out[..28].copy_from_slice(&Sha224::digest(src)),
        HashAlgo::Sha256 => out[..32].copy_from_slice(&Sha256::digest(src)),
        HashAlgo::Sha384 => out[..48].copy_from_slice(&Sha384::digest(src)),
        HashAlgo::Sha512 => out[..64].copy_from_slice(&Sha512::digest(src)),
    }
}

/// The HMAC of `src` under `algo` and `key`, whole.
fn hmac(algo: HashAlgo, key: &[u8], src: &[u8], out: &mut [u8; 64]) {
    macro_rules! run {
        ($h:ty, $n:expr) => {{
            // Any key length is valid for HMAC.
            let Ok(mut m) = <Hmac<$h> as KeyInit>::new_from_slice(key) else {
                return;
            };
            m.update(src);
            out[..$n].copy_from_slice(&m.finalize().into_bytes());
        }};
    }
    match algo {
        HashAlgo::Sha1 => run!(Sha1, 20),
        HashAlgo::Sha224 => run!(Sha224, 28),
        HashAlgo::Sha256 => run!(Sha256, 32),
        HashAlgo::Sha384 => run!(Sha384, 48),
        HashAlgo::Sha512 => run!(Sha512, 64),
    }
}

/// `buf` as AES blocks: `None` unless its length is a multiple of 16.
fn blocks(buf: &mut [u8]) -> Option<&mut [Array<u8, U16>]> {
    let (blocks, rest) = Array::<u8, U16>::slice_as_chunks_mut(buf);
    rest.is_empty().then_some(blocks)
}

/// One AES cipher operation in place.
fn run_cipher(
    algo: CipherAlgo,
    key: &AesKey,
    tweak: Option<&AesKey>,
    direction: Direction,
    iv: &[u8],
    buf: &mut [u8],
) -> Result<(), CryptoError> {
    const WHOLE: &str = "ECB and CBC take whole 16-byte blocks";
    const IV16: &str = "the IV is 16 bytes";
    match algo {
        CipherAlgo::AesEcb => {
            let b = blocks(buf).ok_or(CryptoError::Invalid(WHOLE))?;
            with_aes!(key, k => match direction {
                Direction::Encrypt => k.encrypt_blocks(b),
                Direction::Decrypt => k.decrypt_blocks(b),
            });
        }
        CipherAlgo::AesCbc => {
            let b = blocks(buf).ok_or(CryptoError::Invalid(WHOLE))?;
            with_aes!(key, k => match direction {
                Direction::Encrypt => {
                    cbc::Encryptor::inner_iv_slice_init(k.clone(), iv)
                        .map_err(|_| CryptoError::Invalid(IV16))?
                        .encrypt_blocks(b);
                }
                Direction::Decrypt => {
                    cbc::Decryptor::inner_iv_slice_init(k.clone(), iv)
                        .map_err(|_| CryptoError::Invalid(IV16))?
                        .decrypt_blocks(b);
                }
            });
        }
        CipherAlgo::AesCtr => {
            // CTR is its own inverse.
            with_aes!(key, k => {
                let core = ctr::CtrCore::inner_iv_slice_init(k.clone(), iv)
                    .map_err(|_| CryptoError::Invalid(IV16))?;
                ctr::Ctr128BE::from_core(core)
                    .try_apply_keystream(buf)
                    .map_err(|_| CryptoError::Invalid("the counter would wrap"))?;
            });
        }
        CipherAlgo::AesXts => {
            if buf.len() < 16 {
                return Err(CryptoError::Invalid("XTS takes at least 16 bytes"));
            }
            let tweak_key = tweak.ok_or(CryptoError::Invalid("XTS without a tweak key"))?;
            let t: [u8; 16] = iv.try_into().map_err(|_| CryptoError::Invalid(IV16))?;
            match (key, tweak_key) {
                (AesKey::A128(k1), AesKey::A128(k2)) => xts(k1, k2, direction, t, buf),
                (AesKey::A256(k1), AesKey::A256(k2)) => xts(k1, k2, direction, t, buf),
                _ => return Err(CryptoError::NotSupported("XTS keys are 32 or 64 bytes")),
            }
        }
    }
    Ok(())
}

fn xts<C>(k1: &C, k2: &C, direction: Direction, tweak: [u8; 16], buf: &mut [u8])
where
    C: BlockCipherEncrypt
        + BlockCipherDecrypt
        + aes::cipher::BlockSizeUser<BlockSize = U16>
        + Clone,
{
    let x = xts_mode::Xts128::new(k1.clone(), k2.clone());
    match direction {
        Direction::Encrypt => x.encrypt_sector(buf, Array(tweak)),
        Direction::Decrypt => x.decrypt_sector(buf, Array(tweak)),
    }
}

/// `src` as a number of the modulus's width, for raw RSA: leading zeros
/// allowed, nothing longer than the modulus.
fn rsa_input(key: &PublicKey, src: &[u8]) -> Result<BoxedUint, CryptoError> {
    let size = key.size();
    let start = src.iter().position(|&b| b != 0).unwrap_or(src.len());
    if src.len() - start > size {
        return Err(CryptoError::Invalid("the input is longer than the modulus"));
    }
    let mut padded = Zeroizing::new(alloc::vec![0u8; size]);
    padded[size - (src.len() - start)..].copy_from_slice(&src[start..]);
    let n = key.n();
    let bits = n.as_ref().bits_precision();
    let m = BoxedUint::from_be_slice(&padded, bits)
        .map_err(|_| CryptoError::Invalid("the input does not fit the modulus"))?;
    if m >= *n.as_ref() {
        return Err(CryptoError::Invalid("the input is not below the modulus"));
    }
    Ok(m)
}

/// A number as the modulus's width in bytes, big-endian, into `dst`.
fn rsa_output(key: &PublicKey, v: &BoxedUint, dst: &mut [u8]) -> Result<usize, CryptoError> {
    let size = key.size();
    if dst.len() < size {
        return Err(CryptoError::Invalid(
            "the output is shorter than the modulus",
        ));
    }
    let bytes = Zeroizing::new(v.to_be_bytes());
    // The number's storage may be wider than the modulus in whole limbs.
    let skip = bytes.len().saturating_sub(size);
    let tail = &bytes[skip..];
    dst[..size - tail.len()].fill(0);
    dst[size - tail.len()..size].copy_from_slice(tail);
    Ok(size)
}

/// PKCS#1 v1.5 signature padding for `hash` (none: unprefixed).
fn pkcs1_sign(hash: Option<HashAlgo>) -> Pkcs1v15Sign {
    match hash {
        None => Pkcs1v15Sign::new_unprefixed(),
        Some(HashAlgo::Sha1) => Pkcs1v15Sign::new::<Sha1>(),
        Some(HashAlgo::Sha224) => Pkcs1v15Sign::new::<Sha224>(),
        Some(HashAlgo::Sha256) => Pkcs1v15Sign::new::<Sha256>(),
        Some(HashAlgo::Sha384) => Pkcs1v15Sign::new::<Sha384>(),
        Some(HashAlgo::Sha512) => Pkcs1v15Sign::new::<Sha512>(),
    }
}

impl CryptoBackend for Builtin {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cipher: CIPHERS,
            hash: HASHES,
            mac: MACS,
            aead: AEADS,
            rsa: true,
            max_cipher_key_len: MAX_CIPHER_KEY_LEN,
            max_auth_key_len: MAX_AUTH_KEY_LEN,
            max_request_size: MAX_REQUEST_SIZE,
            max_sessions: self.max_sessions,
        }
    }

    fn create_session(&mut self, spec: &SessionSpec<'_>) -> Result<SessionId, CryptoError> {
        if self.sessions.len() >= self.max_sessions as usize {
            return Err(CryptoError::NoSpace);
        }
        let session = match *spec {
            SessionSpec::Cipher { algo, key, .. } => {
                if key.len() > MAX_CIPHER_KEY_LEN as usize {
                    return Err(CryptoError::Invalid("the cipher key is too long"));
                }
                if algo == CipherAlgo::AesXts {
                    if key.len() != 32 && key.len() != 64 {
                        return Err(CryptoError::Invalid("an XTS key is 32 or 64 bytes"));
                    }
                    // Equal halves are accepted, as Linux's xts does outside
                    // FIPS mode (its self-tests use the all-zero key).
                    let (k1, k2) = key.split_at(key.len() / 2);
                    Session::Cipher {
                        algo,
                        key: Box::new(AesKey::new(k1)?),
                        tweak: Some(Box::new(AesKey::new(k2)?)),
                    }
                } else {
                    Session::Cipher {
                        algo,
                        key: Box::new(AesKey::new(key)?),
                        tweak: None,
                    }
                }
            }
            SessionSpec::Hash { algo, result_len } => {
                let n = result_len as usize;
                if n == 0 || n > algo.digest_len() {
                    return Err(CryptoError::Invalid("the result is longer than the digest"));
                }
                Session::Hash {
                    algo,
                    result_len: n,
                }
            }
            SessionSpec::Mac {
                algo: MacAlgo(algo),
                key,
                result_len,
            } => {
                let n = result_len as usize;
                if n == 0 || n > algo.digest_len() {
                    return Err(CryptoError::Invalid("the result is longer than the MAC"));
                }
                if key.len() > MAX_AUTH_KEY_LEN as usize {
                    return Err(CryptoError::Invalid("the MAC key is too long"));
                }
                Session::Mac {
                    algo,
                    key: Zeroizing::new(key.to_vec()),
                    result_len: n,
                }
            }
            SessionSpec::Aead {
                algo: AeadAlgo::AesGcm,
                key,
                tag_len,
                ..
            } => {
                if tag_len != 16 {
                    return Err(CryptoError::NotSupported("GCM tags other than 16 bytes"));
                }
                let gcm = match key.len() {
                    16 => Gcm::A128(
                        aes_gcm::Aes128Gcm::new_from_slice(key)
                            .map_err(|_| CryptoError::Invalid("GCM key"))?,
                    ),
                    32 => Gcm::A256(
                        aes_gcm::Aes256Gcm::new_from_slice(key)
                            .map_err(|_| CryptoError::Invalid("GCM key"))?,
                    ),
                    _ => {
                        return Err(CryptoError::NotSupported(
                            "GCM keys other than 16 or 32 bytes",
                        ));
                    }
                };
                Session::Aead {
                    gcm: Box::new(gcm),
                    tag_len: tag_len as usize,
                }
            }
            SessionSpec::Rsa {
                key_type,
                key,
                padding,
            } => {
                let (public, private) = match key_type {
                    KeyType::Public => (
                        PublicKey::from_pkcs1_der(key)
                            .map_err(|_| CryptoError::Invalid("not a PKCS#1 DER RSAPublicKey"))?,
                        None,
                    ),
                    KeyType::Private => {
                        let p = PrivateKey::from_pkcs1_der(key)
                            .map_err(|_| CryptoError::Invalid("not a PKCS#1 DER RSAPrivateKey"))?;
                        (p.to_public_key(), Some(p))
                    }
                };
                // A modulus of any size parses (and a private key's primes
                // are not checked to be prime): bound the work one request
                // can cost.
                let bits = public.size() * 8;
                if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                    return Err(CryptoError::NotSupported(
                        "RSA moduli other than 1024 to 4096 bits",
                    ));
                }
                Session::Rsa {
                    public: Box::new(public),
                    private: private.map(Box::new),
                    padding,
                }
            }
        };
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.sessions.insert(id, session);
        Ok(SessionId(id))
    }

    fn close_session(&mut self, id: SessionId) -> Result<(), CryptoError> {
        // Dropping the session wipes its keys.
        self.sessions
            .remove(&id.0)
            .map(drop)
            .ok_or(CryptoError::InvalidSession(id))
    }

    fn cipher(
        &mut self,
        id: SessionId,
        direction: Direction,
        iv: &[u8],
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<(), CryptoError> {
        let Session::Cipher { algo, key, tweak } = self.session(id)? else {
            return Err(CryptoError::InvalidSession(id));
        };
        if dst.len() != src.len() {
            return Err(CryptoError::Invalid(
                "the destination is not as long as the source",
            ));
        }
        dst.copy_from_slice(src);
        run_cipher(*algo, key, tweak.as_deref(), direction, iv, dst)
    }

    fn digest(&mut self, id: SessionId, src: &[u8], out: &mut [u8]) -> Result<usize, CryptoError> {
        let mut full = Zeroizing::new([0u8; 64]);
        let n = match self.session(id)? {
            Session::Hash { algo, result_len } => {
                hash(*algo, src, &mut full);
                *result_len
            }
            Session::Mac {
                algo,
                key,
                result_len,
            } => {
                hmac(*algo, key, src, &mut full);
                *result_len
            }
            _ => return Err(CryptoError::InvalidSession(id)),
        };
        let out = out
            .get_mut(..n)
            .ok_or(CryptoError::Invalid("the result buffer is too short"))?;
        out.copy_from_slice(&full[..n]);
        Ok(n)
    }

    fn aead(
        &mut self,
        id: SessionId,
        direction: Direction,
        iv: &[u8],
        aad: &[u8],
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let Session::Aead { gcm, tag_len } = self.session(id)? else {
            return Err(CryptoError::InvalidSession(id));
        };
        let tag_len = *tag_len;
        let nonce: [u8; 12] = iv
            .try_into()
            .map_err(|_| CryptoError::NotSupported("GCM nonces other than 12 bytes"))?;
        let nonce = Array(nonce);
        match direction {
            Direction::Encrypt => {
                let total = src.len() + tag_len;
                let out = dst.get_mut(..total).ok_or(CryptoError::Invalid(
                    "the destination has no room for the tag",
                ))?;
                let (body, tag_out) = out.split_at_mut(src.len());
                let buf = InOutBuf::new(src, body)
                    .map_err(|_| CryptoError::Invalid("the source and destination differ"))?;
                let tag = match &**gcm {
                    Gcm::A128(g) => g.encrypt_inout_detached(&nonce, aad, buf),
                    Gcm::A256(g) => g.encrypt_inout_detached(&nonce, aad, buf),
                }
                .map_err(|_| CryptoError::Invalid("the message is too long for GCM"))?;
                tag_out.copy_from_slice(&tag);
                Ok(total)
            }
            Direction::Decrypt => {
                let body_len = src
                    .len()
                    .checked_sub(tag_len)
                    .ok_or(CryptoError::Invalid("the source is shorter than the tag"))?;
                let (body, tag) = src.split_at(body_len);
                let out = dst
                    .get_mut(..body_len)
                    .ok_or(CryptoError::Invalid("the destination is too short"))?;
                let buf = InOutBuf::new(body, out)
                    .map_err(|_| CryptoError::Invalid("the source and destination differ"))?;
                let tag: [u8; 16] = tag
                    .try_into()
                    .map_err(|_| CryptoError::Invalid("the tag is not 16 bytes"))?;
                let tag = Array(tag);
                let r = match &**gcm {
                    Gcm::A128(g) => g.decrypt_inout_detached(&nonce, aad, buf, &tag),
                    Gcm::A256(g) => g.decrypt_inout_detached(&nonce, aad, buf, &tag),
                };
                match r {
                    Ok(()) => Ok(body_len),
                    Err(_) => {
                        // Nothing unauthenticated reaches the caller.
                        dst[..body_len].fill(0);
                        Err(CryptoError::BadMessage)
                    }
                }
            }
        }
    }

    fn akcipher(
        &mut self,
        id: SessionId,
        op: AkcipherOp,
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let Session::Rsa {
            public,
            private,
            padding,
        } = self.session(id)?
        else {
            return Err(CryptoError::InvalidSession(id));
        };
        let public: &PublicKey = public;
        let need_private = || {
            private.as_deref().ok_or(CryptoError::NotSupported(
                "a public-key session cannot decrypt or sign",
            ))
        };
        let copy_out = |v: &[u8], dst: &mut [u8]| {
            let d = dst
                .get_mut(..v.len())
                .ok_or(CryptoError::Invalid("the destination is too short"))?;
            d.copy_from_slice(v);
            Ok(v.len())
        };
        match (op, *padding) {
            (AkcipherOp::Encrypt, RsaPadding::Raw) => {
                let m = rsa_input(public, src)?;
                let c = rsa::hazmat::rsa_encrypt(public, &m)
                    .map_err(|_| CryptoError::Invalid("RSA encryption failed"))?;
                rsa_output(public, &c, dst)
            }
            (AkcipherOp::Decrypt, RsaPadding::Raw) => {
                let key = need_private()?;
                let c = rsa_input(public, src)?;
                // Blinded with fresh randomness (the Marvin mitigation).
                let m = rsa::hazmat::rsa_decrypt_and_check(key, Some(&mut getrandom::SysRng), &c)
                    .map_err(|_| CryptoError::Invalid("RSA decryption failed"))?;
                rsa_output(public, &m, dst)
            }
            (AkcipherOp::Sign, RsaPadding::Raw) => Err(CryptoError::NotSupported(
                "raw RSA sessions do not sign (§5.9.7.2.1.5)",
            )),
            (AkcipherOp::Encrypt, RsaPadding::Pkcs1 { .. }) => {
                let c = public
                    .encrypt(&mut getrandom::SysRng, Pkcs1v15Encrypt, src)
                    .map_err(|_| CryptoError::Invalid("the message is too long for the key"))?;
                copy_out(&c, dst)
            }
            (AkcipherOp::Decrypt, RsaPadding::Pkcs1 { .. }) => {
                let m = Zeroizing::new(
                    need_private()?
                        .decrypt(Pkcs1v15Encrypt, src)
                        .map_err(|_| CryptoError::Invalid("RSA decryption failed"))?,
                );
                copy_out(&m, dst)
            }
            (AkcipherOp::Sign, RsaPadding::Pkcs1 { hash }) => {
                let s = need_private()?
                    .sign(pkcs1_sign(hash), src)
                    .map_err(|_| CryptoError::Invalid("the digest does not fit the key"))?;
                copy_out(&s, dst)
            }
        }
    }

    fn verify(
        &mut self,
        id: SessionId,
        signature: &[u8],
        digest: &[u8],
    ) -> Result<(), CryptoError> {
        let Session::Rsa {
            public, padding, ..
        } = self.session(id)?
        else {
            return Err(CryptoError::InvalidSession(id));
        };
        match padding {
            RsaPadding::Raw => Err(CryptoError::NotSupported(
                "raw RSA sessions do not verify (§5.9.7.2.1.5)",
            )),
            RsaPadding::Pkcs1 { hash } => public
                .verify(pkcs1_sign(*hash), digest, signature)
                .map_err(|_| CryptoError::KeyRejected),
        }
    }

    fn close_all(&mut self) {
        self.sessions.clear();
    }
}

#[cfg(test)]
mod tests {
    //! Known answers from published vectors (facts, cited per test) and
    //! round trips where no vector fits; every malformed input gets its
    //! error.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|p| u8::from_str_radix(core::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn cipher(algo: CipherAlgo, key: &str, dir: Direction, iv: &str, src: &str) -> Vec<u8> {
        let mut b = Builtin::default();
        let key = hex(key);
        let id = b
            .create_session(&SessionSpec::Cipher {
                algo,
                key: &key,
                direction: dir,
            })
            .unwrap();
        let src = hex(src);
        let mut dst = alloc::vec![0u8; src.len()];
        b.cipher(id, dir, &hex(iv), &src, &mut dst).unwrap();
        b.close_session(id).unwrap();
        assert_eq!(b.open_sessions(), 0);
        dst
    }

    const K128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
    const PT2: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51";

    /// NIST SP 800-38A F.1.1 / F.1.2 (ECB-AES128), first two blocks.
    #[test]
    fn aes_ecb_sp800_38a() {
        let ct = "3ad77bb40d7a3660a89ecaf32466ef97 f5d3d58503b9699de785895a96fdbaaf";
        assert_eq!(
            cipher(CipherAlgo::AesEcb, K128, Direction::Encrypt, "", PT2),
            hex(ct)
        );
        assert_eq!(
            cipher(CipherAlgo::AesEcb, K128, Direction::Decrypt, "", ct),
            hex(PT2)
        );
    }

    /// NIST SP 800-38A F.2.1 / F.2.2 (CBC-AES128), first two blocks.
    #[test]
    fn aes_cbc_sp800_38a() {
        let iv = "000102030405060708090a0b0c0d0e0f";
        let ct = "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2";
        assert_eq!(
            cipher(CipherAlgo::AesCbc, K128, Direction::Encrypt, iv, PT2),
            hex(ct)
        );
        assert_eq!(
            cipher(CipherAlgo::AesCbc, K128, Direction::Decrypt, iv, ct),
            hex(PT2)
        );
    }

    /// NIST SP 800-38A F.5.1 (CTR-AES128.Encrypt), first two blocks.
    #[test]
    fn aes_ctr_sp800_38a() {
        let iv = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
        let ct = "874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff";
        assert_eq!(
            cipher(CipherAlgo::AesCtr, K128, Direction::Encrypt, iv, PT2),
            hex(ct)
        );
        assert_eq!(
            cipher(CipherAlgo::AesCtr, K128, Direction::Decrypt, iv, ct),
            hex(PT2)
        );
    }

    /// IEEE 1619-2007 XTS-AES-128 vector 2 (data unit 0x3333333333).
    #[test]
    fn aes_xts_ieee1619() {
        let key = "11111111111111111111111111111111 22222222222222222222222222222222";
        let iv = "33333333330000000000000000000000";
        let pt = "4444444444444444444444444444444444444444444444444444444444444444";
        let ct = "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0";
        assert_eq!(
            cipher(CipherAlgo::AesXts, key, Direction::Encrypt, iv, pt),
            hex(ct)
        );
        assert_eq!(
            cipher(CipherAlgo::AesXts, key, Direction::Decrypt, iv, ct),
            hex(pt)
        );
    }

    fn digest(spec: SessionSpec<'_>, src: &[u8]) -> Vec<u8> {
        let mut b = Builtin::default();
        let id = b.create_session(&spec).unwrap();
        let mut out = [0u8; 64];
        let n = b.digest(id, src, &mut out).unwrap();
        out[..n].to_vec()
    }

    /// FIPS 180 examples: "abc" under SHA-1, SHA-256 and SHA-512; a
    /// truncated result.
    #[test]
    fn sha_fips180_abc() {
        let h = |algo: HashAlgo, n: u32| {
            digest(
                SessionSpec::Hash {
                    algo,
                    result_len: n,
                },
                b"abc",
            )
        };
        assert_eq!(
            h(HashAlgo::Sha1, 20),
            hex("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(
            h(HashAlgo::Sha256, 32),
            hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            h(HashAlgo::Sha512, 64),
            hex(
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
            )
        );
        assert_eq!(h(HashAlgo::Sha256, 4), hex("ba7816bf"));
    }

    /// RFC 4231 test cases 1 and 2 (HMAC-SHA-256).
    #[test]
    fn hmac_sha256_rfc4231() {
        let mac = |key: &[u8], data: &[u8]| {
            digest(
                SessionSpec::Mac {
                    algo: MacAlgo(HashAlgo::Sha256),
                    key,
                    result_len: 32,
                },
                data,
            )
        };
        assert_eq!(
            mac(&[0x0b; 20], b"Hi There"),
            hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        assert_eq!(
            mac(b"Jefe", b"what do ya want for nothing?"),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    /// The GCM specification's test case 4 (McGrew and Viega): AES-128,
    /// a 12-byte IV, 20 bytes of AAD; a flipped tag bit is BADMSG.
    #[test]
    fn aes_gcm_test_case_4() {
        let key = hex("feffe9928665731c6d6a8f9467308308");
        let iv = hex("cafebabefacedbaddecaf888");
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let pt = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let ct = hex(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091
             5bc94fbc3221a5db94fae95ae7121a47",
        );
        let mut b = Builtin::default();
        let id = b
            .create_session(&SessionSpec::Aead {
                algo: AeadAlgo::AesGcm,
                key: &key,
                tag_len: 16,
                direction: Direction::Encrypt,
            })
            .unwrap();
        let mut out = alloc::vec![0u8; ct.len()];
        let n = b
            .aead(id, Direction::Encrypt, &iv, &aad, &pt, &mut out)
            .unwrap();
        assert_eq!(&out[..n], &ct[..]);
        let mut back = alloc::vec![0u8; pt.len()];
        let n = b
            .aead(id, Direction::Decrypt, &iv, &aad, &ct, &mut back)
            .unwrap();
        assert_eq!(&back[..n], &pt[..]);
        let mut bad = ct.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            b.aead(id, Direction::Decrypt, &iv, &aad, &bad, &mut back),
            Err(CryptoError::BadMessage)
        );
        assert!(back.iter().all(|&x| x == 0), "unauthenticated bytes leaked");
    }

    /// RSA round trips with a fresh 1024-bit key: raw and PKCS#1 v1.5
    /// encryption, PKCS#1 v1.5 signatures with and without a DigestInfo;
    /// a tampered signature is KEY_REJECTED; raw sessions do not sign
    /// (§5.9.7.2.1.5); a public session does not decrypt.
    #[test]
    fn rsa_round_trips() {
        use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
        let key = PrivateKey::new(&mut getrandom::SysRng, 1024).unwrap();
        let private = key.to_pkcs1_der().unwrap();
        let public = key.to_public_key().to_pkcs1_der().unwrap();
        let mut b = Builtin::default();
        let session = |b: &mut Builtin, key_type, padding| {
            let der = match key_type {
                KeyType::Public => public.as_bytes(),
                KeyType::Private => private.as_bytes(),
            };
            b.create_session(&SessionSpec::Rsa {
                key_type,
                key: der,
                padding,
            })
            .unwrap()
        };
        let raw_pub = session(&mut b, KeyType::Public, RsaPadding::Raw);
        let raw_priv = session(&mut b, KeyType::Private, RsaPadding::Raw);
        let mut c = [0u8; 128];
        assert_eq!(
            b.akcipher(raw_pub, AkcipherOp::Encrypt, b"\x00\x01hello", &mut c),
            Ok(128)
        );
        let mut m = [0u8; 128];
        assert_eq!(
            b.akcipher(raw_priv, AkcipherOp::Decrypt, &c, &mut m),
            Ok(128)
        );
        assert_eq!(&m[122..], b"\x01hello");
        assert!(m[..122].iter().all(|&x| x == 0));
        assert!(matches!(
            b.akcipher(raw_priv, AkcipherOp::Sign, &m, &mut c),
            Err(CryptoError::NotSupported(_))
        ));
        assert!(matches!(
            b.akcipher(raw_pub, AkcipherOp::Decrypt, &c, &mut m),
            Err(CryptoError::NotSupported(_))
        ));
        // A number not below the modulus.
        assert!(matches!(
            b.akcipher(raw_pub, AkcipherOp::Encrypt, &[0xff; 128], &mut c),
            Err(CryptoError::Invalid(_))
        ));

        let pad = RsaPadding::Pkcs1 {
            hash: Some(HashAlgo::Sha256),
        };
        let p_pub = session(&mut b, KeyType::Public, pad);
        let p_priv = session(&mut b, KeyType::Private, pad);
        let n = b
            .akcipher(p_pub, AkcipherOp::Encrypt, b"secret", &mut c)
            .unwrap();
        let k = b
            .akcipher(p_priv, AkcipherOp::Decrypt, &c[..n], &mut m)
            .unwrap();
        assert_eq!(&m[..k], b"secret");
        let digest = Sha256::digest(b"message");
        let mut sig = [0u8; 128];
        let n = b
            .akcipher(p_priv, AkcipherOp::Sign, &digest, &mut sig)
            .unwrap();
        assert_eq!(b.verify(p_pub, &sig[..n], &digest), Ok(()));
        sig[5] ^= 1;
        assert_eq!(
            b.verify(p_pub, &sig[..n], &digest),
            Err(CryptoError::KeyRejected)
        );
        let bare = session(&mut b, KeyType::Private, RsaPadding::Pkcs1 { hash: None });
        let n = b
            .akcipher(bare, AkcipherOp::Sign, b"any bytes", &mut sig)
            .unwrap();
        assert_eq!(b.verify(bare, &sig[..n], b"any bytes"), Ok(()));
        b.close_all();
        assert_eq!(b.open_sessions(), 0);
    }

    /// An RSA modulus outside 1024 to 4096 bits is refused: a 512-bit
    /// private key (which rsa 0.10 parses) and its public half (which it
    /// refuses itself), made with OpenSSL 3.0 for this test.
    #[test]
    fn rsa_moduli_outside_the_bounds_are_refused() {
        let private = hex(
            "3082013c020100024100df69f9c839760813a55d2cd06678e6291cdd3fd4b549
             b3a02b0798dca5c47edc8f8cc6db6c689759def2576be1a0a7554170d7f1d136
             b5ed53f2840c1ab83bb90203010001024078a304d9750da2f6d8c82336b4de7b
             899fa8689b36f901216f9abe94067ebff0deda60804d2ec77384653b03e944a5
             6503012a694e5f477c86b1ae532eff4131022100f10c1921d91ce03e91c1bcf4
             8fbed24e9ffefe545b74cc3fccf5ff6496f26a6f022100ed45db0c7eabb8b5e1
             7451989838f0b4bce3bbbc207a4f906e336e993d52f05702210094d4e47baac3
             928def8f50ed2c0825705887a85f4bacdd2413985c5dae79f54f022100aa638a
             dd5b2dc8145cd6222e79ca121948b825be0078b5205bf2f54e783a523b022100
             c8e063af85cf2907dc122e489321323df6927ebf34fb42db084f16c622245ece",
        );
        let public = hex(
            "3048024100df69f9c839760813a55d2cd06678e6291cdd3fd4b549b3a02b0798dc
             a5c47edc8f8cc6db6c689759def2576be1a0a7554170d7f1d136b5ed53f2840c
             1ab83bb90203010001",
        );
        let mut b = Builtin::default();
        let spec = |key_type, key| SessionSpec::Rsa {
            key_type,
            key,
            padding: RsaPadding::Raw,
        };
        assert!(matches!(
            b.create_session(&spec(KeyType::Private, &private)),
            Err(CryptoError::NotSupported(_))
        ));
        assert!(b.create_session(&spec(KeyType::Public, &public)).is_err());
        assert_eq!(b.open_sessions(), 0);
    }

    /// Bad input gets its error, never a panic: keys of the wrong size, an
    /// IV of the wrong size, partial blocks, short XTS data, a closed or
    /// foreign session, results longer than the digest, no room left.
    #[test]
    fn malformed_input_gets_its_error() {
        let mut b = Builtin::new(2);
        let bad_key = b.create_session(&SessionSpec::Cipher {
            algo: CipherAlgo::AesCbc,
            key: &[0; 17],
            direction: Direction::Encrypt,
        });
        assert!(matches!(bad_key, Err(CryptoError::Invalid(_))));
        assert!(matches!(
            b.create_session(&SessionSpec::Cipher {
                algo: CipherAlgo::AesXts,
                key: &[0; 48],
                direction: Direction::Encrypt,
            }),
            Err(CryptoError::Invalid(_))
        ));
        assert!(matches!(
            b.create_session(&SessionSpec::Hash {
                algo: HashAlgo::Sha1,
                result_len: 21,
            }),
            Err(CryptoError::Invalid(_))
        ));
        assert!(matches!(
            b.create_session(&SessionSpec::Rsa {
                key_type: KeyType::Private,
                key: b"not DER",
                padding: RsaPadding::Raw,
            }),
            Err(CryptoError::Invalid(_))
        ));
        let cbc = b
            .create_session(&SessionSpec::Cipher {
                algo: CipherAlgo::AesCbc,
                key: &[1; 16],
                direction: Direction::Encrypt,
            })
            .unwrap();
        let mut dst = [0u8; 32];
        assert!(matches!(
            b.cipher(cbc, Direction::Encrypt, &[0; 8], &[0; 32], &mut dst),
            Err(CryptoError::Invalid(_))
        ));
        assert!(matches!(
            b.cipher(cbc, Direction::Encrypt, &[0; 16], &[0; 20], &mut [0; 20]),
            Err(CryptoError::Invalid(_))
        ));
        assert!(matches!(
            b.cipher(cbc, Direction::Encrypt, &[0; 16], &[0; 32], &mut [0; 16]),
            Err(CryptoError::Invalid(_))
        ));
        assert_eq!(
            b.digest(cbc, b"x", &mut [0; 64]),
            Err(CryptoError::InvalidSession(cbc))
        );
        let xts = b
            .create_session(&SessionSpec::Cipher {
                algo: CipherAlgo::AesXts,
                key: &[2; 32],
                direction: Direction::Encrypt,
            })
            .unwrap();
        assert!(matches!(
            b.cipher(xts, Direction::Encrypt, &[0; 16], &[0; 15], &mut [0; 15]),
            Err(CryptoError::Invalid(_))
        ));
        assert_eq!(
            b.create_session(&SessionSpec::Hash {
                algo: HashAlgo::Sha1,
                result_len: 20,
            }),
            Err(CryptoError::NoSpace)
        );
        b.close_session(cbc).unwrap();
        assert_eq!(b.close_session(cbc), Err(CryptoError::InvalidSession(cbc)));
        assert_eq!(
            b.cipher(cbc, Direction::Encrypt, &[0; 16], &[0; 16], &mut [0; 16]),
            Err(CryptoError::InvalidSession(cbc))
        );
        // Session ids are not reused.
        let next = b
            .create_session(&SessionSpec::Hash {
                algo: HashAlgo::Sha1,
                result_len: 20,
            })
            .unwrap();
        assert!(next.0 > xts.0);
    }
}
