//! Drives one [`ConnLogic`] over a real byte stream: a writer task sends what is due at each
//! intended time, the reader matches responses as they arrive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conn::{ConnLogic, ConnStats};
use super::pacer::{Pacer, RunClock};

/// Runs `logic` on `stream` until every request was answered, the connection failed, or
/// `drain` passed after the last request was sent (what is still outstanding is lost).
pub async fn drive<S>(stream: S, logic: ConnLogic, clock: RunClock, drain: Duration) -> ConnStats
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let logic = Arc::new(Mutex::new(logic));
    let wlogic = logic.clone();
    let mut writer = tokio::spawn(async move {
        let pacer = Pacer::new()?;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let next = {
                let mut l = wlogic.lock().expect("not poisoned");
                l.take_due(clock.now_ns(), &mut buf);
                l.next_due_ns()
            };
            if !buf.is_empty() {
                wr.write_all(&buf).await?;
            }
            match next {
                Some(t) => pacer.sleep_until(&clock, t).await?,
                // Keep the write half open: a half-close could end the connection early.
                None => return Ok::<_, std::io::Error>(wr),
            }
        }
    });

    let mut buf = vec![0u8; 64 << 10];
    let mut writer_done = false;
    let mut _write_half = None;
    let drain_timer = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain_timer);
    let failure = loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => break Some("connection closed by the server".to_string()),
                Ok(n) => {
                    let mut l = logic.lock().expect("not poisoned");
                    if let Err(e) = l.on_bytes(&buf[..n], clock.now_ns()) {
                        break Some(e.to_string());
                    }
                    if l.is_done() {
                        break None;
                    }
                }
                Err(e) => break Some(format!("read: {e}")),
            },
            w = &mut writer, if !writer_done => {
                writer_done = true;
                match w {
                    Ok(Ok(half)) => {
                        _write_half = Some(half);
                        if logic.lock().expect("not poisoned").is_done() {
                            break None;
                        }
                        drain_timer.as_mut().reset(tokio::time::Instant::now() + drain);
                    }
                    Ok(Err(e)) => break Some(format!("write: {e}")),
                    Err(e) => break Some(format!("writer task: {e}")),
                }
            },
            () = &mut drain_timer => break None,
        }
    };
    if !writer_done {
        writer.abort();
        let _ = writer.await;
    }
    let logic = Arc::into_inner(logic).expect("the writer has ended");
    logic.into_inner().expect("not poisoned").finish(failure)
}
