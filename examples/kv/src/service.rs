//! Request in, response out: the server logic shared by the Machnet and TCP transports.

use crate::protocol::{
    push_scan_entry, response_header, ParseError, Request, Status, MAX_SCAN_BYTES,
};
use crate::store::Store;

/// Answers one request message into `out` (cleared first). Malformed requests get
/// [`Status::BadRequest`] with the reason; storage failures [`Status::ServerError`].
pub fn handle(store: &Store, msg: &[u8], out: &mut Vec<u8>) {
    let req = match Request::parse(msg) {
        Ok(r) => r,
        Err(e) => return error(out, Status::BadRequest, ParseError::id_of(msg), &e),
    };
    let id = req.id();
    let result = match req {
        Request::Get { key, .. } => {
            response_header(out, Status::Ok, id);
            store.get(key, out).map(|found| {
                if !found {
                    response_header(out, Status::NotFound, id);
                }
            })
        }
        Request::Set { key, value, .. } => store
            .set(key, value)
            .map(|()| response_header(out, Status::Ok, id)),
        Request::Delete { key, .. } => store.delete(key).map(|existed| {
            let status = if existed {
                Status::Ok
            } else {
                Status::NotFound
            };
            response_header(out, status, id);
        }),
        Request::Scan { prefix, limit, .. } => {
            response_header(out, Status::Ok, id);
            // truncated flag and count, patched below
            let flag_at = out.len();
            out.extend_from_slice(&[0, 0, 0, 0, 0]);
            let mut count = 0u32;
            let mut truncated = false;
            let r = store.scan(prefix, limit as usize, |k, v| {
                if out.len() + 6 + k.len() + v.len() > MAX_SCAN_BYTES {
                    truncated = true;
                    return false;
                }
                push_scan_entry(out, k, v);
                count += 1;
                true
            });
            out[flag_at] = u8::from(truncated);
            out[flag_at + 1..flag_at + 5].copy_from_slice(&count.to_le_bytes());
            r
        }
    };
    if let Err(e) = result {
        error(out, Status::ServerError, id, &e);
    }
}

fn error(out: &mut Vec<u8>, status: Status, id: u32, e: &dyn std::fmt::Display) {
    response_header(out, status, id);
    out.extend_from_slice(e.to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_scan, Response};

    fn call(store: &Store, r: Request<'_>) -> (Status, u32, Vec<u8>) {
        let mut msg = Vec::new();
        r.encode(&mut msg);
        let mut out = Vec::new();
        handle(store, &msg, &mut out);
        let resp = Response::parse(&out).expect("well-formed response");
        (resp.status, resp.id, resp.body.to_vec())
    }

    #[test]
    fn get_set_delete_scan() {
        let s = Store::in_memory().unwrap();
        assert_eq!(
            call(&s, Request::Get { id: 1, key: b"a" }),
            (Status::NotFound, 1, vec![])
        );
        for (i, k) in [&b"user:2"[..], b"user:1", b"user:10", b"other"]
            .iter()
            .enumerate()
        {
            let v = format!("v{i}");
            assert_eq!(
                call(
                    &s,
                    Request::Set {
                        id: 10 + i as u32,
                        key: k,
                        value: v.as_bytes()
                    }
                )
                .0,
                Status::Ok
            );
        }
        assert_eq!(
            call(
                &s,
                Request::Get {
                    id: 2,
                    key: b"user:1"
                }
            ),
            (Status::Ok, 2, b"v1".to_vec())
        );
        let (st, _, body) = call(
            &s,
            Request::Scan {
                id: 3,
                prefix: b"user:",
                limit: 10,
            },
        );
        assert_eq!(st, Status::Ok);
        let (truncated, entries) = parse_scan(&body).unwrap();
        assert!(!truncated);
        assert_eq!(
            entries,
            vec![
                (&b"user:1"[..], &b"v1"[..]),
                (&b"user:10"[..], &b"v2"[..]),
                (&b"user:2"[..], &b"v0"[..]),
            ],
            "prefix matches only, in key order"
        );
        let (_, _, body) = call(
            &s,
            Request::Scan {
                id: 4,
                prefix: b"user:",
                limit: 2,
            },
        );
        assert_eq!(parse_scan(&body).unwrap().1.len(), 2, "limit honoured");
        assert_eq!(
            call(
                &s,
                Request::Delete {
                    id: 5,
                    key: b"user:1"
                }
            )
            .0,
            Status::Ok
        );
        assert_eq!(
            call(
                &s,
                Request::Delete {
                    id: 6,
                    key: b"user:1"
                }
            )
            .0,
            Status::NotFound
        );
        assert_eq!(
            call(
                &s,
                Request::Get {
                    id: 7,
                    key: b"user:1"
                }
            )
            .0,
            Status::NotFound
        );
    }

    #[test]
    fn malformed_request_gets_a_bad_request_with_its_id() {
        let s = Store::in_memory().unwrap();
        let mut out = Vec::new();
        handle(&s, &[op_get(), 9, 0, 0, 0, 5, 0, b'x'], &mut out);
        let r = Response::parse(&out).unwrap();
        assert_eq!((r.status, r.id), (Status::BadRequest, 9));
        assert!(String::from_utf8_lossy(r.body).contains("key length 5"));
        handle(&s, &[1, 2], &mut out);
        let r = Response::parse(&out).unwrap();
        assert_eq!((r.status, r.id), (Status::BadRequest, 0));
    }

    fn op_get() -> u8 {
        crate::protocol::op::GET
    }

    #[test]
    fn large_scans_are_truncated_below_the_byte_cap() {
        let s = Store::in_memory().unwrap();
        let big = vec![7u8; 1 << 20];
        for i in 0..6u8 {
            s.set(&[b'p', i], &big).unwrap();
        }
        let (st, _, body) = call(
            &s,
            Request::Scan {
                id: 1,
                prefix: b"p",
                limit: 100,
            },
        );
        assert_eq!(st, Status::Ok);
        assert!(body.len() <= MAX_SCAN_BYTES);
        let (truncated, entries) = parse_scan(&body).unwrap();
        assert!(truncated);
        assert_eq!(entries.len(), 3);
    }

    #[test]
    fn store_persists_across_reopen() {
        let dir = std::env::temp_dir().join(format!("machnet-kv-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        {
            let s = Store::open(&dir, true).unwrap();
            s.set(b"k", b"durable").unwrap();
        }
        let s = Store::open(&dir, true).unwrap();
        let mut out = Vec::new();
        assert!(s.get(b"k", &mut out).unwrap());
        assert_eq!(out, b"durable");
        drop(s);
        std::fs::remove_file(&dir).unwrap();
    }
}
