//! The tenants and what they own: flows, deployments, work pools (with their default work
//! queue) and tags. Each tenant's catalog comes from its own random stream.

use flowhouse_schema::Tenant;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::config::WorkloadConfig;
use super::names;
use super::random::{self, Rng};

/// Something with a Prefect id and a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    pub id: Uuid,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct Flow {
    pub entity: Entity,
    /// Indexes into the tenant's deployments; empty for flows that only run ad hoc.
    pub deployments: Vec<u16>,
    /// Task names the flow's task runs cycle through.
    pub task_names: Vec<&'static str>,
    /// Typical number of task runs per run.
    pub typical_tasks: u32,
    /// Tasks that run at once.
    pub concurrency: u32,
    /// Typical task run duration, microseconds.
    pub task_duration_us: i64,
    /// Multiplier of the failure rate for this flow's runs.
    pub failure_weight: f64,
    /// Flow-level retries configured (0 for most flows).
    pub retries: u32,
    /// How often this flow runs, relative to the tenant's other flows.
    pub weight: f64,
}

#[derive(Clone, Debug)]
pub struct Deployment {
    pub entity: Entity,
    pub flow: u16,
    pub work_pool: u16,
    pub tags: Vec<u16>,
}

#[derive(Clone, Debug)]
pub struct WorkPool {
    pub entity: Entity,
    pub kind: &'static str,
    /// The pool's `default` work queue.
    pub queue: Entity,
}

#[derive(Clone, Debug)]
pub struct TenantCatalog {
    pub tenant: Tenant,
    /// How busy the tenant is relative to the others.
    pub weight: f64,
    pub flows: Vec<Flow>,
    pub deployments: Vec<Deployment>,
    pub work_pools: Vec<WorkPool>,
    pub tags: Vec<&'static str>,
}

/// All tenants of a workload.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub tenants: Vec<TenantCatalog>,
}

impl Catalog {
    pub fn new(config: &WorkloadConfig) -> Self {
        let accounts: Vec<Uuid> = (0..config.accounts())
            .map(|a| {
                random::uuid4(&mut random::stream(
                    config.seed,
                    random::DOMAIN_ACCOUNT,
                    a.into(),
                ))
            })
            .collect();
        let tenants = (0..config.tenants)
            .map(|t| {
                let account_id = accounts[(t / config.workspaces_per_account) as usize];
                tenant_catalog(config, t, account_id)
            })
            .collect();
        Self { tenants }
    }

    pub fn tenant_ids(&self) -> Vec<Tenant> {
        self.tenants.iter().map(|t| t.tenant).collect()
    }
}

fn entity(rng: &mut Rng, name: String) -> Entity {
    Entity {
        id: random::uuid4(rng),
        name,
    }
}

fn tenant_catalog(config: &WorkloadConfig, index: u32, account_id: Uuid) -> TenantCatalog {
    let rng = &mut random::stream(config.seed, random::DOMAIN_CATALOG, index as u64);
    let tenant = Tenant {
        account_id,
        workspace_id: random::uuid4(rng),
    };
    // Zipf-like: the first tenants are the busiest.
    let weight = 1.0 / f64::from(index + 1).powf(0.7);

    let mut tags: Vec<&'static str> = names::TAGS.to_vec();
    tags.shuffle(rng);
    tags.truncate(config.tags_per_tenant as usize);
    tags.sort_unstable();

    let mut pool_names: Vec<usize> = (0..names::WORK_POOLS.len()).collect();
    pool_names.shuffle(rng);
    let work_pools: Vec<WorkPool> = (0..config.work_pools_per_tenant as usize)
        .map(|i| {
            let (name, kind) = names::WORK_POOLS[pool_names[i % pool_names.len()]];
            let name = if i < pool_names.len() {
                name.to_string()
            } else {
                format!("{name}-{}", i / pool_names.len() + 1)
            };
            WorkPool {
                entity: entity(rng, name),
                kind,
                queue: entity(rng, "default".into()),
            }
        })
        .collect();

    let mut flow_names: Vec<(usize, usize)> = (0..names::FLOW_VERBS.len())
        .flat_map(|v| (0..names::FLOW_NOUNS.len()).map(move |n| (v, n)))
        .collect();
    flow_names.shuffle(rng);
    let mut flows = Vec::new();
    let mut deployments = Vec::new();
    for i in 0..config.flows_per_tenant as usize {
        let (verb, noun) = flow_names[i % flow_names.len()];
        let mut name = format!("{}-{}", names::FLOW_VERBS[verb], names::FLOW_NOUNS[noun]);
        if i >= flow_names.len() {
            name = format!("{name}-{}", i / flow_names.len() + 1);
        }
        let flow_entity = entity(rng, name);
        let typical_tasks =
            random::log_uniform(rng, config.min_tasks.into(), config.max_tasks.into()) as u32;
        let concurrency = *[1, 1, 2, 4, 8].choose(rng).unwrap_or(&1);
        // Keep a run's expected length under about an hour.
        let cap = (3_600_000_000 * i64::from(concurrency)) / i64::from(typical_tasks.max(1));
        let task_duration_us = random::log_uniform(rng, 200_000, 60_000_000).min(cap.max(50_000));
        let failure_weight = (rng_f64(rng) * 3.0 - 1.5).exp() / 1.41;
        let retries = if random::chance(rng, 0.5) {
            random::uniform(rng, 1, 3) as u32
        } else {
            0
        };
        let mut task_names: Vec<&'static str> = names::TASK_NAMES.to_vec();
        task_names.shuffle(rng);
        task_names.truncate(random::uniform(rng, 1, 6) as usize);

        let flow_index = flows.len() as u16;
        // A fifth of the flows only run ad hoc; the others have one to three deployments.
        let deployment_count = if random::chance(rng, 0.2) {
            0
        } else {
            random::uniform(rng, 1, 3) as usize
        };
        let mut deployment_names: Vec<&str> = names::DEPLOYMENT_NAMES.to_vec();
        deployment_names.shuffle(rng);
        let mut own = Vec::new();
        for name in deployment_names.into_iter().take(deployment_count) {
            let mut deployment_tags: Vec<u16> = (0..tags.len() as u16).collect();
            deployment_tags.shuffle(rng);
            deployment_tags.truncate(random::uniform(rng, 0, 3.min(tags.len() as i64)) as usize);
            deployment_tags.sort_unstable();
            own.push(deployments.len() as u16);
            deployments.push(Deployment {
                entity: entity(rng, name.to_string()),
                flow: flow_index,
                work_pool: random::uniform(rng, 0, work_pools.len() as i64 - 1) as u16,
                tags: deployment_tags,
            });
        }
        flows.push(Flow {
            entity: flow_entity,
            deployments: own,
            task_names,
            typical_tasks,
            concurrency,
            task_duration_us,
            failure_weight,
            retries,
            weight: 1.0 / (i as f64 + 1.0).powf(0.8),
        });
    }
    TenantCatalog {
        tenant,
        weight,
        flows,
        deployments,
        work_pools,
        tags,
    }
}

fn rng_f64(rng: &mut Rng) -> f64 {
    use rand::Rng as _;
    rng.random::<f64>()
}
