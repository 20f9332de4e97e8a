//! Compiles the datapath C programs with clang for the BPF target.
//!
//! The objects are embedded into the crate (`include_bytes_aligned!`), never read from disk at
//! run time, so the agent binary is self-contained. `BOTTLE_CLANG` overrides the compiler
//! (default `clang-19`, Debian's; `cargo xtask deps` installs it).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Every program, one per attach point.
const PROGRAMS: &[&str] = &["from_bottle", "to_bottle"];
/// Every header they include; a change to any rebuilds all.
const HEADERS: &[&str] = &[
    "include/bottle_maps.h",
    "lib/maps.h",
    "lib/packet.h",
    "lib/verdict.h",
];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let clang = env::var("BOTTLE_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=BOTTLE_CLANG");
    for header in HEADERS {
        println!("cargo:rerun-if-changed={header}");
    }
    // Kernel uapi headers include <asm/types.h>, which Debian keeps under the multiarch dir.
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    for program in PROGRAMS {
        let source = format!("src/bpf/{program}.bpf.c");
        println!("cargo:rerun-if-changed={source}");
        let object = out_dir.join(format!("{program}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Wextra", "-Werror"])
            .args(["-Iinclude", "-Ilib"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                println!("cargo:warning={clang} failed on {source} ({s})");
                std::process::exit(1);
            }
            Err(e) => {
                println!(
                    "cargo:warning=cannot run {clang} ({e}): install it with `cargo xtask deps` \
                     (Debian: apt-get install clang-19 libbpf-dev), or set BOTTLE_CLANG"
                );
                std::process::exit(1);
            }
        }
    }
}
