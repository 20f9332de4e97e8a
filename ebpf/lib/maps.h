/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Map definitions, included by every program. Each map is pinned by name under
 * BOTTLE_PIN_ROOT/maps so both programs, and every agent run, share one instance: the
 * counters and policy survive an agent restart.
 */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "bottle_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BOTTLE_MAX_BOTTLES);
	__type(key, __u32);
	__type(value, struct bottle_policy);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bottle_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BOTTLE_MAX_PORT_RULES);
	__type(key, struct bottle_port_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bottle_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, BOTTLE_MAX_BOTTLES);
	__type(key, __u32);
	__type(value, struct bottle_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bottle_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bottle_global);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} bottle_global SEC(".maps");
