//! Bytes ↔ envelopes, with the checks a log from disk or the network needs.
//!
//! Owns the encoding of the log (protobuf, via prost) and decoding that
//! refuses what `apply` must never see: no payload (an event from a newer
//! Orrery), or a required enum with an unknown or unspecified value. It does
//! not check business rules.

use orrery_proto::events::{self as pb, envelope::Payload};
use prost::Message;
use thiserror::Error;

/// The largest encoded envelope accepted (a batch of offers for thousands of
/// agents stays far below it).
pub const ENVELOPE_BYTES_MAX: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("envelope of {len} bytes exceeds the limit of {ENVELOPE_BYTES_MAX}")]
    TooLarge { len: usize },
    #[error("envelope is not valid protobuf: {0}")]
    Protobuf(String),
    #[error("event {index} has no payload this Orrery knows (written by a newer version?)")]
    UnknownEvent { index: u64 },
    #[error("event {index} ({event}): field {field} has unknown or unspecified value {value}")]
    BadEnum {
        index: u64,
        event: &'static str,
        field: &'static str,
        value: i32,
    },
}

pub fn encode(envelope: &pb::Envelope) -> Vec<u8> {
    envelope.encode_to_vec()
}

/// Decodes and checks one envelope.
pub fn decode(bytes: &[u8]) -> Result<pb::Envelope, DecodeError> {
    if bytes.len() > ENVELOPE_BYTES_MAX {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    let env = pb::Envelope::decode(bytes).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    check(&env)?;
    Ok(env)
}

/// The checks of [`decode`] on an envelope already in memory.
pub fn check(env: &pb::Envelope) -> Result<(), DecodeError> {
    let Some(payload) = env.payload.as_ref() else {
        return Err(DecodeError::UnknownEvent { index: env.index });
    };
    let event = event_name(payload);
    let bad = |field: &'static str, value: i32| DecodeError::BadEnum {
        index: env.index,
        event,
        field,
        value,
    };
    match payload {
        Payload::TaskStatusUpdated(e) => {
            match pb::TaskState::try_from(e.state) {
                Ok(pb::TaskState::Unspecified) | Err(_) => return Err(bad("state", e.state)),
                Ok(_) => {}
            }
            if pb::TaskReason::try_from(e.reason).is_err() {
                return Err(bad("reason", e.reason));
            }
            if pb::StatusSource::try_from(e.source).is_err() {
                return Err(bad("source", e.source));
            }
        }
        Payload::TaskKillRequested(e) => {
            if pb::TaskReason::try_from(e.reason).is_err() {
                return Err(bad("reason", e.reason));
            }
        }
        Payload::FrameworkSubscribed(e) => {
            for &c in &e.capabilities {
                if pb::FrameworkCapability::try_from(c).is_err() {
                    return Err(bad("capabilities", c));
                }
            }
        }
        Payload::FrameworkRemoved(e) => {
            if pb::FrameworkRemovalReason::try_from(e.reason).is_err() {
                return Err(bad("reason", e.reason));
            }
        }
        Payload::OffersRescinded(e) => {
            if pb::RescindReason::try_from(e.reason).is_err() {
                return Err(bad("reason", e.reason));
            }
        }
        Payload::MastersChangeRequested(e) => {
            if pb::MastersChange::try_from(e.change)
                .map_or(true, |c| c == pb::MastersChange::Unspecified)
            {
                return Err(bad("change", e.change));
            }
        }
        // Exhaustive on purpose: a new event must be looked at here.
        Payload::LeaderElected(_)
        | Payload::MastersChanged(_)
        | Payload::RoleWeightsSet(_)
        | Payload::AgentRegistered(_)
        | Payload::AgentReregistered(_)
        | Payload::AgentDisconnected(_)
        | Payload::AgentUnreachable(_)
        | Payload::AgentGone(_)
        | Payload::FrameworkDisconnected(_)
        | Payload::FrameworkSuppressed(_)
        | Payload::FrameworkRevived(_)
        | Payload::OffersMade(_)
        | Payload::OffersDeclined(_)
        | Payload::OffersAccepted(_)
        | Payload::DeclineFiltersExpired(_)
        | Payload::InverseOffersMade(_)
        | Payload::InverseOffersAnswered(_)
        | Payload::InverseOffersRescinded(_)
        | Payload::TaskLaunched(_)
        | Payload::TaskStatusAcknowledged(_)
        | Payload::MaintenanceScheduleUpdated(_)
        | Payload::HostDrainStarted(_)
        | Payload::HostDrained(_)
        | Payload::HostDown(_)
        | Payload::HostUp(_)
        | Payload::JobCreated(_)
        | Payload::JobUpdated(_)
        | Payload::JobKilled(_)
        | Payload::JobUpdateFinished(_) => {}
    }
    Ok(())
}

/// The event's name as `orrery replay` prints it and `--type` filters it.
pub fn event_name(payload: &Payload) -> &'static str {
    match payload {
        Payload::LeaderElected(_) => "LeaderElected",
        Payload::RoleWeightsSet(_) => "RoleWeightsSet",
        Payload::AgentRegistered(_) => "AgentRegistered",
        Payload::AgentReregistered(_) => "AgentReregistered",
        Payload::AgentDisconnected(_) => "AgentDisconnected",
        Payload::AgentUnreachable(_) => "AgentUnreachable",
        Payload::AgentGone(_) => "AgentGone",
        Payload::FrameworkSubscribed(_) => "FrameworkSubscribed",
        Payload::FrameworkDisconnected(_) => "FrameworkDisconnected",
        Payload::FrameworkRemoved(_) => "FrameworkRemoved",
        Payload::FrameworkSuppressed(_) => "FrameworkSuppressed",
        Payload::FrameworkRevived(_) => "FrameworkRevived",
        Payload::OffersMade(_) => "OffersMade",
        Payload::OffersRescinded(_) => "OffersRescinded",
        Payload::OffersDeclined(_) => "OffersDeclined",
        Payload::OffersAccepted(_) => "OffersAccepted",
        Payload::DeclineFiltersExpired(_) => "DeclineFiltersExpired",
        Payload::InverseOffersMade(_) => "InverseOffersMade",
        Payload::InverseOffersAnswered(_) => "InverseOffersAnswered",
        Payload::InverseOffersRescinded(_) => "InverseOffersRescinded",
        Payload::TaskLaunched(_) => "TaskLaunched",
        Payload::TaskStatusUpdated(_) => "TaskStatusUpdated",
        Payload::TaskStatusAcknowledged(_) => "TaskStatusAcknowledged",
        Payload::TaskKillRequested(_) => "TaskKillRequested",
        Payload::MaintenanceScheduleUpdated(_) => "MaintenanceScheduleUpdated",
        Payload::HostDrainStarted(_) => "HostDrainStarted",
        Payload::HostDrained(_) => "HostDrained",
        Payload::HostDown(_) => "HostDown",
        Payload::HostUp(_) => "HostUp",
        Payload::JobCreated(_) => "JobCreated",
        Payload::JobUpdated(_) => "JobUpdated",
        Payload::JobKilled(_) => "JobKilled",
        Payload::JobUpdateFinished(_) => "JobUpdateFinished",
        Payload::MastersChangeRequested(_) => "MastersChangeRequested",
        Payload::MastersChanged(_) => "MastersChanged",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_apply_must_not_see() {
        let no_payload = pb::Envelope {
            index: 7,
            ..Default::default()
        };
        assert_eq!(
            decode(&encode(&no_payload)),
            Err(DecodeError::UnknownEvent { index: 7 })
        );
        let bad_state = pb::Envelope {
            index: 1,
            term: 1,
            proposed_at_ms: 0,
            request_id: String::new(),
            principal: String::new(),
            idempotency_key: String::new(),
            payload: Some(Payload::TaskStatusUpdated(pb::TaskStatusUpdated {
                state: 999,
                ..Default::default()
            })),
        };
        assert!(matches!(
            decode(&encode(&bad_state)),
            Err(DecodeError::BadEnum { field: "state", .. })
        ));
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff]),
            Err(DecodeError::Protobuf(_))
        ));
    }
}
