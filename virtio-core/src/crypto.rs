//! The virtio-crypto wire format both sides share (§5.9): services,
//! opcodes, statuses, algorithm numbers, the fixed sizes of the request
//! parts and the configuration layout. The device in `virtio-devices` and
//! the driver in `guest-driver` use these same definitions.

/// The services (§5.9.2), as `crypto_services` bits and opcode high bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Service {
    /// Symmetric ciphers.
    Cipher = 0,
    /// Hashes.
    Hash = 1,
    /// MACs.
    Mac = 2,
    /// Authenticated ciphers.
    Aead = 3,
    /// Asymmetric ciphers.
    Akcipher = 4,
}

impl Service {
    /// The service of opcode `op` (its high byte).
    pub fn of_opcode(op: u32) -> Option<Service> {
        Some(match op >> 8 {
            0 => Service::Cipher,
            1 => Service::Hash,
            2 => Service::Mac,
            3 => Service::Aead,
            4 => Service::Akcipher,
            _ => return None,
        })
    }

    /// The feature bit of this service's stateless mode (§5.9.3).
    pub fn stateless_feature(self) -> crate::features::CryptoFeatures {
        use crate::features::CryptoFeatures;
        match self {
            Service::Cipher => CryptoFeatures::CIPHER_STATELESS_MODE,
            Service::Hash => CryptoFeatures::HASH_STATELESS_MODE,
            Service::Mac => CryptoFeatures::MAC_STATELESS_MODE,
            Service::Aead => CryptoFeatures::AEAD_STATELESS_MODE,
            Service::Akcipher => CryptoFeatures::AKCIPHER_STATELESS_MODE,
        }
    }

    /// This service's destroy-session opcode (§5.9.7.2).
    pub fn destroy_opcode(self) -> u32 {
        match self {
            Service::Cipher => ctrl::CIPHER_DESTROY,
            Service::Hash => ctrl::HASH_DESTROY,
            Service::Mac => ctrl::MAC_DESTROY,
            Service::Aead => ctrl::AEAD_DESTROY,
            Service::Akcipher => ctrl::AKCIPHER_DESTROY,
        }
    }

    /// This service's create-session opcode (§5.9.7.2).
    pub fn create_opcode(self) -> u32 {
        match self {
            Service::Cipher => ctrl::CIPHER_CREATE,
            Service::Hash => ctrl::HASH_CREATE,
            Service::Mac => ctrl::MAC_CREATE,
            Service::Aead => ctrl::AEAD_CREATE,
            Service::Akcipher => ctrl::AKCIPHER_CREATE,
        }
    }
}

/// An operation's outcome as the driver reads it (§5.9.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// Any other failure.
    Err = 1,
    /// Authentication failed (AEAD decryption).
    BadMsg = 2,
    /// The operation or algorithm is not supported.
    NotSupp = 3,
    /// No such session.
    InvSess = 4,
    /// No free session (only with REVISION_1).
    NoSpc = 5,
    /// A signature that does not verify.
    KeyRejected = 6,
}

impl Status {
    /// The status of byte `b`, if it is one the spec defines (IPsec's
    /// soft expiry, 7, is not used here).
    pub fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Err,
            2 => Status::BadMsg,
            3 => Status::NotSupp,
            4 => Status::InvSess,
            5 => Status::NoSpc,
            6 => Status::KeyRejected,
            _ => return None,
        })
    }
}

/// `VIRTIO_CRYPTO_OPCODE(service, op)`.
pub const fn opcode(service: u32, op: u32) -> u32 {
    (service << 8) | op
}

/// Control opcodes (§5.9.7.2).
pub mod ctrl {
    use super::opcode;
    /// CIPHER_CREATE_SESSION.
    pub const CIPHER_CREATE: u32 = opcode(0, 2);
    /// CIPHER_DESTROY_SESSION.
    pub const CIPHER_DESTROY: u32 = opcode(0, 3);
    /// HASH_CREATE_SESSION.
    pub const HASH_CREATE: u32 = opcode(1, 2);
    /// HASH_DESTROY_SESSION.
    pub const HASH_DESTROY: u32 = opcode(1, 3);
    /// MAC_CREATE_SESSION.
    pub const MAC_CREATE: u32 = opcode(2, 2);
    /// MAC_DESTROY_SESSION.
    pub const MAC_DESTROY: u32 = opcode(2, 3);
    /// AEAD_CREATE_SESSION.
    pub const AEAD_CREATE: u32 = opcode(3, 2);
    /// AEAD_DESTROY_SESSION.
    pub const AEAD_DESTROY: u32 = opcode(3, 3);
    /// AKCIPHER_CREATE_SESSION.
    pub const AKCIPHER_CREATE: u32 = opcode(4, 4);
    /// AKCIPHER_DESTROY_SESSION.
    pub const AKCIPHER_DESTROY: u32 = opcode(4, 5);
}

/// Data opcodes (§5.9.7.3).
pub mod data {
    use super::opcode;
    /// CIPHER_ENCRYPT.
    pub const CIPHER_ENCRYPT: u32 = opcode(0, 0);
    /// CIPHER_DECRYPT.
    pub const CIPHER_DECRYPT: u32 = opcode(0, 1);
    /// HASH.
    pub const HASH: u32 = opcode(1, 0);
    /// MAC.
    pub const MAC: u32 = opcode(2, 0);
    /// AEAD_ENCRYPT.
    pub const AEAD_ENCRYPT: u32 = opcode(3, 0);
    /// AEAD_DECRYPT.
    pub const AEAD_DECRYPT: u32 = opcode(3, 1);
    /// AKCIPHER_ENCRYPT.
    pub const AKCIPHER_ENCRYPT: u32 = opcode(4, 0);
    /// AKCIPHER_DECRYPT.
    pub const AKCIPHER_DECRYPT: u32 = opcode(4, 1);
    /// AKCIPHER_SIGN.
    pub const AKCIPHER_SIGN: u32 = opcode(4, 2);
    /// AKCIPHER_VERIFY.
    pub const AKCIPHER_VERIFY: u32 = opcode(4, 3);
}

/// Algorithm numbers (§5.9.2.1 to §5.9.2.5): values in requests and bit
/// numbers in the configuration.
pub mod algo {
    /// `VIRTIO_CRYPTO_CIPHER_AES_ECB`.
    pub const CIPHER_AES_ECB: u32 = 2;
    /// `VIRTIO_CRYPTO_CIPHER_AES_CBC`.
    pub const CIPHER_AES_CBC: u32 = 3;
    /// `VIRTIO_CRYPTO_CIPHER_AES_CTR`.
    pub const CIPHER_AES_CTR: u32 = 4;
    /// `VIRTIO_CRYPTO_CIPHER_AES_XTS`.
    pub const CIPHER_AES_XTS: u32 = 13;
    /// `VIRTIO_CRYPTO_HASH_SHA1` (and `MAC_HMAC_SHA1`).
    pub const SHA1: u32 = 2;
    /// `VIRTIO_CRYPTO_HASH_SHA_224` (and `MAC_HMAC_SHA_224`).
    pub const SHA224: u32 = 3;
    /// `VIRTIO_CRYPTO_HASH_SHA_256` (and `MAC_HMAC_SHA_256`).
    pub const SHA256: u32 = 4;
    /// `VIRTIO_CRYPTO_HASH_SHA_384` (and `MAC_HMAC_SHA_384`).
    pub const SHA384: u32 = 5;
    /// `VIRTIO_CRYPTO_HASH_SHA_512` (and `MAC_HMAC_SHA_512`).
    pub const SHA512: u32 = 6;
    /// `VIRTIO_CRYPTO_AEAD_GCM`.
    pub const AEAD_GCM: u32 = 1;
    /// `VIRTIO_CRYPTO_AKCIPHER_RSA`.
    pub const AKCIPHER_RSA: u32 = 1;
}

/// RSA session parameters (§5.9.7.2.1.5).
pub mod rsa {
    /// `VIRTIO_CRYPTO_RSA_RAW_PADDING`.
    pub const RAW_PADDING: u32 = 0;
    /// `VIRTIO_CRYPTO_RSA_PKCS1_PADDING`.
    pub const PKCS1_PADDING: u32 = 1;
    /// `VIRTIO_CRYPTO_RSA_NO_HASH`.
    pub const NO_HASH: u32 = 0;
    /// `VIRTIO_CRYPTO_RSA_SHA1`.
    pub const SHA1: u32 = 5;
    /// `VIRTIO_CRYPTO_RSA_SHA256`.
    pub const SHA256: u32 = 6;
    /// `VIRTIO_CRYPTO_RSA_SHA384`.
    pub const SHA384: u32 = 7;
    /// `VIRTIO_CRYPTO_RSA_SHA512`.
    pub const SHA512: u32 = 8;
    /// `VIRTIO_CRYPTO_RSA_SHA224`.
    pub const SHA224: u32 = 9;
    /// `VIRTIO_CRYPTO_AKCIPHER_KEY_TYPE_PUBLIC`.
    pub const KEY_TYPE_PUBLIC: u32 = 1;
    /// `VIRTIO_CRYPTO_AKCIPHER_KEY_TYPE_PRIVATE`.
    pub const KEY_TYPE_PRIVATE: u32 = 2;
}

/// `VIRTIO_CRYPTO_FLAG_SESSION_MODE` in a data header's `flag`.
pub const FLAG_SESSION_MODE: u32 = 1;
/// `VIRTIO_CRYPTO_SYM_OP_CIPHER`.
pub const SYM_OP_CIPHER: u32 = 1;
/// `VIRTIO_CRYPTO_SYM_OP_ALGORITHM_CHAINING`.
pub const SYM_OP_CHAINING: u32 = 2;
/// `VIRTIO_CRYPTO_OP_ENCRYPT`.
pub const OP_ENCRYPT: u32 = 1;
/// `VIRTIO_CRYPTO_OP_DECRYPT`.
pub const OP_DECRYPT: u32 = 2;
/// The control header's size (`struct virtio_crypto_ctrl_header`).
pub const CTRL_HEADER: usize = 16;
/// The data header's size (`struct virtio_crypto_op_header`).
pub const DATA_HEADER: usize = 24;
/// Control fixed parts without REVISION_1
/// (`VIRTIO_CRYPTO_CTRLQ_OP_SPEC_HDR_LEGACY`).
pub const CTRL_FLF_LEGACY: usize = 56;
/// Data fixed parts without REVISION_1
/// (`VIRTIO_CRYPTO_DATAQ_OP_SPEC_HDR_LEGACY`).
pub const DATA_FLF_LEGACY: usize = 48;
/// The create-session outcome: `le64 session_id, le32 status, le32 padding`.
pub const SESSION_INPUT: usize = 16;

/// The configuration layout (§5.9.4, `struct virtio_crypto_config`).
pub mod config {
    /// Its size.
    pub const LEN: usize = 56;
    /// `le32 status`.
    pub const STATUS: u64 = 0;
    /// `le32 max_dataqueues`.
    pub const MAX_DATAQUEUES: u64 = 4;
    /// `le32 crypto_services`.
    pub const CRYPTO_SERVICES: u64 = 8;
    /// `le32 cipher_algo_l`.
    pub const CIPHER_ALGO_L: u64 = 12;
    /// `le32 cipher_algo_h`.
    pub const CIPHER_ALGO_H: u64 = 16;
    /// `le32 hash_algo`.
    pub const HASH_ALGO: u64 = 20;
    /// `le32 mac_algo_l`.
    pub const MAC_ALGO_L: u64 = 24;
    /// `le32 mac_algo_h`.
    pub const MAC_ALGO_H: u64 = 28;
    /// `le32 aead_algo`.
    pub const AEAD_ALGO: u64 = 32;
    /// `le32 max_cipher_key_len`.
    pub const MAX_CIPHER_KEY_LEN: u64 = 36;
    /// `le32 max_auth_key_len`.
    pub const MAX_AUTH_KEY_LEN: u64 = 40;
    /// `le32 akcipher_algo`.
    pub const AKCIPHER_ALGO: u64 = 44;
    /// `le64 max_size`.
    pub const MAX_SIZE: u64 = 48;
    /// `VIRTIO_CRYPTO_S_HW_READY` in `status`.
    pub const S_HW_READY: u32 = 1;
}
