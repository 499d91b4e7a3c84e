//! The inbox as a stream.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio_stream::Stream;
use tvaers_proto::v1;

use crate::error::{ClientError, Target};

type OpenFuture =
    Pin<Box<dyn Future<Output = Result<tonic::Streaming<v1::InboxItem>, tonic::Status>> + Send>>;

enum State {
    Opening(OpenFuture),
    Open(Box<tonic::Streaming<v1::InboxItem>>),
    Done,
}

/// Inbox items after a cursor, then each new item as it arrives; from
/// [`Client::inbox_stream`](crate::Client::inbox_stream).
///
/// The call to the daemon is made on the first poll. The stream ends after
/// the first error (the daemon stopped, the connection broke): resume with
/// `client.inbox_stream(stream.last_cursor())` (for a team inbox:
/// `client.team_inbox_stream(inbox, Some(stream.last_position()))`), which
/// neither skips nor repeats an item.
pub struct InboxStream {
    state: State,
    target: Target,
    last_cursor: u64,
    last_position: u64,
}

impl InboxStream {
    pub(crate) fn new(
        open: OpenFuture,
        target: Target,
        after_cursor: u64,
        after_position: u64,
    ) -> Self {
        InboxStream {
            state: State::Opening(open),
            target,
            last_cursor: after_cursor,
            last_position: after_position,
        }
    }

    /// The cursor of the last item yielded, or the starting cursor before
    /// the first one.
    pub fn last_cursor(&self) -> u64 {
        self.last_cursor
    }

    /// Of a team-inbox stream: the position of the last item yielded in
    /// that inbox, or the starting position before the first one.
    pub fn last_position(&self) -> u64 {
        self.last_position
    }
}

impl fmt::Debug for InboxStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Opening(_) => "opening",
            State::Open(_) => "open",
            State::Done => "done",
        };
        f.debug_struct("InboxStream")
            .field("state", &state)
            .field("target", &self.target)
            .field("last_cursor", &self.last_cursor)
            .field("last_position", &self.last_position)
            .finish()
    }
}

impl Stream for InboxStream {
    type Item = Result<v1::InboxItem, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Opening(open) => match ready!(open.as_mut().poll(cx)) {
                    Ok(streaming) => this.state = State::Open(Box::new(streaming)),
                    Err(status) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(ClientError::from_status(
                            status,
                            &this.target,
                        ))));
                    }
                },
                State::Open(streaming) => {
                    return match ready!(Pin::new(streaming.as_mut()).poll_next(cx)) {
                        Some(Ok(item)) => {
                            this.last_cursor = item.cursor;
                            this.last_position = item.position;
                            Poll::Ready(Some(Ok(item)))
                        }
                        Some(Err(status)) => {
                            this.state = State::Done;
                            Poll::Ready(Some(Err(ClientError::from_status(status, &this.target))))
                        }
                        None => {
                            this.state = State::Done;
                            Poll::Ready(None)
                        }
                    };
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }
}
