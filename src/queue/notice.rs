//! Notices: what happened to messages and queues, for the event stream (`GET /v1/events`).

use super::message::HistoryKind;
use super::{MessageId, MessageMeta, QueueId};

/// The kind of a notice; its wire name is in [`NoticeKind::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    Enqueued,
    Leased,
    Acked,
    /// A delivery failed and the message will be retried.
    Retrying,
    /// The message went dead: a person should look at it.
    Dead,
    Edited,
    Deleted,
    Retried,
    Rescheduled,
    Paused,
    Resumed,
    /// A queue's settings changed.
    Configured,
}

/// Every kind, for parsing filters.
pub const ALL_NOTICE_KINDS: [NoticeKind; 12] = [
    NoticeKind::Enqueued,
    NoticeKind::Leased,
    NoticeKind::Acked,
    NoticeKind::Retrying,
    NoticeKind::Dead,
    NoticeKind::Edited,
    NoticeKind::Deleted,
    NoticeKind::Retried,
    NoticeKind::Rescheduled,
    NoticeKind::Paused,
    NoticeKind::Resumed,
    NoticeKind::Configured,
];

impl NoticeKind {
    /// The lowercase name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            NoticeKind::Enqueued => "enqueued",
            NoticeKind::Leased => "leased",
            NoticeKind::Acked => "acked",
            NoticeKind::Retrying => "retrying",
            NoticeKind::Dead => "dead",
            NoticeKind::Edited => "edited",
            NoticeKind::Deleted => "deleted",
            NoticeKind::Retried => "retried",
            NoticeKind::Rescheduled => "rescheduled",
            NoticeKind::Paused => "paused",
            NoticeKind::Resumed => "resumed",
            NoticeKind::Configured => "configured",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<NoticeKind> {
        ALL_NOTICE_KINDS.into_iter().find(|kind| kind.name() == name)
    }
}

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub queue_id: QueueId,
    /// The message concerned; `None` for queue-level notices.
    pub id: Option<MessageId>,
    /// The message's attempt count at the time.
    pub attempt: u32,
    pub at_ms: u64,
    /// For failures: the error text.
    pub detail: Option<String>,
    /// For failures: what failed the delivery (a nack, or a lease that ran out).
    pub cause: Option<HistoryKind>,
}

impl Notice {
    /// A notice about one message.
    pub fn about(
        kind: NoticeKind,
        id: MessageId,
        meta: &MessageMeta,
        at_ms: u64,
        detail: Option<String>,
    ) -> Notice {
        Notice {
            kind,
            queue_id: meta.queue_id,
            id: Some(id),
            attempt: meta.attempt_count,
            at_ms,
            detail,
            cause: None,
        }
    }

    /// A notice about a queue.
    pub fn about_queue(kind: NoticeKind, queue_id: QueueId, at_ms: u64) -> Notice {
        Notice { kind, queue_id, id: None, attempt: 0, at_ms, detail: None, cause: None }
    }
}
