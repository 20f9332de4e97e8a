/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Counting and verdict helpers shared by both directions. */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "packet.h"

/* tcx and clsact (direct-action) agree on these values. */
#define VERDICT_PASS TC_ACT_OK
#define VERDICT_DROP TC_ACT_SHOT

enum direction {
	FROM_BOTTLE,
	TO_BOTTLE,
};

static __always_inline int drop(struct bottle_counters *c, enum bottle_drop_reason reason)
{
	if (c && reason < BOTTLE_DROP_REASONS)
		c->drops[reason] += 1; /* per-CPU value: no atomics needed */
	return VERDICT_DROP;
}

static __always_inline int pass(struct bottle_counters *c, enum direction dir, __u32 len)
{
	if (c) {
		if (dir == FROM_BOTTLE) {
			c->from_bottle_packets += 1;
			c->from_bottle_bytes += len;
		} else {
			c->to_bottle_packets += 1;
			c->to_bottle_bytes += len;
		}
	}
	return VERDICT_PASS;
}

/* Common prologue: look up counters and policy, apply the kill switch and frozen flag.
 * Returns NULL with *verdict set when the packet is decided already. */
static __always_inline struct bottle_policy *
bottle_lookup(struct __sk_buff *skb, struct bottle_counters **counters, int *verdict)
{
	__u32 ifindex = skb->ifindex;
	__u32 zero = 0;
	struct bottle_global *global;
	struct bottle_policy *policy;

	*counters = bpf_map_lookup_elem(&bottle_stats, &ifindex);
	global = bpf_map_lookup_elem(&bottle_global, &zero);
	if (global && global->kill_switch) {
		*verdict = drop(*counters, BOTTLE_DROP_KILL_SWITCH);
		return NULL;
	}
	policy = bpf_map_lookup_elem(&bottle_policy, &ifindex);
	if (!policy) {
		/* Fail closed: an interface we were attached to but hold no policy for. */
		*verdict = drop(*counters, BOTTLE_DROP_OTHER);
		return NULL;
	}
	if (policy->flags & BOTTLE_F_FROZEN) {
		*verdict = drop(*counters, BOTTLE_DROP_FROZEN);
		return NULL;
	}
	return policy;
}

/* Everything below IPv4, common to both directions: ARP passes when its sender is
 * `arp_sender` (else drops with `arp_reason`), IPv6 and other ethertypes drop. Returns the
 * IPv4 header to go on with, or NULL with *verdict set. */
static __always_inline struct iphdr *l2_filter(struct __sk_buff *skb, struct bottle_counters *c,
					       enum direction dir, __be32 arp_sender,
					       enum bottle_drop_reason arp_reason, int *verdict)
{
	struct ethhdr *eth = PTR_AT(skb, 0, struct ethhdr);
	struct iphdr *ip;

	if (!eth) {
		*verdict = drop(c, BOTTLE_DROP_OTHER);
		return NULL;
	}
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_ARP): {
		__be32 sender = arp_sender_ip(skb);

		if (!sender)
			*verdict = drop(c, BOTTLE_DROP_OTHER);
		else if (sender != arp_sender)
			*verdict = drop(c, arp_reason);
		else
			*verdict = pass(c, dir, skb->len);
		return NULL;
	}
	case bpf_htons(ETH_P_IPV6):
		*verdict = drop(c, BOTTLE_DROP_IPV6);
		return NULL;
	case bpf_htons(ETH_P_IP):
		break;
	default:
		*verdict = drop(c, BOTTLE_DROP_OTHER);
		return NULL;
	}
	ip = PTR_AT(skb, sizeof(*eth), struct iphdr);
	if (!ip || ip->version != 4 || ip->ihl < 5) {
		*verdict = drop(c, BOTTLE_DROP_OTHER);
		return NULL;
	}
	return ip;
}
