//! Prints KVM's statistics for one boot of a guest ELF (a profiling aid):
//! `cargo run --release -p bothends-monitor --example kvm_stats -- <elf> [cmdline]`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: kvm_stats <elf> [cmdline]");
        std::process::exit(2);
    };
    let elf = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cmdline = args.get(2).cloned().unwrap_or_default();
    let memory = backends::hostmem::HostMemory::ram(64 << 20, false, false).expect("guest RAM");
    let out = monitor::vm::boot(
        memory,
        &elf,
        &cmdline,
        0,
        std::time::Duration::from_secs(30),
    )
    .expect("boot");
    println!(
        "{} | {} | setup {:?} | boot-to-exit {:?}",
        out.verdict, out.exits, out.setup, out.boot_to_exit
    );
    if let Some(k) = &out.kvm {
        for (name, v) in k.vcpu.iter().filter(|(_, v)| *v != 0) {
            println!("vcpu {name} = {v}");
        }
        for (name, v) in k.vm.iter().filter(|(_, v)| *v != 0) {
            println!("vm {name} = {v}");
        }
    }
}
