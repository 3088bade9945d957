//! `hog`: allocates `mib` MiB (query `?mib=64`, default 64) and writes one byte in every 4 KiB page, then answers `allocated <n> MiB`.
//!
//! Call it with `curl 'http://127.0.0.1:8080/fn/hog?mib=16'`.
//!
//! An allocation the memory limit refuses aborts the guest: that is a trap,
//! which is what a memory-limit test expects. So does a size that cannot fit
//! a 32-bit address space. An `mib` that is not an integer gets a 400.

use std::hint::black_box;

use guest_util::{Request, Response};

const DEFAULT_MIB: u64 = 64;
const MIB: u64 = 1024 * 1024;
const PAGE: usize = 4096;

fn handle(request: Request) -> Response {
    let mib = match request.query_param("mib") {
        None => DEFAULT_MIB,
        Some(text) => match text.parse::<u64>() {
            Ok(mib) => mib,
            Err(_) => {
                return Response::error(400, format!("bad mib {text:?}: expected an integer"));
            }
        },
    };
    let Some(bytes) = mib
        .checked_mul(MIB)
        .and_then(|bytes| usize::try_from(bytes).ok())
    else {
        panic!("cannot allocate {mib} MiB in a 32-bit address space");
    };
    let mut memory = vec![0u8; bytes];
    for offset in (0..bytes).step_by(PAGE) {
        memory[offset] = 1;
    }
    black_box(&mut memory);
    Response::text(200, format!("allocated {mib} MiB\n"))
}

guest_util::export_handler!(handle);
