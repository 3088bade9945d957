//! Links the `wisp` binary with its functions in the order of
//! `link-order.txt`: the functions a server runs (start-up, deploy, the
//! request path) first, hottest first, the rest after. Code is paged in
//! 64 KiB around each page fault, so with the run code packed together the
//! server keeps fewer pages of code resident. `bench/link-order/` holds the
//! profile run that writes the list and explains how to refresh it.
//!
//! Only for release builds on x86_64 Linux, where rustc links with LLD,
//! which reads the list; a symbol the list names that the build lacks is
//! skipped, so a stale list costs layout, never correctness. Set
//! `WISP_LINK_ORDER=0` to link without it.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-env-changed=WISP_LINK_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let wanted = var("WISP_LINK_ORDER") != "0"
        && var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu";
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join("link-order.txt");
    if wanted && list.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=wisp=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=wisp=-Wl,--no-warn-symbol-ordering");
    }
}
