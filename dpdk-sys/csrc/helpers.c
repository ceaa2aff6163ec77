#include <rte_config.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>

#include "helpers.h"

int rte_sys_errno(void) { return rte_errno; }

void rte_sys_set_errno(int value) { rte_errno = value; }

unsigned rte_sys_lcore_id(void) { return rte_lcore_id(); }

uint8_t *rte_sys_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }

uint16_t rte_sys_pktmbuf_data_len(const struct rte_mbuf *m) { return m->data_len; }

uint32_t rte_sys_pktmbuf_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }

uint16_t rte_sys_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

uint64_t rte_sys_pktmbuf_ol_flags(const struct rte_mbuf *m) { return m->ol_flags; }

uint32_t rte_sys_pktmbuf_rss_hash(const struct rte_mbuf *m) { return m->hash.rss; }

void rte_sys_pktmbuf_set_tx_offload(struct rte_mbuf *m, uint16_t l2_len, uint16_t l3_len,
                                    uint64_t ol_flags) {
    m->l2_len = l2_len;
    m->l3_len = l3_len;
    m->ol_flags |= ol_flags;
}
