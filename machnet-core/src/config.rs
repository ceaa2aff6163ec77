//! Engine configuration. Every value is validated by [`EngineConfig::validate`] before an engine
//! is built, because configuration is untrusted input too.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::cc::CongestionConfig;
use crate::wire;

/// A contiguous range of UDP ports, `base .. base + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPool {
    /// First port of the range.
    pub base: u16,
    /// Number of ports in the range.
    pub count: u16,
}

impl PortPool {
    /// Whether the pool is non-empty, excludes port 0 and does not run past 65535.
    pub fn is_valid(&self) -> bool {
        self.base >= 1 && self.count >= 1 && u32::from(self.base) + u32::from(self.count) <= 65536
    }
    /// Whether `port` lies in the pool.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.base && u32::from(port) < u32::from(self.base) + u32::from(self.count)
    }
    /// The `i`-th port of the pool (`i < count`).
    pub fn nth(&self, i: u16) -> u16 {
        self.base + i
    }
}

/// Where the packet checksum comes from (PROTOCOL.md §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// Compute a CRC32C on every packet sent and require a valid one on every packet received.
    /// Right for datapaths that do not verify an end-to-end checksum themselves (DPDK without
    /// checksum offload, the simulator).
    Always,
    /// The datapath verifies a checksum covering the whole Machnet packet (kernel UDP with UDP
    /// checksums, DPDK with RX checksum offload): send none, accept packets without one, still
    /// reject a packet whose present checksum is wrong.
    Datapath,
}

/// RSS-- connection-setup parameters (PROTOCOL.md §5).
#[derive(Debug, Clone, PartialEq)]
pub struct HandshakeConfig {
    /// Probability with which one batch should establish the connection (paper: 0.95).
    pub success_target: f64,
    /// Wait for a SYN-ACK before the next, doubled batch. Doubles on each retry.
    pub syn_timeout: Duration,
    /// Batches sent before `connect` fails with a timeout.
    pub max_syn_attempts: u8,
    /// Upper bound on one batch.
    pub max_batch: u32,
    /// How long a half-open server flow waits for the client's handshake ACK.
    pub half_open_timeout: Duration,
    /// Half-open server flows an engine holds at most; further SYNs are dropped until some
    /// complete or expire (bounds the memory a SYN flood can take).
    pub max_half_open: usize,
    /// Half-open flows beyond which an engine answers SYNs with stateless SYN cookies instead
    /// of new half-open flows (PROTOCOL.md §5.5); 0: always. At most `max_half_open`.
    pub syn_cookies_after: usize,
    /// Packets per second an engine may send in answer to others' connection attempts
    /// (SYN-ACKs and refusal RSTs); bounds amplification by forged SYNs.
    pub max_answer_rate: u32,
    /// Encryption: sealed SYNs per second an engine reads, and, separately, encrypted connects
    /// per second it starts (PROTOCOL.md §12.5). A handshake costs three to five X25519
    /// operations (~0.1–0.2 ms here), so this bounds the CPU a flood of sealed SYNs or one
    /// application's connects take; SYNs beyond it get a stateless retry, which legitimate
    /// clients echo, and connects fail with `ConnectError::HandshakeRate`.
    pub max_encrypted_handshake_rate: u32,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            success_target: 0.95,
            syn_timeout: Duration::from_millis(10),
            max_syn_attempts: 9,
            max_batch: 512,
            half_open_timeout: Duration::from_secs(5),
            max_answer_rate: 200_000,
            max_encrypted_handshake_rate: 2_000,
            max_half_open: 4096,
            syn_cookies_after: 256,
        }
    }
}

/// Retransmission timer parameters (PROTOCOL.md §6.3).
#[derive(Debug, Clone, PartialEq)]
pub struct RtoConfig {
    /// RTO before the first RTT sample.
    pub initial: Duration,
    /// Lower bound of the RTO.
    pub min: Duration,
    /// Upper bound of the RTO, backoff included.
    pub max: Duration,
    /// Consecutive timeouts without progress after which the peer is declared dead.
    pub max_retries: u32,
    /// Lower bound of the tail-loss probe timeout (which is otherwise twice the smoothed RTT).
    pub min_probe: Duration,
}

impl Default for RtoConfig {
    fn default() -> Self {
        RtoConfig {
            initial: Duration::from_millis(20),
            min: Duration::from_millis(2),
            max: Duration::from_millis(500),
            max_retries: 12,
            min_probe: Duration::from_micros(100),
        }
    }
}

/// Payload bytes in a full DATA fragment of a flow whose datagrams are at most `datagram` bytes
/// (PROTOCOL.md §6.4): minus the fixed header and a handshake block.
pub fn fragment_payload(datagram: u16) -> usize {
    usize::from(datagram).saturating_sub(wire::HEADER_LEN + wire::HANDSHAKE_LEN)
}

/// Everything one engine needs to know. One engine = one core = one RX/TX queue.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// This host's IPv4 address.
    pub local_ip: Ipv4Addr,
    /// This engine's index, `0 .. engine_count`.
    pub engine_id: u16,
    /// Engines on this host (1 ..= 64).
    pub engine_count: u16,
    /// UDP ports this host receives on; RSS-- sprays over them (PROTOCOL.md §5).
    pub udp_ports: PortPool,
    /// UDP ports assumed for a peer we have not heard from yet (default: same as `udp_ports`).
    pub default_remote_udp_ports: Option<PortPool>,
    /// Machnet ports handed out to `connect`; `listen` refuses them (PROTOCOL.md §5.3).
    pub ephemeral_ports: PortPool,
    /// Largest message sent or received, in bytes (default 8 MiB).
    pub max_message_len: u32,
    /// Largest UDP payload (a Machnet packet) this engine sends; MTU − 28 for IPv4.
    pub max_udp_payload: u16,
    /// Bytes of messages a flow may hold that are accepted from the app but not yet acknowledged
    /// by the peer. `send` reports back-pressure beyond it. At least `max_message_len`.
    pub send_buffer: usize,
    /// Bytes of complete, unread messages a flow may hold before its receive window closes.
    pub recv_buffer: usize,
    /// Largest receive window advertised, in packets (bounds the reassembly buffer).
    pub max_window_packets: u32,
    /// Bytes of received data (unread messages, partial messages, out-of-order packets) all
    /// flows of this engine may hold together; each flow gets a fair share (PROTOCOL.md §6.5).
    /// At least `max_message_len`.
    pub memory_budget: usize,
    /// Retransmission timeout bounds and retries.
    pub rto: RtoConfig,
    /// Connection setup (SYN spraying) parameters.
    pub handshake: HandshakeConfig,
    /// Probe an idle peer this often.
    pub keepalive_interval: Duration,
    /// Declare the peer dead after this long without hearing from it.
    pub idle_timeout: Duration,
    /// How long a closed flow lingers to answer retransmitted FINs.
    pub linger: Duration,
    /// Flows an engine holds at most (any phase); beyond it `connect` fails and SYNs are dropped.
    pub max_flows: usize,
    /// Whether outgoing packets carry a checksum and incoming ones must.
    pub checksum: ChecksumMode,
    /// Congestion controller of new flows.
    pub congestion: CongestionConfig,
    /// Encryption in transit (PROTOCOL.md §12); `None` (the default): plaintext. With it, every
    /// flow from and to this engine is encrypted, and only with the peers it lists.
    pub encryption: Option<std::sync::Arc<crate::seal::Encryption>>,
}

impl EngineConfig {
    /// A configuration with defaults for everything but the address and engine placement.
    pub fn new(local_ip: Ipv4Addr, engine_id: u16, engine_count: u16) -> Self {
        EngineConfig {
            local_ip,
            engine_id,
            engine_count,
            udp_ports: PortPool {
                base: 31580,
                count: 64,
            },
            default_remote_udp_ports: None,
            ephemeral_ports: PortPool {
                base: 49152,
                count: 16384,
            },
            max_message_len: 8 << 20,
            max_udp_payload: 1472,
            send_buffer: 16 << 20,
            recv_buffer: 16 << 20,
            max_window_packets: 4096,
            memory_budget: 1 << 30,
            rto: RtoConfig::default(),
            handshake: HandshakeConfig::default(),
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(200),
            max_flows: 65536,
            checksum: ChecksumMode::Always,
            congestion: CongestionConfig::default(),
            encryption: None,
        }
    }

    /// Payload bytes in a full DATA fragment: the UDP payload minus the largest header a data
    /// packet carries (fixed part plus a handshake block; data packets carry no SACK blocks).
    pub fn max_fragment_payload(&self) -> usize {
        fragment_payload(self.max_udp_payload)
    }

    /// UDP ports assumed for a peer that has not advertised its own.
    pub fn remote_udp_ports(&self) -> PortPool {
        self.default_remote_udp_ports.unwrap_or(self.udp_ports)
    }

    /// Checks every value; the error names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use ConfigError::*;
        let check = |ok: bool, field: &'static str, why: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(Invalid { field, why })
            }
        };
        check(
            (1..=crate::MAX_ENGINES).contains(&self.engine_count),
            "engine_count",
            "must be 1..=64",
        )?;
        check(
            self.engine_id < self.engine_count,
            "engine_id",
            "must be below engine_count",
        )?;
        check(
            self.udp_ports.is_valid(),
            "udp_ports",
            "must be non-empty, exclude 0 and end by 65535",
        )?;
        if let Some(p) = self.default_remote_udp_ports {
            check(
                p.is_valid(),
                "default_remote_udp_ports",
                "must be a valid port pool",
            )?;
        }
        check(
            self.ephemeral_ports.is_valid(),
            "ephemeral_ports",
            "must be a valid port pool",
        )?;
        check(
            self.ephemeral_ports.count >= self.engine_count,
            "ephemeral_ports",
            "needs at least one port per engine",
        )?;
        check(
            self.max_message_len >= 1,
            "max_message_len",
            "must be at least 1",
        )?;
        check(
            (wire::MIN_DATAGRAM..=65507).contains(&usize::from(self.max_udp_payload)),
            "max_udp_payload",
            "must leave room for the header and at least 64 payload bytes, and fit in UDP",
        )?;
        check(
            self.send_buffer >= self.max_message_len as usize,
            "send_buffer",
            "must hold at least one maximum-size message",
        )?;
        check(
            self.memory_budget >= self.max_message_len as usize,
            "memory_budget",
            "must hold at least one maximum-size message",
        )?;
        check(
            self.recv_buffer >= 1,
            "recv_buffer",
            "must be at least 1 byte",
        )?;
        check(
            (16..=1 << 20).contains(&self.max_window_packets),
            "max_window_packets",
            "must be 16..=1048576",
        )?;
        check(
            !self.rto.min.is_zero()
                && self.rto.min <= self.rto.initial
                && self.rto.initial <= self.rto.max,
            "rto",
            "needs 0 < min <= initial <= max",
        )?;
        check(
            self.rto.max_retries >= 1,
            "rto.max_retries",
            "must be at least 1",
        )?;
        let hs = &self.handshake;
        check(
            hs.success_target > 0.0 && hs.success_target < 1.0,
            "handshake.success_target",
            "must be strictly between 0 and 1",
        )?;
        check(
            !hs.syn_timeout.is_zero(),
            "handshake.syn_timeout",
            "must be positive",
        )?;
        check(
            hs.max_syn_attempts >= 1,
            "handshake.max_syn_attempts",
            "must be at least 1",
        )?;
        check(
            hs.max_batch >= 1,
            "handshake.max_batch",
            "must be at least 1",
        )?;
        check(
            !hs.half_open_timeout.is_zero(),
            "handshake.half_open_timeout",
            "must be positive",
        )?;
        check(
            hs.max_answer_rate >= 1,
            "handshake.max_answer_rate",
            "must be at least 1",
        )?;
        check(
            hs.max_encrypted_handshake_rate >= 1,
            "handshake.max_encrypted_handshake_rate",
            "must be at least 1",
        )?;
        check(
            hs.max_half_open >= 1,
            "handshake.max_half_open",
            "must be at least 1",
        )?;
        check(
            hs.syn_cookies_after <= hs.max_half_open,
            "handshake.syn_cookies_after",
            "must be at most handshake.max_half_open",
        )?;
        check(self.max_flows >= 1, "max_flows", "must be at least 1")?;
        check(
            !self.keepalive_interval.is_zero(),
            "keepalive_interval",
            "must be positive",
        )?;
        check(
            self.idle_timeout > self.keepalive_interval,
            "idle_timeout",
            "must exceed keepalive_interval",
        )?;
        self.congestion.validate().map_err(|why| Invalid {
            field: "congestion",
            why,
        })?;
        Ok(())
    }
}

/// A configuration value is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value it cannot take.
    #[error("invalid configuration value `{field}`: {why}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with its value.
        why: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        EngineConfig::new(Ipv4Addr::LOCALHOST, 0, 1)
            .validate()
            .unwrap();
        EngineConfig::new(Ipv4Addr::LOCALHOST, 7, 8)
            .validate()
            .unwrap();
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        let mut c = EngineConfig::new(Ipv4Addr::LOCALHOST, 2, 2);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "engine_id",
                ..
            })
        ));
        c.engine_id = 0;
        c.udp_ports = PortPool {
            base: 65535,
            count: 2,
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "udp_ports",
                ..
            })
        ));
        c.udp_ports = PortPool {
            base: 1000,
            count: 2,
        };
        c.send_buffer = 10;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "send_buffer",
                ..
            })
        ));
        c.send_buffer = 16 << 20;
        c.max_udp_payload = 60;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "max_udp_payload",
                ..
            })
        ));
    }
}
