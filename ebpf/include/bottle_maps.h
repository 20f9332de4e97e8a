/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The one definition of every map key/value, flag and drop-reason code shared by the
 * datapath programs and the agent.
 *
 * Rust mirror: ebpf/src/maps.rs. Change both together; `cargo test -p bottle-ebpf`
 * checks sizes and field offsets against this object's BTF.
 *
 * Rules (from Cilium's drop_reasons.h): codes are never renumbered; a retired one stays
 * as *_UNUSEDn. Padding is explicit, keys are zeroed before use, byte order is in the type.
 */
#pragma once

#include <linux/types.h>

/* Pin root; every map lives in BOTTLE_PIN_ROOT/maps, links in BOTTLE_PIN_ROOT/<id>/. */
#define BOTTLE_PIN_ROOT "/sys/fs/bpf/bottle"

/* Capacity: bottles per host, allowed (proto, port) pairs per host. */
#define BOTTLE_MAX_BOTTLES 16384
#define BOTTLE_MAX_PORT_RULES (BOTTLE_MAX_BOTTLES * 16)

/* Why a packet was dropped. Index into bottle_counters.drops. */
enum bottle_drop_reason {
	BOTTLE_DROP_SPOOFED = 0,     /* source is not the bottle's own address */
	BOTTLE_DROP_NOT_GATEWAY = 1, /* peer (dst from / src towards the bottle) is not the gateway */
	BOTTLE_DROP_PORT_DENIED = 2, /* to the gateway on a port the policy does not allow */
	BOTTLE_DROP_IPV6 = 3,        /* any IPv6 */
	BOTTLE_DROP_FROZEN = 4,      /* the bottle is frozen */
	BOTTLE_DROP_KILL_SWITCH = 5, /* the host-wide kill switch is engaged */
	BOTTLE_DROP_OTHER = 6,       /* anything else (unknown protocol, ICMP type, fragment, malformed, no policy) */
	BOTTLE_DROP_REASONS = 16,    /* slots reserved in the counters; new reasons take 7.. */
};

/* bottle_policy.flags */
#define BOTTLE_F_FROZEN (1U << 0)

/* bottle_policy: key = host-side veth ifindex (__u32). Written by the agent at create. */
struct bottle_policy {
	__be32 bottle_addr;  /* the only source the bottle may use */
	__be32 gateway_addr; /* the only peer the bottle may talk to */
	__u32 flags;         /* BOTTLE_F_* */
	__u32 _pad;
};

/* bottle_ports: allowed (proto, port) to the gateway, value = 1. */
struct bottle_port_key {
	__u32 ifindex;
	__be16 port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 _pad;
};

/* bottle_stats: per-CPU counters, key = host-side veth ifindex (__u32). */
struct bottle_counters {
	__u64 from_bottle_packets; /* passed, bottle -> gateway */
	__u64 from_bottle_bytes;
	__u64 to_bottle_packets; /* passed, gateway -> bottle */
	__u64 to_bottle_bytes;
	__u64 drops[BOTTLE_DROP_REASONS]; /* packets, by enum bottle_drop_reason */
};

/* bottle_global: a one-element array, key 0. */
struct bottle_global {
	__u32 kill_switch; /* non-zero: every bottle drops everything */
	__u32 _pad;
};
