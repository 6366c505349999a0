//! Cryptodev backends (QEMU's `cryptodev-backend-builtin` and the
//! sessions of `cryptodev-vhost-user`), independent of virtio: sessions
//! made from a key and parameters, then operations on them.
//!
//! The trait and its types need neither the OS nor a heap, so a device in
//! a `no_std` build can be generic over it; the software implementation
//! ([`builtin`], RustCrypto crates) needs a heap and, for RSA's padding and
//! blinding, the OS random source (feature `crypto`).

use core::fmt;

#[cfg(feature = "crypto")]
pub mod builtin;

/// A symmetric cipher and its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherAlgo {
    /// AES in ECB mode (no IV).
    AesEcb,
    /// AES in CBC mode (a 16-byte IV).
    AesCbc,
    /// AES in CTR mode (a 16-byte big-endian counter block).
    AesCtr,
    /// AES-XTS (IEEE 1619): a double-length key, the IV is the 16-byte
    /// tweak, the data one sector of at least 16 bytes.
    AesXts,
}

/// A hash function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-224 (28 bytes).
    Sha224,
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-384 (48 bytes).
    Sha384,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl HashAlgo {
    /// The digest's length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha224 => 28,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha384 => 48,
            HashAlgo::Sha512 => 64,
        }
    }
}

/// A message authentication code: HMAC over a hash function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAlgo(pub HashAlgo);

/// An authenticated cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AeadAlgo {
    /// AES-GCM with a 12-byte nonce.
    AesGcm,
}

/// Which way a cipher runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Plaintext to ciphertext.
    Encrypt,
    /// Ciphertext to plaintext.
    Decrypt,
}

/// Which half of an RSA key a session holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `RSAPublicKey` (PKCS#1, DER): encrypt and verify.
    Public,
    /// `RSAPrivateKey` (PKCS#1, DER): all four operations.
    Private,
}

/// How an RSA session pads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RsaPadding {
    /// None: the input is the number itself, the output is as long as the
    /// modulus (leading zeros kept). Not for signing or verifying.
    Raw,
    /// PKCS#1 v1.5: random padding for encryption; for signatures the
    /// digest is prefixed with the DigestInfo of `hash` (none: the input
    /// is signed as given).
    Pkcs1 {
        /// The hash whose DigestInfo prefixes a signed digest.
        hash: Option<HashAlgo>,
    },
}

/// An asymmetric operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AkcipherOp {
    /// Encrypt with the public key.
    Encrypt,
    /// Decrypt with the private key.
    Decrypt,
    /// Sign a digest with the private key.
    Sign,
}

/// What a session is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionSpec<'a> {
    /// A symmetric cipher.
    Cipher {
        /// The cipher.
        algo: CipherAlgo,
        /// The key.
        key: &'a [u8],
        /// The direction the session was made for (operations say their
        /// own).
        direction: Direction,
    },
    /// A plain hash.
    Hash {
        /// The hash.
        algo: HashAlgo,
        /// Bytes of the digest to return (at most the digest's length).
        result_len: u32,
    },
    /// A keyed MAC.
    Mac {
        /// The MAC.
        algo: MacAlgo,
        /// The key.
        key: &'a [u8],
        /// Bytes of the MAC to return (at most the digest's length).
        result_len: u32,
    },
    /// An authenticated cipher.
    Aead {
        /// The cipher.
        algo: AeadAlgo,
        /// The key.
        key: &'a [u8],
        /// The tag's length in bytes.
        tag_len: u32,
        /// The direction the session was made for (operations say their
        /// own).
        direction: Direction,
    },
    /// RSA.
    Rsa {
        /// Which half of the key.
        key_type: KeyType,
        /// The key, PKCS#1 DER.
        key: &'a [u8],
        /// The padding.
        padding: RsaPadding,
    },
}

/// A session's handle, chosen by the backend; never reused while the
/// backend lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// What a backend offers.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// Symmetric ciphers.
    pub cipher: &'static [CipherAlgo],
    /// Hashes.
    pub hash: &'static [HashAlgo],
    /// MACs.
    pub mac: &'static [MacAlgo],
    /// Authenticated ciphers.
    pub aead: &'static [AeadAlgo],
    /// Whether RSA is offered.
    pub rsa: bool,
    /// The longest cipher key, in bytes.
    pub max_cipher_key_len: u32,
    /// The longest MAC key, in bytes.
    pub max_auth_key_len: u32,
    /// The most bytes one operation may take in or give out.
    pub max_request_size: u64,
    /// Sessions open at once.
    pub max_sessions: u32,
}

/// Why an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// The algorithm, key size, mode or operation is not offered.
    NotSupported(&'static str),
    /// No such session (never made, closed, or of another kind).
    InvalidSession(SessionId),
    /// Authentication failed (an AEAD tag that does not match).
    BadMessage,
    /// A signature that does not verify.
    KeyRejected,
    /// No room for another session.
    NoSpace,
    /// The input does not fit the session (a length, a key that does not
    /// parse, an IV of the wrong size).
    Invalid(&'static str),
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::NotSupported(what) => write!(f, "not supported: {what}"),
            CryptoError::InvalidSession(id) => write!(f, "no session {}", id.0),
            CryptoError::BadMessage => f.write_str("authentication failed"),
            CryptoError::KeyRejected => f.write_str("the signature does not verify"),
            CryptoError::NoSpace => f.write_str("no room for another session"),
            CryptoError::Invalid(what) => write!(f, "invalid input: {what}"),
        }
    }
}

impl core::error::Error for CryptoError {}

/// A source of cryptographic operations: sessions, then operations on
/// them.
pub trait CryptoBackend {
    /// What the backend offers.
    fn capabilities(&self) -> Capabilities;

    /// Makes a session; its key is copied and kept until it is closed.
    fn create_session(&mut self, spec: &SessionSpec<'_>) -> Result<SessionId, CryptoError>;

    /// Closes a session; its key material is wiped.
    fn close_session(&mut self, id: SessionId) -> Result<(), CryptoError>;

    /// Runs a cipher session over `src` into `dst` (as long as `src`).
    fn cipher(
        &mut self,
        id: SessionId,
        direction: Direction,
        iv: &[u8],
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<(), CryptoError>;

    /// A hash or MAC session's result over `src` into the front of `out`;
    /// returns its length (the session's result length).
    fn digest(&mut self, id: SessionId, src: &[u8], out: &mut [u8]) -> Result<usize, CryptoError>;

    /// An AEAD session: encrypting, `dst` gets the ciphertext then the tag
    /// (`src.len() + tag_len` bytes); decrypting, `src` is the ciphertext
    /// then the tag and `dst` gets the plaintext. Returns the bytes written.
    fn aead(
        &mut self,
        id: SessionId,
        direction: Direction,
        iv: &[u8],
        aad: &[u8],
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<usize, CryptoError>;

    /// An RSA session's encryption, decryption or signature of `src` into
    /// `dst`; returns the bytes written.
    fn akcipher(
        &mut self,
        id: SessionId,
        op: AkcipherOp,
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<usize, CryptoError>;

    /// Verifies an RSA session's `signature` over `digest`:
    /// [`CryptoError::KeyRejected`] when it does not verify.
    fn verify(&mut self, id: SessionId, signature: &[u8], digest: &[u8])
    -> Result<(), CryptoError>;

    /// Closes every session (a device reset).
    fn close_all(&mut self);
}
