//! Link-time layout of the binary, for start-up cost (see contrib/symbol-order.sh).
//!
//! With LLD (rustc's default linker on x86_64-unknown-linux-gnu since 1.90), the
//! functions a container start runs are placed first, together, from
//! contrib/symbol-order.txt: the kernel maps a binary's text 64 KiB around every page
//! fault, so code spread over the whole text costs its whole size in resident memory.
//! With another linker nothing is added; the binary is the same, only larger in memory.

use std::process::Command;

fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").ok()?;
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let v = String::from_utf8(out.stdout).ok()?;
    // "rustc 1.95.0 (...)"
    let ver = v.split_whitespace().nth(1)?;
    let mut parts = ver.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

fn main() {
    let order = "contrib/symbol-order.txt";
    println!("cargo:rerun-if-changed={order}");
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let custom_linker = flags.contains("linker")
        || flags.contains("fuse-ld")
        || std::env::var_os(format!(
            "CARGO_TARGET_{}_LINKER",
            target.to_uppercase().replace('-', "_")
        ))
        .is_some();
    let lld = target == "x86_64-unknown-linux-gnu"
        && !custom_linker
        && rustc_minor().is_some_and(|m| m >= 90);
    if !lld {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={dir}/{order}");
    // The list names functions of one build; others (a newer compiler, a changed
    // dependency) are simply not found.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
