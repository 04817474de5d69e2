//! The access log: one line per request when its body has ended, not when its headers left, so
//! a 45 MB download logs how long it took, how many bytes went out and whether they all did.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};

/// Middleware: wraps every response body so that its end is logged.
pub async fn log_at_body_end(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let (parts, body) = response.into_parts();
    // A streamed body does not know its end: hyper stops once Content-Length bytes went out.
    let expected = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let on_end = move |bytes: u64, completed: bool| {
        let ms = started.elapsed().as_millis() as u64;
        if completed {
            tracing::info!(%method, %uri, status = status.as_u16(), bytes, ms, "request done");
        } else {
            tracing::warn!(%method, %uri, status = status.as_u16(), bytes, ms, "response cut short");
        }
    };
    Response::from_parts(parts, Body::new(Counted::new(body, expected, on_end)))
}

/// A body that counts the bytes it yields and reports, once, whether it ended or was dropped
/// (the client went away, or the stream failed) before its end.
pub struct Counted<F: FnOnce(u64, bool)> {
    inner: Body,
    sent: u64,
    /// The Content-Length announced, if any: all of it sent is the end.
    expected: Option<u64>,
    on_end: Option<F>,
}

impl<F: FnOnce(u64, bool)> Counted<F> {
    pub fn new(inner: Body, expected: Option<u64>, on_end: F) -> Self {
        Counted {
            inner,
            sent: 0,
            expected,
            on_end: Some(on_end),
        }
    }

    fn all_sent(&self) -> bool {
        self.inner.is_end_stream() || self.expected == Some(self.sent)
    }

    fn end(&mut self, completed: bool) {
        if let Some(f) = self.on_end.take() {
            f(self.sent, completed);
        }
    }
}

impl<F: FnOnce(u64, bool) + Unpin> http_body::Body for Counted<F> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.all_sent() {
                    this.end(true);
                }
            }
            Poll::Ready(None) => this.end(true),
            Poll::Ready(Some(Err(_))) => this.end(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64, bool)> Drop for Counted<F> {
    fn drop(&mut self) {
        // An empty body may be sent without ever being polled, a streamed one left at its
        // announced length.
        let completed = self.all_sent();
        self.end(completed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::StreamExt;
    use http_body_util::BodyExt;

    use super::*;

    /// What `on_end` was called with: (bytes, completed) per call.
    type Ends = Arc<Mutex<Vec<(u64, bool)>>>;

    fn recorder() -> (Ends, impl FnOnce(u64, bool) + Unpin) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, move |bytes, done| {
            s.lock().unwrap().push((bytes, done))
        })
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_is_logged_complete_once() {
        let (seen, f) = recorder();
        let pieces = futures::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from("abc")),
            Ok(Bytes::from("de")),
        ]);
        let body = Counted::new(Body::from_stream(pieces), None, f);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"abcde");
        assert_eq!(*seen.lock().unwrap(), vec![(5, true)]);

        let (seen, f) = recorder();
        drop(Counted::new(Body::empty(), Some(45), f));
        assert_eq!(*seen.lock().unwrap(), vec![(0, true)], "a HEAD answer");

        // A stream left once its Content-Length went out (as hyper does) is complete.
        let (seen, f) = recorder();
        let pieces = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from("abc"))])
            .chain(futures::stream::pending());
        let mut body = Counted::new(Body::from_stream(pieces), Some(3), f);
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(*seen.lock().unwrap(), vec![(3, true)]);
    }

    #[tokio::test]
    async fn a_body_dropped_or_failing_midway_is_logged_cut_short() {
        let (seen, f) = recorder();
        let pieces = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from("abc"))])
            .chain(futures::stream::pending());
        let mut body = Counted::new(Body::from_stream(pieces), Some(10), f);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        drop(body);
        assert_eq!(*seen.lock().unwrap(), vec![(3, false)]);

        let (seen, f) = recorder();
        let failing =
            futures::stream::iter([Ok(Bytes::from("ab")), Err(std::io::Error::other("disk"))]);
        let body = Counted::new(Body::from_stream(failing), None, f);
        assert!(body.collect().await.is_err());
        assert_eq!(*seen.lock().unwrap(), vec![(2, false)]);
    }
}
