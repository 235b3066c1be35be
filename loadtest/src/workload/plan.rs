//! One flow run, planned from its own random stream: its timeline of state changes, its task
//! runs (with retries), and its log lines, as compact steps that become events only when the
//! stream reaches them.

use uuid::Uuid;

use super::catalog::{Flow, TenantCatalog};
use super::config::WorkloadConfig;
use super::names;
use super::random::{self, Rng, chance, log_uniform, uniform};
use super::states::State;

pub(crate) const MS: i64 = 1_000;
pub(crate) const SEC: i64 = 1_000_000;
pub(crate) const MIN: i64 = 60 * SEC;
/// Prefect links a state event to the previous one (`follows`) only when they are this close.
const TIGHT_TIMING: i64 = 5 * MIN;

pub(crate) const DEBUG: u8 = 10;
pub(crate) const INFO: u8 = 20;
pub(crate) const WARNING: u8 = 30;
pub(crate) const ERROR: u8 = 40;

#[derive(Clone, Debug)]
pub(crate) struct TaskCtx {
    pub id: Uuid,
    pub name: String,
    pub task_key: &'static str,
}

/// What every message of a run shares.
#[derive(Clone, Debug)]
pub(crate) struct RunCtx {
    pub tenant: u32,
    pub flow: u16,
    pub deployment: Option<u16>,
    /// Indexes into the tenant's tags (sorted by name, like the tags themselves).
    pub tags: Vec<u16>,
    pub id: Uuid,
    pub name: String,
    pub tasks: Vec<TaskCtx>,
}

/// The run a step belongs to: the flow run, or one of its task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Flow,
    Task(u16),
}

/// Log lines, rendered only when emitted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LogText {
    BeginFlow,
    FinishedFlow(State),
    FlowWillRetry,
    CrashDetected,
    InfrastructureCrash,
    CancelRequested,
    TaskFinished(State),
    TaskWillRetry {
        attempt: u16,
        delay_secs: u16,
    },
    TaskException,
    /// One of the user-code templates, with an argument.
    Template(u8, u32),
}

#[derive(Clone, Debug)]
pub(crate) enum What {
    State {
        target: Target,
        state: State,
        from: Option<State>,
        /// `state_details.scheduled_time`, on SCHEDULED-type states.
        scheduled: Option<i64>,
        run_count: u16,
        id: Uuid,
        follows: Option<Uuid>,
    },
    Log {
        target: Target,
        level: u8,
        text: LogText,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Step {
    /// Microseconds since the epoch.
    pub at: i64,
    pub seq: u32,
    pub what: What,
}

pub(crate) struct PlannedRun {
    pub ctx: RunCtx,
    /// Sorted by time; only the steps before the workload's end.
    pub steps: Vec<Step>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
    Failed,
    Crashed,
    Cancelled,
}

#[derive(Default)]
struct Chain {
    last: Option<(State, i64, Uuid)>,
    run_count: u16,
}

struct Planner<'a> {
    config: &'a WorkloadConfig,
    rng: &'a mut Rng,
    level_weights: [f64; 5],
    steps: Vec<Step>,
    flow: Chain,
    tasks: Vec<Chain>,
}

impl Planner<'_> {
    /// Adds a state change; returns its time, moved 1 ms after the previous state of the same
    /// run if needed (a run's states are strictly ordered in time).
    fn state(&mut self, target: Target, state: State, at: i64, scheduled: Option<i64>) -> i64 {
        let chain = match target {
            Target::Flow => &mut self.flow,
            Target::Task(i) => &mut self.tasks[usize::from(i)],
        };
        let at = match chain.last {
            Some((_, previous, _)) => at.max(previous + MS),
            None => at,
        };
        if matches!(state, State::Running | State::Retrying) {
            chain.run_count += 1;
        }
        let id = random::uuid7(self.rng, at);
        let follows = chain
            .last
            .filter(|(_, previous, _)| at - previous < TIGHT_TIMING)
            .map(|(_, _, id)| id);
        let from = chain.last.map(|(state, _, _)| state);
        chain.last = Some((state, at, id));
        let run_count = chain.run_count;
        let seq = self.steps.len() as u32;
        self.steps.push(Step {
            at,
            seq,
            what: What::State {
                target,
                state,
                from,
                scheduled,
                run_count,
                id,
                follows,
            },
        });
        at
    }

    fn log(&mut self, target: Target, level: u8, text: LogText, at: i64) {
        let seq = self.steps.len() as u32;
        self.steps.push(Step {
            at,
            seq,
            what: What::Log {
                target,
                level,
                text,
            },
        });
    }

    fn last_state(&self, target: Target) -> Option<State> {
        let chain = match target {
            Target::Flow => &self.flow,
            Target::Task(i) => &self.tasks[usize::from(i)],
        };
        chain.last.map(|(state, _, _)| state)
    }

    /// User-code log lines of a task between `from` and `until`.
    fn task_logs(&mut self, task: u16, from: i64, until: i64) {
        if until <= from {
            return;
        }
        let count = uniform(
            self.rng,
            self.config.min_logs_per_task.into(),
            self.config.max_logs_per_task.into(),
        );
        for _ in 0..count {
            let at = uniform(self.rng, from, until - 1);
            let level = [10, 20, 30, 40, 50][random::weighted(self.rng, &self.level_weights)];
            let template = uniform(self.rng, 0, 1) as u8;
            let argument = uniform(self.rng, 1, 100_000) as u32;
            self.log(
                Target::Task(task),
                level,
                LogText::Template(template, argument),
                at,
            );
        }
    }

    fn new_task(&mut self, ctx: &mut RunCtx, flow: &Flow) -> u16 {
        let index = ctx.tasks.len() as u16;
        let task_key = flow.task_names[usize::from(index) % flow.task_names.len()];
        let suffix = uniform(self.rng, 0, 0xfff);
        ctx.tasks.push(TaskCtx {
            id: random::uuid4(self.rng),
            name: format!("{task_key}-{suffix:03x}"),
            task_key,
        });
        self.tasks.push(Chain::default());
        index
    }

    /// One attempt of the flow's code: its task runs, from `start`. Returns when the attempt
    /// ends (the time of the crash or of the cancellation request for those outcomes) and, for a
    /// cancellation, when the last task run was cancelled.
    fn attempt(
        &mut self,
        ctx: &mut RunCtx,
        flow: &Flow,
        tasks: u32,
        start: i64,
        outcome: Outcome,
    ) -> (i64, i64) {
        struct TaskPlan {
            pending: i64,
            segments: Vec<(i64, i64)>,
            retry_at: Vec<i64>,
            end: i64,
        }
        let lanes = flow.concurrency.clamp(1, tasks) as usize;
        let mut free = vec![start + uniform(self.rng, 50 * MS, 500 * MS); lanes];
        let mut plans = Vec::with_capacity(tasks as usize);
        for _ in 0..tasks {
            let lane = (0..lanes).min_by_key(|&l| free[l]).unwrap_or(0);
            let pending = free[lane] + uniform(self.rng, MS, 200 * MS);
            let mut run_start = pending + uniform(self.rng, 5 * MS, 150 * MS);
            let retries = if chance(self.rng, self.config.task_retry_rate) {
                uniform(self.rng, 1, 2)
            } else {
                0
            };
            let mut segments = Vec::new();
            let mut retry_at = Vec::new();
            for r in 0..=retries {
                let typical = flow.task_duration_us;
                let duration = log_uniform(self.rng, typical / 3, typical * 3).max(20 * MS);
                segments.push((run_start, run_start + duration));
                if r < retries {
                    let scheduled = run_start + duration + uniform(self.rng, SEC, 10 * SEC);
                    retry_at.push(scheduled);
                    run_start = scheduled + uniform(self.rng, 5 * MS, 100 * MS);
                }
            }
            let end = segments.last().map_or(run_start, |s| s.1);
            free[lane] = end;
            plans.push(TaskPlan {
                pending,
                segments,
                retry_at,
                end,
            });
        }

        let victim = uniform(self.rng, 0, i64::from(tasks) - 1) as usize;
        let cut = match outcome {
            Outcome::Completed => None,
            Outcome::Failed => Some(plans[victim].end),
            Outcome::Crashed | Outcome::Cancelled => {
                let (a, b) = *plans[victim]
                    .segments
                    .last()
                    .unwrap_or(&(start, start + MS));
                Some(a + (((b - a) as f64) * (0.1 + 0.8 * unit(self.rng))) as i64 + 1)
            }
        };
        // A crash or a cancellation stops the task runs in progress; a failure lets them end.
        let limit = match outcome {
            Outcome::Crashed | Outcome::Cancelled => cut.unwrap_or(i64::MAX),
            _ => i64::MAX,
        };
        let graceful_crash = chance(self.rng, 0.5);
        let mut last_end = start;
        let mut last_cancel = limit;
        for (i, plan) in plans.iter().enumerate() {
            if cut.is_some_and(|cut| plan.pending >= cut) {
                continue; // never submitted
            }
            let task = self.new_task(ctx, flow);
            let target = Target::Task(task);
            let fails = i == victim && outcome == Outcome::Failed;
            self.state(target, State::Pending, plan.pending, None);
            let segments = plan.segments.len();
            for (k, &(a, b)) in plan.segments.iter().enumerate() {
                if a >= limit {
                    break;
                }
                let running = if k == 0 {
                    State::Running
                } else {
                    State::Retrying
                };
                let a = self.state(target, running, a, None);
                self.task_logs(task, a, b.min(limit));
                if b >= limit {
                    break;
                }
                if k + 1 < segments {
                    let delay_secs = ((plan.retry_at[k] - b) / SEC) as u16;
                    self.log(
                        target,
                        WARNING,
                        LogText::TaskWillRetry {
                            attempt: k as u16 + 1,
                            delay_secs,
                        },
                        b,
                    );
                    self.state(target, State::AwaitingRetry, b, Some(plan.retry_at[k]));
                } else {
                    if fails {
                        self.log(target, ERROR, LogText::TaskException, b);
                    }
                    let state = if fails {
                        State::Failed
                    } else {
                        State::Completed
                    };
                    let at = self.state(target, state, b, None);
                    let level = if fails { ERROR } else { INFO };
                    self.log(target, level, LogText::TaskFinished(state), at + 100);
                    last_end = last_end.max(at);
                }
            }
            // In progress at a crash or a cancellation.
            let last = self.last_state(target);
            if limit < i64::MAX && !last.is_some_and(State::is_terminal) {
                match outcome {
                    Outcome::Crashed
                        if graceful_crash
                            && matches!(last, Some(State::Running | State::Retrying)) =>
                    {
                        let at = limit + uniform(self.rng, MS, 500 * MS);
                        self.state(target, State::Crashed, at, None);
                    }
                    Outcome::Cancelled => {
                        let at = limit + uniform(self.rng, 10 * MS, 2 * SEC);
                        let at = self.state(target, State::Cancelled, at, None);
                        last_cancel = last_cancel.max(at);
                    }
                    _ => {}
                }
            }
        }
        match outcome {
            Outcome::Completed | Outcome::Failed => {
                (last_end + uniform(self.rng, 10 * MS, 500 * MS), last_end)
            }
            Outcome::Crashed | Outcome::Cancelled => (limit, last_cancel),
        }
    }
}

fn unit(rng: &mut Rng) -> f64 {
    use rand::Rng as _;
    rng.random::<f64>()
}

/// Plans one flow run of `tenant` whose first event happens at `arrival`.
pub(crate) fn plan_run(
    config: &WorkloadConfig,
    catalog: &TenantCatalog,
    tenant: u32,
    arrival: i64,
    rng: &mut Rng,
) -> PlannedRun {
    let flow_weights: Vec<f64> = catalog.flows.iter().map(|f| f.weight).collect();
    let flow_index = random::weighted(rng, &flow_weights);
    let flow = &catalog.flows[flow_index];
    let deployment = if flow.deployments.is_empty() || chance(rng, config.adhoc_rate) {
        None
    } else {
        Some(flow.deployments[uniform(rng, 0, flow.deployments.len() as i64 - 1) as usize])
    };
    let tags = match deployment {
        Some(d) => catalog.deployments[usize::from(d)].tags.clone(),
        None => {
            let mut tags: Vec<u16> = (0..uniform(rng, 0, 2))
                .filter(|_| !catalog.tags.is_empty())
                .map(|_| uniform(rng, 0, catalog.tags.len() as i64 - 1) as u16)
                .collect();
            tags.sort_unstable();
            tags.dedup();
            tags
        }
    };
    let name = format!(
        "{}-{}",
        names::ADJECTIVES[uniform(rng, 0, names::ADJECTIVES.len() as i64 - 1) as usize],
        names::ANIMALS[uniform(rng, 0, names::ANIMALS.len() as i64 - 1) as usize]
    );
    let mut ctx = RunCtx {
        tenant,
        flow: flow_index as u16,
        deployment,
        tags,
        id: random::uuid4(rng),
        name,
        tasks: Vec::new(),
    };
    let tasks = ((f64::from(flow.typical_tasks) * (0.8 + 0.4 * unit(rng))).round() as u32)
        .clamp(config.min_tasks, config.max_tasks);

    let failure = (config.failure_rate * flow.failure_weight)
        .min(0.9)
        .min(1.0 - config.crash_rate - config.cancel_rate);
    let draw = unit(rng);
    let outcome = if draw < failure {
        Outcome::Failed
    } else if draw < failure + config.crash_rate {
        Outcome::Crashed
    } else if draw < failure + config.crash_rate + config.cancel_rate {
        Outcome::Cancelled
    } else {
        Outcome::Completed
    };
    let retried_attempts = if flow.retries == 0 {
        0
    } else if outcome == Outcome::Failed {
        flow.retries
    } else if chance(rng, config.retry_rate) {
        uniform(rng, 1, flow.retries.into()) as u32
    } else {
        0
    };

    let mut planner = Planner {
        config,
        rng,
        level_weights: config.level_mix.weights().map(|(_, w)| w),
        steps: Vec::new(),
        flow: Chain::default(),
        tasks: Vec::new(),
    };
    let p = &mut planner;
    let flow_target = Target::Flow;

    // Until a worker picks the run up.
    let ready = if deployment.is_some() {
        let scheduled = arrival + log_uniform(p.rng, 10 * SEC, 60 * MIN);
        p.state(flow_target, State::Scheduled, arrival, Some(scheduled));
        if chance(p.rng, config.late_rate) {
            let late_at = scheduled + uniform(p.rng, 15 * SEC, 60 * SEC);
            let late_at = p.state(flow_target, State::Late, late_at, Some(scheduled));
            late_at + log_uniform(p.rng, 15 * SEC, 30 * MIN)
        } else {
            scheduled + uniform(p.rng, 200 * MS, 10 * SEC)
        }
    } else {
        arrival
    };
    if outcome == Outcome::Cancelled && deployment.is_some() && chance(p.rng, 0.3) {
        p.state(flow_target, State::Cancelled, ready, None);
        return finish(planner, ctx, config);
    }
    let ready = p.state(flow_target, State::Pending, ready, None);
    if outcome == Outcome::Crashed && chance(p.rng, 0.2) {
        // The infrastructure never started the flow.
        let at = ready + uniform(p.rng, SEC, 60 * SEC);
        p.log(flow_target, ERROR, LogText::InfrastructureCrash, at);
        p.state(flow_target, State::Crashed, at, None);
        return finish(planner, ctx, config);
    }

    let at = ready + uniform(p.rng, SEC, 20 * SEC);
    let mut start = p.state(flow_target, State::Running, at, None);
    for attempt in 0..=retried_attempts {
        p.log(flow_target, INFO, LogText::BeginFlow, start + MS);
        let last = attempt == retried_attempts;
        let this = if last { outcome } else { Outcome::Failed };
        let (end, last_cancel) = p.attempt(&mut ctx, flow, tasks, start, this);
        match this {
            Outcome::Failed if !last => {
                p.log(flow_target, ERROR, LogText::FlowWillRetry, end);
                let scheduled = end + uniform(p.rng, 5 * SEC, 60 * SEC);
                let end = p.state(flow_target, State::AwaitingRetry, end, Some(scheduled));
                let at = scheduled.max(end) + uniform(p.rng, 10 * MS, SEC);
                start = p.state(flow_target, State::Retrying, at, None);
            }
            Outcome::Completed | Outcome::Failed => {
                let state = if this == Outcome::Completed {
                    State::Completed
                } else {
                    State::Failed
                };
                let at = p.state(flow_target, state, end, None);
                let level = if this == Outcome::Completed {
                    INFO
                } else {
                    ERROR
                };
                p.log(flow_target, level, LogText::FinishedFlow(state), at + 200);
            }
            Outcome::Crashed => {
                let at = end + uniform(p.rng, SEC, 90 * SEC);
                let at = p.state(flow_target, State::Crashed, at, None);
                p.log(flow_target, ERROR, LogText::CrashDetected, at + 200);
            }
            Outcome::Cancelled => {
                p.state(flow_target, State::Cancelling, end, None);
                p.log(flow_target, INFO, LogText::CancelRequested, end + 500);
                let at = last_cancel.max(end) + uniform(p.rng, 100 * MS, 2 * SEC);
                p.state(flow_target, State::Cancelled, at, None);
            }
        }
    }
    finish(planner, ctx, config)
}

fn finish(planner: Planner<'_>, ctx: RunCtx, config: &WorkloadConfig) -> PlannedRun {
    let end = config.end_us();
    let mut steps = planner.steps;
    steps.retain(|step| step.at < end);
    steps.sort_unstable_by_key(|step| (step.at, step.seq));
    PlannedRun { ctx, steps }
}

/// Level mix as used for template logs: the DEBUG line is a debug template, and so on.
pub(crate) fn render_template(template: u8, level: u8, argument: u32) -> String {
    let host = names::HOSTS[argument as usize % names::HOSTS.len()];
    let table = names::TABLES[argument as usize % names::TABLES.len()];
    match (level, template) {
        (DEBUG, 0) => format!("Cache miss for key {argument:08x}"),
        (DEBUG, _) => format!("Opening connection to {host}"),
        (INFO, 0) => format!("Processed {argument} records from {table}"),
        (INFO, _) => format!("Wrote {argument} rows to {table}"),
        (WARNING, 0) => format!("Slow response from {host}: {} ms", argument % 30_000),
        (WARNING, _) => format!("Retrying request to {host} (attempt {})", argument % 5 + 1),
        (ERROR, 0) => format!("Request to {host} failed: HTTP 503 Service Unavailable"),
        (ERROR, _) => format!("Validation failed for {argument} rows of {table}"),
        (_, 0) => format!("Out of memory while processing batch {argument}"),
        (_, _) => format!("Lost connection to {host}; giving up"),
    }
}
