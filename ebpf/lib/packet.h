/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Bounds-checked header access for direct packet access. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>

/* <linux/if_arp.h> and <linux/icmp.h> pull in libc headers that do not build for the BPF
 * target, so the few definitions we need are spelled out here. */
#define ARPHRD_ETHER 1
#define ICMP_ECHO 8

struct arp_hdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

struct icmp_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
};

/* ARP for IPv4 over Ethernet: the fixed header plus addresses. */
struct arp_ipv4 {
	struct arp_hdr hdr;
	__u8 sender_mac[ETH_ALEN];
	__be32 sender_ip;
	__u8 target_mac[ETH_ALEN];
	__be32 target_ip;
} __attribute__((packed));

/* First 4 bytes of TCP and UDP headers: the ports. */
struct l4_ports {
	__be16 source;
	__be16 dest;
};

#define IP_FRAGMENT_MASK 0x3fff /* MF flag | fragment offset */

#define PTR_AT(skb, off, type)                                                        \
	({                                                                            \
		void *_data = (void *)(long)(skb)->data;                              \
		void *_end = (void *)(long)(skb)->data_end;                           \
		type *_p = _data + (off);                                             \
		((void *)(_p + 1) > _end) ? (type *)0 : _p;                           \
	})

/* The IPv4 sender of an ARP packet, or 0 when it is not IPv4-over-Ethernet ARP. */
static __always_inline __be32 arp_sender_ip(struct __sk_buff *skb)
{
	struct arp_ipv4 *arp = PTR_AT(skb, sizeof(struct ethhdr), struct arp_ipv4);

	if (!arp || arp->hdr.ar_hrd != bpf_htons(ARPHRD_ETHER) ||
	    arp->hdr.ar_pro != bpf_htons(ETH_P_IP) || arp->hdr.ar_hln != ETH_ALEN ||
	    arp->hdr.ar_pln != 4)
		return 0;
	return arp->sender_ip;
}
