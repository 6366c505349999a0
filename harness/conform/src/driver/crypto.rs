//! The crypto part of the ring watch (§5.9.7): each control request
//! (session create and destroy) and data request a driver puts in a crypto
//! device's queues, judged against the crypto driver requirements, with
//! the sessions the device answered kept so that a request's session id
//! can be judged.
//!
//! Layouts (§5.9.7.2, §5.9.7.3): without `VIRTIO_CRYPTO_F_REVISION_1`
//! every fixed part is padded (56 bytes on the control queue, 48 on the
//! data queues); with it each has its own size.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use virtio_core::crypto::{
    CTRL_FLF_LEGACY, CTRL_HEADER, DATA_FLF_LEGACY, DATA_HEADER, FLAG_SESSION_MODE, SESSION_INPUT,
    Service, ctrl, data,
};
use virtio_core::features::CryptoFeatures;
use virtio_core::split::QueueLayout;

use super::requests::{Segment, readable_prefix, writable_prefix};
use super::{Seen, judge};
use crate::{Check, Memory};

const HW_READY_FIRST: &str = "driver:crypto/device-configuration-layout#2";
const WITHIN_MAX_SIZE: &str = "driver:crypto/device-configuration-layout#7";
const CIPHER_KEY_WITHIN: &str = "driver:crypto/device-configuration-layout#8";
const AUTH_KEY_WITHIN: &str = "driver:crypto/device-configuration-layout#9";
const CREATE_OPCODE: &str = "driver:crypto/device-operation/control-virtqueue/session-operation/session-operation-create-session#1";
const CREATE_PARTS: &str = "driver:crypto/device-operation/control-virtqueue/session-operation/session-operation-create-session#2";
const CREATE_RESERVED: &str = "driver:crypto/device-operation/control-virtqueue/session-operation/session-operation-create-session#3";
const DESTROY_OPCODE: &str = "driver:crypto/device-operation/control-virtqueue/session-operation/session-operation-destroy-session#1";
const DESTROY_VALID: &str = "driver:crypto/device-operation/control-virtqueue/session-operation/session-operation-destroy-session#2";
const HASH_SESSION: &str = "driver:crypto/device-operation/hash-service-operation#1";
const HASH_FLAG: &str = "driver:crypto/device-operation/hash-service-operation#2";
const HASH_OPCODE: &str = "driver:crypto/device-operation/hash-service-operation#3";
const MAC_SESSION: &str = "driver:crypto/device-operation/mac-service-operation#1";
const MAC_FLAG: &str = "driver:crypto/device-operation/mac-service-operation#2";
const MAC_OPCODE: &str = "driver:crypto/device-operation/mac-service-operation#3";
const SYM_SESSION: &str = "driver:crypto/device-operation/symmetric-algorithms-operation#1";
const SYM_FLAG: &str = "driver:crypto/device-operation/symmetric-algorithms-operation#2";
const SYM_OPCODE: &str = "driver:crypto/device-operation/symmetric-algorithms-operation#3";
const SYM_FIELDS: &str = "driver:crypto/device-operation/symmetric-algorithms-operation#4";
const AEAD_SESSION: &str = "driver:crypto/device-operation/aead-service-operation#1";
const AEAD_FLAG: &str = "driver:crypto/device-operation/aead-service-operation#2";
const AEAD_OPCODE: &str = "driver:crypto/device-operation/aead-service-operation#3";
const AK_SESSION: &str = "driver:crypto/device-operation/akcipher-service-operation#1";
const AK_FLAG: &str = "driver:crypto/device-operation/akcipher-service-operation#2";
const AK_OPCODE: &str = "driver:crypto/device-operation/akcipher-service-operation#3";

/// Every statement the crypto request watch judges.
pub const STATEMENTS: &[&str] = &[
    HW_READY_FIRST,
    WITHIN_MAX_SIZE,
    CIPHER_KEY_WITHIN,
    AUTH_KEY_WITHIN,
    CREATE_OPCODE,
    CREATE_PARTS,
    CREATE_RESERVED,
    DESTROY_OPCODE,
    DESTROY_VALID,
    HASH_SESSION,
    HASH_FLAG,
    HASH_OPCODE,
    MAC_SESSION,
    MAC_FLAG,
    MAC_OPCODE,
    SYM_SESSION,
    SYM_FLAG,
    SYM_OPCODE,
    SYM_FIELDS,
    AEAD_SESSION,
    AEAD_FLAG,
    AEAD_OPCODE,
    AK_SESSION,
    AK_FLAG,
    AK_OPCODE,
];

/// The crypto request watch as a [`Check`] for the catalogue (fed by the
/// ring watch).
pub const WATCH: Check = Check {
    name: "driver-crypto-requests",
    statements: STATEMENTS,
    run: |_| {},
};

/// What the crypto device told the driver (§5.9.4), read when the driver
/// made it live, and the features negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoLimits {
    /// `max_dataqueues`: the control queue's index.
    pub data_queues: u16,
    /// `status` has VIRTIO_CRYPTO_S_HW_READY.
    pub hw_ready: bool,
    /// `max_cipher_key_len`.
    pub max_cipher_key_len: u32,
    /// `max_auth_key_len`.
    pub max_auth_key_len: u32,
    /// `max_size`.
    pub max_size: u64,
    /// The negotiated feature bits.
    pub features: u64,
}

impl CryptoLimits {
    /// The limits from a crypto device's configuration space (`read` at
    /// an offset, §5.9.4) for the negotiated `features`.
    pub fn from_config(features: u64, read: impl Fn(u64, &mut [u8])) -> CryptoLimits {
        use virtio_core::crypto::config;
        let u32_at = |off| {
            let mut b = [0u8; 4];
            read(off, &mut b);
            u32::from_le_bytes(b)
        };
        let mut m = [0u8; 8];
        read(config::MAX_SIZE, &mut m);
        CryptoLimits {
            data_queues: u16::try_from(u32_at(config::MAX_DATAQUEUES)).unwrap_or(u16::MAX),
            hw_ready: u32_at(config::STATUS) & config::S_HW_READY != 0,
            max_cipher_key_len: u32_at(config::MAX_CIPHER_KEY_LEN),
            max_auth_key_len: u32_at(config::MAX_AUTH_KEY_LEN),
            max_size: u64::from_le_bytes(m),
            features,
        }
    }

    fn rev1(&self) -> bool {
        self.features & CryptoFeatures::REVISION_1.bits() != 0
    }

    fn stateless(&self, s: Service) -> bool {
        self.rev1() && self.features & s.stateless_feature().bits() != 0
    }
}

/// A control request in flight, to learn the device's answer (which lies
/// at the front of its device-writable buffers, `answer`).
#[derive(Clone, Debug)]
enum Pending {
    Create {
        service: Service,
        answer: Vec<Segment>,
    },
    Destroy {
        id: u64,
        answer: Vec<Segment>,
    },
}

/// The crypto watch's memory: the limits, the sessions the device made
/// (id → service), and the control requests in flight by head.
#[derive(Clone, Debug)]
pub struct CryptoState {
    limits: CryptoLimits,
    sessions: BTreeMap<u64, Service>,
    pending: BTreeMap<u16, Pending>,
}

impl CryptoState {
    /// A watch for a device with `limits`.
    pub fn new(limits: CryptoLimits) -> Self {
        CryptoState {
            limits,
            sessions: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// The device returned chains `from..to` on queue `index`: the
    /// answers to control requests are read (§5.9.7.2.1: the session id
    /// when the status is OK).
    pub fn returned(&mut self, mem: &dyn Memory, index: u16, l: QueueLayout, from: u16, to: u16) {
        if index != self.limits.data_queues {
            return;
        }
        for r in crate::ring::returned(mem, l, from, to) {
            match self.pending.remove(&r.head) {
                // struct virtio_crypto_session_input: id, status.
                Some(Pending::Create { service, answer }) => {
                    if let Some(b) = writable_prefix(mem, &answer, SESSION_INPUT)
                        && u32_at(&b, 8) == 0
                    {
                        self.sessions.insert(u64_at(&b, 0), service);
                    }
                }
                // struct virtio_crypto_destroy_session_input: status.
                Some(Pending::Destroy { id, answer })
                    if writable_prefix(mem, &answer, 1).is_some_and(|b| b[0] == 0) =>
                {
                    self.sessions.remove(&id);
                }
                _ => {}
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|x| x.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|x| x.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Judges a well-formed chain at `head` on queue `index` of a crypto
/// device.
pub(super) fn judge_crypto(
    seen: &mut BTreeMap<&'static str, Seen>,
    mem: &dyn Memory,
    state: &mut CryptoState,
    index: u16,
    head: u16,
    segs: &[Segment],
) {
    let l = state.limits;
    judge(seen, HW_READY_FIRST, l.hw_ready, || {
        format!("queue {index}: a request while status lacks VIRTIO_CRYPTO_S_HW_READY")
    });
    let readable: u64 = segs.iter().filter(|s| !s.2).map(|s| u64::from(s.1)).sum();
    let writable: u64 = segs.iter().filter(|s| s.2).map(|s| u64::from(s.1)).sum();
    if index == l.data_queues {
        judge_ctrl(seen, mem, state, head, segs, readable, writable);
    } else if index < l.data_queues {
        judge_data(seen, mem, state, segs, readable, writable);
    }
}

fn judge_ctrl(
    seen: &mut BTreeMap<&'static str, Seen>,
    mem: &dyn Memory,
    state: &mut CryptoState,
    head: u16,
    segs: &[Segment],
    readable: u64,
    writable: u64,
) {
    let l = state.limits;
    let rev1 = l.rev1();
    let flf_len = |own: usize| if rev1 { own } else { CTRL_FLF_LEGACY };
    let Some(h) = readable_prefix(mem, segs, CTRL_HEADER) else {
        judge(seen, CREATE_PARTS, false, || {
            format!("a control request of {readable} readable bytes, no header")
        });
        return;
    };
    let op = u32_at(&h, 0);
    judge(seen, CREATE_RESERVED, u32_at(&h, 12) == 0, || {
        format!("control header reserved field {:#x}", u32_at(&h, 12))
    });
    let creates = [
        (ctrl::CIPHER_CREATE, Service::Cipher, 56),
        (ctrl::HASH_CREATE, Service::Hash, 8),
        (ctrl::MAC_CREATE, Service::Mac, 16),
        (ctrl::AEAD_CREATE, Service::Aead, 24),
        (ctrl::AKCIPHER_CREATE, Service::Akcipher, 56),
    ];
    let destroys = [
        (ctrl::CIPHER_DESTROY, Service::Cipher),
        (ctrl::HASH_DESTROY, Service::Hash),
        (ctrl::MAC_DESTROY, Service::Mac),
        (ctrl::AEAD_DESTROY, Service::Aead),
        (ctrl::AKCIPHER_DESTROY, Service::Akcipher),
    ];
    if let Some(&(_, service, own)) = creates.iter().find(|c| c.0 == op) {
        keep_op(seen, CREATE_OPCODE);
        let n = flf_len(own);
        let Some(f) =
            readable_prefix(mem, segs, CTRL_HEADER + n).map(|b| b[CTRL_HEADER..].to_vec())
        else {
            judge(seen, CREATE_PARTS, false, || {
                format!("a create request of {readable} readable bytes (opcode {op:#x})")
            });
            return;
        };
        // The key lengths the fixed part names (§5.9.7.2.1).
        let key = match service {
            Service::Cipher | Service::Aead => u64::from(u32_at(&f, 4)),
            Service::Mac | Service::Akcipher => u64::from(u32_at(&f, 8)),
            _ => 0,
        };
        let need = (CTRL_HEADER + n) as u64 + key;
        judge(
            seen,
            CREATE_PARTS,
            readable >= need && writable >= SESSION_INPUT as u64,
            || {
                format!(
                    "opcode {op:#x}: {readable} readable bytes for {need} (header, fixed part, key), {writable} writable for the {SESSION_INPUT}-byte outcome"
                )
            },
        );
        match service {
            Service::Cipher | Service::Aead => {
                judge(
                    seen,
                    CIPHER_KEY_WITHIN,
                    key <= u64::from(l.max_cipher_key_len),
                    || {
                        format!(
                            "a key of {key} bytes, max_cipher_key_len {}",
                            l.max_cipher_key_len
                        )
                    },
                );
            }
            Service::Mac => {
                judge(
                    seen,
                    AUTH_KEY_WITHIN,
                    key <= u64::from(l.max_auth_key_len),
                    || {
                        format!(
                            "an authentication key of {key} bytes, max_auth_key_len {}",
                            l.max_auth_key_len
                        )
                    },
                );
            }
            _ => {}
        }
        let answer = segs.iter().filter(|s| s.2).copied().collect();
        state
            .pending
            .insert(head, Pending::Create { service, answer });
    } else if let Some(&(_, service)) = destroys.iter().find(|d| d.0 == op) {
        keep_op(seen, DESTROY_OPCODE);
        let Some(f) = readable_prefix(mem, segs, CTRL_HEADER + 8) else {
            return;
        };
        let id = u64_at(&f, CTRL_HEADER);
        let valid = state.sessions.get(&id) == Some(&service);
        judge(seen, DESTROY_VALID, valid, || {
            format!(
                "destroying session {id:#x} of {service:?}, which the device did not make for it (made: {:?})",
                state.sessions
            )
        });
        let answer = segs.iter().filter(|s| s.2).copied().collect();
        state.pending.insert(head, Pending::Destroy { id, answer });
    } else {
        for s in [CREATE_OPCODE, DESTROY_OPCODE] {
            judge(seen, s, false, || {
                format!("a control request with opcode {op:#x}, neither a create nor a destroy")
            });
        }
    }
}

/// A judged opcode (nothing to say but that it was right).
fn keep_op(seen: &mut BTreeMap<&'static str, Seen>, s: &'static str) {
    judge(seen, s, true, alloc::string::String::new);
}

fn judge_data(
    seen: &mut BTreeMap<&'static str, Seen>,
    mem: &dyn Memory,
    state: &CryptoState,
    segs: &[Segment],
    readable: u64,
    writable: u64,
) {
    let l = state.limits;
    let Some(h) = readable_prefix(mem, segs, DATA_HEADER) else {
        return;
    };
    let op = u32_at(&h, 0);
    let id = u64_at(&h, 8);
    let flag = u32_at(&h, 16);
    let (service, statements) = match op {
        data::CIPHER_ENCRYPT | data::CIPHER_DECRYPT => {
            (Service::Cipher, (SYM_SESSION, SYM_FLAG, SYM_OPCODE))
        }
        data::HASH => (Service::Hash, (HASH_SESSION, HASH_FLAG, HASH_OPCODE)),
        data::MAC => (Service::Mac, (MAC_SESSION, MAC_FLAG, MAC_OPCODE)),
        data::AEAD_ENCRYPT | data::AEAD_DECRYPT => {
            (Service::Aead, (AEAD_SESSION, AEAD_FLAG, AEAD_OPCODE))
        }
        data::AKCIPHER_ENCRYPT
        | data::AKCIPHER_DECRYPT
        | data::AKCIPHER_SIGN
        | data::AKCIPHER_VERIFY => (Service::Akcipher, (AK_SESSION, AK_FLAG, AK_OPCODE)),
        _ => {
            // Not an opcode of any service: whichever service's session
            // it names broke its opcode rule.
            if let Some(s) = state.sessions.get(&id) {
                let st = match s {
                    Service::Cipher => SYM_OPCODE,
                    Service::Hash => HASH_OPCODE,
                    Service::Mac => MAC_OPCODE,
                    Service::Aead => AEAD_OPCODE,
                    _ => AK_OPCODE,
                };
                judge(seen, st, false, || {
                    format!("a data request on session {id:#x} with opcode {op:#x}")
                });
            }
            return;
        }
    };
    let (session_st, flag_st, opcode_st) = statements;
    let stateless_mode = l.stateless(service);
    if stateless_mode {
        // §5.9.7.4 to .7: ZERO for stateless, SESSION_MODE for a session.
        judge(
            seen,
            flag_st,
            flag == 0 || flag == FLAG_SESSION_MODE,
            || format!("{service:?} request with flag {flag:#x}"),
        );
    }
    let session_mode = !stateless_mode || flag == FLAG_SESSION_MODE;
    if !session_mode {
        return;
    }
    let made = state.sessions.get(&id).copied();
    judge(seen, session_st, made.is_some(), || {
        format!(
            "{service:?} request (opcode {op:#x}) on session {id:#x}, which the device never made or which was destroyed"
        )
    });
    if let Some(of) = made {
        judge(seen, opcode_st, of == service, || {
            format!("opcode {op:#x} ({service:?}) on a session of {of:?}")
        });
    }
    // The fixed part: the layout's size, then the lengths it names.
    let own = match service {
        Service::Cipher => 48,
        Service::Aead => 24,
        _ => 8,
    };
    let n = if l.rev1() { own } else { DATA_FLF_LEGACY };
    let Some(f) = readable_prefix(mem, segs, DATA_HEADER + n).map(|b| b[DATA_HEADER..].to_vec())
    else {
        return;
    };
    let w = |at| u64::from(u32_at(&f, at));
    // (bytes read after the fixed part, bytes of result).
    let (vlf, result) = match service {
        Service::Cipher => {
            // cipher_data_flf {iv_len, src_data_len, dst_data_len} with
            // op_type CIPHER; a chaining request is another layout.
            if u32_at(&f, n - 8) != virtio_core::crypto::SYM_OP_CIPHER {
                return;
            }
            (w(0) + w(4), w(8))
        }
        Service::Hash | Service::Mac => (w(0), w(4)),
        Service::Aead => (w(0) + w(4) + w(8), w(12)),
        _ => (w(0), w(4)),
    };
    let fits = readable >= (DATA_HEADER + n) as u64 + vlf && writable > result;
    if service == Service::Cipher {
        judge(seen, SYM_FIELDS, fits, || {
            format!(
                "cipher request: fields say {vlf} bytes of IV and source and {result} of destination; the chain has {readable} readable and {writable} writable"
            )
        });
    }
    judge(seen, WITHIN_MAX_SIZE, vlf <= l.max_size, || {
        format!(
            "{vlf} bytes of variable-length parameters, max_size {}",
            l.max_size
        )
    });
}

#[cfg(test)]
mod tests {
    use super::super::test_ram::{Ram, layout, put};
    use super::*;
    use crate::Outcome;
    use virtio_core::memory::GuestAddress;

    fn le(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn state() -> CryptoState {
        CryptoState::new(CryptoLimits {
            data_queues: 1,
            hw_ready: true,
            max_cipher_key_len: 32,
            max_auth_key_len: 64,
            max_size: 1 << 20,
            features: 0,
        })
    }

    fn outcome(seen: &BTreeMap<&'static str, Seen>, s: &str) -> Outcome {
        super::super::records_of(STATEMENTS, WATCH.name, seen)
            .into_iter()
            .find(|r| r.statement == s)
            .map(|r| r.outcome)
            .unwrap_or(Outcome::Pass)
    }

    fn fails(seen: &BTreeMap<&'static str, Seen>, s: &str) -> bool {
        matches!(outcome(seen, s), Outcome::Fail(_))
    }

    /// A legacy AES-128-CBC session request (§5.9.7.2.1) with `key_len`
    /// and `reserved` in the header; readable at 0x1000, 16 bytes of
    /// answer at 0x2000.
    fn create(ram: &Ram, key_len: u32, reserved: u32) -> Vec<Segment> {
        let mut r = le(&[ctrl::CIPHER_CREATE, 0, 0, reserved]);
        let mut f = le(&[3, key_len, 1, 0]);
        f.resize(48, 0);
        f.extend(le(&[1, 0]));
        r.extend(f);
        r.extend(alloc::vec![0x2b; key_len as usize]);
        ram.write(GuestAddress(0x1000), &r).unwrap();
        alloc::vec![(0x1000, r.len() as u32, false), (0x2000, 16, true)]
    }

    /// A legacy data request with `opcode` on `session`: 32 bytes of
    /// AES-CBC input at 0x3000, 33 writable at 0x4000.
    fn data_req(ram: &Ram, opcode: u32, session: u64) -> Vec<Segment> {
        let mut r = le(&[opcode, 3]);
        r.extend(session.to_le_bytes());
        r.extend(le(&[0, 0]));
        let mut f = le(&[16, 32, 32, 0]);
        f.resize(40, 0);
        f.extend(le(&[1, 0]));
        r.extend(f);
        r.extend([0u8; 48]);
        ram.write(GuestAddress(0x3000), &r).unwrap();
        alloc::vec![(0x3000, r.len() as u32, false), (0x4000, 33, true)]
    }

    /// The device answers the control chain at head 0 with `answer` (the
    /// used ring's first entry).
    fn answer(ram: &Ram, st: &mut CryptoState, answer: &[u8]) {
        let l = layout(16, 0x8000);
        put(ram, &l, 0, 0x1000, 88, 1, 1);
        ram.write(GuestAddress(0x2000), answer).unwrap();
        let mut e = [0u8; 8];
        e[4..].copy_from_slice(&(answer.len() as u32).to_le_bytes());
        ram.write(l.used_slot(0), &e).unwrap();
        st.returned(ram, 1, l, 0, 1);
    }

    /// §5.9.7.2.1 and §5.9.7.4: a session made, then used with its
    /// service's opcode and fields that add up, is kept; the session id the
    /// device answered is learnt from the answer.
    #[test]
    fn a_session_made_and_used_keeps_the_statements() {
        let ram = Ram::new(0x10000);
        let mut st = state();
        let mut seen = BTreeMap::new();
        let segs = create(&ram, 16, 0);
        judge_crypto(&mut seen, &ram, &mut st, 1, 0, &segs);
        let mut a = 7u64.to_le_bytes().to_vec();
        a.extend(le(&[0, 0]));
        answer(&ram, &mut st, &a);
        let segs = data_req(&ram, data::CIPHER_ENCRYPT, 7);
        judge_crypto(&mut seen, &ram, &mut st, 0, 1, &segs);
        for s in [
            CREATE_OPCODE,
            CREATE_PARTS,
            CREATE_RESERVED,
            CIPHER_KEY_WITHIN,
            SYM_SESSION,
            SYM_OPCODE,
            SYM_FIELDS,
            WITHIN_MAX_SIZE,
            HW_READY_FIRST,
        ] {
            assert_eq!(outcome(&seen, s), Outcome::Pass, "{s}");
        }
    }

    /// What a driver gets wrong is caught: a key longer than
    /// max_cipher_key_len, a reserved field not zero, a request on a
    /// session the device never made (or refused), the opcode of another
    /// service on a session, a destroy of a session never made.
    #[test]
    fn what_a_crypto_driver_gets_wrong_is_caught() {
        let ram = Ram::new(0x10000);
        let mut st = state();
        let mut seen = BTreeMap::new();
        let segs = create(&ram, 64, 5);
        judge_crypto(&mut seen, &ram, &mut st, 1, 0, &segs);
        assert!(fails(&seen, CIPHER_KEY_WITHIN));
        assert!(fails(&seen, CREATE_RESERVED));
        // The device refused it (status ERR): no session.
        let mut a = 7u64.to_le_bytes().to_vec();
        a.extend(le(&[1, 0]));
        answer(&ram, &mut st, &a);
        let segs = data_req(&ram, data::CIPHER_ENCRYPT, 7);
        judge_crypto(&mut seen, &ram, &mut st, 0, 1, &segs);
        assert!(fails(&seen, SYM_SESSION));
        // A session made; HASH's opcode on it.
        let segs = create(&ram, 16, 0);
        judge_crypto(&mut seen, &ram, &mut st, 1, 0, &segs);
        let mut a = 9u64.to_le_bytes().to_vec();
        a.extend(le(&[0, 0]));
        answer(&ram, &mut st, &a);
        let segs = data_req(&ram, data::HASH, 9);
        judge_crypto(&mut seen, &ram, &mut st, 0, 1, &segs);
        assert!(fails(&seen, HASH_OPCODE));
        // Destroying a session never made.
        let mut r = le(&[ctrl::CIPHER_DESTROY, 0, 0, 0]);
        let mut f = 8u64.to_le_bytes().to_vec();
        f.resize(56, 0);
        r.extend(f);
        ram.write(GuestAddress(0x1000), &r).unwrap();
        let segs = [(0x1000, r.len() as u32, false), (0x2000, 1, true)];
        judge_crypto(&mut seen, &ram, &mut st, 1, 0, &segs);
        assert!(fails(&seen, DESTROY_VALID));
        // An opcode of no service on the control queue.
        let r = le(&[0x0909, 0, 0, 0]);
        ram.write(GuestAddress(0x1000), &r).unwrap();
        let segs = [(0x1000, 16, false), (0x2000, 16, true)];
        judge_crypto(&mut seen, &ram, &mut st, 1, 0, &segs);
        assert!(fails(&seen, CREATE_OPCODE));
    }
}
