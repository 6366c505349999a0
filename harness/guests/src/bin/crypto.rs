//! Scenario `crypto`: known-answer tests through `guest-driver`'s crypto
//! driver (§5.9) against the first `virtio_mmio.device=` slot with
//! DeviceID 20. Every algorithm the device advertises and this program
//! has a vector for is run; `crypto.require=` names the ones that must be
//! there.
//!
//! Vectors (facts, from their publications): NIST SP 800-38A F.1.1,
//! F.2.1/F.2.2 and F.5.1 (AES-128 ECB, CBC, CTR); IEEE 1619-2007 XTS-AES
//! vector 2; FIPS 180 "abc" (SHA-1, SHA-256, SHA-512); RFC 4231 test cases
//! 1 and 2 (HMAC-SHA-256); the GCM specification's test case 4 (McGrew and
//! Viega). RSA: a 1024-bit key made for this test with OpenSSL 3.0, and
//! OpenSSL's PKCS#1 v1.5 SHA-256 signature of SHA-256("abc") and raw
//! encryption of a fixed message (`harness/conform/vectors/README.md`): an implementation
//! other than ours computed them.
//!
//! Options (see README.md): `crypto.mode=poll|irq` (default irq),
//! `crypto.require=all|qemu|none` (default all: every algorithm above;
//! qemu: AES-CBC and RSA, what QEMU's builtin cryptodev advertises; cbc:
//! AES-CBC only, what QEMU 7.2's `cryptodev-vhost-user` passes on),
//! `crypto.revision1=on|off` (default on: negotiate REVISION_1 and the
//! stateless modes when offered), `crypto.invsess=on|off` (default on:
//! send a request on a session never made, which must come back
//! INVSESS; a driver rule broken on purpose, off in watched runs). Last line before the verdict:
//! `crypto: <n> vectors passed (<list>)`.
#![no_std]
#![no_main]

use guest_driver::crypto::{
    AkOp, Crypto, CryptoError, CryptoOptions, Direction, Mode, Op, Service, SessionParams, Status,
    algo, rsa,
};
use guest_driver::virtio_core::features::DeviceType;
use guest_rt::virtio::{self, Budget, Options, OrFail};
use guest_rt::{BootInfo, exit, println};

guest_rt::entry!(main);

/// How long each request may take, in milliseconds.
const REQUEST_MS: u64 = 10_000;

const K128: [u8; 16] = hex16(*b"2b7e151628aed2a6abf7158809cf4f3c");
const PT: [u8; 32] = hex32(*b"6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");

const RSA_PRIVATE: &[u8] = include_bytes!("../../../conform/vectors/rsa-private.der");
const RSA_PUBLIC: &[u8] = include_bytes!("../../../conform/vectors/rsa-public.der");
const RSA_SIGNATURE: &[u8] = include_bytes!("../../../conform/vectors/rsa-sign-sha256-abc.bin");
const RSA_RAW_CIPHERTEXT: &[u8] = include_bytes!("../../../conform/vectors/rsa-raw-encrypt.bin");
/// SHA-256("abc") (FIPS 180).
const SHA256_ABC: [u8; 32] =
    hex32(*b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not hex"),
    }
}

const fn hex<const N: usize, const M: usize>(s: [u8; M]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = nibble(s[2 * i]) << 4 | nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

const fn hex16(s: [u8; 32]) -> [u8; 16] {
    hex::<16, 32>(s)
}

const fn hex32(s: [u8; 64]) -> [u8; 32] {
    hex::<32, 64>(s)
}

/// What must be there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Require {
    All,
    Qemu,
    /// AES-CBC only: what QEMU 7.2's `cryptodev-vhost-user` lets through.
    Cbc,
    None,
}

struct Run<'a> {
    drv: Crypto<&'a virtio::Dma, guest_driver::VolatileMmio>,
    mode: virtio::Mode,
    passed: u32,
    names: [&'static str; 24],
}

impl Run<'_> {
    fn budget(&self) -> Budget {
        Budget::new(self.mode, REQUEST_MS)
    }

    fn pass(&mut self, name: &'static str) {
        if let Some(slot) = self.names.get_mut(self.passed as usize) {
            *slot = name;
        }
        self.passed += 1;
        println!("crypto: {name} ok");
    }

    fn session(&mut self, what: &str, p: &SessionParams<'_>) -> u64 {
        let mut b = self.budget();
        self.drv
            .create_session(p, &mut b)
            .or_fail(format_args!("crypto: {what}: creating the session"))
    }

    fn destroy(&mut self, what: &str, s: Service, id: u64) {
        let mut b = self.budget();
        self.drv
            .destroy_session(s, id, &mut b)
            .or_fail(format_args!("crypto: {what}: destroying the session"));
    }

    fn run(&mut self, what: &str, mode: Mode<'_>, op: &Op<'_>, out: &mut [u8]) -> usize {
        let mut b = self.budget();
        self.drv
            .run(mode, op, out, &mut b)
            .or_fail(format_args!("crypto: {what}"))
    }

    fn expect(&self, what: &str, got: &[u8], want: &[u8]) {
        if got != want {
            let at = got
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            exit::fail(format_args!(
                "crypto: {what}: result differs from the vector at byte {at} ({} bytes, {} expected)",
                got.len(),
                want.len()
            ));
        }
    }

    fn cipher(
        &mut self,
        name: &'static str,
        algo: u32,
        key: &[u8],
        iv: &[u8],
        pt: &[u8],
        ct: &[u8],
    ) {
        let mut out = [0u8; 64];
        for (direction, src, want) in [(Direction::Encrypt, pt, ct), (Direction::Decrypt, ct, pt)] {
            let id = self.session(
                name,
                &SessionParams::Cipher {
                    algo,
                    key,
                    direction,
                },
            );
            let n = self.run(
                name,
                Mode::Session(id),
                &Op::Cipher { direction, iv, src },
                &mut out,
            );
            self.expect(name, &out[..n], want);
            self.destroy(name, Service::Cipher, id);
        }
        self.pass(name);
    }

    fn hash(&mut self, name: &'static str, algo: u32, want: &[u8]) {
        let n = want.len() as u32;
        let id = self.session(
            name,
            &SessionParams::Hash {
                algo,
                result_len: n,
            },
        );
        let mut out = [0u8; 64];
        let k = self.run(
            name,
            Mode::Session(id),
            &Op::Hash {
                src: b"abc",
                result_len: n,
            },
            &mut out,
        );
        self.expect(name, &out[..k], want);
        self.destroy(name, Service::Hash, id);
        if self.drv.stateless(Service::Hash) {
            let k = self.run(
                name,
                Mode::Stateless(SessionParams::Hash {
                    algo,
                    result_len: n,
                }),
                &Op::Hash {
                    src: b"abc",
                    result_len: n,
                },
                &mut out,
            );
            self.expect(name, &out[..k], want);
        }
        self.pass(name);
    }

    fn hmac(&mut self) {
        let name = "HMAC-SHA-256 (RFC 4231 1, 2)";
        let cases: [(&[u8], &[u8], [u8; 32]); 2] = [
            (
                &[0x0b; 20],
                b"Hi There",
                hex32(*b"b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                hex32(*b"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            ),
        ];
        let mut out = [0u8; 32];
        for (key, data, want) in cases {
            let params = SessionParams::Mac {
                algo: algo::SHA256,
                key,
                result_len: 32,
            };
            let id = self.session(name, &params);
            let op = Op::Mac {
                src: data,
                result_len: 32,
            };
            let n = self.run(name, Mode::Session(id), &op, &mut out);
            self.expect(name, &out[..n], &want);
            self.destroy(name, Service::Mac, id);
            if self.drv.stateless(Service::Mac) {
                let n = self.run(name, Mode::Stateless(params), &op, &mut out);
                self.expect(name, &out[..n], &want);
            }
        }
        self.pass(name);
    }

    fn gcm(&mut self) {
        let name = "AES-128-GCM (GCM spec test case 4)";
        let key: [u8; 16] = hex16(*b"feffe9928665731c6d6a8f9467308308");
        let iv: [u8; 12] = hex::<12, 24>(*b"cafebabefacedbaddecaf888");
        let aad: [u8; 20] = hex::<20, 40>(*b"feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let pt: [u8; 60] = hex::<60, 120>(
            *b"d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let ct: [u8; 76] = hex::<76, 152>(
            *b"42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e0915bc94fbc3221a5db94fae95ae7121a47",
        );
        let mut out = [0u8; 80];
        for (direction, src, want) in [
            (Direction::Encrypt, &pt[..], &ct[..]),
            (Direction::Decrypt, &ct[..], &pt[..]),
        ] {
            let id = self.session(
                name,
                &SessionParams::Aead {
                    algo: algo::AEAD_GCM,
                    key: &key,
                    tag_len: 16,
                    aad_len: 20,
                    direction,
                },
            );
            let op = Op::Aead {
                direction,
                iv: &iv,
                aad: &aad,
                src,
                dst_len: want.len() as u32,
            };
            let n = self.run(name, Mode::Session(id), &op, &mut out);
            self.expect(name, &out[..n], want);
            if direction == Direction::Decrypt {
                // §5.9.7.6: a tag that does not match is BADMSG.
                let mut bad = ct;
                bad[75] ^= 1;
                let op = Op::Aead {
                    direction,
                    iv: &iv,
                    aad: &aad,
                    src: &bad,
                    dst_len: 60,
                };
                let mut b = self.budget();
                match self.drv.run(Mode::Session(id), &op, &mut out, &mut b) {
                    Err(CryptoError::Status(Status::BadMsg)) => {}
                    r => exit::fail(format_args!(
                        "crypto: {name}: a tampered tag gave {r:?}, not BADMSG (§5.9.7.6)"
                    )),
                }
            }
            self.destroy(name, Service::Aead, id);
        }
        self.pass(name);
    }

    /// Tries a session of every hash and MAC the device advertises and
    /// reports the ones it refuses (a device MUST advertise only what it
    /// offers, §5.9.4).
    fn probe_advertised(&mut self, info: &guest_driver::crypto::CryptoInfo) {
        for (name, a) in [
            ("SHA-1", algo::SHA1),
            ("SHA-224", algo::SHA224),
            ("SHA-256", algo::SHA256),
            ("SHA-384", algo::SHA384),
            ("SHA-512", algo::SHA512),
        ] {
            for (service, bits) in [
                (Service::Hash, u64::from(info.hash)),
                (Service::Mac, info.mac),
            ] {
                if !info.offers(service) || bits & (1 << a) == 0 {
                    continue;
                }
                let p = match service {
                    Service::Hash => SessionParams::Hash {
                        algo: a,
                        result_len: 20,
                    },
                    _ => SessionParams::Mac {
                        algo: a,
                        key: b"key",
                        result_len: 20,
                    },
                };
                let mut b = self.budget();
                match self.drv.create_session(&p, &mut b) {
                    Ok(id) => {
                        println!("crypto: advertised {service:?} {name}: a session was made");
                        self.destroy(name, service, id);
                    }
                    Err(e) => println!("crypto: advertised {service:?} {name} but refused: {e}"),
                }
            }
        }
        if info.offers(Service::Mac) && info.mac == 0 {
            println!("crypto: the MAC service is advertised with no MAC algorithm");
        }
    }

    /// RSA: PKCS#1 v1.5 signatures, then raw padding (`raw_optional`:
    /// a device that refuses raw sessions is reported, not failed).
    fn rsa(&mut self, raw_optional: bool) {
        let name = "RSA-1024 PKCS#1 v1.5 SHA-256 and raw (OpenSSL vectors)";
        let signer = self.session(
            name,
            &SessionParams::Rsa {
                key_type: rsa::KEY_TYPE_PRIVATE,
                key: RSA_PRIVATE,
                padding: rsa::PKCS1_PADDING,
                hash: rsa::SHA256,
            },
        );
        let mut out = [0u8; 128];
        let n = self.run(
            name,
            Mode::Session(signer),
            &Op::Akcipher {
                op: AkOp::Sign,
                src: &SHA256_ABC,
                dst_len: 128,
            },
            &mut out,
        );
        self.expect(name, &out[..n], RSA_SIGNATURE);
        let verifier = self.session(
            name,
            &SessionParams::Rsa {
                key_type: rsa::KEY_TYPE_PUBLIC,
                key: RSA_PUBLIC,
                padding: rsa::PKCS1_PADDING,
                hash: rsa::SHA256,
            },
        );
        self.run(
            name,
            Mode::Session(verifier),
            &Op::Verify {
                signature: RSA_SIGNATURE,
                digest: &SHA256_ABC,
            },
            &mut [],
        );
        let mut bad = [0u8; 128];
        bad.copy_from_slice(RSA_SIGNATURE);
        bad[64] ^= 0x10;
        let mut b = self.budget();
        match self.drv.run(
            Mode::Session(verifier),
            &Op::Verify {
                signature: &bad,
                digest: &SHA256_ABC,
            },
            &mut [],
            &mut b,
        ) {
            // QEMU answers a failed verification with ERR, the spec with
            // KEY_REJECTED (§5.9.7.7); either way it is refused.
            Err(CryptoError::Status(Status::KeyRejected | Status::Err | Status::BadMsg)) => {}
            r => exit::fail(format_args!(
                "crypto: {name}: a changed signature gave {r:?}, not a refusal"
            )),
        }
        self.destroy(name, Service::Akcipher, signer);
        self.destroy(name, Service::Akcipher, verifier);
        // Raw: the message is 120 zero bytes then "\x01message".
        let mut m = [0u8; 128];
        m[120..].copy_from_slice(b"\x01message");
        let raw_params = SessionParams::Rsa {
            key_type: rsa::KEY_TYPE_PUBLIC,
            key: RSA_PUBLIC,
            padding: rsa::RAW_PADDING,
            hash: rsa::NO_HASH,
        };
        let raw_pub = if raw_optional {
            let mut b = self.budget();
            match self.drv.create_session(&raw_params, &mut b) {
                Ok(id) => id,
                Err(e) => {
                    println!("crypto: RSA with raw padding refused: {e}");
                    self.pass("RSA-1024 PKCS#1 v1.5 SHA-256 (OpenSSL vectors)");
                    return;
                }
            }
        } else {
            self.session(name, &raw_params)
        };
        let raw_encrypt = Op::Akcipher {
            op: AkOp::Encrypt,
            src: &m,
            dst_len: 128,
        };
        let n = if raw_optional {
            let mut b = self.budget();
            match self
                .drv
                .run(Mode::Session(raw_pub), &raw_encrypt, &mut out, &mut b)
            {
                Ok(n) => n,
                Err(e) => {
                    println!("crypto: RSA with raw padding refused: {e}");
                    self.destroy(name, Service::Akcipher, raw_pub);
                    self.pass("RSA-1024 PKCS#1 v1.5 SHA-256 (OpenSSL vectors)");
                    return;
                }
            }
        } else {
            self.run(name, Mode::Session(raw_pub), &raw_encrypt, &mut out)
        };
        self.expect(name, &out[..n], RSA_RAW_CIPHERTEXT);
        let raw_priv = self.session(
            name,
            &SessionParams::Rsa {
                key_type: rsa::KEY_TYPE_PRIVATE,
                key: RSA_PRIVATE,
                padding: rsa::RAW_PADDING,
                hash: rsa::NO_HASH,
            },
        );
        let n = self.run(
            name,
            Mode::Session(raw_priv),
            &Op::Akcipher {
                op: AkOp::Decrypt,
                src: RSA_RAW_CIPHERTEXT,
                dst_len: 128,
            },
            &mut out,
        );
        // A raw result may come without its leading zeros.
        let got = &out[..n];
        let want = &m[128 - n.min(128)..];
        self.expect(name, got, want);
        self.destroy(name, Service::Akcipher, raw_pub);
        self.destroy(name, Service::Akcipher, raw_priv);
        self.pass(name);
    }
}

fn main(boot: &'static BootInfo) {
    let opts = Options::new(boot, "crypto", &["mode", "require", "revision1", "invsess"])
        .or_fail(format_args!("crypto"));
    let mode = opts.mode().or_fail(format_args!("crypto"));
    let require = opts
        .choice(
            "require",
            &[
                ("all", Require::All),
                ("qemu", Require::Qemu),
                ("cbc", Require::Cbc),
                ("none", Require::None),
            ],
            "all, qemu, cbc or none",
        )
        .or_fail(format_args!("crypto"))
        .unwrap_or(Require::All);
    let revision_1 = opts
        .choice("revision1", &[("on", true), ("off", false)], "on or off")
        .or_fail(format_args!("crypto"))
        .unwrap_or(true);
    // The INVSESS probe breaks a driver rule on purpose (§5.9.7.4: a
    // request names a session the device made); a watched run turns it
    // off.
    let invsess = opts
        .choice("invsess", &[("on", true), ("off", false)], "on or off")
        .or_fail(format_args!("crypto"))
        .unwrap_or(true);

    let dma = virtio::dma_pool(boot).or_fail(format_args!("crypto"));
    let dev = virtio::find_device(boot, &dma, DeviceType::Crypto).or_fail(format_args!("crypto"));
    println!(
        "crypto: device at {:#x} irq {}, mode {mode}",
        dev.slot.base, dev.slot.irq
    );
    if mode == virtio::Mode::Irq {
        virtio::route_irq(&dev.slot).or_fail(format_args!("crypto: irq {}", dev.slot.irq));
    }
    let options = CryptoOptions {
        completion: mode.completion(),
        event_idx: true,
        revision_1,
        slot_size: 2048,
    };
    let drv = Crypto::new(&dma, dev.regs, options).or_fail(format_args!("crypto: initialising"));
    let info = *drv.info();
    println!(
        "crypto: features {:#x}, services {:#x}, cipher {:#x}, hash {:#x}, mac {:#x}, aead {:#x}, akcipher {:#x}, {} data queues",
        drv.features(),
        info.services,
        info.cipher,
        info.hash,
        info.mac,
        info.aead,
        info.akcipher,
        info.max_dataqueues
    );
    let mut r = Run {
        drv,
        mode,
        passed: 0,
        names: [""; 24],
    };
    let cipher = |a: u32| info.cipher & (1 << a) != 0;
    let hash = |a: u32| info.hash & (1 << a) != 0;
    let mac = |a: u32| info.mac & (1 << a) != 0;
    // With `require=qemu` only what QEMU's builtin backend implements is
    // run (AES-CBC and RSA); anything else it advertises is probed below.
    let needed = |what: &str, offered: bool, in_qemu: bool| {
        let cbc = what == "AES-CBC";
        let must = match require {
            Require::All => true,
            Require::Qemu => in_qemu,
            Require::Cbc => cbc,
            Require::None => false,
        };
        if must && !offered {
            exit::fail(format_args!(
                "crypto: the device does not advertise {what} (crypto.require)"
            ));
        }
        offered
            && match require {
                Require::Qemu => in_qemu,
                Require::Cbc => cbc,
                _ => true,
            }
    };
    if needed("AES-ECB", cipher(algo::CIPHER_AES_ECB), false) {
        let ct: [u8; 32] =
            hex32(*b"3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf");
        r.cipher(
            "AES-128-ECB (SP 800-38A F.1.1)",
            algo::CIPHER_AES_ECB,
            &K128,
            &[],
            &PT,
            &ct,
        );
    }
    if needed("AES-CBC", cipher(algo::CIPHER_AES_CBC), true) {
        let iv: [u8; 16] = hex16(*b"000102030405060708090a0b0c0d0e0f");
        let ct: [u8; 32] =
            hex32(*b"7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2");
        r.cipher(
            "AES-128-CBC (SP 800-38A F.2.1)",
            algo::CIPHER_AES_CBC,
            &K128,
            &iv,
            &PT,
            &ct,
        );
    }
    if needed("AES-CTR", cipher(algo::CIPHER_AES_CTR), false) {
        let iv: [u8; 16] = hex16(*b"f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let ct: [u8; 32] =
            hex32(*b"874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff");
        r.cipher(
            "AES-128-CTR (SP 800-38A F.5.1)",
            algo::CIPHER_AES_CTR,
            &K128,
            &iv,
            &PT,
            &ct,
        );
    }
    if needed("AES-XTS", cipher(algo::CIPHER_AES_XTS), false) {
        let key: [u8; 32] =
            hex32(*b"1111111111111111111111111111111122222222222222222222222222222222");
        let iv: [u8; 16] = hex16(*b"33333333330000000000000000000000");
        let pt = [0x44u8; 32];
        let ct: [u8; 32] =
            hex32(*b"c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0");
        r.cipher(
            "AES-128-XTS (IEEE 1619 vector 2)",
            algo::CIPHER_AES_XTS,
            &key,
            &iv,
            &pt,
            &ct,
        );
    }
    if needed("SHA-1", hash(algo::SHA1), false) {
        r.hash(
            "SHA-1 (FIPS 180 abc)",
            algo::SHA1,
            &hex::<20, 40>(*b"a9993e364706816aba3e25717850c26c9cd0d89d"),
        );
    }
    if needed("SHA-256", hash(algo::SHA256), false) {
        r.hash("SHA-256 (FIPS 180 abc)", algo::SHA256, &SHA256_ABC);
    }
    if needed("SHA-512", hash(algo::SHA512), false) {
        r.hash(
            "SHA-512 (FIPS 180 abc)",
            algo::SHA512,
            &hex::<64, 128>(*b"ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
        );
    }
    if needed("HMAC-SHA-256", mac(algo::SHA256), false) {
        r.hmac();
    }
    if needed("AES-GCM", info.aead & (1 << algo::AEAD_GCM) != 0, false) {
        r.gcm();
    }
    if needed("RSA", info.akcipher & (1 << algo::AKCIPHER_RSA) != 0, true) {
        r.rsa(require == Require::Qemu);
    }
    if matches!(require, Require::Qemu | Require::Cbc) {
        r.probe_advertised(&info);
    }
    // A session never made is INVSESS (§5.9.7.4 to .7).
    if invsess && info.offers(Service::Cipher) {
        let mut b = r.budget();
        let op = Op::Cipher {
            direction: Direction::Encrypt,
            iv: &[0; 16],
            src: &PT,
        };
        match r
            .drv
            .run(Mode::Session(0xdead_beef), &op, &mut [0; 32], &mut b)
        {
            Err(CryptoError::Status(Status::InvSess | Status::Err)) => {}
            other => exit::fail(format_args!(
                "crypto: a request on a session never made gave {other:?}, not INVSESS"
            )),
        }
    }
    println!(
        "crypto: {} vectors passed ({})",
        r.passed,
        List(&r.names[..r.passed.min(24) as usize])
    );
}

/// Names joined with ", ".
struct List<'a>(&'a [&'static str]);

impl core::fmt::Display for List<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}
