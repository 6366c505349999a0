//! `vhost_user_codec`: the vhost-user message codec of the harness (QEMU's
//! docs/interop/vhost-user.rst, "Message specification") over any bytes
//! and any number of passed file descriptors: headers, payload sizes, fd
//! counts and every request's body. Decoding never panics, and every
//! message that decodes encodes back to the same bytes.

/// Runs one input (the first byte gives the fd count).
pub fn run(data: &[u8]) {
    vhost_user::codec::fuzz_codec(data);
}
