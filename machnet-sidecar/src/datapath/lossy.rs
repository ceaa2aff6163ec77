//! Loss injection for tests: a [`Datapath`] wrapper that drops each sent datagram with a fixed
//! probability, from a seeded generator (the same seed drops the same datagrams).

use std::os::fd::BorrowedFd;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Datapath, DatapathStats, Received, RecvError, SendError, TxMeta};

/// Drops sent datagrams at random. See the module documentation.
pub struct Lossy<D> {
    inner: D,
    drop_rate: f64,
    rng: SmallRng,
    dropped: u64,
}

impl<D> std::fmt::Debug for Lossy<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lossy")
            .field("drop_rate", &self.drop_rate)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl<D: Datapath> Lossy<D> {
    /// Wraps `inner`, dropping each sent datagram with probability `drop_rate` (clamped to
    /// 0..=1), using a generator seeded with `seed`.
    pub fn new(inner: D, drop_rate: f64, seed: u64) -> Self {
        Lossy {
            inner,
            drop_rate: if drop_rate.is_finite() {
                drop_rate.clamp(0.0, 1.0)
            } else {
                0.0
            },
            rng: SmallRng::seed_from_u64(seed),
            dropped: 0,
        }
    }

    /// The wrapped datapath.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: Datapath> Datapath for Lossy<D> {
    fn recv(&mut self, max: usize, sink: &mut dyn FnMut(Received<'_>)) -> Result<usize, RecvError> {
        self.inner.recv(max, sink)
    }

    fn send_with(
        &mut self,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>,
    ) -> Result<bool, SendError> {
        let (rate, rng) = (self.drop_rate, &mut self.rng);
        let mut dropped = false;
        // A datagram the closure wrote but we drop is reported to the inner datapath as "nothing
        // to send", so it never leaves; the caller still sees it as sent.
        let queued = self.inner.send_with(&mut |buf| {
            let meta = fill(buf)?;
            dropped = rate > 0.0 && rng.random_bool(rate);
            (!dropped).then_some(meta)
        })?;
        if dropped {
            self.dropped += 1;
        }
        Ok(queued || dropped)
    }

    fn recv_unreachable(&mut self, sink: &mut dyn FnMut(machnet_core::Unreachable<'_>)) -> usize {
        self.inner.recv_unreachable(sink)
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.readiness_fd()
    }

    fn stats(&self) -> DatapathStats {
        let mut s = self.inner.stats();
        s.injected_drops += self.dropped;
        s
    }

    fn max_datagram(&self) -> usize {
        self.inner.max_datagram()
    }

    fn flush(&mut self) {
        self.inner.flush()
    }

    fn rss_oracle(&self) -> Option<Box<dyn machnet_core::rss::RssOracle>> {
        self.inner.rss_oracle()
    }
}
