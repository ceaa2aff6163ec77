//! The request/response format (see the crate README for the byte layout). Every request is
//! one message; so is every response. Integers are little-endian.
//!
//! Parsing never trusts the sender: every length is checked against the bytes present and the
//! limits below, and trailing bytes are an error.

use thiserror::Error;

/// Longest key (and SCAN prefix).
pub const MAX_KEY: usize = 1024;
/// Longest value.
pub const MAX_VALUE: usize = 1 << 20;
/// Most entries one SCAN may ask for.
pub const MAX_SCAN: u32 = 1000;
/// A SCAN response stops before exceeding this many bytes (and says it was truncated).
pub const MAX_SCAN_BYTES: usize = 4 << 20;

/// Request operation codes.
pub mod op {
    /// Read a key.
    pub const GET: u8 = 1;
    /// Write a key.
    pub const SET: u8 = 2;
    /// Remove a key.
    pub const DELETE: u8 = 3;
    /// List keys with a prefix, in key order.
    pub const SCAN: u8 = 4;
}

/// Response status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Done; the body depends on the operation.
    Ok = 0,
    /// GET or DELETE of a key that does not exist (empty body).
    NotFound = 1,
    /// The request was malformed; the body is a UTF-8 explanation.
    BadRequest = 2,
    /// The store failed; the body is a UTF-8 explanation.
    ServerError = 3,
}

impl Status {
    fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadRequest,
            3 => Status::ServerError,
            _ => return None,
        })
    }
}

/// A parsed request; borrows the message it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Read `key`.
    Get {
        /// Chosen by the client, echoed in the response.
        id: u32,
        /// 1 ..= [`MAX_KEY`] bytes.
        key: &'a [u8],
    },
    /// Write `key` = `value`.
    Set {
        /// Chosen by the client, echoed in the response.
        id: u32,
        /// 1 ..= [`MAX_KEY`] bytes.
        key: &'a [u8],
        /// At most [`MAX_VALUE`] bytes (may be empty).
        value: &'a [u8],
    },
    /// Remove `key`.
    Delete {
        /// Chosen by the client, echoed in the response.
        id: u32,
        /// 1 ..= [`MAX_KEY`] bytes.
        key: &'a [u8],
    },
    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    Scan {
        /// Chosen by the client, echoed in the response.
        id: u32,
        /// At most [`MAX_KEY`] bytes; empty matches every key.
        prefix: &'a [u8],
        /// 1 ..= [`MAX_SCAN`] entries.
        limit: u32,
    },
}

/// Why a request could not be parsed. The server answers it with [`Status::BadRequest`]
/// carrying this message (and the request id when the message was long enough to hold one).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Shorter than its fixed header.
    #[error("request truncated: {0} bytes, need at least 7")]
    Truncated(usize),
    /// Unknown operation code.
    #[error("unknown operation {0}")]
    UnknownOp(u8),
    /// The key length field points past the end of the message.
    #[error("key length {0} exceeds the message")]
    KeyOverrun(usize),
    /// Empty key (GET/SET/DELETE).
    #[error("empty key")]
    EmptyKey,
    /// Key longer than [`MAX_KEY`].
    #[error("key of {0} bytes exceeds the limit of {MAX_KEY}")]
    KeyTooLong(usize),
    /// Value longer than [`MAX_VALUE`].
    #[error("value of {0} bytes exceeds the limit of {MAX_VALUE}")]
    ValueTooLong(usize),
    /// SCAN without its 4-byte limit, or bytes after it / after a GET or DELETE key.
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
    /// SCAN limit of 0 or above [`MAX_SCAN`].
    #[error("scan limit {0} outside 1..={MAX_SCAN}")]
    BadLimit(u32),
}

impl ParseError {
    /// The request id, if the message was long enough to carry one.
    pub fn id_of(msg: &[u8]) -> u32 {
        msg.get(1..5)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    }
}

impl<'a> Request<'a> {
    /// The request id (echoed in the response).
    pub fn id(&self) -> u32 {
        match *self {
            Request::Get { id, .. }
            | Request::Set { id, .. }
            | Request::Delete { id, .. }
            | Request::Scan { id, .. } => id,
        }
    }

    /// Parses one request message.
    pub fn parse(msg: &'a [u8]) -> Result<Request<'a>, ParseError> {
        if msg.len() < 7 {
            return Err(ParseError::Truncated(msg.len()));
        }
        let opcode = msg[0];
        let id = ParseError::id_of(msg);
        let key_len = usize::from(u16::from_le_bytes([msg[5], msg[6]]));
        let rest = &msg[7..];
        if key_len > rest.len() {
            return Err(ParseError::KeyOverrun(key_len));
        }
        if key_len > MAX_KEY {
            return Err(ParseError::KeyTooLong(key_len));
        }
        let (key, tail) = rest.split_at(key_len);
        let need_key = || {
            if key.is_empty() {
                Err(ParseError::EmptyKey)
            } else {
                Ok(())
            }
        };
        let no_tail = |t: &[u8]| {
            if t.is_empty() {
                Ok(())
            } else {
                Err(ParseError::Trailing(t.len()))
            }
        };
        match opcode {
            op::GET => {
                need_key()?;
                no_tail(tail)?;
                Ok(Request::Get { id, key })
            }
            op::DELETE => {
                need_key()?;
                no_tail(tail)?;
                Ok(Request::Delete { id, key })
            }
            op::SET => {
                need_key()?;
                if tail.len() > MAX_VALUE {
                    return Err(ParseError::ValueTooLong(tail.len()));
                }
                Ok(Request::Set {
                    id,
                    key,
                    value: tail,
                })
            }
            op::SCAN => {
                let (limit, extra) = match tail.split_first_chunk::<4>() {
                    Some((l, extra)) => (u32::from_le_bytes(*l), extra),
                    None => return Err(ParseError::Trailing(tail.len())),
                };
                no_tail(extra)?;
                if limit == 0 || limit > MAX_SCAN {
                    return Err(ParseError::BadLimit(limit));
                }
                Ok(Request::Scan {
                    id,
                    prefix: key,
                    limit,
                })
            }
            other => Err(ParseError::UnknownOp(other)),
        }
    }

    /// Appends this request's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (opcode, id, key) = match *self {
            Request::Get { id, key } => (op::GET, id, key),
            Request::Set { id, key, .. } => (op::SET, id, key),
            Request::Delete { id, key } => (op::DELETE, id, key),
            Request::Scan { id, prefix, .. } => (op::SCAN, id, prefix),
        };
        out.push(opcode);
        out.extend_from_slice(&id.to_le_bytes());
        // Callers keep keys within MAX_KEY; a longer one is encoded truncated and refused.
        out.extend_from_slice(&(key.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
        out.extend_from_slice(key);
        match *self {
            Request::Set { value, .. } => out.extend_from_slice(value),
            Request::Scan { limit, .. } => out.extend_from_slice(&limit.to_le_bytes()),
            _ => {}
        }
    }
}

/// Writes a response header (`status`, `id`) into `out` (cleared first); the body follows.
pub fn response_header(out: &mut Vec<u8>, status: Status, id: u32) {
    out.clear();
    out.push(status as u8);
    out.extend_from_slice(&id.to_le_bytes());
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    /// Outcome.
    pub status: Status,
    /// The request's id.
    pub id: u32,
    /// Value (GET), scan entries (SCAN, see [`parse_scan`]), explanation (errors), or empty.
    pub body: &'a [u8],
}

/// Why a response could not be parsed (a client-side check of the server).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    /// Shorter than the 5-byte header.
    #[error("response truncated")]
    Truncated,
    /// Unknown status byte.
    #[error("unknown status {0}")]
    UnknownStatus(u8),
    /// A SCAN body that does not add up.
    #[error("malformed scan body")]
    BadScan,
}

impl<'a> Response<'a> {
    /// Parses one response message.
    pub fn parse(msg: &'a [u8]) -> Result<Response<'a>, ResponseError> {
        let (head, body) = msg
            .split_first_chunk::<5>()
            .ok_or(ResponseError::Truncated)?;
        let status = Status::from_u8(head[0]).ok_or(ResponseError::UnknownStatus(head[0]))?;
        let id = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        Ok(Response { status, id, body })
    }
}

/// Appends one SCAN entry to a response body.
pub fn push_scan_entry(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// One SCAN entry: key and value, borrowed from the response.
pub type ScanEntry<'a> = (&'a [u8], &'a [u8]);

/// The entries of a SCAN response body (`u8 truncated`, `u32 count`, then the entries), and
/// whether the answer was truncated.
pub fn parse_scan(body: &[u8]) -> Result<(bool, Vec<ScanEntry<'_>>), ResponseError> {
    let (&truncated, rest) = body.split_first().ok_or(ResponseError::BadScan)?;
    let (count, mut rest) = rest
        .split_first_chunk::<4>()
        .ok_or(ResponseError::BadScan)?;
    let count = u32::from_le_bytes(*count);
    let mut entries = Vec::new();
    for _ in 0..count {
        let (kl, r) = rest
            .split_first_chunk::<2>()
            .ok_or(ResponseError::BadScan)?;
        let kl = usize::from(u16::from_le_bytes(*kl));
        if r.len() < kl {
            return Err(ResponseError::BadScan);
        }
        let (key, r) = r.split_at(kl);
        let (vl, r) = r.split_first_chunk::<4>().ok_or(ResponseError::BadScan)?;
        let vl = u32::from_le_bytes(*vl) as usize;
        if r.len() < vl {
            return Err(ResponseError::BadScan);
        }
        let (value, r) = r.split_at(vl);
        entries.push((key, value));
        rest = r;
    }
    if !rest.is_empty() || truncated > 1 {
        return Err(ResponseError::BadScan);
    }
    Ok((truncated == 1, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(r: &Request<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        r.encode(&mut v);
        v
    }

    #[test]
    fn round_trips() {
        for r in [
            Request::Get { id: 7, key: b"k" },
            Request::Set {
                id: u32::MAX,
                key: b"key",
                value: b"",
            },
            Request::Set {
                id: 1,
                key: b"key",
                value: &[9; 100],
            },
            Request::Delete { id: 0, key: b"x" },
            Request::Scan {
                id: 3,
                prefix: b"",
                limit: MAX_SCAN,
            },
        ] {
            assert_eq!(Request::parse(&encoded(&r)), Ok(r.clone()));
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        let get = encoded(&Request::Get { id: 5, key: b"abc" });
        assert_eq!(Request::parse(&get[..6]), Err(ParseError::Truncated(6)));
        assert_eq!(
            Request::parse(&get[..9]),
            Err(ParseError::KeyOverrun(3)),
            "key cut short"
        );
        let mut extra = get.clone();
        extra.push(0);
        assert_eq!(Request::parse(&extra), Err(ParseError::Trailing(1)));
        let mut bad_op = get.clone();
        bad_op[0] = 99;
        assert_eq!(Request::parse(&bad_op), Err(ParseError::UnknownOp(99)));
        let empty = encoded(&Request::Get { id: 5, key: b"" });
        assert_eq!(Request::parse(&empty), Err(ParseError::EmptyKey));
        let long_key = vec![1u8; MAX_KEY + 1];
        let long = encoded(&Request::Get {
            id: 5,
            key: &long_key,
        });
        assert_eq!(
            Request::parse(&long),
            Err(ParseError::KeyTooLong(MAX_KEY + 1))
        );
        let big = vec![0u8; MAX_VALUE + 1];
        let set = encoded(&Request::Set {
            id: 1,
            key: b"k",
            value: &big,
        });
        assert_eq!(
            Request::parse(&set),
            Err(ParseError::ValueTooLong(MAX_VALUE + 1))
        );
        for limit in [0, MAX_SCAN + 1] {
            let scan = encoded(&Request::Scan {
                id: 1,
                prefix: b"p",
                limit,
            });
            assert_eq!(Request::parse(&scan), Err(ParseError::BadLimit(limit)));
        }
        let scan = encoded(&Request::Scan {
            id: 1,
            prefix: b"p",
            limit: 1,
        });
        assert_eq!(
            Request::parse(&scan[..scan.len() - 1]),
            Err(ParseError::Trailing(3))
        );
        assert_eq!(ParseError::id_of(&get), 5);
        assert_eq!(ParseError::id_of(&get[..3]), 0);
    }

    #[test]
    fn scan_bodies_parse_and_reject_garbage() {
        let mut body = vec![1u8];
        body.extend_from_slice(&2u32.to_le_bytes());
        push_scan_entry(&mut body, b"a", b"1");
        push_scan_entry(&mut body, b"ab", b"");
        assert_eq!(
            parse_scan(&body),
            Ok((true, vec![(&b"a"[..], &b"1"[..]), (&b"ab"[..], &b""[..])]))
        );
        assert_eq!(
            parse_scan(&body[..body.len() - 1]),
            Err(ResponseError::BadScan)
        );
        let mut more = body.clone();
        more.push(0);
        assert_eq!(parse_scan(&more), Err(ResponseError::BadScan));
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::parse(&bytes);
            let _ = Response::parse(&bytes);
            let _ = parse_scan(&bytes);
        }

        #[test]
        fn set_round_trips(id: u32, key in proptest::collection::vec(any::<u8>(), 1..MAX_KEY),
                           value in proptest::collection::vec(any::<u8>(), 0..512)) {
            let r = Request::Set { id, key: &key, value: &value };
            let bytes = encoded(&r);
            prop_assert_eq!(Request::parse(&bytes), Ok(r.clone()));
        }
    }
}
