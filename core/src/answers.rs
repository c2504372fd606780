//! Typed answers: each command has its own answer type.
//!
//! [`Response`] stays the replicated wire form (it is persisted in the log, see
//! [`crate::types`]). The edges do not match it: they build a command through one of
//! the constructors below, which pairs it with its answer type ([`Proposal<A>`]), and
//! get back an `A` — or an [`UnexpectedAnswer`], which names the command and what the
//! state machine said instead. The pairing of a command with its answer lives here
//! only, next to the state machine that produces it.

use std::marker::PhantomData;

use crate::types::{
    Command, Delivery, GrantRequest, IngestResult, LeaseGrant, PackedDelivery, QueuePolicy,
    RecoveryCheckpoint, Response, TargetLimits,
};

/// The state machine answered a command with a [`Response`] its answer type does not
/// allow: a bug in the state machine or a node running another release.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the state machine answered {command} with {answer:?}; all members must run the same aof-cluster release — check `aofctl cluster status` and report a bug if they do")]
pub struct UnexpectedAnswer {
    pub command: &'static str,
    pub answer: Response,
}

/// An answer type: what one command's [`Response`] may be.
pub trait Answer: Sized {
    fn from_response(command: &'static str, r: Response) -> Result<Self, UnexpectedAnswer>;
}

/// A command paired with its answer type `A`. Built only by the constructors of this
/// module, so the pairing cannot be got wrong at a call site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal<A> {
    cmd: Command,
    _answer: PhantomData<fn() -> A>,
}

impl<A: Answer> Proposal<A> {
    fn new(cmd: Command) -> Self {
        Proposal {
            cmd,
            _answer: PhantomData,
        }
    }

    pub fn command(&self) -> &Command {
        &self.cmd
    }

    pub fn into_command(self) -> Command {
        self.cmd
    }

    /// Read this command's answer out of the state machine's response.
    pub fn answer(kind: &'static str, r: Response) -> Result<A, UnexpectedAnswer> {
        A::from_response(kind, r)
    }
}

/// `PutTrigger`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerPut {
    Put {
        name: String,
        revision: u64,
        created: bool,
        unchanged: bool,
    },
    /// Compare-and-set failed; nothing changed.
    RevisionMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
}

/// `DeleteTrigger`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerDelete {
    Deleted {
        name: String,
        revision: u64,
    },
    NotFound {
        name: String,
    },
    RevisionMismatch {
        name: String,
        expected: u64,
        actual: u64,
    },
}

/// `Tick`: what housekeeping did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticked {
    pub expired_events: u64,
    pub expired_leases: u64,
    pub released: u64,
}

/// Why a lease operation (`Extend`, `Complete`, `Fail`) changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseRefused {
    /// The fencing token does not name the job's current lease.
    StaleToken {
        job_id: String,
        reason: String,
    },
    JobNotFound {
        job_id: String,
    },
}

/// `Extend` accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extended {
    pub deadline_ms: u64,
}

/// `Complete` accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed;

/// `Fail` accepted: retried at `ready_at_ms`, or dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed {
    pub dead: bool,
    pub ready_at_ms: u64,
}

/// `Redrive` / `Purge` named a job that is not in the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotInDlq {
    pub job_id: String,
}

/// `Redrive`: the jobs moved back to the ready queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redriven {
    pub jobs: Vec<String>,
}

/// `Purge`: the jobs dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purged {
    pub jobs: Vec<String>,
}

/// `RecoveryCheckpoint`: `advanced` is false when the stored checkpoint was already at
/// or past the proposed one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpointed {
    pub source: String,
    pub advanced: bool,
}

/// `CancelJob`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// The job is now cancelled; `was` is the state it left.
    Cancelled {
        job_id: String,
        was: String,
    },
    /// The job had already finished; nothing changed.
    NotCancellable {
        job_id: String,
        state: String,
    },
    JobNotFound {
        job_id: String,
    },
}

/// `RerunEvent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rerun {
    Rerun { event_id: u64, jobs: Vec<String> },
    Refused { event_id: u64, reason: String },
    EventNotFound { event_id: u64 },
}

/// `SetTargetLimits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitsSet {
    Set {
        target: String,
        limits: TargetLimits,
    },
    Refused {
        reason: String,
    },
}

/// Implement [`Answer`] for `$ty` from the listed `Response` patterns.
macro_rules! answer {
    ($ty:ty { $($pat:pat => $val:expr),+ $(,)? }) => {
        impl Answer for $ty {
            fn from_response(command: &'static str, r: Response) -> Result<Self, UnexpectedAnswer> {
                match r {
                    $($pat => Ok($val),)+
                    answer => Err(UnexpectedAnswer { command, answer }),
                }
            }
        }
    };
}

answer!(TriggerPut {
    Response::TriggerPut { name, revision, created, unchanged } => TriggerPut::Put { name, revision, created, unchanged },
    Response::RevisionMismatch { name, expected, actual } => TriggerPut::RevisionMismatch { name, expected, actual },
});
answer!(TriggerDelete {
    Response::TriggerDeleted { name, revision } => TriggerDelete::Deleted { name, revision },
    Response::NotFound { name } => TriggerDelete::NotFound { name },
    Response::RevisionMismatch { name, expected, actual } => TriggerDelete::RevisionMismatch { name, expected, actual },
});
answer!(IngestResult { Response::Ingested(r) => r });
answer!(Ticked {
    Response::Ticked { expired_events, expired_leases, released } => Ticked { expired_events, expired_leases, released },
});
answer!(Vec<LeaseGrant> { Response::Granted(leases) => leases });
answer!(Result<Extended, LeaseRefused> {
    Response::Extended { deadline_ms } => Ok(Extended { deadline_ms }),
    Response::StaleToken { job_id, reason } => Err(LeaseRefused::StaleToken { job_id, reason }),
    Response::JobNotFound { job_id } => Err(LeaseRefused::JobNotFound { job_id }),
});
answer!(Result<Completed, LeaseRefused> {
    Response::Completed => Ok(Completed),
    Response::StaleToken { job_id, reason } => Err(LeaseRefused::StaleToken { job_id, reason }),
    Response::JobNotFound { job_id } => Err(LeaseRefused::JobNotFound { job_id }),
});
answer!(Result<Failed, LeaseRefused> {
    Response::Failed { dead, ready_at_ms } => Ok(Failed { dead, ready_at_ms }),
    Response::StaleToken { job_id, reason } => Err(LeaseRefused::StaleToken { job_id, reason }),
    Response::JobNotFound { job_id } => Err(LeaseRefused::JobNotFound { job_id }),
});
answer!(Result<Redriven, NotInDlq> {
    Response::Redriven { jobs } => Ok(Redriven { jobs }),
    Response::JobNotFound { job_id } => Err(NotInDlq { job_id }),
});
answer!(Result<Purged, NotInDlq> {
    Response::Purged { jobs } => Ok(Purged { jobs }),
    Response::JobNotFound { job_id } => Err(NotInDlq { job_id }),
});
answer!(Checkpointed {
    Response::RecoveryCheckpointed { source, advanced } => Checkpointed { source, advanced },
});
answer!(Cancel {
    Response::JobCancelled { job_id, was } => Cancel::Cancelled { job_id, was },
    Response::NotCancellable { job_id, state } => Cancel::NotCancellable { job_id, state },
    Response::JobNotFound { job_id } => Cancel::JobNotFound { job_id },
});
answer!(Rerun {
    Response::Rerun { event_id, jobs } => Rerun::Rerun { event_id, jobs },
    Response::RerunRefused { event_id, reason } => Rerun::Refused { event_id, reason },
    Response::EventNotFound { event_id } => Rerun::EventNotFound { event_id },
});
answer!(LimitsSet {
    Response::TargetLimitsSet { target, limits } => LimitsSet::Set { target, limits },
    Response::Refused { reason } => LimitsSet::Refused { reason },
});

/// The typed constructors: one per command an edge proposes. (`Batch` is formed by
/// the leader's proposer only and answered per command.)
impl Command {
    pub fn put_trigger(
        name: String,
        doc_json: String,
        if_match: Option<u64>,
    ) -> Proposal<TriggerPut> {
        Proposal::new(Command::PutTrigger {
            name,
            doc_json,
            if_match,
        })
    }
    pub fn delete_trigger(name: String, if_match: Option<u64>) -> Proposal<TriggerDelete> {
        Proposal::new(Command::DeleteTrigger { name, if_match })
    }
    /// Packs the payload (LZ4 when that pays, `sm::payload`): call it on the node that
    /// received the delivery, so the forward hop and the log carry the packed bytes.
    pub fn ingest(d: Delivery) -> Proposal<IngestResult> {
        Self::ingest_with(d, crate::sm::payload::Compression::Lz4)
    }
    /// [`Command::ingest`] with the payload compressed as `compression` says.
    pub fn ingest_with(d: Delivery, compression: crate::sm::payload::Compression) -> Proposal<IngestResult> {
        Proposal::new(Command::IngestPacked(Box::new(PackedDelivery::packed(d, compression))))
    }
    pub fn tick(policy: QueuePolicy) -> Proposal<Ticked> {
        Proposal::new(Command::Tick { policy })
    }
    pub fn grant(g: GrantRequest) -> Proposal<Vec<LeaseGrant>> {
        Proposal::new(Command::Grant(g))
    }
    pub fn extend(
        job_id: String,
        token: u64,
        extend_ms: u64,
    ) -> Proposal<Result<Extended, LeaseRefused>> {
        Proposal::new(Command::Extend {
            job_id,
            token,
            extend_ms,
        })
    }
    pub fn complete(
        job_id: String,
        token: u64,
        result: String,
    ) -> Proposal<Result<Completed, LeaseRefused>> {
        Proposal::new(Command::Complete {
            job_id,
            token,
            result,
        })
    }
    pub fn fail(f: FailArgs) -> Proposal<Result<Failed, LeaseRefused>> {
        let FailArgs {
            job_id,
            token,
            error,
            retryable,
            delay_ms,
            policy,
        } = f;
        Proposal::new(Command::Fail {
            job_id,
            token,
            error,
            retryable,
            delay_ms,
            policy,
        })
    }
    pub fn redrive(job_id: Option<String>) -> Proposal<Result<Redriven, NotInDlq>> {
        Proposal::new(Command::Redrive { job_id })
    }
    pub fn purge(job_id: Option<String>) -> Proposal<Result<Purged, NotInDlq>> {
        Proposal::new(Command::Purge { job_id })
    }
    pub fn recovery_checkpoint(c: RecoveryCheckpoint) -> Proposal<Checkpointed> {
        Proposal::new(Command::RecoveryCheckpoint(c))
    }
    pub fn cancel_job(job_id: String, by: String, reason: String) -> Proposal<Cancel> {
        Proposal::new(Command::CancelJob { job_id, by, reason })
    }
    pub fn rerun_event(event_id: u64, by: String) -> Proposal<Rerun> {
        Proposal::new(Command::RerunEvent { event_id, by })
    }
    pub fn set_target_limits(target: String, limits: TargetLimits) -> Proposal<LimitsSet> {
        Proposal::new(Command::SetTargetLimits { target, limits })
    }
}

/// The fields of a `Fail` command, named (six positional arguments would be easy to
/// swap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailArgs {
    pub job_id: String,
    pub token: u64,
    pub error: String,
    pub retryable: bool,
    pub delay_ms: u64,
    pub policy: QueuePolicy,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sm::{apply, MemKv, Overlay};
    use crate::types::Request;

    /// Run a typed proposal through the real state machine and read its answer.
    fn run<A: Answer>(kv: &mut MemKv, index: u64, p: Proposal<A>) -> Result<A, UnexpectedAnswer> {
        let cmd = p.into_command();
        let kind = cmd.kind();
        let mut o = Overlay::new(kv);
        let resp = apply(
            &mut o,
            index,
            &Request {
                time_ms: 1_000,
                cmd,
            },
            Default::default(),
        );
        let w = o.into_writes();
        kv.commit(w);
        Proposal::<A>::answer(kind, resp)
    }

    #[test]
    fn each_command_reads_its_own_answer_from_the_state_machine() {
        let mut kv = MemKv::default();
        let doc = crate::registry::canonical_trigger("t", b"apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {name: t}\nspec:\n  type: GitHub\n  config: {}\n  default_agent: worker\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            run(
                &mut kv,
                5,
                Command::put_trigger("t".into(), doc.clone(), Some(0))
            )
            .unwrap(),
            TriggerPut::Put {
                name: "t".into(),
                revision: 5,
                created: true,
                unchanged: false
            }
        );
        assert_eq!(
            run(&mut kv, 6, Command::put_trigger("t".into(), doc, Some(1))).unwrap(),
            TriggerPut::RevisionMismatch {
                name: "t".into(),
                expected: 1,
                actual: 5
            }
        );
        assert_eq!(
            run(&mut kv, 7, Command::extend("nope".into(), 1, 10)).unwrap(),
            Err(LeaseRefused::JobNotFound {
                job_id: "nope".into()
            })
        );
        assert_eq!(
            run(&mut kv, 8, Command::purge(Some("nope".into()))).unwrap(),
            Err(NotInDlq {
                job_id: "nope".into()
            })
        );
        assert_eq!(
            run(&mut kv, 9, Command::tick(QueuePolicy::default()))
                .unwrap()
                .expired_leases,
            0
        );
        assert_eq!(
            run(&mut kv, 10, Command::delete_trigger("t".into(), None)).unwrap(),
            TriggerDelete::Deleted {
                name: "t".into(),
                revision: 10
            }
        );
        assert_eq!(
            run(&mut kv, 11, Command::rerun_event(42, "me".into())).unwrap(),
            Rerun::EventNotFound { event_id: 42 }
        );
    }

    #[test]
    fn an_answer_of_another_command_is_an_error_naming_both() {
        let e = Proposal::<TriggerPut>::answer("put_trigger", Response::Completed).unwrap_err();
        assert_eq!(
            e,
            UnexpectedAnswer {
                command: "put_trigger",
                answer: Response::Completed
            }
        );
        assert!(
            e.to_string().contains("put_trigger") && e.to_string().contains("Completed"),
            "{e}"
        );
        assert!(Proposal::<Vec<LeaseGrant>>::answer(
            "grant",
            Response::Extended { deadline_ms: 1 }
        )
        .is_err());
        // A lease refusal is an answer, not an error.
        assert_eq!(
            Proposal::<Result<Completed, LeaseRefused>>::answer(
                "complete",
                Response::StaleToken {
                    job_id: "j".into(),
                    reason: "r".into()
                }
            ),
            Ok(Err(LeaseRefused::StaleToken {
                job_id: "j".into(),
                reason: "r".into()
            }))
        );
    }
}
