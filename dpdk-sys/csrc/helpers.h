/* Small C helpers for what bindgen cannot bind: macros (rte_errno, rte_pktmbuf_mtod,
 * rte_lcore_id) and flag values built with function-like macros (RTE_BIT64). */
#ifndef DPDK_SYS_HELPERS_H
#define DPDK_SYS_HELPERS_H

#include <stdint.h>

struct rte_mbuf;

/* The calling thread's rte_errno (a per-lcore thread-local variable behind a macro). */
int rte_sys_errno(void);
/* Sets the calling thread's rte_errno. */
void rte_sys_set_errno(int value);
/* rte_lcore_id() of the calling thread (LCORE_ID_ANY for non-EAL threads). */
unsigned rte_sys_lcore_id(void);
/* rte_pktmbuf_mtod(m, uint8_t *): start of the data in the first segment. */
uint8_t *rte_sys_pktmbuf_mtod(struct rte_mbuf *m);
/* m->data_len: bytes in the first segment. */
uint16_t rte_sys_pktmbuf_data_len(const struct rte_mbuf *m);
/* m->pkt_len: bytes in the whole chain. */
uint32_t rte_sys_pktmbuf_pkt_len(const struct rte_mbuf *m);
/* m->nb_segs. */
uint16_t rte_sys_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* m->ol_flags. */
uint64_t rte_sys_pktmbuf_ol_flags(const struct rte_mbuf *m);
/* m->hash.rss (valid when ol_flags has RTE_MBUF_F_RX_RSS_HASH). */
uint32_t rte_sys_pktmbuf_rss_hash(const struct rte_mbuf *m);
/* Sets m->l2_len, m->l3_len and ORs `ol_flags` into m->ol_flags (checksum offload requests). */
void rte_sys_pktmbuf_set_tx_offload(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len,
                                    uint64_t ol_flags);

#endif
