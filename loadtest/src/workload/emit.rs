//! Turning planned steps into Prefect events and log lines, with the shared wire types.

use chrono::SecondsFormat;
use flowhouse_schema::event::{Event, Payload, RESOURCE_ID, RESOURCE_NAME, RESOURCE_ROLE};
use flowhouse_schema::log::Log;
use flowhouse_schema::text::{CowStr, Labels};
use serde::Serialize;

use super::catalog::TenantCatalog;
use super::plan::{LogText, RunCtx, Target, What, render_template};
use super::states::{RunKind, State};
use crate::truth::micros_to_time;

fn labels(pairs: impl IntoIterator<Item = (&'static str, String)>) -> Labels<'static> {
    pairs
        .into_iter()
        .map(|(key, value)| (CowStr::from(key), CowStr::owned(value)))
        .collect()
}

/// The related resources of a run's events: for its flow-run events (flow, deployment, work
/// queue, work pool, tags, creator — Prefect's order), and for its task-run events (the flow run
/// first, then the same without the creator).
pub(crate) fn related(
    catalog: &TenantCatalog,
    ctx: &RunCtx,
) -> (Vec<Labels<'static>>, Vec<Labels<'static>>) {
    let flow = &catalog.flows[usize::from(ctx.flow)].entity;
    let mut common = vec![labels([
        (RESOURCE_ID, format!("prefect.flow.{}", flow.id)),
        (RESOURCE_ROLE, "flow".into()),
        (RESOURCE_NAME, flow.name.clone()),
    ])];
    let mut creator = None;
    if let Some(d) = ctx.deployment {
        let deployment = &catalog.deployments[usize::from(d)];
        let pool = &catalog.work_pools[usize::from(deployment.work_pool)];
        common.push(labels([
            (
                RESOURCE_ID,
                format!("prefect.deployment.{}", deployment.entity.id),
            ),
            (RESOURCE_ROLE, "deployment".into()),
            (RESOURCE_NAME, deployment.entity.name.clone()),
        ]));
        common.push(labels([
            (RESOURCE_ID, format!("prefect.work-queue.{}", pool.queue.id)),
            (RESOURCE_ROLE, "work-queue".into()),
            (RESOURCE_NAME, pool.queue.name.clone()),
        ]));
        common.push(labels([
            (RESOURCE_ID, format!("prefect.work-pool.{}", pool.entity.id)),
            (RESOURCE_ROLE, "work-pool".into()),
            (RESOURCE_NAME, pool.entity.name.clone()),
            ("prefect.work-pool.type", pool.kind.into()),
        ]));
        creator = Some(labels([
            (
                RESOURCE_ID,
                format!("prefect.deployment.{}", deployment.entity.id),
            ),
            (RESOURCE_ROLE, "creator".into()),
            (RESOURCE_NAME, deployment.entity.name.clone()),
        ]));
    }
    for &tag in &ctx.tags {
        common.push(labels([
            (
                RESOURCE_ID,
                format!("prefect.tag.{}", catalog.tags[usize::from(tag)]),
            ),
            (RESOURCE_ROLE, "tag".into()),
        ]));
    }
    let mut task = Vec::with_capacity(common.len() + 1);
    task.push(labels([
        (RESOURCE_ID, format!("prefect.flow-run.{}", ctx.id)),
        (RESOURCE_ROLE, "flow-run".into()),
        (RESOURCE_NAME, ctx.name.clone()),
    ]));
    task.extend(common.iter().cloned());
    common.extend(creator);
    (common, task)
}

#[derive(Serialize)]
struct StatePayload<'a> {
    intended: Intended<'a>,
    initial_state: Option<StateRef<'a>>,
    validated_state: ValidatedState<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_run: Option<TaskRunPayload<'a>>,
}

#[derive(Serialize)]
struct Intended<'a> {
    from: Option<&'a str>,
    to: &'a str,
}

#[derive(Serialize)]
struct StateRef<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct ValidatedState<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    state_details: StateDetails,
}

#[derive(Serialize)]
struct StateDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_time: Option<String>,
}

#[derive(Serialize)]
struct TaskRunPayload<'a> {
    name: &'a str,
    task_key: &'a str,
    dynamic_key: String,
    run_count: u16,
}

fn state_message(kind: RunKind, state: State) -> &'static str {
    match (kind, state) {
        (RunKind::FlowRun, State::Completed) => "All states completed.",
        (RunKind::FlowRun, State::Failed) => {
            "Flow run encountered an exception: ValueError: upstream data is incomplete"
        }
        (RunKind::FlowRun, State::Crashed) => {
            "Flow run infrastructure exited with non-zero status code 137."
        }
        (RunKind::FlowRun, State::Cancelling) => "Cancellation requested by a user.",
        (RunKind::FlowRun, State::Cancelled) => "Flow run was cancelled.",
        (RunKind::TaskRun, State::Failed) => {
            "Task run encountered an exception ValueError: upstream data is incomplete"
        }
        (RunKind::TaskRun, State::Crashed) => {
            "Execution was interrupted by an unexpected exception: TerminationSignal"
        }
        (RunKind::TaskRun, State::Cancelled) => "The parent flow run was cancelled.",
        (_, State::AwaitingRetry) => "Retrying after a failure.",
        _ => "",
    }
}

fn rfc3339(at_us: i64) -> String {
    micros_to_time(at_us).to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// The event of a state step.
pub(crate) fn state_event(
    ctx: &RunCtx,
    flow_related: &[Labels<'static>],
    task_related: &[Labels<'static>],
    at: i64,
    what: &What,
) -> Option<Event<'static>> {
    let What::State {
        target,
        state,
        from,
        scheduled,
        run_count,
        id,
        follows,
    } = what
    else {
        return None;
    };
    let (kind, resource_id, name, related, task) = match target {
        Target::Flow => (
            RunKind::FlowRun,
            format!("prefect.flow-run.{}", ctx.id),
            &ctx.name,
            flow_related,
            None,
        ),
        Target::Task(i) => {
            let task = &ctx.tasks[usize::from(*i)];
            (
                RunKind::TaskRun,
                format!("prefect.task-run.{}", task.id),
                &task.name,
                task_related,
                Some(task),
            )
        }
    };
    let ty = state.state_type().as_str();
    let message = state_message(kind, *state);
    let mut resource = labels([
        (RESOURCE_ID, resource_id),
        (RESOURCE_NAME, name.clone()),
        ("prefect.run-count", run_count.to_string()),
        ("prefect.state-name", state.name().into()),
        ("prefect.state-timestamp", rfc3339(at)),
        ("prefect.state-type", ty.into()),
    ]);
    if !message.is_empty() {
        resource.insert(CowStr::from("prefect.state-message"), CowStr::from(message));
    }
    if task.is_some() {
        resource.insert(
            CowStr::from("prefect.orchestration"),
            CowStr::from("client"),
        );
    }
    let payload = StatePayload {
        intended: Intended {
            from: from.map(|s| s.state_type().as_str()),
            to: ty,
        },
        initial_state: from.map(|s| StateRef {
            ty: s.state_type().as_str(),
            name: s.name(),
        }),
        validated_state: ValidatedState {
            ty,
            name: state.name(),
            message,
            state_details: StateDetails {
                scheduled_time: scheduled.map(rfc3339),
            },
        },
        task_run: task.map(|task| TaskRunPayload {
            name: &task.name,
            task_key: task.task_key,
            dynamic_key: task.name.rsplit('-').next().unwrap_or_default().to_string(),
            run_count: *run_count,
        }),
    };
    let payload = serde_json::to_string(&payload).expect("a state payload serializes");
    Some(Event {
        id: *id,
        occurred: micros_to_time(at),
        event: CowStr::from(kind.event_name(*state)),
        resource,
        related: related.to_vec(),
        payload: Payload(CowStr::owned(payload)),
        follows: *follows,
    })
}

/// The log line of a log step.
pub(crate) fn log_line(
    catalog: &TenantCatalog,
    ctx: &RunCtx,
    at: i64,
    what: &What,
) -> Option<Log<'static>> {
    let What::Log {
        target,
        level,
        text,
    } = what
    else {
        return None;
    };
    let flow = &catalog.flows[usize::from(ctx.flow)].entity.name;
    let task = match target {
        Target::Flow => None,
        Target::Task(i) => Some(&ctx.tasks[usize::from(*i)]),
    };
    let message = match *text {
        LogText::BeginFlow => format!("Beginning flow run '{}' for flow '{flow}'", ctx.name),
        LogText::FinishedFlow(state) => match state {
            State::Completed => "Finished in state Completed()".to_string(),
            other => format!(
                "Finished in state {}('{}')",
                other.name(),
                state_message(RunKind::FlowRun, other)
            ),
        },
        LogText::FlowWillRetry => {
            "Encountered exception during execution: ValueError: upstream data is incomplete. \
             Received non-final state 'AwaitingRetry' when proposing final state 'Failed' and \
             will attempt to run again..."
                .to_string()
        }
        LogText::CrashDetected => {
            "Crash detected! Execution was interrupted by an unexpected exception.".to_string()
        }
        LogText::InfrastructureCrash => format!(
            "Reported flow run '{}' as crashed: Flow run infrastructure exited with non-zero \
             status code 1.",
            ctx.id
        ),
        LogText::CancelRequested => {
            "Received cancellation request; stopping the flow run's infrastructure.".to_string()
        }
        LogText::TaskFinished(state) => match state {
            State::Completed => "Finished in state Completed()".to_string(),
            other => format!(
                "Finished in state {}('{}')",
                other.name(),
                state_message(RunKind::TaskRun, other)
            ),
        },
        LogText::TaskWillRetry {
            attempt,
            delay_secs,
        } => format!(
            "Task run failed with exception: TimeoutError('request timed out') - Retry \
             {attempt} will start {delay_secs} second(s) from now"
        ),
        LogText::TaskException => "Task run failed with exception: ValueError('upstream data \
                                   is incomplete') - Retries are exhausted"
            .to_string(),
        LogText::Template(template, argument) => render_template(template, *level, argument),
    };
    Some(Log {
        id: None,
        name: CowStr::from(if task.is_some() {
            "prefect.task_runs"
        } else {
            "prefect.flow_runs"
        }),
        level: i64::from(*level),
        message: CowStr::owned(message),
        timestamp: micros_to_time(at),
        flow_run_id: Some(ctx.id),
        task_run_id: task.map(|t| t.id),
        worker_id: None,
    })
}
