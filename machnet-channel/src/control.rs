//! The control protocol between an application and the sidecar (docs/CHANNEL.md §2).
//!
//! One Unix `SOCK_SEQPACKET` connection per application process; every message is one packet
//! holding one JSON object (at most [`MAX_CONTROL_MESSAGE`] bytes). File descriptors (the
//! channel's memfd and its two eventfds) travel with `ChannelOpened` as `SCM_RIGHTS`. The
//! connection's lifetime is the application's: when it closes, the sidecar reclaims every channel
//! and flow it opened.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Version of this protocol; `Hello` carries it and the sidecar refuses others.
pub const CONTROL_VERSION: u32 = 1;
/// Largest control message accepted, in bytes.
pub const MAX_CONTROL_MESSAGE: usize = 16 * 1024;
/// Largest `Stats` response, in bytes (the one response that may exceed
/// [`MAX_CONTROL_MESSAGE`]; the sidecar leaves out flows, then channels, to stay within it).
pub const MAX_STATS_RESPONSE: usize = 128 * 1024;
/// Most flows or channels a `Stats` request may ask to be listed.
pub const MAX_STATS_ITEMS: u32 = 4096;

/// Application → sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// First message on a connection.
    Hello {
        /// The protocol version the application speaks ([`CONTROL_VERSION`]).
        version: u32,
        /// Free-form name of the application or client library, for the sidecar's log only.
        client: String,
    },
    /// Open a channel on `engine` (or the next engine round-robin). Answered by `ChannelOpened`
    /// with three descriptors: memfd, app eventfd (sidecar → app), sidecar eventfd (app → sidecar).
    OpenChannel {
        /// Index of the engine (`0..engines` from the `Hello` response); `None` lets the sidecar
        /// choose.
        engine: Option<u16>,
    },
    /// Accept connections to Machnet `port` on `channel`'s engine; accepted flows are announced
    /// on that channel.
    Listen {
        /// A channel this connection opened.
        channel: u32,
        /// The Machnet port to accept connections on.
        port: u16,
    },
    /// Stop listening; flows already accepted are not affected.
    Unlisten {
        /// The channel that called `Listen`.
        channel: u32,
        /// The port it listens on.
        port: u16,
    },
    /// Detach a channel (docs/CHANNEL.md §5). By default gracefully: the requests already in
    /// its ring are carried out, then its flows close (FIN) within the sidecar's linger. With
    /// `abort`, its flows are aborted at once (peers see a reset). Its memory is released either
    /// way.
    CloseChannel {
        /// A channel this connection opened.
        channel: u32,
        /// Abort the channel's flows instead of closing them gracefully (omitted when false).
        #[serde(default, skip_serializing_if = "is_false")]
        abort: bool,
    },
    /// Ask for a statistics snapshot of the whole sidecar (engines, channels, flows; the
    /// document `machnet stat --json` prints, docs/STATS.md). Answered by `Stats`.
    Stats {
        /// Most flows to list (1..=[`MAX_STATS_ITEMS`]); the rest are counted, not listed.
        /// Omitted: the sidecar's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_flows: Option<u32>,
        /// Most channels to list (1..=[`MAX_STATS_ITEMS`]), as for `max_flows`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_channels: Option<u32>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Sidecar → application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Answer to `Hello`: the sidecar's parameters.
    Hello {
        /// The protocol version the sidecar speaks ([`CONTROL_VERSION`]).
        version: u32,
        /// The sidecar's IPv4 address: the address of this host's Machnet flows.
        local_ip: Ipv4Addr,
        /// Number of engines; valid engine indices are `0..engines`.
        engines: u16,
        /// Largest message, in bytes, that a channel carries in one `Send` or delivery.
        max_message_len: u32,
    },
    /// Answer to `OpenChannel`; the packet carries the channel's memfd, the app eventfd and the
    /// sidecar eventfd as `SCM_RIGHTS`.
    ChannelOpened {
        /// The channel's id, valid on this connection only.
        channel: u32,
        /// The engine that serves the channel.
        engine: u16,
        /// Size of the channel's shared memory (the memfd) in bytes: the length to map.
        len: u64,
    },
    /// The request succeeded and has no result (`Listen`, `Unlisten`, `CloseChannel`).
    Ok,
    /// Answer to `Stats`: the snapshot (a versioned JSON document, docs/STATS.md). At most
    /// [`MAX_STATS_RESPONSE`] bytes.
    Stats {
        /// The snapshot.
        stats: serde_json::Value,
    },
    /// The request failed.
    Error {
        /// Why, as a stable code.
        code: ControlError,
        /// Human-readable details, for logs.
        message: String,
    },
}

/// Why a control request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum ControlError {
    /// Not one JSON request of at most [`MAX_CONTROL_MESSAGE`] bytes (the connection is closed).
    #[error("malformed request")]
    Malformed,
    /// The peer's user or group may not use the sidecar (sent at accept, then the connection is
    /// closed).
    #[error("this user or group may not use the sidecar")]
    Unauthorized,
    /// `Hello` carried a version other than [`CONTROL_VERSION`] (the connection is closed).
    #[error("protocol version not supported")]
    Version,
    /// A request other than `Hello` came first (the connection is closed).
    #[error("Hello must come first")]
    NoHello,
    /// `OpenChannel` named an engine index the sidecar does not have.
    #[error("no such engine")]
    NoSuchEngine,
    /// The channel id is not one this connection opened, or the channel is closed.
    #[error("no such channel on this connection")]
    NoSuchChannel,
    /// Another channel on this host already listens on the port.
    #[error("port is already in use")]
    PortInUse,
    /// The port cannot be listened on (e.g. 0 or in the ephemeral range), or `Unlisten` named a
    /// port the channel does not listen on.
    #[error("invalid port")]
    InvalidPort,
    /// The sidecar ran out of a resource (memory, descriptors, channel ids).
    #[error("resource limit reached")]
    Exhausted,
    /// The sidecar failed for a reason that is not the request's fault.
    #[error("internal sidecar error")]
    Internal,
    /// The application, its user or the sidecar holds its maximum of control connections
    /// (sent at accept, then the connection is closed).
    #[error("control connection limit reached")]
    ConnectionLimit,
    /// The application, its user or the sidecar holds its maximum of channels.
    #[error("channel limit reached")]
    ChannelLimit,
    /// The application or its user holds its maximum of listening ports.
    #[error("listening port limit reached")]
    PortLimit,
    /// The connection sent no `hello` in time, or stayed idle without channels (sent before
    /// the sidecar closes it).
    #[error("control connection timed out")]
    TimedOut,
    /// A well-formed request with a value out of its range (e.g. `Stats` with `max_flows` 0);
    /// the connection stays open.
    #[error("invalid request")]
    InvalidRequest,
}

impl Request {
    /// Serialises the request as one control packet.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("requests always serialise")
    }
    /// Parses an untrusted message.
    pub fn decode(b: &[u8]) -> Result<Self, ControlError> {
        if b.len() > MAX_CONTROL_MESSAGE {
            return Err(ControlError::Malformed);
        }
        serde_json::from_slice(b).map_err(|_| ControlError::Malformed)
    }
}

impl Response {
    /// Serialises the response as one control packet.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("responses always serialise")
    }
    /// Parses an untrusted message.
    pub fn decode(b: &[u8]) -> Result<Self, ControlError> {
        if b.len() > MAX_CONTROL_MESSAGE {
            return Err(ControlError::Malformed);
        }
        serde_json::from_slice(b).map_err(|_| ControlError::Malformed)
    }
    /// Parses an untrusted answer to `Stats` (which may be up to [`MAX_STATS_RESPONSE`] bytes).
    pub fn decode_stats(b: &[u8]) -> Result<Self, ControlError> {
        if b.len() > MAX_STATS_RESPONSE {
            return Err(ControlError::Malformed);
        }
        serde_json::from_slice(b).map_err(|_| ControlError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_malformed() {
        let reqs = [
            Request::Hello {
                version: 1,
                client: "t".into(),
            },
            Request::OpenChannel { engine: Some(3) },
            Request::OpenChannel { engine: None },
            Request::Listen {
                channel: 1,
                port: 80,
            },
            Request::Unlisten {
                channel: 1,
                port: 80,
            },
            Request::CloseChannel {
                channel: 2,
                abort: false,
            },
            Request::CloseChannel {
                channel: 2,
                abort: true,
            },
            Request::Stats {
                max_flows: None,
                max_channels: None,
            },
            Request::Stats {
                max_flows: Some(10),
                max_channels: Some(2),
            },
        ];
        assert_eq!(
            Request::decode(br#"{"op":"stats"}"#).unwrap(),
            Request::Stats {
                max_flows: None,
                max_channels: None
            }
        );
        // An old client's request (no `abort` field) is a graceful detach.
        assert_eq!(
            Request::decode(br#"{"op":"close_channel","channel":7}"#).unwrap(),
            Request::CloseChannel {
                channel: 7,
                abort: false
            }
        );
        for r in reqs {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let resp = Response::Error {
            code: ControlError::PortInUse,
            message: "x".into(),
        };
        assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
        // Codes are snake_case on the wire.
        for (code, wire) in [
            (ControlError::ConnectionLimit, "connection_limit"),
            (ControlError::ChannelLimit, "channel_limit"),
            (ControlError::PortLimit, "port_limit"),
            (ControlError::TimedOut, "timed_out"),
            (ControlError::InvalidRequest, "invalid_request"),
        ] {
            let r = Response::Error {
                code,
                message: String::new(),
            };
            let text = String::from_utf8(r.encode()).unwrap();
            assert!(text.contains(&format!("\"code\":\"{wire}\"")), "{text}");
        }
        for bad in [
            &b"{"[..],
            b"{\"op\":\"listen\",\"channel\":1}",
            b"{\"op\":\"nope\"}",
            b"\xff\xfe",
            b"{\"op\":\"listen\",\"channel\":1,\"port\":70000}",
            b"{\"op\":\"stats\",\"max_flows\":-1}",
            b"{\"op\":\"stats\",\"verbose\":true}",
        ] {
            assert_eq!(
                Request::decode(bad),
                Err(ControlError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            Request::decode(&vec![b' '; MAX_CONTROL_MESSAGE + 1]),
            Err(ControlError::Malformed)
        );
    }
}
