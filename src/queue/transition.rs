//! The message state machine: which event moves a message from which state to which.
//!
//! This is the single table every other module obeys. The broker asks it before every move and
//! treats a refusal as a programmer error (it has already checked leases and states), while the
//! unit tests below walk every (state, event) pair, the forbidden ones included.
//!
//! | from \ event | Due   | Lease  | Extend | Ack       | Fail (retry) | Fail (dead) | Retry | Reschedule         |
//! |--------------|-------|--------|--------|-----------|--------------|-------------|-------|--------------------|
//! | Scheduled    | Ready | –      | –      | –         | –            | –           | –     | Scheduled or Ready |
//! | Ready        | –     | Leased | –      | –         | –            | –           | –     | Scheduled or Ready |
//! | Leased       | –     | –      | Leased | Delivered | Retrying     | Dead        | –     | –                  |
//! | Retrying     | Ready | –      | –      | –         | –            | –           | Ready | Scheduled or Ready |
//! | Dead         | –     | –      | –      | –         | –            | –           | Ready | Scheduled or Ready |
//! | Delivered    | –     | –      | –      | –         | –            | –           | –     | –                  |
//!
//! "Fail" is a nack or a lease expiry; whether it retries or goes dead is decided by the caller from
//! the attempt count and the nack's `dead` flag. "Retry" and "Reschedule" are a person's actions;
//! a reschedule to a time already past makes the message ready. A leased message belongs to its
//! consumer, so a person cannot move it; a delivered message is done.

use super::message::MessageState;
use std::fmt;

/// Something that happens to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Its timer fired: the scheduled time or the retry backoff has passed.
    Due,
    /// A consumer takes it.
    Lease,
    /// Its consumer asks for more time.
    Extend,
    /// Its consumer finished it.
    Ack,
    /// A delivery failed (nack or lease expiry); `dead` says whether it is dead-lettered.
    Fail { dead: bool },
    /// A person sends it back to ready now.
    Retry,
    /// A person moves its delivery time; `ready` when that time has already come.
    Reschedule { ready: bool },
}

/// An event that the state machine does not allow in the message's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionError {
    pub from: MessageState,
    pub event: Event,
}

impl fmt::Display for TransitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {:?} is not allowed in state {}", self.event, self.from.name())
    }
}

impl std::error::Error for TransitionError {}

/// The state after `event` happens in state `from`, or the refusal.
pub fn next_state(from: MessageState, event: Event) -> Result<MessageState, TransitionError> {
    use MessageState::*;
    let to = match (from, event) {
        (Scheduled | Retrying, Event::Due) => Ready,
        (Ready, Event::Lease) => Leased,
        (Leased, Event::Extend) => Leased,
        (Leased, Event::Ack) => Delivered,
        (Leased, Event::Fail { dead: false }) => Retrying,
        (Leased, Event::Fail { dead: true }) => Dead,
        (Retrying | Dead, Event::Retry) => Ready,
        (Scheduled | Ready | Retrying | Dead, Event::Reschedule { ready }) => {
            if ready {
                Ready
            } else {
                Scheduled
            }
        }
        _ => return Err(TransitionError { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::message::ALL_STATES;
    use MessageState::*;

    const EVENTS: [Event; 9] = [
        Event::Due,
        Event::Lease,
        Event::Extend,
        Event::Ack,
        Event::Fail { dead: false },
        Event::Fail { dead: true },
        Event::Retry,
        Event::Reschedule { ready: true },
        Event::Reschedule { ready: false },
    ];

    /// The table from the module documentation, row by row.
    fn expected(from: MessageState, event: Event) -> Option<MessageState> {
        match (from, event) {
            (Scheduled, Event::Due) => Some(Ready),
            (Retrying, Event::Due) => Some(Ready),
            (Ready, Event::Lease) => Some(Leased),
            (Leased, Event::Extend) => Some(Leased),
            (Leased, Event::Ack) => Some(Delivered),
            (Leased, Event::Fail { dead: false }) => Some(Retrying),
            (Leased, Event::Fail { dead: true }) => Some(Dead),
            (Retrying, Event::Retry) => Some(Ready),
            (Dead, Event::Retry) => Some(Ready),
            (Leased | Delivered, Event::Reschedule { .. }) => None,
            (_, Event::Reschedule { ready: true }) => Some(Ready),
            (_, Event::Reschedule { ready: false }) => Some(Scheduled),
            _ => None,
        }
    }

    #[test]
    fn every_state_and_event_pair_matches_the_table() {
        for from in ALL_STATES {
            for event in EVENTS {
                match expected(from, event) {
                    Some(to) => assert_eq!(next_state(from, event), Ok(to), "{from:?} {event:?}"),
                    None => assert_eq!(
                        next_state(from, event),
                        Err(TransitionError { from, event }),
                        "{from:?} {event:?} must be refused"
                    ),
                }
            }
        }
    }

    #[test]
    fn delivered_accepts_no_event_and_dead_only_a_person_s() {
        for event in EVENTS {
            assert!(next_state(Delivered, event).is_err());
            let by_person = matches!(event, Event::Retry | Event::Reschedule { .. });
            assert_eq!(next_state(Dead, event).is_ok(), by_person, "{event:?}");
        }
    }

    #[test]
    fn nobody_but_its_consumer_moves_a_leased_message() {
        for event in [Event::Retry, Event::Reschedule { ready: true }, Event::Due, Event::Lease] {
            assert!(next_state(Leased, event).is_err(), "{event:?}");
        }
    }

    #[test]
    fn only_a_lease_or_a_reschedule_leaves_ready() {
        for event in EVENTS {
            let allowed = next_state(Ready, event).is_ok();
            let expected = matches!(event, Event::Lease | Event::Reschedule { .. });
            assert_eq!(allowed, expected, "{event:?}");
        }
    }
}
