// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * tcx egress on the host-side veth: every packet delivered to the bottle.
 *
 * Only the gateway talks to a bottle: ARP and IPv4 whose source is the gateway address.
 * Nothing is routed towards a bottle, but a misconfigured host (forwarding on, a stray
 * route) must still not reach it.
 */
#include <linux/bpf.h>

#include "packet.h"
#include "verdict.h"

SEC("classifier") /* attached at tcx egress (clsact fallback) by the agent */
int to_bottle(struct __sk_buff *skb)
{
	struct bottle_counters *c;
	struct bottle_policy *policy;
	struct iphdr *ip;
	int verdict = VERDICT_DROP;

	policy = bottle_lookup(skb, &c, &verdict);
	if (!policy)
		return verdict;

	ip = l2_filter(skb, c, TO_BOTTLE, policy->gateway_addr, BOTTLE_DROP_NOT_GATEWAY, &verdict);
	if (!ip)
		return verdict;
	if (ip->saddr != policy->gateway_addr)
		return drop(c, BOTTLE_DROP_NOT_GATEWAY);
	if (ip->daddr != policy->bottle_addr)
		return drop(c, BOTTLE_DROP_OTHER);
	return pass(c, TO_BOTTLE, skb->len);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
