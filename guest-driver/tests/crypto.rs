//! The crypto driver (§5.9) against our device (`virtio_devices::crypto`
//! over the builtin backend) behind virtio-core's register file: sessions
//! and requests of every service in the legacy layout and in revision 1's,
//! the stateless modes, batches of requests, and the device's statuses
//! surfaced as typed errors. Known answers from published vectors.

mod common;

use std::cell::RefCell;

use backends::crypto::builtin::Builtin;
use common::Env;
use guest_driver::crypto::{
    AkOp, Crypto, CryptoError, CryptoOptions, Direction, Mode, Op, Service, SessionParams, Status,
    algo, rsa,
};
use guest_driver::wait::Polls;
use virtio_core::memory::RegionMemory;
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_devices::crypto::Crypto as Device;
use virtio_devices::transport::{MmioTransport, dispatch};

type Regs = MmioRegisters<MmioTransport<Device<Builtin, RegionMemory<1>>>, 8>;

/// Our device, served inside each notification.
struct DevBus(RefCell<Regs>);

impl DevBus {
    fn new(env: &Env) -> DevBus {
        let dev = Device::new(Builtin::default(), env.memory(), 2);
        DevBus(RefCell::new(
            MmioRegisters::new(MmioTransport::new(dev)).unwrap(),
        ))
    }
}

impl RegisterAccess for DevBus {
    fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        let _ = self.0.borrow().read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&self, offset: u64, value: u32) {
        let mut r = self.0.borrow_mut();
        if let Ok(o) = r.write(offset, &value.to_le_bytes()) {
            dispatch(&mut r, o);
        }
    }
    fn read16(&self, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        let _ = self.0.borrow().read(offset, &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&self, offset: u64, value: u16) {
        let _ = self.0.borrow_mut().write(offset, &value.to_le_bytes());
    }
    fn read8(&self, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        let _ = self.0.borrow().read(offset, &mut b);
        b[0]
    }
    fn write8(&self, offset: u64, value: u8) {
        let _ = self.0.borrow_mut().write(offset, &[value]);
    }
}

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// 4 KiB slots: two data queues and the control queue fit the test pool.
fn small() -> CryptoOptions {
    CryptoOptions {
        slot_size: 4096,
        ..CryptoOptions::default()
    }
}

fn w() -> Polls {
    Polls::new(100)
}

const K128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const IV: &str = "000102030405060708090a0b0c0d0e0f";
const PT: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51";
const CT: &str = "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2";

/// §5.9.4, §5.9.5: the configuration is read (HW_READY), both data queues
/// and the control queue set up; in the legacy layout (REVISION_1 not
/// negotiated) an AES-128-CBC session each way reproduces NIST SP 800-38A
/// F.2.1 and F.2.2, and a destroyed session is INVSESS.
#[test]
fn section_5_9_legacy_layout_aes_cbc_sessions() {
    let env = Env::new();
    let bus = DevBus::new(&env);
    let opts = CryptoOptions {
        revision_1: false,
        ..small()
    };
    let mut c = Crypto::new(&env.hal, &bus, opts).unwrap();
    assert_eq!(c.data_queues(), 2);
    assert!(c.info().offers(Service::Cipher) && c.info().offers(Service::Akcipher));
    assert_ne!(c.info().cipher & 1 << algo::CIPHER_AES_CBC, 0);
    let key = hex(K128);
    let enc = c
        .create_session(
            &SessionParams::Cipher {
                algo: algo::CIPHER_AES_CBC,
                key: &key,
                direction: Direction::Encrypt,
            },
            &mut w(),
        )
        .unwrap();
    let (iv, pt) = (hex(IV), hex(PT));
    let mut out = [0u8; 32];
    let op = Op::Cipher {
        direction: Direction::Encrypt,
        iv: &iv,
        src: &pt,
    };
    assert_eq!(c.run(Mode::Session(enc), &op, &mut out, &mut w()), Ok(32));
    assert_eq!(out.to_vec(), hex(CT));
    c.destroy_session(Service::Cipher, enc, &mut w()).unwrap();
    assert_eq!(
        c.run(Mode::Session(enc), &op, &mut out, &mut w()),
        Err(CryptoError::Status(Status::InvSess))
    );
    assert_eq!(
        c.destroy_session(Service::Cipher, enc, &mut w()),
        Err(CryptoError::Status(Status::Err))
    );
    // Stateless needs REVISION_1.
    assert!(matches!(
        c.run(
            Mode::Stateless(SessionParams::Hash {
                algo: algo::SHA256,
                result_len: 32
            }),
            &Op::Hash {
                src: b"abc",
                result_len: 32
            },
            &mut out,
            &mut w()
        ),
        Err(CryptoError::Unsupported(_))
    ));
}

/// Revision 1 with the stateless modes: SHA-256 of "abc" (FIPS 180),
/// HMAC-SHA-256 (RFC 4231 case 2), AES-128-CTR (SP 800-38A F.5.1) in
/// stateless requests; SHA-1 and HMAC in sessions; AES-GCM (the GCM
/// specification's test case 4) with a tampered tag answered BADMSG.
#[test]
fn section_5_9_revision_1_every_symmetric_service() {
    let env = Env::new();
    let bus = DevBus::new(&env);
    let mut c = Crypto::new(&env.hal, &bus, small()).unwrap();
    assert!(c.stateless(Service::Hash) && c.stateless(Service::Cipher));
    let mut out = [0u8; 64];
    let n = c
        .run(
            Mode::Stateless(SessionParams::Hash {
                algo: algo::SHA256,
                result_len: 32,
            }),
            &Op::Hash {
                src: b"abc",
                result_len: 32,
            },
            &mut out,
            &mut w(),
        )
        .unwrap();
    assert_eq!(
        out[..n].to_vec(),
        hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    let n = c
        .run(
            Mode::Stateless(SessionParams::Mac {
                algo: algo::SHA256,
                key: b"Jefe",
                result_len: 32,
            }),
            &Op::Mac {
                src: b"what do ya want for nothing?",
                result_len: 32,
            },
            &mut out,
            &mut w(),
        )
        .unwrap();
    assert_eq!(
        out[..n].to_vec(),
        hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
    let (key, ctr, pt) = (hex(K128), hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"), hex(PT));
    let n = c
        .run(
            Mode::Stateless(SessionParams::Cipher {
                algo: algo::CIPHER_AES_CTR,
                key: &key,
                direction: Direction::Encrypt,
            }),
            &Op::Cipher {
                direction: Direction::Encrypt,
                iv: &ctr,
                src: &pt,
            },
            &mut out,
            &mut w(),
        )
        .unwrap();
    assert_eq!(
        out[..n].to_vec(),
        hex("874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff")
    );
    let sha1 = c
        .create_session(
            &SessionParams::Hash {
                algo: algo::SHA1,
                result_len: 20,
            },
            &mut w(),
        )
        .unwrap();
    let n = c
        .run(
            Mode::Session(sha1),
            &Op::Hash {
                src: b"abc",
                result_len: 20,
            },
            &mut out,
            &mut w(),
        )
        .unwrap();
    assert_eq!(
        out[..n].to_vec(),
        hex("a9993e364706816aba3e25717850c26c9cd0d89d")
    );
    let hmac = c
        .create_session(
            &SessionParams::Mac {
                algo: algo::SHA256,
                key: &[0x0b; 20],
                result_len: 32,
            },
            &mut w(),
        )
        .unwrap();
    let n = c
        .run(
            Mode::Session(hmac),
            &Op::Mac {
                src: b"Hi There",
                result_len: 32,
            },
            &mut out,
            &mut w(),
        )
        .unwrap();
    assert_eq!(
        out[..n].to_vec(),
        hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
    );
    // GCM.
    let gkey = hex("feffe9928665731c6d6a8f9467308308");
    let giv = hex("cafebabefacedbaddecaf888");
    let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let gpt = hex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
         1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    );
    let gct = hex(
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
         21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091
         5bc94fbc3221a5db94fae95ae7121a47",
    );
    let gcm = c
        .create_session(
            &SessionParams::Aead {
                algo: algo::AEAD_GCM,
                key: &gkey,
                tag_len: 16,
                aad_len: 20,
                direction: Direction::Encrypt,
            },
            &mut w(),
        )
        .unwrap();
    let mut big = [0u8; 128];
    let n = c
        .run(
            Mode::Session(gcm),
            &Op::Aead {
                direction: Direction::Encrypt,
                iv: &giv,
                aad: &aad,
                src: &gpt,
                dst_len: gct.len() as u32,
            },
            &mut big,
            &mut w(),
        )
        .unwrap();
    assert_eq!(big[..n].to_vec(), gct);
    let mut bad = gct.clone();
    bad[70] ^= 1;
    assert_eq!(
        c.run(
            Mode::Session(gcm),
            &Op::Aead {
                direction: Direction::Decrypt,
                iv: &giv,
                aad: &aad,
                src: &bad,
                dst_len: gpt.len() as u32,
            },
            &mut big,
            &mut w(),
        ),
        Err(CryptoError::Status(Status::BadMsg))
    );
}

/// AKCIPHER (§5.9.7.7): RSA with PKCS#1 v1.5 and SHA-256; the signature's
/// length comes from the used length; verify keeps and rejects; raw RSA
/// encryption and decryption round trip.
#[test]
fn section_5_9_7_7_rsa_through_the_driver() {
    use ::rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    let key = ::rsa::PrivateKey::new(&mut getrandom::SysRng, 1024).unwrap();
    let private = key.to_pkcs1_der().unwrap();
    let public = key.to_public_key().to_pkcs1_der().unwrap();
    let env = Env::new();
    let bus = DevBus::new(&env);
    let mut c = Crypto::new(&env.hal, &bus, small()).unwrap();
    let session = |c: &mut Crypto<_, _>, key_type, der: &[u8], padding, hash| {
        c.create_session(
            &SessionParams::Rsa {
                key_type,
                key: der,
                padding,
                hash,
            },
            &mut w(),
        )
        .unwrap()
    };
    let signer = session(
        &mut c,
        rsa::KEY_TYPE_PRIVATE,
        private.as_bytes(),
        rsa::PKCS1_PADDING,
        rsa::SHA256,
    );
    let verifier = session(
        &mut c,
        rsa::KEY_TYPE_PUBLIC,
        public.as_bytes(),
        rsa::PKCS1_PADDING,
        rsa::SHA256,
    );
    let digest = [0x5a; 32];
    let mut sig = [0u8; 256];
    let n = c
        .run(
            Mode::Session(signer),
            &Op::Akcipher {
                op: AkOp::Sign,
                src: &digest,
                dst_len: 256,
            },
            &mut sig,
            &mut w(),
        )
        .unwrap();
    assert_eq!(n, 128);
    let verify = |c: &mut Crypto<_, _>, s: &[u8]| {
        c.run(
            Mode::Session(verifier),
            &Op::Verify {
                signature: s,
                digest: &digest,
            },
            &mut [],
            &mut w(),
        )
    };
    assert_eq!(verify(&mut c, &sig[..n]), Ok(0));
    let mut bad = sig;
    bad[3] ^= 1;
    assert_eq!(
        verify(&mut c, &bad[..n]),
        Err(CryptoError::Status(Status::KeyRejected))
    );
    // Raw RSA, stateless (revision 1).
    let raw_pub = SessionParams::Rsa {
        key_type: rsa::KEY_TYPE_PUBLIC,
        key: public.as_bytes(),
        padding: rsa::RAW_PADDING,
        hash: rsa::NO_HASH,
    };
    let raw_priv = SessionParams::Rsa {
        key_type: rsa::KEY_TYPE_PRIVATE,
        key: private.as_bytes(),
        padding: rsa::RAW_PADDING,
        hash: rsa::NO_HASH,
    };
    let mut ct = [0u8; 128];
    let n = c
        .run(
            Mode::Stateless(raw_pub),
            &Op::Akcipher {
                op: AkOp::Encrypt,
                src: b"\x01message",
                dst_len: 128,
            },
            &mut ct,
            &mut w(),
        )
        .unwrap();
    assert_eq!(n, 128);
    let mut back = [0u8; 128];
    c.run(
        Mode::Stateless(raw_priv),
        &Op::Akcipher {
            op: AkOp::Decrypt,
            src: &ct,
            dst_len: 128,
        },
        &mut back,
        &mut w(),
    )
    .unwrap();
    assert_eq!(&back[120..], b"\x01message");
}

/// Requests batched: sixteen encryptions submitted on two queues, one
/// kick each, then collected as they complete; each matches its own
/// single run.
#[test]
fn batches_of_requests_on_two_queues() {
    let env = Env::new();
    let bus = DevBus::new(&env);
    let mut c = Crypto::new(&env.hal, &bus, small()).unwrap();
    let key = hex(K128);
    let id = c
        .create_session(
            &SessionParams::Cipher {
                algo: algo::CIPHER_AES_CBC,
                key: &key,
                direction: Direction::Encrypt,
            },
            &mut w(),
        )
        .unwrap();
    let ivs: Vec<[u8; 16]> = (0..16u8).map(|i| [i; 16]).collect();
    let data = [0x42u8; 64];
    let mut tokens = Vec::new();
    for (i, iv) in ivs.iter().enumerate() {
        let op = Op::Cipher {
            direction: Direction::Encrypt,
            iv,
            src: &data,
        };
        tokens.push(c.submit((i % 2) as u16, Mode::Session(id), &op).unwrap());
    }
    c.kick(0).unwrap();
    c.kick(1).unwrap();
    let mut got = Vec::new();
    for t in &tokens {
        let done = c.wait_for(*t, &mut w()).unwrap();
        assert_eq!(done.status, Status::Ok);
        let mut out = [0u8; 64];
        assert_eq!(c.take_result(&done, &mut out), Ok(64));
        got.push(out);
    }
    for (iv, out) in ivs.iter().zip(&got) {
        let mut one = [0u8; 64];
        c.run(
            Mode::Session(id),
            &Op::Cipher {
                direction: Direction::Encrypt,
                iv,
                src: &data,
            },
            &mut one,
            &mut w(),
        )
        .unwrap();
        assert_eq!(&one, out);
    }
}

/// How the hostile crypto device lies (§5.9.7, §2.7.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// Status byte 9, which §5.9.7.1 does not define.
    UnknownStatus,
    /// Used length 0: no status.
    NoStatus,
    /// An AKCIPHER result "longer" than the room: used length past it.
    LongerThanRoom,
    /// A session-create answer of 8 bytes instead of 16.
    ShortSessionAnswer,
    /// A session-create status of 0x100 (not a byte).
    WideSessionStatus,
    /// `status` without HW_READY (§5.9.4).
    NotReady,
    /// Nothing is ever answered.
    Silent,
}

/// A crypto device that answers every request with `lie`.
struct Liar {
    q: common::Queues,
    lie: Lie,
}

impl common::FakeDevice for Liar {
    fn device_id(&self) -> u32 {
        20
    }
    fn features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn queue_max(&self, _q: u16) -> u16 {
        16
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 56];
        let ready = u32::from(self.lie != Lie::NotReady);
        cfg[0..4].copy_from_slice(&ready.to_le_bytes());
        cfg[4..8].copy_from_slice(&1u32.to_le_bytes());
        cfg[8..12].copy_from_slice(&(1u32 << 4 | 1).to_le_bytes());
        cfg[12..16].copy_from_slice(&(1u32 << algo::CIPHER_AES_CBC).to_le_bytes());
        cfg[44..48].copy_from_slice(&(1u32 << algo::AKCIPHER_RSA).to_le_bytes());
        cfg[48..56].copy_from_slice(&(1u64 << 20).to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn start(
        &mut self,
        features: u64,
        layouts: &[Option<virtio_core::split::QueueLayout>],
    ) -> Result<(), &'static str> {
        self.q.start(features, layouts)
    }
    fn stop(&mut self) {
        self.q.queues.clear();
    }
    fn notified(&mut self, queue: u16) -> bool {
        if self.lie == Lie::Silent {
            return false;
        }
        let mem = std::sync::Arc::clone(&self.q.mem);
        let mem = &*mem;
        let Some(Some(dq)) = self.q.queues.get_mut(usize::from(queue)) else {
            return false;
        };
        while let Some(chain) = dq.pop(&mem).unwrap() {
            let head = chain.head();
            let (_, mut w) = chain.reader_writer::<8>().unwrap();
            let room = w.available() as u32;
            let len = if queue == 1 {
                // The control queue: a session-create answer.
                let mut out = [0u8; 16];
                out[..8].copy_from_slice(&7u64.to_le_bytes());
                let status: u32 = if self.lie == Lie::WideSessionStatus {
                    0x100
                } else {
                    0
                };
                out[8..12].copy_from_slice(&status.to_le_bytes());
                w.write_all(&out[..room.min(16) as usize]).unwrap();
                if self.lie == Lie::ShortSessionAnswer {
                    8
                } else {
                    room.min(16)
                }
            } else {
                let mut out = vec![0u8; room as usize];
                if let Some(last) = out.last_mut() {
                    *last = if self.lie == Lie::UnknownStatus { 9 } else { 0 };
                }
                w.write_all(&out).unwrap();
                match self.lie {
                    Lie::NoStatus => 0,
                    Lie::LongerThanRoom => room + 1,
                    _ => room,
                }
            };
            dq.add_used(&mem, head, len).unwrap();
        }
        self.q.finish(usize::from(queue))
    }
    fn work(&mut self) -> bool {
        false
    }
}

/// Every lie of a hostile device ends in a typed error, never a panic or
/// an unbounded wait: an undefined status, no status, a used length past
/// the room (§2.7.8: the queue is broken), a short or non-byte session
/// answer, a device that is not ready (§5.9.4: no request is sent), one
/// that never answers (a timeout).
#[test]
fn hostile_crypto_devices_get_typed_errors() {
    let key = [1u8; 16];
    let cbc = SessionParams::Cipher {
        algo: algo::CIPHER_AES_CBC,
        key: &key,
        direction: Direction::Encrypt,
    };
    let op = Op::Cipher {
        direction: Direction::Encrypt,
        iv: &[0; 16],
        src: &[0; 32],
    };
    for lie in [
        Lie::UnknownStatus,
        Lie::NoStatus,
        Lie::LongerThanRoom,
        Lie::ShortSessionAnswer,
        Lie::WideSessionStatus,
        Lie::NotReady,
        Lie::Silent,
    ] {
        let env = Env::new();
        let bus = common::Bus::new(Liar {
            q: common::Queues::new(env.memory()),
            lie,
        });
        let made = Crypto::new(&env.hal, &bus, small());
        if lie == Lie::NotReady {
            assert!(matches!(made, Err(CryptoError::NotReady)), "{lie:?}");
            continue;
        }
        let mut c = made.unwrap();
        let session = c.create_session(&cbc, &mut Polls::new(50));
        match lie {
            Lie::ShortSessionAnswer => {
                assert!(
                    matches!(session, Err(CryptoError::BadLength { len: 8, .. })),
                    "{session:?}"
                );
                continue;
            }
            Lie::WideSessionStatus => {
                assert!(
                    matches!(session, Err(CryptoError::UnknownStatus(_))),
                    "{session:?}"
                );
                continue;
            }
            Lie::Silent => {
                assert!(
                    matches!(session, Err(CryptoError::Driver(_))),
                    "{session:?}"
                );
                continue;
            }
            _ => {}
        }
        let id = session.unwrap();
        let r = c.run(Mode::Session(id), &op, &mut [0; 32], &mut Polls::new(50));
        match lie {
            Lie::UnknownStatus => assert_eq!(r, Err(CryptoError::UnknownStatus(9))),
            Lie::NoStatus => assert!(
                matches!(r, Err(CryptoError::BadLength { len: 0, .. })),
                "{r:?}"
            ),
            Lie::LongerThanRoom => assert!(matches!(r, Err(CryptoError::Driver(_))), "{r:?}"),
            _ => unreachable!(),
        }
    }
}
