//! One connection's life: how long it may stay without a request, and how it ends.
//!
//! - [`Lingering`] wraps the TCP stream. When the HTTP layer closes the connection it
//!   sends its FIN and then keeps reading and discarding what the client still sends
//!   (bounded in bytes and time), so that a client still writing a refused body reads the
//!   answer instead of a reset (a close with unread data makes the kernel send RST).
//! - [`Activity`] counts the requests in progress on a connection and remembers when the
//!   last one ended; the server closes a connection that carries no request for
//!   `header_read_timeout_ms` (an idle keep-alive connection, or a request head that
//!   trickles in).
//! - [`AnswerBody`] is the response body. It keeps the request's body unread until the
//!   answer is sent (so HTTP/1.1 never sends `100 Continue` for a body nobody will read),
//!   then discards what the client still sends, bounded like the linger, so that the
//!   request ends cleanly: an HTTP/2 stream half-closed by the client (no `RST_STREAM`,
//!   which curl before 8.x reports as a framing error even with `NO_ERROR`), an HTTP/1.1
//!   connection that stays usable. Past the bounds the body is dropped, and HTTP/2 resets
//!   the stream with `NO_ERROR` (RFC 9113 §8.1).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// After closing, a connection discards up to this much of what the client still sends...
pub(crate) const LINGER_BYTES: u64 = 64 * 1024 * 1024;
/// ...for at most this long.
pub(crate) const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// A stream that lingers on close (see the module docs) and counts the bytes it read.
pub(crate) struct Lingering<S> {
    inner: S,
    read: Arc<AtomicU64>,
    linger: Option<Linger>,
}

struct Linger {
    deadline: Pin<Box<tokio::time::Sleep>>,
    discarded: u64,
}

impl<S> Lingering<S> {
    pub(crate) fn new(inner: S) -> Lingering<S> {
        Lingering {
            inner,
            read: Arc::new(AtomicU64::new(0)),
            linger: None,
        }
    }

    /// Bytes read so far, shared with whoever watches the connection.
    pub(crate) fn bytes_read(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.read)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.read.fetch_add(read as u64, Ordering::Relaxed);
        result
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.linger = Some(Linger {
                deadline: Box::pin(tokio::time::sleep(LINGER_TIMEOUT)),
                discarded: 0,
            });
        }
        let linger = this.linger.as_mut().expect("set above");
        let mut scratch = [0u8; 8192];
        loop {
            if linger.deadline.as_mut().poll(cx).is_ready() || linger.discarded > LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => linger.discarded += buf.filled().len() as u64,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Requests in progress on one connection, and when the last one ended.
pub(crate) struct Activity {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// Marks a request in progress until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(Arc::clone(self))
    }

    /// `None` while a request is in progress, else when the connection became idle.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let idle_since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        (self.active.load(Ordering::Acquire) == 0).then_some(idle_since)
    }
}

/// A request in progress (see [`Activity::begin`]).
pub(crate) struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body holding the request's body (and the request's place on its
/// connection) until the answer has been sent.
pub(crate) struct AnswerBody {
    data: Option<Bytes>,
    request: Option<Incoming>,
    active: Option<ActiveRequest>,
}

impl AnswerBody {
    pub(crate) fn new(data: Bytes, request: Incoming, active: ActiveRequest) -> AnswerBody {
        AnswerBody {
            data: Some(data),
            request: Some(request),
            active: Some(active),
        }
    }
}

impl Drop for AnswerBody {
    /// The answer is sent (or the connection is gone): what is left of the request's body
    /// is discarded, and the request keeps its place on the connection until then.
    fn drop(&mut self) {
        let active = self.active.take();
        if let Some(request) = self.request.take() {
            if !request.is_end_stream() {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(discard(request, active));
                }
            }
        }
    }
}

/// Reads and drops what is left of a request's body, within the linger's bounds.
async fn discard(mut body: Incoming, active: Option<ActiveRequest>) {
    use http_body_util::BodyExt as _;
    let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
        let mut discarded = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            discarded += frame.data_ref().map_or(0, |data| data.len() as u64);
            if discarded > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
    drop(body);
    drop(active);
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.data.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |data| data.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers and closes while the client is still sending: with the
    /// linger, the client finishes sending and reads the whole answer; without it the
    /// close with unread data would reset the connection.
    #[tokio::test]
    async fn a_lingering_close_lets_a_client_still_sending_read_the_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            let (mut read, mut write) = stream.into_split();
            let writer = tokio::spawn(async move {
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..64 {
                    write.write_all(&chunk).await?;
                }
                write.shutdown().await
            });
            let mut answer = Vec::new();
            read.read_to_end(&mut answer).await?;
            writer.await.expect("the writer ran")?;
            Ok::<_, io::Error>(answer)
        });
        let (stream, _) = listener.accept().await.unwrap();
        let mut stream = Lingering::new(stream);
        let mut head = [0u8; 1024];
        stream.read_exact(&mut head).await.unwrap();
        stream.write_all(b"413 too large").await.unwrap();
        stream.shutdown().await.unwrap();
        assert!(stream.bytes_read().load(Ordering::Relaxed) >= 1024);
        drop(stream);
        let answer = client.await.unwrap().expect("no reset");
        assert_eq!(answer, b"413 too large");
    }
}
