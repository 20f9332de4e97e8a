// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * tcx ingress on the host-side veth: every packet the bottle sends.
 *
 * Allowed: ARP from the bottle's own address; IPv4 from the bottle's own address to the
 * gateway, TCP/UDP on a port in bottle_ports, ICMP echo request. Everything else drops with
 * a reason. The agent's userspace services on the gateway are the bottle's only peers.
 */
#include <linux/bpf.h>
#include <linux/in.h>

#include "packet.h"
#include "verdict.h"

SEC("classifier") /* attached at tcx ingress (clsact fallback) by the agent */
int from_bottle(struct __sk_buff *skb)
{
	struct bottle_counters *c;
	struct bottle_policy *policy;
	struct iphdr *ip;
	int verdict = VERDICT_DROP;

	policy = bottle_lookup(skb, &c, &verdict);
	if (!policy)
		return verdict;

	ip = l2_filter(skb, c, FROM_BOTTLE, policy->bottle_addr, BOTTLE_DROP_SPOOFED, &verdict);
	if (!ip)
		return verdict;
	if (ip->saddr != policy->bottle_addr)
		return drop(c, BOTTLE_DROP_SPOOFED);
	if (ip->daddr != policy->gateway_addr)
		return drop(c, BOTTLE_DROP_NOT_GATEWAY);
	/* Fragments carry no (or a partial) L4 header we could check. */
	if (ip->frag_off & bpf_htons(IP_FRAGMENT_MASK))
		return drop(c, BOTTLE_DROP_OTHER);

	__u32 l4_off = sizeof(struct ethhdr) + ip->ihl * 4;

	switch (ip->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP: {
		struct l4_ports *ports = PTR_AT(skb, l4_off, struct l4_ports);
		struct bottle_port_key key = {};

		if (!ports)
			return drop(c, BOTTLE_DROP_OTHER);
		key.ifindex = skb->ifindex;
		key.port = ports->dest;
		key.proto = ip->protocol;
		if (!bpf_map_lookup_elem(&bottle_ports, &key))
			return drop(c, BOTTLE_DROP_PORT_DENIED);
		return pass(c, FROM_BOTTLE, skb->len);
	}
	case IPPROTO_ICMP: {
		struct icmp_hdr *icmp = PTR_AT(skb, l4_off, struct icmp_hdr);

		if (!icmp || icmp->type != ICMP_ECHO)
			return drop(c, BOTTLE_DROP_OTHER);
		return pass(c, FROM_BOTTLE, skb->len);
	}
	default:
		return drop(c, BOTTLE_DROP_OTHER);
	}
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
