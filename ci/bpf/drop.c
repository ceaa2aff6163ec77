// Random packet loss for tests: a tc classifier (direct-action) that drops each packet with
// probability DROP_PERMILLE / 1000. This kernel has no netem, so the DPDK namespace test attaches
// this to a veth's ingress instead (see ci/dpdk-netns.sh, LOSS_PERMILLE).
//
// Build: clang -O2 -target bpf -DDROP_PERMILLE=50 -c drop.c -o drop.o
// Attach: tc qdisc add dev X clsact; tc filter add dev X ingress bpf direct-action obj drop.o sec tc
#include <linux/bpf.h>
#include <linux/pkt_cls.h>

#ifndef DROP_PERMILLE
#define DROP_PERMILLE 50
#endif

// The helper by number, so no libbpf headers are needed.
static unsigned int (*get_prandom_u32)(void) = (void *)BPF_FUNC_get_prandom_u32;

__attribute__((section("tc"), used)) int drop_randomly(struct __sk_buff *skb) {
    (void)skb;
    // Scale to 2^32 / 1000 steps; compare in 64 bits to avoid overflow.
    unsigned long long threshold = (unsigned long long)DROP_PERMILLE * 4294967ULL;
    return get_prandom_u32() < threshold ? TC_ACT_SHOT : TC_ACT_OK;
}

char _license[] __attribute__((section("license"), used)) = "GPL";
