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
