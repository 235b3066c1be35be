//! The workload generator: a deterministic stream of Prefect events and log lines, in time order,
//! for many tenants, with its ground truth kept as it goes.
//!
//! ```no_run
//! use flowhouse_loadtest::workload::{Workload, WorkloadConfig};
//! let config = WorkloadConfig::past_days(42, 7, chrono::Utc::now());
//! let mut workload = Workload::new(config).unwrap();
//! for message in workload.by_ref().take(1000) {
//!     let _json: Vec<u8> = message.json();
//! }
//! let truth = workload.into_truth(); // the truth of the 1000 messages handed out
//! ```
//!
//! Memory stays bounded by the runs in progress at the current time: a run is planned (compact
//! steps, not events) when the stream reaches its first event, and each step becomes an event
//! or a log line only when it is handed out.

pub mod catalog;
pub mod config;
mod emit;
pub mod names;
mod plan;
pub mod random;
pub mod states;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use flowhouse_schema::Tenant;
use flowhouse_schema::event::Event;
use flowhouse_schema::log::Log;
use flowhouse_schema::text::Labels;
use rand::Rng as _;

pub use catalog::{Catalog, Entity};
pub use config::{LevelMix, WorkloadConfig};
pub use states::{RunKind, State, StateType};

use crate::truth::{Dims, FlowRunSummary, GroundTruth, TenantTruth};
use plan::{PlannedRun, RunCtx, Step, Target, What};
use random::Rng;

/// One message of the workload: an event or a log line, for a tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub tenant: Tenant,
    pub record: Record,
    /// A second copy of the previous event (same id), as a client retrying would send.
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Event(Event<'static>),
    Log(Log<'static>),
}

impl Message {
    /// The message as it travels: one JSON object (Kafka value, websocket text, batch element).
    pub fn json(&self) -> Vec<u8> {
        match &self.record {
            Record::Event(event) => serde_json::to_vec(event),
            Record::Log(log) => serde_json::to_vec(log),
        }
        .expect("generated events and logs serialize")
    }

    pub fn is_event(&self) -> bool {
        matches!(self.record, Record::Event(_))
    }

    /// `occurred` of an event, `timestamp` of a log line.
    pub fn time(&self) -> DateTime<Utc> {
        match &self.record {
            Record::Event(event) => event.occurred,
            Record::Log(log) => log.timestamp,
        }
    }
}

struct ActiveRun {
    ctx: RunCtx,
    steps: Vec<Step>,
    next: usize,
    dims: u32,
    /// Index of the run's summary in its tenant's truth, once its first event is handed out.
    summary: Option<usize>,
    flow_related: Vec<Labels<'static>>,
    task_related: Vec<Labels<'static>>,
}

/// The stream. Iterate it (or take batches with [`Workload::next_batch`]); the ground truth of
/// what was handed out so far is [`Workload::truth`].
pub struct Workload {
    config: WorkloadConfig,
    catalog: Catalog,
    truth: GroundTruth,
    tenant_weights: Vec<f64>,
    arrivals: Rng,
    duplicates: Rng,
    next_run: u64,
    peeked: Option<(i64, u32)>,
    heap: BinaryHeap<Reverse<(i64, u64, usize)>>,
    slots: Vec<Option<ActiveRun>>,
    free_slots: Vec<usize>,
    pending_duplicate: Option<Message>,
    handed_out: u64,
}

impl Workload {
    pub fn new(config: WorkloadConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let catalog = Catalog::new(&config);
        let truth = GroundTruth {
            seed: config.seed,
            resolution_secs: config.truth_resolution_secs,
            tenants: catalog
                .tenants
                .iter()
                .map(|t| {
                    TenantTruth::new(
                        t.tenant,
                        t.flows.iter().map(|f| f.entity.clone()).collect(),
                        t.deployments.iter().map(|d| d.entity.clone()).collect(),
                        t.work_pools.iter().map(|w| w.entity.clone()).collect(),
                        t.tags.iter().map(|t| t.to_string()).collect(),
                    )
                })
                .collect(),
        };
        Ok(Self {
            tenant_weights: catalog.tenants.iter().map(|t| t.weight).collect(),
            arrivals: random::stream(config.seed, random::DOMAIN_ARRIVALS, 0),
            duplicates: random::stream(config.seed, random::DOMAIN_DUPLICATES, 0),
            config,
            catalog,
            truth,
            next_run: 0,
            peeked: None,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            pending_duplicate: None,
            handed_out: 0,
        })
    }

    pub fn config(&self) -> &WorkloadConfig {
        &self.config
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn tenants(&self) -> Vec<Tenant> {
        self.catalog.tenant_ids()
    }

    /// The ground truth of the messages handed out so far.
    pub fn truth(&self) -> &GroundTruth {
        &self.truth
    }

    pub fn into_truth(self) -> GroundTruth {
        self.truth
    }

    /// Messages handed out so far (duplicates included).
    pub fn handed_out(&self) -> u64 {
        self.handed_out
    }

    /// Flow runs in progress in the stream right now (what bounds its memory).
    pub fn active_runs(&self) -> usize {
        self.heap.len()
    }

    /// Appends up to `max` messages to `out`; returns how many.
    pub fn next_batch(&mut self, max: usize, out: &mut Vec<Message>) -> usize {
        let before = out.len();
        out.extend(self.by_ref().take(max));
        out.len() - before
    }

    /// The arrival time and tenant of the next run not yet admitted.
    fn peek_arrival(&mut self) -> Option<(i64, u32)> {
        if self.peeked.is_none() && self.next_run < self.config.runs {
            let start = i128::from(self.config.start_us());
            let span = i128::from(self.config.end_us()) - start;
            let runs = i128::from(self.config.runs);
            let jitter = (self.arrivals.random::<f64>() * span as f64) as i128;
            // Stratified: run i arrives in the i-th of `runs` equal slices of the window, so
            // arrivals are in order and evenly spread.
            let at = start + (i128::from(self.next_run) * span + jitter.min(span - 1)) / runs;
            let tenant = random::weighted(&mut self.arrivals, &self.tenant_weights) as u32;
            self.peeked = Some((at as i64, tenant));
        }
        self.peeked
    }

    /// Plans the runs whose first event comes before the earliest pending step.
    fn admit(&mut self) {
        while let Some((arrival, tenant)) = self.peek_arrival() {
            if let Some(Reverse((next, _, _))) = self.heap.peek()
                && *next < arrival
            {
                break;
            }
            self.peeked = None;
            let index = self.next_run;
            self.next_run += 1;
            let mut rng = random::stream(self.config.seed, random::DOMAIN_RUN, index);
            let catalog = &self.catalog.tenants[tenant as usize];
            let PlannedRun { ctx, steps } =
                plan::plan_run(&self.config, catalog, tenant, arrival, &mut rng);
            let Some(first) = steps.first() else {
                continue;
            };
            let first = first.at;
            let deployment = ctx.deployment.map(|d| &catalog.deployments[usize::from(d)]);
            let dims = self.truth.tenants[tenant as usize].intern_dims(Dims {
                flow: ctx.flow,
                deployment: ctx.deployment,
                work_pool: deployment.map(|d| d.work_pool),
                tags: ctx.tags.clone(),
            });
            let (flow_related, task_related) = emit::related(catalog, &ctx);
            let run = ActiveRun {
                ctx,
                steps,
                next: 0,
                dims,
                summary: None,
                flow_related,
                task_related,
            };
            let slot = match self.free_slots.pop() {
                Some(slot) => {
                    self.slots[slot] = Some(run);
                    slot
                }
                None => {
                    self.slots.push(Some(run));
                    self.slots.len() - 1
                }
            };
            self.heap.push(Reverse((first, index, slot)));
        }
    }
}

impl Iterator for Workload {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        if let Some(duplicate) = self.pending_duplicate.take() {
            let tenant = self
                .truth
                .tenants
                .iter_mut()
                .find(|t| t.tenant == duplicate.tenant);
            if let Some(tenant) = tenant {
                tenant.duplicates_sent += 1;
            }
            self.handed_out += 1;
            return Some(duplicate);
        }
        self.admit();
        let Reverse((at, index, slot)) = self.heap.pop()?;
        let Self {
            catalog,
            truth,
            slots,
            free_slots,
            heap,
            config,
            ..
        } = self;
        let run = slots[slot].as_mut().expect("a queued run is in its slot");
        let step = &run.steps[run.next];
        run.next += 1;
        let tenant_index = run.ctx.tenant as usize;
        let tenant_truth = &mut truth.tenants[tenant_index];
        let slot_of = GroundTruth::slot(config.truth_resolution_secs, at);
        let record = match &step.what {
            What::State {
                target,
                state,
                scheduled,
                ..
            } => {
                let kind = match target {
                    Target::Flow => RunKind::FlowRun,
                    Target::Task(_) => RunKind::TaskRun,
                };
                tenant_truth.record_event(kind.event_name(*state), run.dims, slot_of);
                match target {
                    Target::Flow => {
                        let summary = *run.summary.get_or_insert_with(|| {
                            tenant_truth.flow_runs.push(FlowRunSummary {
                                id: run.ctx.id,
                                dims: run.dims,
                                final_state: None,
                                end_us: None,
                                start_us: None,
                                expected_start_us: None,
                                late_at_us: None,
                            });
                            tenant_truth.flow_runs.len() - 1
                        });
                        tenant_truth.record_flow_state(summary, *state, at, *scheduled);
                    }
                    Target::Task(_) => {
                        if state.is_terminal() {
                            tenant_truth.task_terminal_slots.add(
                                run.dims,
                                state.state_type().index() as u16,
                                slot_of,
                            );
                        }
                    }
                }
                Record::Event(
                    emit::state_event(
                        &run.ctx,
                        &run.flow_related,
                        &run.task_related,
                        at,
                        &step.what,
                    )
                    .expect("a state step makes an event"),
                )
            }
            What::Log { level, .. } => {
                tenant_truth.logs += 1;
                tenant_truth
                    .log_slots
                    .add(run.dims, u16::from(*level), slot_of);
                Record::Log(
                    emit::log_line(&catalog.tenants[tenant_index], &run.ctx, at, &step.what)
                        .expect("a log step makes a log line"),
                )
            }
        };
        if let Some(next) = run.steps.get(run.next) {
            heap.push(Reverse((next.at, index, slot)));
        } else {
            slots[slot] = None;
            free_slots.push(slot);
        }
        let message = Message {
            tenant: catalog.tenants[tenant_index].tenant,
            record,
            duplicate: false,
        };
        if message.is_event() && random::chance(&mut self.duplicates, config.duplicate_rate) {
            self.pending_duplicate = Some(Message {
                duplicate: true,
                ..message.clone()
            });
        }
        self.handed_out += 1;
        Some(message)
    }
}

/// Messages (events, logs and duplicates) a run of this configuration yields on average,
/// measured on a sample of runs planned from a stream of their own.
pub fn messages_per_run(config: &WorkloadConfig) -> f64 {
    const SAMPLE: u64 = 2_000;
    let catalog = Catalog::new(config);
    let mut unbounded = config.clone();
    unbounded.end = unbounded.start + chrono::Duration::days(365);
    let weights: Vec<f64> = catalog.tenants.iter().map(|t| t.weight).collect();
    let mut total = 0.0;
    for i in 0..SAMPLE {
        let mut rng = random::stream(config.seed, random::DOMAIN_ESTIMATE, i);
        let tenant = random::weighted(&mut rng, &weights);
        let run = plan::plan_run(
            &unbounded,
            &catalog.tenants[tenant],
            tenant as u32,
            unbounded.start_us(),
            &mut rng,
        );
        let events = run
            .steps
            .iter()
            .filter(|s| matches!(s.what, What::State { .. }))
            .count() as f64;
        total += run.steps.len() as f64 + events * config.duplicate_rate;
    }
    total / SAMPLE as f64
}

/// How many runs make about `messages` messages.
pub fn runs_for_messages(config: &WorkloadConfig, messages: u64) -> u64 {
    ((messages as f64 / messages_per_run(config)).ceil() as u64).max(1)
}
