//! Incremental parser of a stream of HTTP/1.1 responses (httparse), counting bodies without
//! copying them.

/// Most headers a response may carry.
const MAX_HEADERS: usize = 32;
/// Longest response head accepted.
const MAX_HEAD: usize = 64 << 10;

/// Why a response stream cannot be read any further.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    /// httparse rejected the head.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// The head has no (valid) Content-Length (chunked bodies are not used by the server).
    #[error("response without a valid Content-Length")]
    NoLength,
    /// The head did not end within `MAX_HEAD` bytes.
    #[error("response head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    /// A response arrived with no request outstanding.
    #[error("response to no request")]
    Unsolicited,
}

/// Reads responses from the bytes of one connection, in order.
#[derive(Debug, Default)]
pub struct ResponseReader {
    /// Bytes of a head not yet complete (and what followed it in the same read).
    buf: Vec<u8>,
    /// Body bytes of the current response still to come.
    body_left: u64,
    /// Status of the response whose body is being skipped.
    status: u16,
}

impl ResponseReader {
    /// A reader at the start of a response.
    pub fn new() -> ResponseReader {
        ResponseReader::default()
    }

    /// Consumes `data`, calling `on_response(status)` for every response completed by it.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut on_response: impl FnMut(u16),
    ) -> Result<(), ResponseError> {
        // A body that continues from an earlier read is skipped without buffering it.
        if self.body_left > 0 {
            let take = self.body_left.min(data.len() as u64);
            self.body_left -= take;
            data = &data[take as usize..];
            if self.body_left > 0 {
                return Ok(());
            }
            on_response(self.status);
        }
        if data.is_empty() {
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        let result = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            let head_len = match resp.parse(&self.buf[pos..]) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() - pos > MAX_HEAD {
                        break Err(ResponseError::HeadTooLong);
                    }
                    break Ok(());
                }
                Err(e) => break Err(ResponseError::Malformed(e)),
            };
            let status = resp.code.unwrap_or(0);
            let Some(len) = content_length(resp.headers) else {
                break Err(ResponseError::NoLength);
            };
            let avail = (self.buf.len() - pos - head_len) as u64;
            if avail >= len {
                pos += head_len + len as usize;
                on_response(status);
            } else {
                self.body_left = len - avail;
                self.status = status;
                pos = self.buf.len();
                break Ok(());
            }
        };
        self.buf.drain(..pos);
        result
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> Option<u64> {
    let h = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))?;
    std::str::from_utf8(h.value).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn response(status: u16, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ndate: now\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn feed_all(reader: &mut ResponseReader, chunks: &[&[u8]]) -> Result<Vec<u16>, ResponseError> {
        let mut got = Vec::new();
        for c in chunks {
            reader.feed(c, |s| got.push(s))?;
        }
        Ok(got)
    }

    #[test]
    fn pipelined_responses_in_any_split_come_out_in_order() {
        let mut stream = Vec::new();
        let statuses = [200u16, 404, 200, 400, 200];
        for (i, s) in statuses.iter().enumerate() {
            stream.extend(response(*s, &vec![b'x'; i * 1000]));
        }
        let seed = 0x5eed_0001;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..200 {
            let mut reader = ResponseReader::new();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = (rng.next_u32() as usize % 1500 + 1).min(rest.len());
                reader.feed(&rest[..n], |s| got.push(s)).unwrap();
                rest = &rest[n..];
            }
            assert_eq!(got, statuses, "seed {seed:#x}");
        }
        // And all at once.
        assert_eq!(
            feed_all(&mut ResponseReader::new(), &[&stream]).unwrap(),
            statuses
        );
    }

    #[test]
    fn a_response_completes_only_with_its_last_body_byte() {
        let r = response(200, &[7u8; 10]);
        let mut reader = ResponseReader::new();
        let (head_and_part, last) = r.split_at(r.len() - 1);
        assert_eq!(
            feed_all(&mut reader, &[head_and_part]).unwrap(),
            Vec::<u16>::new()
        );
        assert_eq!(feed_all(&mut reader, &[last]).unwrap(), vec![200]);
    }

    #[test]
    fn broken_responses_are_errors() {
        let mut reader = ResponseReader::new();
        assert!(matches!(
            feed_all(
                &mut reader,
                &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
            ),
            Err(ResponseError::NoLength)
        ));
        let mut reader = ResponseReader::new();
        assert!(matches!(
            feed_all(&mut reader, &[b"NOT HTTP\r\n\r\n"]),
            Err(ResponseError::Malformed(_))
        ));
        let mut reader = ResponseReader::new();
        let endless = [b'a'; 1024];
        let chunks: Vec<&[u8]> = std::iter::once(&b"HTTP/1.1 200 OK\r\nX: "[..])
            .chain(std::iter::repeat_n(&endless[..], 70))
            .collect();
        assert_eq!(
            feed_all(&mut reader, &chunks),
            Err(ResponseError::HeadTooLong)
        );
    }
}
