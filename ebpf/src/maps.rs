//! Rust mirror of `include/bottle_maps.h`. Change both together: the tests below check sizes
//! and field offsets against the BTF that clang emitted for the real objects.

use aya::Pod;

/// Map names, as in `lib/maps.h`.
pub const POLICY_MAP: &str = "bottle_policy";
pub const PORTS_MAP: &str = "bottle_ports";
pub const STATS_MAP: &str = "bottle_stats";
pub const GLOBAL_MAP: &str = "bottle_global";

/// Capacity, as `BOTTLE_MAX_BOTTLES`.
pub const MAX_BOTTLES: u32 = 16384;

/// `enum bottle_drop_reason`. Codes are never renumbered.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Spoofed = 0,
    NotGateway = 1,
    PortDenied = 2,
    Ipv6 = 3,
    Frozen = 4,
    KillSwitch = 5,
    Other = 6,
}

/// `BOTTLE_DROP_REASONS`: slots reserved in [`BottleCounters::drops`].
pub const DROP_REASON_SLOTS: usize = 16;

/// `BOTTLE_F_FROZEN`.
pub const FLAG_FROZEN: u32 = 1 << 0;

/// `struct bottle_policy`; key: host-side veth ifindex. Addresses in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BottlePolicy {
    pub bottle_addr: u32,
    pub gateway_addr: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// `struct bottle_port_key`; value: `u8` 1. Port in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BottlePortKey {
    pub ifindex: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `struct bottle_counters`, one per CPU; key: host-side veth ifindex.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BottleCounters {
    pub from_bottle_packets: u64,
    pub from_bottle_bytes: u64,
    pub to_bottle_packets: u64,
    pub to_bottle_bytes: u64,
    pub drops: [u64; DROP_REASON_SLOTS],
}

impl BottleCounters {
    /// Adds another CPU's counters into this one.
    pub fn accumulate(&mut self, other: &Self) {
        self.from_bottle_packets += other.from_bottle_packets;
        self.from_bottle_bytes += other.from_bottle_bytes;
        self.to_bottle_packets += other.to_bottle_packets;
        self.to_bottle_bytes += other.to_bottle_bytes;
        for (sum, add) in self.drops.iter_mut().zip(other.drops.iter()) {
            *sum += add;
        }
    }

    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}

/// `struct bottle_global`, the single element of [`GLOBAL_MAP`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BottleGlobal {
    pub kill_switch: u32,
    pub _pad: u32,
}

// SAFETY: every type is repr(C), made only of integers with explicit padding fields, so any
// bit pattern is valid and there are no implicit padding bytes.
unsafe impl Pod for BottlePolicy {}
// SAFETY: as above.
unsafe impl Pod for BottlePortKey {}
// SAFETY: as above.
unsafe impl Pod for BottleCounters {}
// SAFETY: as above.
unsafe impl Pod for BottleGlobal {}

const _: () = assert!(std::mem::size_of::<BottlePolicy>() == 16);
const _: () = assert!(std::mem::size_of::<BottlePortKey>() == 8);
const _: () = assert!(std::mem::size_of::<BottleCounters>() == 32 + 8 * DROP_REASON_SLOTS);
const _: () = assert!(std::mem::size_of::<BottleGlobal>() == 8);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! Cilium's alignchecker idea: read struct layouts from the objects' BTF and compare them
    //! with the Rust mirror, field by field.
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    use object::{Object, ObjectSection};

    use super::*;

    /// struct name -> (size, [(member name, byte offset)]).
    type Layouts = HashMap<String, (u32, Vec<(String, u32)>)>;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// A minimal BTF reader: just enough to list structs with their members' offsets.
    fn struct_layouts(obj: &[u8]) -> Layouts {
        let file = object::File::parse(obj).unwrap();
        let btf = file.section_by_name(".BTF").unwrap().data().unwrap();
        assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
        let hdr_len = u32_at(btf, 4) as usize;
        let (type_off, type_len) = (u32_at(btf, 8) as usize, u32_at(btf, 12) as usize);
        let str_off = u32_at(btf, 16) as usize;
        let types = &btf[hdr_len + type_off..hdr_len + type_off + type_len];
        let strings = &btf[hdr_len + str_off..];
        let name = |off: u32| {
            let s = &strings[off as usize..];
            String::from_utf8(s[..s.iter().position(|&c| c == 0).unwrap()].to_vec()).unwrap()
        };
        let mut layouts = HashMap::new();
        let mut pos = 0;
        while pos < types.len() {
            let (name_off, info, size) = (
                u32_at(types, pos),
                u32_at(types, pos + 4),
                u32_at(types, pos + 8),
            );
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            pos += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, quals, FUNC, FLOAT, TYPE_TAG
                other => panic!("unknown BTF kind {other}"),
            };
            if kind == 4 && name_off != 0 {
                let members = (0..vlen)
                    .map(|i| {
                        let m = pos + 12 * i;
                        let bits = u32_at(types, m + 8);
                        let bit_off = if kflag { bits & 0xff_ffff } else { bits };
                        assert_eq!(bit_off % 8, 0, "no bitfields in shared structs");
                        (name(u32_at(types, m)), bit_off / 8)
                    })
                    .collect();
                layouts.insert(name(name_off), (size, members));
            }
            pos += extra;
        }
        layouts
    }

    fn check(layouts: &Layouts, c_name: &str, size: usize, fields: &[(&str, usize)]) {
        let (c_size, members) = layouts
            .get(c_name)
            .unwrap_or_else(|| panic!("struct {c_name} not in BTF"));
        assert_eq!(*c_size as usize, size, "size of struct {c_name}");
        assert_eq!(
            members.len(),
            fields.len(),
            "member count of struct {c_name}"
        );
        for ((c_field, c_off), (field, off)) in members.iter().zip(fields) {
            assert_eq!(c_field, field, "member order of struct {c_name}");
            assert_eq!(*c_off as usize, *off, "offset of {c_name}.{field}");
        }
    }

    #[test]
    fn rust_mirror_matches_btf_of_both_objects() {
        for obj in [crate::FROM_BOTTLE_OBJ, crate::TO_BOTTLE_OBJ] {
            let l = struct_layouts(obj);
            check(
                &l,
                "bottle_policy",
                size_of::<BottlePolicy>(),
                &[
                    ("bottle_addr", offset_of!(BottlePolicy, bottle_addr)),
                    ("gateway_addr", offset_of!(BottlePolicy, gateway_addr)),
                    ("flags", offset_of!(BottlePolicy, flags)),
                    ("_pad", offset_of!(BottlePolicy, _pad)),
                ],
            );
            check(
                &l,
                "bottle_counters",
                size_of::<BottleCounters>(),
                &[
                    (
                        "from_bottle_packets",
                        offset_of!(BottleCounters, from_bottle_packets),
                    ),
                    (
                        "from_bottle_bytes",
                        offset_of!(BottleCounters, from_bottle_bytes),
                    ),
                    (
                        "to_bottle_packets",
                        offset_of!(BottleCounters, to_bottle_packets),
                    ),
                    (
                        "to_bottle_bytes",
                        offset_of!(BottleCounters, to_bottle_bytes),
                    ),
                    ("drops", offset_of!(BottleCounters, drops)),
                ],
            );
            check(
                &l,
                "bottle_global",
                size_of::<BottleGlobal>(),
                &[
                    ("kill_switch", offset_of!(BottleGlobal, kill_switch)),
                    ("_pad", offset_of!(BottleGlobal, _pad)),
                ],
            );
        }
        // Only from_bottle uses the port key, so only its BTF describes it.
        let l = struct_layouts(crate::FROM_BOTTLE_OBJ);
        check(
            &l,
            "bottle_port_key",
            size_of::<BottlePortKey>(),
            &[
                ("ifindex", offset_of!(BottlePortKey, ifindex)),
                ("port", offset_of!(BottlePortKey, port)),
                ("proto", offset_of!(BottlePortKey, proto)),
                ("_pad", offset_of!(BottlePortKey, _pad)),
            ],
        );
    }

    #[test]
    fn drop_reason_codes_match_header() {
        let header = include_str!("../include/bottle_maps.h");
        for (c_name, code) in [
            ("BOTTLE_DROP_SPOOFED", DropReason::Spoofed as u32),
            ("BOTTLE_DROP_NOT_GATEWAY", DropReason::NotGateway as u32),
            ("BOTTLE_DROP_PORT_DENIED", DropReason::PortDenied as u32),
            ("BOTTLE_DROP_IPV6", DropReason::Ipv6 as u32),
            ("BOTTLE_DROP_FROZEN", DropReason::Frozen as u32),
            ("BOTTLE_DROP_KILL_SWITCH", DropReason::KillSwitch as u32),
            ("BOTTLE_DROP_OTHER", DropReason::Other as u32),
            (
                "BOTTLE_DROP_REASONS",
                u32::try_from(DROP_REASON_SLOTS).unwrap(),
            ),
        ] {
            assert!(
                header.contains(&format!("{c_name} = {code},")),
                "{c_name} must be {code} in bottle_maps.h"
            );
        }
        assert!(header.contains(&format!("#define BOTTLE_MAX_BOTTLES {MAX_BOTTLES}")));
        assert!(header.contains(&format!("#define BOTTLE_PIN_ROOT \"{}\"", crate::PIN_ROOT)));
        assert!(header.contains("#define BOTTLE_F_FROZEN (1U << 0)"));
    }
}
