//! `machine_options`: arbitrary command lines through the QEMU-style option
//! parser; it returns a config or an error that names the problem, never a
//! panic.

use arbitrary::{Arbitrary, Unstructured};

/// Pieces the fuzzer combines, so it reaches deep into the parser quickly.
const WORDS: &[&str] = &[
    "-m",
    "-machine",
    "-M",
    "-object",
    "-chardev",
    "-device",
    "-kernel",
    "-append",
    "microvm,memory-backend=mem0,acpi=off",
    "memory-backend-memfd,id=mem0,size=64M",
    "memory-backend-ram,id=r,size=1M,share=on",
    "memory-backend-file,id=f,size=2M,mem-path=/x",
    "rng-random,id=rng0,filename=/dev/urandom",
    "rng-builtin,id=rng1",
    "rng-egd,id=rng2,chardev=c0",
    "socket,id=c0,path=/tmp/egd.sock",
    "socket,id=c2,host=localhost,port=4444,server=on",
    "file,id=c1,path=out.log",
    "virtio-rng-device,rng=rng0",
    "virtio-rng-device,rng=rng1,misbehave=used-twice",
    "vhost-user-blk,chardev=vu,num-queues=4,queue-size=256",
    "vhost-user-rng,chardev=vu",
    "vhost-user,id=n0,chardev=vu",
    "socket,id=vu,path=/tmp/vu.sock",
    "socket,id=vu,path=/tmp/vu.sock,server=on",
    "memory-backend-memfd,id=mem,size=64M,share=on",
    "microvm,memory-backend=mem",
    "virtio-blk-device,drive=d0,misbehave=interrupt-storm",
    "virtio-net-device,netdev=n0,misbehave=reset-never-clears",
    "virtio-serial-device,misbehave=no-such-mode",
    "virtio-serial-device",
    "virtconsole,chardev=c1",
    "virtserialport,chardev=c0,name=a,,b",
    "64M",
    "guest.elf",
    "ringbuf,id=rb,size=4K",
    "pty,id=p",
    "null,id=n",
    "rng-deterministic,id=d,seed=7",
    "-drive",
    "-blockdev",
    "if=none,id=d0,file=disk.img,format=raw,cache=none,discard=unmap",
    "id=d1,file=x.qcow2,format=qcow2,readonly=on",
    "driver=file,node-name=f0,filename=raw.img",
    "driver=raw,node-name=d2,file=f0",
    "driver=qcow2,node-name=d3,file.driver=file,file.filename=q.img",
    "virtio-blk-device,drive=d0,serial=s,num-queues=4,queue-size=128",
    "virtio-blk-device,drive=d2,discard=off,write-zeroes=off,ioeventfd=off",
    "-netdev",
    "loopback,id=n0",
    "hubport,id=n1,hubid=0",
    "stream,id=n2,server=on,addr.type=unix,addr.path=/tmp/n.sock",
    "dgram,id=n3,local.type=inet,local.host=127.0.0.1,local.port=1,remote.type=inet,remote.host=127.0.0.1,remote.port=2",
    "tap,id=n4,ifname=tap0,script=no,downscript=no",
    "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56,mq=on,queue-pairs=2",
    "virtio-net-device,netdev=n1,id=nic1,host_mtu=65518",
    "-monitor",
    "-qmp",
    "unix:/tmp/m.sock,server=on,wait=off",
    "unix:/tmp/q.sock,server,nowait",
    "unix:/tmp/x.sock,server=off",
    "cryptodev-backend-builtin,id=cb,queues=2",
    "cryptodev-vhost-user,id=cv,chardev=vu,queues=3",
    "virtio-crypto-device,cryptodev=cv,queue-size=64",
    "-tpmdev",
    "emulator,id=tpm0,chardev=chrtpm",
    "passthrough,id=tpm1,path=/dev/tpm0,cancel-path=/tmp/c",
    "socket,id=chrtpm,path=/tmp/swtpm.ctrl",
    "tpm-crb,tpmdev=tpm0,ppi=off",
    "udp,id=u0,host=127.0.0.1,port=4555,localaddr=0.0.0.0,localport=4556",
    "udp,id=u1,host=::1,port=70000",
    "memory,id=m0,size=8K",
    "testdev,id=td",
    "-parallel",
    "file:lpt.txt",
    "-serial",
    "tcp::4444,server,nowait",
    "msmouse,id=ms",
    "wctablet,id=wt",
    "chardev:ms",
    "socket,id=n10,listen=:1234",
    "socket,id=n11,udp=127.0.0.1:1,localaddr=:2,mcast=x",
    "user,id=n7,net=10.1.0.0/16,restrict=on,hostfwd=tcp:127.0.0.1:0-:22,hostfwd=udp::0-10.1.0.20:53",
    "user,id=n8,guestfwd=tcp:10.0.2.100:80-cmd:true,guestfwd=:10.0.2.101:1-unix:/nonexistent,hostname=h,dhcpstart=10.0.2.30,dns=10.0.2.4,ipv6=off",
    "user,id=n9,hostfwd=tcp::x-:0,net=10.0.2.0/255.0.255.0",
    "l2tpv3,id=n5,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport=1701,dstport=1702,txsession=1",
    "l2tpv3,id=n6,src=::1,dst=::1,ipv6=on,txsession=2,rxsession=3,cookie64=on,txcookie=1,rxcookie=2,counter=on,offset=8",
    "serial,id=t0,path=/dev/ttyS0",
    "socket,id=mx,path=/tmp/mx.sock,server=on,mux=on",
    "virtconsole,chardev=mx",
    "bridge,id=n7,br=vhbr0,helper=/usr/lib/qemu/qemu-bridge-helper",
];

#[derive(Arbitrary, Debug)]
enum Token {
    Word(u8),
    Raw(String),
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(tokens) = Vec::<Token>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let args: Vec<String> = tokens
        .into_iter()
        .take(64)
        .map(|t| match t {
            Token::Word(i) => WORDS[usize::from(i) % WORDS.len()].to_string(),
            Token::Raw(s) => s,
        })
        .collect();
    match monitor::options::parse(&args) {
        Ok(cfg) => {
            assert!(cfg.memory >= 1 << 20);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
}
