//! Prefect's run states and the transitions the generator may take between them.
//!
//! The tables here are the specification the tests hold the generator to: every state event of a
//! run must be a transition listed for its kind of run, starting from "no state yet".

use serde::{Deserialize, Serialize};

/// A state's type, as in `prefect.state-type` and `validated_state.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StateType {
    Scheduled,
    Pending,
    Running,
    Completed,
    Failed,
    Crashed,
    Cancelled,
    Cancelling,
}

impl StateType {
    pub const ALL: [StateType; 8] = [
        StateType::Scheduled,
        StateType::Pending,
        StateType::Running,
        StateType::Completed,
        StateType::Failed,
        StateType::Crashed,
        StateType::Cancelled,
        StateType::Cancelling,
    ];
    /// The types that end a run.
    pub const TERMINAL: [StateType; 4] = [
        StateType::Completed,
        StateType::Failed,
        StateType::Crashed,
        StateType::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StateType::Scheduled => "SCHEDULED",
            StateType::Pending => "PENDING",
            StateType::Running => "RUNNING",
            StateType::Completed => "COMPLETED",
            StateType::Failed => "FAILED",
            StateType::Crashed => "CRASHED",
            StateType::Cancelled => "CANCELLED",
            StateType::Cancelling => "CANCELLING",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// `COMPLETED`, `FAILED`, `CRASHED` or `CANCELLED`.
    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// `FAILED` or `CRASHED`.
    pub fn is_failure(self) -> bool {
        matches!(self, StateType::Failed | StateType::Crashed)
    }

    /// Position in [`StateType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for StateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named state, as in the event name `prefect.flow-run.<State>` and `prefect.state-name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum State {
    Scheduled,
    Late,
    AwaitingRetry,
    Pending,
    Running,
    Retrying,
    Completed,
    Failed,
    Crashed,
    Cancelling,
    Cancelled,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Scheduled,
        State::Late,
        State::AwaitingRetry,
        State::Pending,
        State::Running,
        State::Retrying,
        State::Completed,
        State::Failed,
        State::Crashed,
        State::Cancelling,
        State::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Scheduled => "Scheduled",
            State::Late => "Late",
            State::AwaitingRetry => "AwaitingRetry",
            State::Pending => "Pending",
            State::Running => "Running",
            State::Retrying => "Retrying",
            State::Completed => "Completed",
            State::Failed => "Failed",
            State::Crashed => "Crashed",
            State::Cancelling => "Cancelling",
            State::Cancelled => "Cancelled",
        }
    }

    /// The state's type, as Prefect assigns it (`Late` and `AwaitingRetry` are `SCHEDULED`,
    /// `Retrying` is `RUNNING`).
    pub fn state_type(self) -> StateType {
        match self {
            State::Scheduled | State::Late | State::AwaitingRetry => StateType::Scheduled,
            State::Pending => StateType::Pending,
            State::Running | State::Retrying => StateType::Running,
            State::Completed => StateType::Completed,
            State::Failed => StateType::Failed,
            State::Crashed => StateType::Crashed,
            State::Cancelling => StateType::Cancelling,
            State::Cancelled => StateType::Cancelled,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn is_terminal(self) -> bool {
        self.state_type().is_terminal()
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Flow run or task run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunKind {
    FlowRun,
    TaskRun,
}

impl RunKind {
    /// `prefect.flow-run.` or `prefect.task-run.`: the prefix of both the resource id and the
    /// event name.
    pub fn prefix(self) -> &'static str {
        match self {
            RunKind::FlowRun => "prefect.flow-run.",
            RunKind::TaskRun => "prefect.task-run.",
        }
    }

    /// The transitions a run of this kind may take: `(from, to)`, `from` being `None` for the
    /// run's first state.
    pub fn transitions(self) -> &'static [(Option<State>, &'static [State])] {
        match self {
            RunKind::FlowRun => FLOW_RUN_TRANSITIONS,
            RunKind::TaskRun => TASK_RUN_TRANSITIONS,
        }
    }

    /// `prefect.flow-run.<State>` or `prefect.task-run.<State>`.
    pub fn event_name(self, state: State) -> &'static str {
        const FLOW: [&str; 11] = [
            "prefect.flow-run.Scheduled",
            "prefect.flow-run.Late",
            "prefect.flow-run.AwaitingRetry",
            "prefect.flow-run.Pending",
            "prefect.flow-run.Running",
            "prefect.flow-run.Retrying",
            "prefect.flow-run.Completed",
            "prefect.flow-run.Failed",
            "prefect.flow-run.Crashed",
            "prefect.flow-run.Cancelling",
            "prefect.flow-run.Cancelled",
        ];
        const TASK: [&str; 11] = [
            "prefect.task-run.Scheduled",
            "prefect.task-run.Late",
            "prefect.task-run.AwaitingRetry",
            "prefect.task-run.Pending",
            "prefect.task-run.Running",
            "prefect.task-run.Retrying",
            "prefect.task-run.Completed",
            "prefect.task-run.Failed",
            "prefect.task-run.Crashed",
            "prefect.task-run.Cancelling",
            "prefect.task-run.Cancelled",
        ];
        match self {
            RunKind::FlowRun => FLOW[state as usize],
            RunKind::TaskRun => TASK[state as usize],
        }
    }

    pub fn allows(self, from: Option<State>, to: State) -> bool {
        self.transitions()
            .iter()
            .any(|(f, tos)| *f == from && tos.contains(&to))
    }
}

/// Flow runs: deployments' runs start `Scheduled` (and may turn `Late` before a worker picks them
/// up), ad-hoc runs start `Pending`; a failed attempt with retries left goes `AwaitingRetry` then
/// `Retrying`; infrastructure can crash a run before it starts; cancellation of a running flow
/// goes through `Cancelling`.
pub const FLOW_RUN_TRANSITIONS: &[(Option<State>, &[State])] = {
    use State::*;
    &[
        (None, &[Scheduled, Pending]),
        (Some(Scheduled), &[Late, Pending, Cancelled]),
        (Some(Late), &[Pending, Cancelled]),
        (Some(Pending), &[Running, Crashed, Cancelled]),
        (
            Some(Running),
            &[Completed, Failed, Crashed, Cancelling, AwaitingRetry],
        ),
        (Some(AwaitingRetry), &[Retrying, Cancelled]),
        (
            Some(Retrying),
            &[Completed, Failed, Crashed, Cancelling, AwaitingRetry],
        ),
        (Some(Cancelling), &[Cancelled]),
    ]
};

/// Task runs: created `Pending`, retried through `AwaitingRetry` → `Retrying`; a crash of their
/// flow run crashes the running ones, a cancellation cancels every unfinished one.
pub const TASK_RUN_TRANSITIONS: &[(Option<State>, &[State])] = {
    use State::*;
    &[
        (None, &[Pending]),
        (Some(Pending), &[Running, Cancelled]),
        (
            Some(Running),
            &[Completed, Failed, Crashed, Cancelled, AwaitingRetry],
        ),
        (Some(AwaitingRetry), &[Retrying, Cancelled]),
        (
            Some(Retrying),
            &[Completed, Failed, Crashed, Cancelled, AwaitingRetry],
        ),
    ]
};

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    #[test]
    fn names_and_types_round_trip() {
        for state in State::ALL {
            assert_eq!(State::from_name(state.name()), Some(state));
        }
        for ty in StateType::ALL {
            assert_eq!(StateType::parse(ty.as_str()), Some(ty));
        }
        assert_eq!(Late.state_type(), StateType::Scheduled);
        for (i, ty) in StateType::ALL.into_iter().enumerate() {
            assert_eq!(ty.index(), i);
        }
        for (i, state) in State::ALL.into_iter().enumerate() {
            assert_eq!(state as usize, i);
            for kind in [RunKind::FlowRun, RunKind::TaskRun] {
                assert_eq!(
                    kind.event_name(state),
                    format!("{}{}", kind.prefix(), state.name())
                );
            }
        }
        assert_eq!(Retrying.state_type(), StateType::Running);
        assert_eq!(
            serde_json::to_string(&StateType::Cancelled).unwrap(),
            "\"CANCELLED\""
        );
    }

    #[test]
    fn terminal_states_lead_nowhere() {
        for kind in [RunKind::FlowRun, RunKind::TaskRun] {
            for (from, tos) in kind.transitions() {
                assert!(!from.is_some_and(State::is_terminal), "{from:?}");
                assert!(!tos.is_empty());
            }
            assert!(!kind.allows(Some(Completed), Running));
            assert!(!kind.allows(None, Running));
        }
        assert!(RunKind::FlowRun.allows(Some(Scheduled), Late));
        assert!(!RunKind::TaskRun.allows(Some(Pending), Late));
    }
}
