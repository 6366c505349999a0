//! virtio-crypto (§5.9) end to end in one process: our driver-side queues
//! put requests in the layouts the spec gives (the legacy layout Linux
//! sends, and REVISION_1 with the stateless modes), the device answers
//! through the builtin backend, and the answers are checked against
//! published vectors; every malformed request gets its status and the
//! device goes on.

use backends::crypto::builtin::Builtin;
use virtio_core::GuestMemory;
use virtio_core::features::{CryptoFeatures, TransportFeatures};
use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::split::{DriverQueue, Token};
use virtio_core::testing::OwnedMemory;
use virtio_devices::crypto::Crypto;
use virtio_devices::crypto::wire::{self, Status};
use virtio_devices::device::{QueueConfig, VirtioDevice};

const DATA: u16 = 0;
const CTRL: u16 = 1;

/// Where request bytes go: readable at `IN`, writable at `OUT`.
const IN: u64 = 0x2_0000;
const OUT: u64 = 0x6_0000;

struct Rig<const N: usize = 16> {
    mem: &'static OwnedMemory,
    queues: [DriverQueue<N>; 2],
    dev: Crypto<Builtin, &'static OwnedMemory>,
}

fn rig(features: u64) -> Rig {
    rig_with(features, 0x10_0000, (0x1000, 0x8000), None)
}

/// A device in `mem_len` bytes of memory with its two queues of `N`
/// entries at `bases` (descriptor table, then the available ring 32 KiB
/// on, the used ring 40 KiB on: room for 2048 entries), the data queue
/// with indirect descriptors in `indirect` if given.
fn rig_with<const N: usize>(
    features: u64,
    mem_len: usize,
    bases: (u64, u64),
    indirect: Option<virtio_core::split::IndirectArea>,
) -> Rig<N> {
    let mem: &'static OwnedMemory = Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), mem_len)));
    let layout = |base: u64| {
        QueueLayout::new(
            QueueSize::new(N as u32).unwrap(),
            GuestAddress(base),
            GuestAddress(base + 0x8000),
            GuestAddress(base + 0xa000),
        )
        .unwrap()
    };
    let (l0, l1) = (layout(bases.0), layout(bases.1));
    let mut q0 = DriverQueue::new(l0, false, indirect).unwrap();
    let mut q1 = DriverQueue::new(l1, false, None).unwrap();
    q0.init(mem).unwrap();
    q1.init(mem).unwrap();
    let mut dev = Crypto::new(Builtin::default(), mem, 1);
    assert_eq!(dev.device_features() & features, features);
    dev.features_ok(features);
    dev.activate(
        features,
        vec![
            QueueConfig { layout: Some(l0) },
            QueueConfig { layout: Some(l1) },
        ],
    )
    .unwrap();
    Rig {
        mem,
        queues: [q0, q1],
        dev,
    }
}

const V1: u64 = TransportFeatures::VERSION_1.bits();

fn rev1_all() -> u64 {
    V1 | CryptoFeatures::all().bits()
}

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

impl<const N: usize> Rig<N> {
    /// Sends `readable` (one buffer, or none if empty) and `writable`
    /// bytes of room on queue `q`; returns the used length and the
    /// writable bytes.
    fn send(&mut self, q: u16, readable: &[u8], writable: u32) -> (u32, Vec<u8>) {
        self.mem.write(GuestAddress(IN), readable).unwrap();
        self.mem
            .write(GuestAddress(OUT), &vec![0xee; writable as usize])
            .unwrap();
        let ins: Vec<(GuestAddress, u32)> = if readable.is_empty() {
            vec![]
        } else {
            vec![(GuestAddress(IN), readable.len() as u32)]
        };
        let outs: Vec<(GuestAddress, u32)> = if writable == 0 {
            vec![]
        } else {
            vec![(GuestAddress(OUT), writable)]
        };
        let drv = &mut self.queues[usize::from(q)];
        let t: Token = drv.add(self.mem, &ins, &outs).unwrap();
        drv.publish(self.mem).unwrap();
        self.dev.queue_notify(q).unwrap();
        let u = self.queues[usize::from(q)]
            .pop_used(self.mem)
            .unwrap()
            .expect("the request was completed");
        assert_eq!(u.token, t);
        let mut out = vec![0u8; writable as usize];
        self.mem.read(GuestAddress(OUT), &mut out).unwrap();
        (u.len, out)
    }

    /// Sends `readable` in one buffer and the device-writable buffers
    /// `outs` as one chain on the data queue; returns the used length.
    fn send_chain(&mut self, readable: &[u8], outs: &[(GuestAddress, u32)]) -> u32 {
        self.mem.write(GuestAddress(IN), readable).unwrap();
        let drv = &mut self.queues[usize::from(DATA)];
        let t = drv
            .add(self.mem, &[(GuestAddress(IN), readable.len() as u32)], outs)
            .unwrap();
        drv.publish(self.mem).unwrap();
        self.dev.queue_notify(DATA).unwrap();
        let u = self.queues[usize::from(DATA)]
            .pop_used(self.mem)
            .unwrap()
            .unwrap();
        assert_eq!(u.token, t);
        u.len
    }

    /// An AES-128-CBC session (key [`K128`]) for `op` (1 encrypt, 2
    /// decrypt) in the legacy layout; asserts it was made.
    fn cbc_session(&mut self, op: u32) -> u64 {
        let (st, id) = self.create(
            wire::ctrl::CIPHER_CREATE,
            &legacy_cipher_flf(3, 16, op),
            &hex(K128),
        );
        assert_eq!(st, Status::Ok as u8);
        id
    }

    /// Creates a session from `opcode` and its fixed and variable parts;
    /// returns the status and the id.
    fn create(&mut self, opcode: u32, flf: &[u8], vlf: &[u8]) -> (u8, u64) {
        let mut req = le(&[opcode, 0, 0, 0]);
        req.extend(flf);
        req.extend(vlf);
        let (len, out) = self.send(CTRL, &req, 16);
        assert_eq!(len, 16);
        (out[8], u64::from_le_bytes(out[..8].try_into().unwrap()))
    }

    fn destroy(&mut self, opcode: u32, id: u64, legacy: bool) -> u8 {
        let mut req = le(&[opcode, 0, 0, 0]);
        let mut flf = id.to_le_bytes().to_vec();
        if legacy {
            flf.resize(wire::CTRL_FLF_LEGACY, 0);
        }
        req.extend(flf);
        let (len, out) = self.send(CTRL, &req, 1);
        assert_eq!(len, 1);
        out[0]
    }

    /// A data request: header, fixed part, variable part; `room` bytes of
    /// result before the status. Returns status, result, used length.
    fn data(
        &mut self,
        hdr: [u32; 2],
        session: u64,
        flag: u32,
        flf: &[u8],
        vlf: &[u8],
        room: u32,
    ) -> (u8, Vec<u8>, u32) {
        let mut req = le(&hdr);
        req.extend(session.to_le_bytes());
        req.extend(le(&[flag, 0]));
        req.extend(flf);
        req.extend(vlf);
        let (len, out) = self.send(DATA, &req, room + 1);
        (out[room as usize], out[..room as usize].to_vec(), len)
    }
}

/// The legacy cipher session's fixed part (padded to 56): cipher
/// parameters, then op_type CIPHER.
fn legacy_cipher_flf(algo: u32, key_len: u32, op: u32) -> Vec<u8> {
    let mut f = le(&[algo, key_len, op, 0]);
    f.resize(48, 0);
    f.extend(le(&[1, 0]));
    f
}

/// SP 800-38A F.2.1's encryption on AES-128-CBC session `id`, in the
/// legacy layout.
fn cbc_encrypt_request(id: u64) -> Vec<u8> {
    let mut req = le(&[wire::data::CIPHER_ENCRYPT, 3]);
    req.extend(id.to_le_bytes());
    req.extend(le(&[0, 0]));
    req.extend(legacy_cipher_data(16, 32));
    req.extend(hex(IV));
    req.extend(hex(PT));
    req
}

/// The legacy cipher data fixed part (padded to 48).
fn legacy_cipher_data(iv_len: u32, len: u32) -> Vec<u8> {
    let mut f = le(&[iv_len, len, len, 0]);
    f.resize(40, 0);
    f.extend(le(&[1, 0]));
    f
}

const K128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const IV: &str = "000102030405060708090a0b0c0d0e0f";
const PT: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51";
const CT: &str = "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2";

/// §5.9.7.2, §5.9.7.5: the legacy layout Linux uses (no REVISION_1): an
/// AES-128-CBC session each way, NIST SP 800-38A F.2.1/F.2.2 through the
/// data queue, then the sessions destroyed; a destroyed session is INVSESS
/// and a second destroy ERR.
#[test]
fn section_5_9_7_legacy_aes_cbc_sessions_match_sp800_38a() {
    let mut r = rig(V1);
    let enc = r.cbc_session(1);
    let dec = r.cbc_session(2);
    assert_ne!(enc, dec);
    let vlf = [hex(IV), hex(PT)].concat();
    let (st, out, len) = r.data(
        [wire::data::CIPHER_ENCRYPT, 3],
        enc,
        0,
        &legacy_cipher_data(16, 32),
        &vlf,
        32,
    );
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(out, hex(CT));
    assert_eq!(len, 33, "the result and the status");
    let vlf = [hex(IV), hex(CT)].concat();
    let (st, out, _) = r.data(
        [wire::data::CIPHER_DECRYPT, 3],
        dec,
        0,
        &legacy_cipher_data(16, 32),
        &vlf,
        32,
    );
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(out, hex(PT));
    assert_eq!(
        r.destroy(wire::ctrl::CIPHER_DESTROY, enc, true),
        Status::Ok as u8
    );
    assert_eq!(
        r.destroy(wire::ctrl::CIPHER_DESTROY, enc, true),
        Status::Err as u8
    );
    let (st, out, _) = r.data(
        [wire::data::CIPHER_ENCRYPT, 3],
        enc,
        0,
        &legacy_cipher_data(16, 32),
        &vlf,
        32,
    );
    assert_eq!(st, Status::InvSess as u8);
    assert!(
        out.iter().all(|&b| b == 0xee),
        "nothing written but the status"
    );
    assert_eq!(r.dev.open_sessions(), 1);
    // A reset closes what is left.
    r.dev.reset();
    assert_eq!(r.dev.open_sessions(), 0);
    assert_eq!(r.dev.backend().open_sessions(), 0);
}

/// §5.9.7.4, §5.9.7.5 with REVISION_1 and the stateless modes: SHA-256
/// of "abc" (FIPS 180), HMAC-SHA-256 (RFC 4231 case 2) and AES-128-CTR
/// (SP 800-38A F.5.1) with the parameters in the request; a hash session
/// too.
#[test]
fn section_5_9_7_stateless_requests_match_published_vectors() {
    let mut r = rig(rev1_all());
    let (st, out, _) = r.data([wire::data::HASH, 0], 0, 0, &le(&[4, 3, 32, 0]), b"abc", 32);
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(
        out,
        hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    let vlf = [b"Jefe".to_vec(), b"what do ya want for nothing?".to_vec()].concat();
    let (st, out, _) = r.data([wire::data::MAC, 0], 0, 0, &le(&[4, 4, 28, 32]), &vlf, 32);
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(
        out,
        hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
    // Stateless CTR: sess_para {algo, key_len, op}, iv_len, src, dst,
    // padded to 72, then op_type.
    let mut flf = le(&[4, 16, 1, 16, 32, 32]);
    flf.resize(72, 0);
    flf.extend(le(&[1]));
    let vlf = [hex(K128), hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"), hex(PT)].concat();
    let (st, out, _) = r.data([wire::data::CIPHER_ENCRYPT, 4], 0, 0, &flf, &vlf, 32);
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(
        out,
        hex("874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff")
    );
    // Stateless requests leave no session behind.
    assert_eq!(r.dev.backend().open_sessions(), 0);
    // A SHA-1 session in session mode (REVISION_1 sizes: 8-byte parts).
    let (st, id) = r.create(wire::ctrl::HASH_CREATE, &le(&[2, 20]), &[]);
    assert_eq!(st, Status::Ok as u8);
    let (st, out, _) = r.data(
        [wire::data::HASH, 2],
        id,
        wire::FLAG_SESSION_MODE,
        &le(&[3, 20]),
        b"abc",
        20,
    );
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(out, hex("a9993e364706816aba3e25717850c26c9cd0d89d"));
}

/// §5.9.7.6: AES-128-GCM (the GCM specification's test case 4) in a
/// session; the tag follows the ciphertext; a tag that does not match is
/// BADMSG with nothing of the plaintext handed out.
#[test]
fn section_5_9_7_6_aes_gcm_and_badmsg() {
    let mut r = rig(V1 | CryptoFeatures::REVISION_1.bits());
    let key = hex("feffe9928665731c6d6a8f9467308308");
    // algo GCM, key_len, tag_len, aad_len, op, padding.
    let (st, id) = r.create(wire::ctrl::AEAD_CREATE, &le(&[1, 16, 16, 20, 1, 0]), &key);
    assert_eq!(st, Status::Ok as u8);
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
    let flf = |src: usize, dst: usize| le(&[12, 20, src as u32, dst as u32, 16, 0]);
    let vlf = [iv.clone(), pt.clone(), aad.clone()].concat();
    let (st, out, _) = r.data(
        [wire::data::AEAD_ENCRYPT, 1],
        id,
        1,
        &flf(pt.len(), ct.len()),
        &vlf,
        ct.len() as u32,
    );
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(out, ct);
    let vlf = [iv.clone(), ct.clone(), aad.clone()].concat();
    let (st, out, _) = r.data(
        [wire::data::AEAD_DECRYPT, 1],
        id,
        1,
        &flf(ct.len(), pt.len()),
        &vlf,
        pt.len() as u32,
    );
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(out, pt);
    let mut bad = ct.clone();
    bad[0] ^= 1;
    let vlf = [iv, bad, aad].concat();
    let (st, out, _) = r.data(
        [wire::data::AEAD_DECRYPT, 1],
        id,
        1,
        &flf(ct.len(), pt.len()),
        &vlf,
        pt.len() as u32,
    );
    assert_eq!(st, Status::BadMsg as u8);
    assert!(
        out.iter().all(|&b| b == 0xee),
        "no unauthenticated byte written"
    );
}

/// §5.9.7.7: RSA with PKCS#1 v1.5 and SHA-256: a signature made by the
/// private session verifies under the public one (src is the signature
/// then the digest); a changed one is KEY_REJECTED; the used length of a
/// signature is its length plus the status.
#[test]
fn section_5_9_7_7_rsa_sign_and_verify() {
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 1024).unwrap();
    let private = key.to_pkcs1_der().unwrap();
    let public = key.to_public_key().to_pkcs1_der().unwrap();
    let mut r = rig(V1);
    // algo RSA, key_type, key_len, then rsa_session_para {PKCS1, SHA256},
    // padded to 56.
    let flf = |key_type: u32, len: usize| {
        let mut f = le(&[1, key_type, len as u32, 1, 6]);
        f.resize(56, 0);
        f
    };
    let (st, sign) = r.create(
        wire::ctrl::AKCIPHER_CREATE,
        &flf(2, private.as_bytes().len()),
        private.as_bytes(),
    );
    assert_eq!(st, Status::Ok as u8);
    let (st, verify) = r.create(
        wire::ctrl::AKCIPHER_CREATE,
        &flf(1, public.as_bytes().len()),
        public.as_bytes(),
    );
    assert_eq!(st, Status::Ok as u8);
    let digest = hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let mut dflf = le(&[32, 256]);
    dflf.resize(48, 0);
    let (st, sig, len) = r.data([wire::data::AKCIPHER_SIGN, 1], sign, 0, &dflf, &digest, 256);
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(len, 129, "a 1024-bit signature and the status");
    let sig = sig[..128].to_vec();
    let mut vflf = le(&[128, 32]);
    vflf.resize(48, 0);
    let (st, _, _) = r.data(
        [wire::data::AKCIPHER_VERIFY, 1],
        verify,
        0,
        &vflf,
        &[sig.clone(), digest.clone()].concat(),
        0,
    );
    assert_eq!(st, Status::Ok as u8);
    let mut bad = sig;
    bad[9] ^= 0x40;
    let (st, _, _) = r.data(
        [wire::data::AKCIPHER_VERIFY, 1],
        verify,
        0,
        &vflf,
        &[bad, digest].concat(),
        0,
    );
    assert_eq!(st, Status::KeyRejected as u8);
}

/// Bad requests get the spec's status and the device keeps serving
/// (§5.9.7.1): an unknown opcode, an algorithm not offered, a key of the
/// wrong size, lengths that do not add up, a session of another service,
/// a stateless request whose mode was not negotiated; a chain with no
/// room for a status comes back with length 0 and is counted.
#[test]
fn malformed_requests_get_their_status_and_the_device_goes_on() {
    let mut r = rig(V1 | CryptoFeatures::REVISION_1.bits());
    let key = hex(K128);
    // An unknown control opcode.
    let (len, out) = r.send(CTRL, &le(&[0x0909, 0, 0, 0]), 16);
    assert_eq!((len, out[8]), (16, Status::NotSupp as u8));
    // ARC4 (1) is not offered.
    assert_eq!(
        r.create(
            wire::ctrl::CIPHER_CREATE,
            &legacy_cipher_flf(1, 16, 1),
            &key
        )
        .0,
        Status::NotSupp as u8
    );
    // A 17-byte AES key.
    assert_eq!(
        r.create(
            wire::ctrl::CIPHER_CREATE,
            &legacy_cipher_flf(3, 17, 1),
            &[0; 17]
        )
        .0,
        Status::Err as u8
    );
    // A key longer than what the request carries.
    assert_eq!(
        r.create(
            wire::ctrl::CIPHER_CREATE,
            &legacy_cipher_flf(3, 32, 1),
            &key
        )
        .0,
        Status::Err as u8
    );
    let (st, id) = r.create(
        wire::ctrl::CIPHER_CREATE,
        &legacy_cipher_flf(3, 16, 1),
        &key,
    );
    assert_eq!(st, Status::Ok as u8);
    // src 32 but only 16 bytes follow the IV.
    let vlf = [hex(IV), vec![0; 16]].concat();
    let (st, _, _) = r.data(
        [wire::data::CIPHER_ENCRYPT, 3],
        id,
        1,
        &legacy_cipher_data(16, 32),
        &vlf,
        32,
    );
    assert_eq!(st, Status::Err as u8);
    // dst room shorter than the result.
    let vlf = [hex(IV), hex(PT)].concat();
    let (st, _, _) = r.data(
        [wire::data::CIPHER_ENCRYPT, 3],
        id,
        1,
        &legacy_cipher_data(16, 32),
        &vlf,
        16,
    );
    assert_eq!(st, Status::Err as u8);
    // A cipher session used for a hash.
    let (st, _, _) = r.data([wire::data::HASH, 4], id, 1, &le(&[3, 32]), b"abc", 32);
    assert_eq!(st, Status::InvSess as u8);
    // Stateless without the stateless feature: NOTSUPP (§5.9.7.3 note).
    let (st, _, _) = r.data([wire::data::HASH, 4], 0, 0, &le(&[4, 3, 32, 0]), b"abc", 32);
    assert_eq!(st, Status::NotSupp as u8);
    // An unknown data opcode.
    let (st, _, _) = r.data([0x0707, 0], id, 1, &[], &[], 4);
    assert_eq!(st, Status::NotSupp as u8);
    // No writable byte: length 0, counted.
    let mut req = le(&[wire::data::CIPHER_ENCRYPT, 3]);
    req.extend(id.to_le_bytes());
    let (len, _) = r.send(DATA, &req, 0);
    assert_eq!(len, 0);
    // A create with no room for its outcome: length 0, no session kept.
    let mut req = le(&[wire::ctrl::CIPHER_CREATE, 0, 0, 0]);
    req.extend(legacy_cipher_flf(3, 16, 1));
    req.extend(&key);
    let before = r.dev.open_sessions();
    let (len, _) = r.send(CTRL, &req, 8);
    assert_eq!(len, 0);
    assert_eq!(r.dev.open_sessions(), before);
    assert_eq!(r.dev.stats().no_status, 2);
    // Still serving.
    let vlf = [hex(IV), hex(PT)].concat();
    let (st, out, _) = r.data(
        [wire::data::CIPHER_ENCRYPT, 3],
        id,
        1,
        &legacy_cipher_data(16, 32),
        &vlf,
        32,
    );
    assert_eq!(st, Status::Ok as u8);
    assert_eq!(out, hex(CT));
}

/// §5.9.4: the configuration the driver reads: HW_READY, one data queue,
/// the five services, AES CBC/ECB/CTR/XTS, SHA-1/2, their HMACs, GCM,
/// RSA, the key limits and max_size.
#[test]
fn section_5_9_4_configuration_offers_more_than_aes_cbc_and_rsa() {
    let r = rig(V1);
    let mut c = [0u8; wire::CONFIG_LEN];
    r.dev.read_config(0, &mut c);
    let w = |i: usize| u32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(w(0), wire::S_HW_READY);
    assert_eq!(w(1), 1);
    assert_eq!(w(2), 0b1_1111);
    assert_eq!(w(3), 1 << 2 | 1 << 3 | 1 << 4 | 1 << 13);
    assert_eq!(w(5), 0b111_1100);
    assert_eq!(w(6), 0b111_1100);
    assert_eq!(w(8), 1 << 1);
    assert_eq!(w(9), 64);
    assert_eq!(w(11), 1 << 1);
    assert!(u64::from_le_bytes(c[48..56].try_into().unwrap()) >= 1 << 20);
    // Past the end reads as zero.
    let mut tail = [0xffu8; 8];
    r.dev.read_config(52, &mut tail);
    assert_eq!(&tail[4..], &[0; 4]);
}

/// A destination listed with its tail twice, as Linux's virtio_crypto
/// lists a split scatterlist (each entry with the entries after it: the
/// AES-CBC self-test "two even aligned splits" does this): the result is
/// written once, the repeated buffer is not overwritten afterwards, and
/// the status goes to the last byte (§5.9.7.3).
#[test]
fn a_destination_buffer_given_twice_keeps_the_result() {
    let mut r = rig(V1);
    let enc = r.cbc_session(1);
    let req = cbc_encrypt_request(enc);
    let (a, b, status) = (OUT, OUT + 0x100, OUT + 0x200);
    let outs = [
        (GuestAddress(a), 16),
        (GuestAddress(b), 16),
        (GuestAddress(b), 16),
        (GuestAddress(status), 1),
    ];
    assert_eq!(r.send_chain(&req, &outs), 33);
    let mut got = vec![0u8; 32];
    r.mem.read(GuestAddress(a), &mut got[..16]).unwrap();
    r.mem.read(GuestAddress(b), &mut got[16..]).unwrap();
    assert_eq!(got, hex(CT));
    let mut s = [0xffu8];
    r.mem.read(GuestAddress(status), &mut s).unwrap();
    assert_eq!(s[0], Status::Ok as u8);
}

/// A data request of more buffers than the device takes (1100 writable
/// ones through an indirect table, §2.7.5.3): nothing is read or run, the
/// last writable byte, the status (§5.9.7.3), gets ERR rather than being
/// left as the driver's buffer had it (Linux reads a 0 there as OK), the
/// used length is that byte, and the next request is served.
#[test]
fn a_chain_of_more_buffers_than_the_device_takes_gets_err() {
    use virtio_core::split::IndirectArea;
    // Queues of 2048, so that the chain is not longer than the queue
    // (§2.7.5.3.1), below the indirect tables at 1 MiB.
    let area = IndirectArea::new(GuestAddress(0x10_0000), 1200).unwrap();
    let features = V1 | TransportFeatures::RING_INDIRECT_DESC.bits();
    let mut r: Rig<2048> = rig_with(features, 0x20_0000, (0x8_0000, 0xa_0000), Some(area));
    let enc = r.cbc_session(1);
    r.mem.write(GuestAddress(OUT), &[0u8; 1100]).unwrap();
    let outs: Vec<(GuestAddress, u32)> = (0..1100).map(|i| (GuestAddress(OUT + i), 1)).collect();
    assert_eq!(r.send_chain(&cbc_encrypt_request(enc), &outs), 1);
    let mut out = vec![0xffu8; 1100];
    r.mem.read(GuestAddress(OUT), &mut out).unwrap();
    assert_eq!(out[1099], Status::Err as u8);
    assert!(out[..1099].iter().all(|&b| b == 0), "nothing else written");
    assert_eq!(r.dev.stats().too_long, 1);
    // The device goes on.
    let vlf = [hex(IV), hex(PT)].concat();
    let (st, got, _) = r.data(
        [wire::data::CIPHER_ENCRYPT, 3],
        enc,
        0,
        &legacy_cipher_data(16, 32),
        &vlf,
        32,
    );
    assert_eq!((st, got), (Status::Ok as u8, hex(CT)));
}
