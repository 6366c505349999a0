//! `l2tpv3_packet`: what a peer can send an L2TPv3 tunnel
//! (`backends::net::l2tpv3`), through the receive parser, under a tunnel
//! set-up from the input (UDP or raw IP, IPv4 or IPv6, cookies of 32 or
//! 64 bits, a counter, padding). A packet either carries a frame, which
//! then lies inside the packet after the whole header, or is refused;
//! never a panic.

use arbitrary::{Arbitrary, Unstructured};
use backends::net::l2tpv3::{L2tpv3Config, MAX_OFFSET};

#[derive(Arbitrary, Debug)]
struct Input {
    udp: bool,
    ipv6: bool,
    session: u32,
    rx_session: Option<u32>,
    cookies: Option<(u64, u64)>,
    cookie64: bool,
    counter: bool,
    pin: bool,
    offset: u8,
    packet: Vec<u8>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(i) = Input::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let c = L2tpv3Config {
        src: String::new(),
        dst: String::new(),
        udp: i.udp.then_some((1, 2)),
        ipv6: i.ipv6,
        tx_session: i.session,
        rx_session: i.rx_session,
        cookies: i.cookies,
        cookie64: i.cookie64,
        counter: i.counter,
        pin_counter: i.pin,
        offset: u32::from(i.offset).min(MAX_OFFSET),
    };
    if let Some(frame) = c.frame_of(&i.packet) {
        let start = frame.as_ptr() as usize - i.packet.as_ptr() as usize;
        assert!(
            start + frame.len() == i.packet.len(),
            "the frame runs to the packet's end"
        );
        // At least the session word (and the UDP word) came before it.
        assert!(start >= 4 + if i.udp { 4 } else { 0 }, "frame at {start}");
        let rx = i.rx_session.unwrap_or(i.session);
        assert!(
            i.packet.windows(4).any(|w| w == rx.to_be_bytes()),
            "no session id"
        );
    }
}
