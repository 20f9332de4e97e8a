//! bottle's eBPF datapath: the compiled programs and the Rust mirror of their map layouts.
//!
//! The C sources live in `src/bpf/` (one file per attach point) with shared helpers in
//! `lib/`; `include/bottle_maps.h` is the only definition of map keys, values and drop
//! reasons, mirrored by [`maps`]. The agent loads the programs with aya, attaches them to each
//! bottle's host-side veth and owns every policy decision; the programs only enforce.

pub mod maps;

/// Object for tcx ingress on the host-side veth: packets from the bottle.
pub static FROM_BOTTLE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/from_bottle.bpf.o"));

/// Object for tcx egress on the host-side veth: packets towards the bottle.
pub static TO_BOTTLE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/to_bottle.bpf.o"));

/// Program names inside the objects (the C function names).
pub const FROM_BOTTLE_PROG: &str = "from_bottle";
pub const TO_BOTTLE_PROG: &str = "to_bottle";

/// Where maps and per-bottle links are pinned. Mirrors `BOTTLE_PIN_ROOT`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/bottle";
