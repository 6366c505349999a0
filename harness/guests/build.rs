//! Build script of the tiny guests: hands the linker script to every guest
//! program and warns when the codegen flags of `.cargo/config.toml` are
//! missing (a PIE image would boot with unrelocated pointers).

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-none") {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !flags.contains("relocation-model=static") {
        println!(
            "cargo:warning=tiny guests built without -C relocation-model=static; \
             run cargo from harness/guests so .cargo/config.toml applies"
        );
    }
}
