//! virtio-crypto in front of a vhost-user backend (§5.9; QEMU's
//! `cryptodev-vhost-user`): the backend serves the data queues, the
//! frontend keeps the control queue and turns each session the driver
//! creates or destroys there into `CREATE_CRYPTO_SESSION` or
//! `CLOSE_CRYPTO_SESSION` (protocol feature `CRYPTO_SESSION`, QEMU 7.2's
//! session layout, [`crate::codec::CryptoSession`]).
//!
//! The control queue is served by the same device code as an in-process
//! crypto device ([`virtio_devices::crypto::Crypto`]); its backend,
//! [`Sessions`], only makes and closes sessions, by message. QEMU 7.2's
//! layout carries symmetric sessions only, so the guest is shown the
//! cipher service alone: with the backend's own configuration space
//! (`VHOST_USER_PROTOCOL_F_CONFIG`) its ciphers, key length and request
//! size; without it what QEMU 7.2 assumes of every backend, AES-CBC. QEMU
//! also advertises SHA-1 and the MAC service, which no session can be
//! made for over this layout; this frontend does not.

use std::fmt;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use backends::crypto::{
    AkcipherOp, Capabilities, CipherAlgo, CryptoBackend, CryptoError, Direction, SessionId,
    SessionSpec,
};
use virtio_core::GuestMemory;
use virtio_core::crypto::{OP_DECRYPT, OP_ENCRYPT, SYM_OP_CIPHER, Service, algo, config};
use virtio_core::features::DeviceType;
use virtio_devices::crypto::{Crypto, CryptoStats, wire};
use virtio_devices::{DeviceError, QueueConfig, Served, VirtioDevice};
use zerocopy::FromZeros;

use crate::codec::CryptoSession;
#[cfg(test)]
use crate::frontend::SharedRam;
use crate::frontend::{FrontendError, FrontendStats, VhostUserDevice, VhostUserKind};

/// Bytes of virtio-crypto configuration space (§5.9.4).
pub const CONFIG_LEN: usize = config::LEN;

/// The longest cipher key QEMU 7.2's session layout carries
/// (`VHOST_USER_MAX_CIPHER_KEY_LEN`).
pub const MAX_CIPHER_KEY: usize = 64;

fn word(c: &[u8], at: u64) -> u32 {
    let at = at as usize;
    c.get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes)
}

/// The configuration space the guest sees (§5.9.4) with `data_queues`
/// data queues: the backend's (`theirs`, from `GET_CONFIG`) kept to what
/// sessions made by message can serve, the cipher service; without it,
/// AES-CBC alone. A backend with fewer data queues than asked for is
/// refused.
pub fn frontend_config(theirs: Option<&[u8]>, data_queues: u16) -> Result<Vec<u8>, FrontendError> {
    let cipher_service = 1u32 << Service::Cipher as u32;
    let (status, services, cipher_l, cipher_h, key_len, max_size) = match theirs {
        Some(c) => {
            let max = word(c, config::MAX_DATAQUEUES);
            if max < u32::from(data_queues) {
                return Err(FrontendError::TooManyQueues {
                    wanted: data_queues,
                    max: u64::from(max),
                });
            }
            let max_size = c
                .get(config::MAX_SIZE as usize..CONFIG_LEN)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes);
            (
                word(c, config::STATUS),
                word(c, config::CRYPTO_SERVICES) & cipher_service,
                word(c, config::CIPHER_ALGO_L),
                word(c, config::CIPHER_ALGO_H),
                word(c, config::MAX_CIPHER_KEY_LEN).min(MAX_CIPHER_KEY as u32),
                max_size,
            )
        }
        None => (
            config::S_HW_READY,
            cipher_service,
            1 << algo::CIPHER_AES_CBC,
            0,
            MAX_CIPHER_KEY as u32,
            u64::MAX,
        ),
    };
    // Only the ciphers a session can be asked for (`CipherAlgo`): a
    // backend's DES or ARC4 bit would show the guest a cipher every
    // session of which is refused (§5.9.5.1).
    let known = [
        algo::CIPHER_AES_ECB,
        algo::CIPHER_AES_CBC,
        algo::CIPHER_AES_CTR,
        algo::CIPHER_AES_XTS,
    ]
    .iter()
    .fold(0u64, |m, a| m | 1 << a);
    let ciphers = (u64::from(cipher_h) << 32 | u64::from(cipher_l)) & known;
    let (cipher_l, cipher_h) = if services == 0 {
        (0, 0)
    } else {
        (ciphers as u32, (ciphers >> 32) as u32)
    };
    let mut out = vec![0u8; CONFIG_LEN];
    let mut put = |at: u64, v: u32| {
        let at = at as usize;
        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    put(config::STATUS, status);
    put(config::MAX_DATAQUEUES, u32::from(data_queues));
    put(config::CRYPTO_SERVICES, services);
    put(config::CIPHER_ALGO_L, cipher_l);
    put(config::CIPHER_ALGO_H, cipher_h);
    put(config::MAX_CIPHER_KEY_LEN, key_len);
    let at = config::MAX_SIZE as usize;
    out[at..at + 8].copy_from_slice(&max_size.to_le_bytes());
    Ok(out)
}

fn lock(dev: &Mutex<VhostUserDevice>) -> MutexGuard<'_, VhostUserDevice> {
    dev.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The control queue's backend: sessions made and closed by message on
/// the vhost-user connection; data requests are the vhost-user backend's
/// and never come here.
pub struct Sessions {
    vhost: Arc<Mutex<VhostUserDevice>>,
    /// `cipher_algo_l`/`_h` of the configuration the guest sees.
    ciphers: u64,
    max_size: u64,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("ciphers", &self.ciphers)
            .finish_non_exhaustive()
    }
}

/// What [`Sessions`] refuses to run itself.
const DATA_ELSEWHERE: CryptoError =
    CryptoError::NotSupported("data requests are served by the vhost-user backend");

impl CryptoBackend for Sessions {
    fn capabilities(&self) -> Capabilities {
        const CIPHERS: [CipherAlgo; 4] = [
            CipherAlgo::AesEcb,
            CipherAlgo::AesCbc,
            CipherAlgo::AesCtr,
            CipherAlgo::AesXts,
        ];
        Capabilities {
            cipher: &CIPHERS,
            hash: &[],
            mac: &[],
            aead: &[],
            rsa: false,
            max_cipher_key_len: MAX_CIPHER_KEY as u32,
            max_auth_key_len: 0,
            max_request_size: self.max_size,
            max_sessions: u32::MAX,
        }
    }

    fn create_session(&mut self, spec: &SessionSpec<'_>) -> Result<SessionId, CryptoError> {
        let SessionSpec::Cipher {
            algo,
            key,
            direction,
        } = *spec
        else {
            return Err(CryptoError::NotSupported(
                "QEMU 7.2's vhost-user session layout carries cipher sessions only",
            ));
        };
        let number = wire::cipher_number(algo);
        if self.ciphers & (1u64 << number) == 0 {
            return Err(CryptoError::NotSupported(
                "a cipher the vhost-user backend does not advertise",
            ));
        }
        if key.len() > MAX_CIPHER_KEY {
            return Err(CryptoError::NotSupported(
                "a key longer than QEMU 7.2's vhost-user session layout carries (64 bytes)",
            ));
        }
        let mut s = CryptoSession::new_zeroed();
        s.cipher_alg = number;
        s.key_len = key.len() as u32;
        s.op_type = SYM_OP_CIPHER as u8;
        s.direction = match direction {
            Direction::Encrypt => OP_ENCRYPT,
            Direction::Decrypt => OP_DECRYPT,
        } as u8;
        s.key[..key.len()].copy_from_slice(key);
        let made = lock(&self.vhost).create_crypto_session(&s);
        s.key.fill(0);
        match made {
            Ok(Some(id)) => Ok(SessionId(id)),
            // QEMU answers a refusal with VIRTIO_CRYPTO_ERR too.
            Ok(None) => Err(CryptoError::Invalid(
                "the vhost-user backend refused the session",
            )),
            Err(_) => Err(CryptoError::Invalid("the vhost-user backend is gone")),
        }
    }

    fn close_session(&mut self, id: SessionId) -> Result<(), CryptoError> {
        match lock(&self.vhost).close_crypto_session(id.0) {
            Ok(true) => Ok(()),
            Ok(false) => Err(CryptoError::InvalidSession(id)),
            Err(_) => Err(CryptoError::Invalid("the vhost-user backend is gone")),
        }
    }

    fn cipher(
        &mut self,
        _: SessionId,
        _: Direction,
        _: &[u8],
        _: &[u8],
        _: &mut [u8],
    ) -> Result<(), CryptoError> {
        Err(DATA_ELSEWHERE)
    }

    fn digest(&mut self, _: SessionId, _: &[u8], _: &mut [u8]) -> Result<usize, CryptoError> {
        Err(DATA_ELSEWHERE)
    }

    fn aead(
        &mut self,
        _: SessionId,
        _: Direction,
        _: &[u8],
        _: &[u8],
        _: &[u8],
        _: &mut [u8],
    ) -> Result<usize, CryptoError> {
        Err(DATA_ELSEWHERE)
    }

    fn akcipher(
        &mut self,
        _: SessionId,
        _: AkcipherOp,
        _: &[u8],
        _: &mut [u8],
    ) -> Result<usize, CryptoError> {
        Err(DATA_ELSEWHERE)
    }

    fn verify(&mut self, _: SessionId, _: &[u8], _: &[u8]) -> Result<(), CryptoError> {
        Err(DATA_ELSEWHERE)
    }

    /// The device closes its sessions one by one (each a message).
    fn close_all(&mut self) {}
}

/// A virtio-crypto device whose data queues an external vhost-user
/// backend serves, with the control queue (the last, §5.9.2) served here
/// over guest memory `M`.
pub struct VhostUserCrypto<M> {
    vhost: Arc<Mutex<VhostUserDevice>>,
    control: Crypto<Sessions, M>,
    data_queues: u16,
    sizes: Vec<u16>,
    config: Vec<u8>,
    offered: u64,
}

impl<M> fmt::Debug for VhostUserCrypto<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhostUserCrypto")
            .field("vhost", &*lock(&self.vhost))
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemory> VhostUserCrypto<M> {
    /// The device over `vhost`, a connection made for
    /// [`VhostUserKind::Crypto`], with its control queue over `mem`.
    pub fn new(vhost: VhostUserDevice, mem: M) -> Result<Self, FrontendError> {
        let VhostUserKind::Crypto {
            data_queues,
            queue_size,
        } = *vhost.kind()
        else {
            return Err(FrontendError::Missing(
                "a connection made for a crypto device",
            ));
        };
        let mut config = [0u8; CONFIG_LEN];
        vhost.read_config(0, &mut config);
        let ciphers = u64::from(word(&config, config::CIPHER_ALGO_L))
            | (u64::from(word(&config, config::CIPHER_ALGO_H)) << 32);
        let max_size = config
            .get(config::MAX_SIZE as usize..)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes);
        let mut sizes = vec![queue_size; usize::from(data_queues)];
        sizes.push(queue_size);
        let vhost = Arc::new(Mutex::new(vhost));
        let sessions = Sessions {
            vhost: vhost.clone(),
            ciphers,
            max_size,
        };
        let control = Crypto::new(sessions, mem, data_queues);
        let offered = lock(&vhost).device_features() & control.device_features();
        Ok(VhostUserCrypto {
            vhost,
            control,
            data_queues,
            sizes,
            config: config.to_vec(),
            offered,
        })
    }

    /// Why the backend is considered gone, once it is.
    pub fn dead(&self) -> Option<String> {
        lock(&self.vhost).dead().map(str::to_owned)
    }

    /// The fds the slot's worker must watch (the backend's calls and its
    /// socket).
    pub fn ready_fds(&self) -> Vec<RawFd> {
        lock(&self.vhost).ready_fds()
    }

    /// The control queue's counters (sessions made and closed).
    pub fn stats(&self) -> CryptoStats {
        self.control.stats()
    }

    /// The connection's counters.
    pub fn frontend_stats(&self) -> FrontendStats {
        lock(&self.vhost).stats()
    }
}

impl<M: GuestMemory> VirtioDevice for VhostUserCrypto<M> {
    fn device_type(&self) -> DeviceType {
        DeviceType::Crypto
    }

    fn device_features(&self) -> u64 {
        self.offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtio_devices::read_config_bytes(&self.config, offset, data);
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn features_ok(&mut self, features: u64) {
        self.control.features_ok(features);
    }

    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        let n = usize::from(self.data_queues);
        let data = queues.iter().take(n).copied().collect();
        lock(&self.vhost).activate(features, data)?;
        // The control queue alone is this side's; without it (§5.9.5.1
        // asks for it) sessions cannot be made, and data requests in the
        // stateless mode still reach the backend.
        if let Some(ctrl) = queues.get(n).filter(|c| c.layout.is_some()) {
            let mut mine = vec![QueueConfig { layout: None }; n];
            mine.push(*ctrl);
            self.control.activate(features, mine)?;
        }
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        if queue < self.data_queues {
            lock(&self.vhost).queue_notify(queue)
        } else if queue == self.data_queues {
            self.control.queue_notify(queue)
        } else {
            Err(DeviceError::NoSuchQueue { queue })
        }
    }

    fn backend_ready(&mut self) -> Result<Served, DeviceError> {
        lock(&self.vhost).backend_ready()
    }

    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        if queue < self.data_queues {
            lock(&self.vhost).disable_queue(queue)
        } else {
            self.control.disable_queue(queue)
        }
    }

    fn reset(&mut self) {
        // The driver's sessions close (by message) while the rings still
        // stand, then the backend stops them.
        self.control.reset();
        lock(&self.vhost).reset();
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut c = self.control.counters();
        let f = lock(&self.vhost).stats();
        c.extend([
            ("vhost_user_requests", f.requests),
            ("kicks_forwarded", f.kicks),
            ("calls_relayed", f.calls),
        ]);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_words(c: &[u8]) -> Vec<u32> {
        (0..12).map(|i| word(c, i * 4)).collect()
    }

    #[test]
    fn without_the_backends_configuration_the_guest_sees_aes_cbc_alone() {
        let c = frontend_config(None, 2).unwrap();
        assert_eq!(c.len(), CONFIG_LEN);
        let w = config_words(&c);
        assert_eq!(w[0], config::S_HW_READY);
        assert_eq!(w[1], 2);
        assert_eq!(w[2], 1 << Service::Cipher as u32);
        assert_eq!(w[3], 1 << algo::CIPHER_AES_CBC);
        // No hash, MAC, AEAD or akcipher: no session could be made for them.
        assert_eq!(&w[5..9], &[0, 0, 0, 0]);
        assert_eq!(w[11], 0);
    }

    /// §5.9.4: the backend's ciphers and limits pass; services no session
    /// can be made for by message are taken out.
    #[test]
    fn the_backends_configuration_is_kept_to_the_cipher_service() {
        let caps = backends::crypto::builtin::Builtin::default().capabilities();
        let theirs = wire::config(&caps, 4);
        let c = frontend_config(Some(&theirs), 2).unwrap();
        let (w, t) = (config_words(&c), config_words(&theirs));
        assert_eq!(w[1], 2);
        assert_eq!(w[2], 1 << Service::Cipher as u32);
        assert_eq!((w[3], w[4]), (t[3], t[4]));
        // A cipher no session can be asked for is not shown (DES-CBC, 6).
        let mut des = theirs;
        des[12..16].copy_from_slice(&(t[3] | 1 << 6).to_le_bytes());
        let c = frontend_config(Some(&des), 2).unwrap();
        assert_eq!(config_words(&c)[3], t[3]);
        assert_eq!(&w[5..9], &[0, 0, 0, 0]);
        assert_eq!(w[10], 0);
        assert_eq!(w[11], 0);
        assert!(w[9] <= MAX_CIPHER_KEY as u32);
        assert_eq!(c[48..56], theirs[48..56]);
    }

    /// A backend that answers the handshake (VERSION_1 and
    /// `CRYPTO_SESSION` only: no configuration space, no `REPLY_ACK`),
    /// then each `CREATE_CRYPTO_SESSION` with the next of `replies` (raw
    /// frames), and hangs up when they run out.
    fn scripted(name: &str, replies: Vec<Vec<u8>>) -> VhostUserDevice {
        use crate::codec::{self, Message, Request, protocol};
        use std::io::Write;
        use std::os::unix::net::UnixListener;
        let path =
            std::env::temp_dir().join(format!("vu-crypto-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut replies = replies.into_iter();
            while let Ok(Some(f)) = codec::recv_frame(&s) {
                let out = match f.decode() {
                    Ok(Message::GetFeatures) => codec::reply_u64(
                        Request::GetFeatures,
                        virtio_core::features::TransportFeatures::VERSION_1.bits()
                            | crate::codec::VHOST_USER_F_PROTOCOL_FEATURES,
                    ),
                    Ok(Message::GetProtocolFeatures) => {
                        codec::reply_u64(Request::GetProtocolFeatures, protocol::CRYPTO_SESSION)
                    }
                    Ok(Message::CreateCryptoSession(_)) => match replies.next() {
                        Some(r) => r,
                        None => return,
                    },
                    _ => continue,
                };
                if s.write_all(&out).is_err() {
                    return;
                }
            }
        });
        let mem = backends::hostmem::HostMemory::memfd("t", 1 << 20, true, false, false).unwrap();
        let ram = Arc::new(SharedRam::new(&mem, &[(0, 1 << 20)]).unwrap());
        let kind = VhostUserKind::Crypto {
            data_queues: 1,
            queue_size: 64,
        };
        let dev = VhostUserDevice::connect(&path, kind, ram).unwrap();
        let _ = std::fs::remove_file(&path);
        dev
    }

    fn sessions(dev: VhostUserDevice) -> (Sessions, Arc<Mutex<VhostUserDevice>>) {
        let vhost = Arc::new(Mutex::new(dev));
        let s = Sessions {
            vhost: vhost.clone(),
            ciphers: 1 << algo::CIPHER_AES_CBC,
            max_size: u64::MAX,
        };
        (s, vhost)
    }

    fn cbc(key: &[u8]) -> SessionSpec<'_> {
        SessionSpec::Cipher {
            algo: CipherAlgo::AesCbc,
            key,
            direction: Direction::Encrypt,
        }
    }

    fn answer(id: i64) -> Vec<u8> {
        let mut c = CryptoSession::new_zeroed();
        c.session_id = id;
        crate::codec::reply_crypto_session(&c)
    }

    /// A refusal (a negative id) is an error for this session only (the
    /// driver gets VIRTIO_CRYPTO_ERR, as from QEMU); the connection lives
    /// on and the next session is made.
    #[test]
    fn a_refused_session_is_an_error_and_the_connection_lives_on() {
        let dev = scripted("refused", vec![answer(-1), answer(7)]);
        let (mut s, vhost) = sessions(dev);
        assert_eq!(
            s.create_session(&cbc(&[1; 16])),
            Err(CryptoError::Invalid(
                "the vhost-user backend refused the session"
            ))
        );
        assert_eq!(s.create_session(&cbc(&[1; 16])), Ok(SessionId(7)));
        assert!(lock(&vhost).dead().is_none());
    }

    /// A reply of the wrong size is a backend that cannot be trusted: it is
    /// declared gone, with the reason, and later requests fail at once.
    #[test]
    fn a_malformed_session_reply_marks_the_backend_gone() {
        let short = {
            let mut r = answer(3);
            r.truncate(crate::codec::HEADER_LEN + 8);
            let size = 8u32.to_ne_bytes();
            r[8..12].copy_from_slice(&size);
            r
        };
        let dev = scripted("short", vec![short]);
        let (mut s, vhost) = sessions(dev);
        assert!(s.create_session(&cbc(&[1; 16])).is_err());
        let why = lock(&vhost).dead().map(str::to_owned).unwrap_or_default();
        assert!(
            why.contains("bad reply") && why.contains("8 bytes"),
            "{why}"
        );
        assert_eq!(
            s.close_session(SessionId(3)),
            Err(CryptoError::Invalid("the vhost-user backend is gone"))
        );
    }

    /// What the layout cannot carry, or the backend does not advertise, is
    /// refused before anything is sent (NOTSUPP for the driver).
    #[test]
    fn sessions_the_message_cannot_carry_are_not_supported() {
        let dev = scripted("notsupp", vec![]);
        let (mut s, vhost) = sessions(dev);
        let ctr = SessionSpec::Cipher {
            algo: CipherAlgo::AesCtr,
            key: &[1; 16],
            direction: Direction::Encrypt,
        };
        for spec in [
            ctr,
            cbc(&[1; 65]),
            SessionSpec::Hash {
                algo: backends::crypto::HashAlgo::Sha256,
                result_len: 32,
            },
        ] {
            assert!(
                matches!(s.create_session(&spec), Err(CryptoError::NotSupported(_))),
                "{spec:?}"
            );
        }
        assert_eq!(lock(&vhost).stats().requests, 4, "only the handshake");
    }

    #[test]
    fn a_backend_with_fewer_data_queues_is_refused() {
        let caps = backends::crypto::builtin::Builtin::default().capabilities();
        let theirs = wire::config(&caps, 1);
        let e = frontend_config(Some(&theirs), 2).unwrap_err();
        assert!(
            matches!(e, FrontendError::TooManyQueues { wanted: 2, max: 1 }),
            "{e}"
        );
    }
}
