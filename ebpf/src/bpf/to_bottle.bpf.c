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
	struct ethhdr *eth;
	struct iphdr *ip;
	int verdict = VERDICT_DROP;

	policy = bottle_lookup(skb, &c, &verdict);
	if (!policy)
		return verdict;

	eth = PTR_AT(skb, 0, struct ethhdr);
	if (!eth)
		return drop(c, BOTTLE_DROP_OTHER);

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_ARP): {
		__be32 sender = arp_sender_ip(skb);

		if (!sender)
			return drop(c, BOTTLE_DROP_OTHER);
		if (sender != policy->gateway_addr)
			return drop(c, BOTTLE_DROP_NOT_GATEWAY);
		return pass(c, TO_BOTTLE, skb->len);
	}
	case bpf_htons(ETH_P_IPV6):
		return drop(c, BOTTLE_DROP_IPV6);
	case bpf_htons(ETH_P_IP):
		break;
	default:
		return drop(c, BOTTLE_DROP_OTHER);
	}

	ip = PTR_AT(skb, sizeof(*eth), struct iphdr);
	if (!ip || ip->version != 4 || ip->ihl < 5)
		return drop(c, BOTTLE_DROP_OTHER);
	if (ip->saddr != policy->gateway_addr)
		return drop(c, BOTTLE_DROP_NOT_GATEWAY);
	if (ip->daddr != policy->bottle_addr)
		return drop(c, BOTTLE_DROP_OTHER);
	return pass(c, TO_BOTTLE, skb->len);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
