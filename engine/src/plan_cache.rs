//! Queries planned ahead of their execution.
//!
//! A Flight SQL client asks for a statement's schema (GetFlightInfo), then
//! fetches its rows (DoGet). The physical plan made for the first call is
//! kept here under a random id that the signed ticket carries, and the
//! second call takes it, so a query is planned once. A kept plan runs only
//! for the same user, impersonated user, project, settings, SQL text and
//! policy version it was planned for: any governance change bumps the
//! version, so a plan never outlives the policies it was governed by.
//! Anything else (an unknown, taken or expired id, a changed session)
//! plans the statement again. Entries are taken at most once and expire
//! after [`TTL`]; at most [`CAPACITY`] are kept, the oldest dropped first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use rand::Rng;

use crate::governance::GovernanceContext;

/// How long a plan waits for its execution.
pub const TTL: Duration = Duration::from_secs(60);

/// The most plans kept at once.
pub const CAPACITY: usize = 1024;

/// Everything a plan's governance depends on besides the catalog snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlanKey {
    pub user: String,
    pub impersonated: Option<String>,
    pub project: Option<String>,
    pub settings: Vec<(String, String)>,
    pub version: u64,
    pub sql: String,
}

/// A governed physical plan with the context it was planned in.
pub(crate) struct PlannedQuery {
    pub key: PlanKey,
    pub ctx: SessionContext,
    pub gctx: Arc<GovernanceContext>,
    pub plan: Arc<dyn ExecutionPlan>,
}

/// Plans waiting for their execution, by id.
#[derive(Default)]
pub(crate) struct PlanCache {
    entries: Mutex<HashMap<String, (Instant, PlannedQuery)>>,
}

impl PlanCache {
    /// Keeps a plan; returns its id (128 random bits, hex).
    pub fn put(&self, planned: PlannedQuery) -> Option<String> {
        let id = format!("{:032x}", rand::rng().random::<u128>());
        let now = Instant::now();
        let mut entries = self.entries.lock().ok()?;
        entries.retain(|_, (at, _)| now.duration_since(*at) < TTL);
        if entries.len() >= CAPACITY {
            let oldest = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries.insert(id.clone(), (now, planned));
        Some(id)
    }

    /// Takes the plan kept under `id` when it is still fresh and `key`
    /// matches; a mismatched plan is dropped.
    pub fn take(&self, id: &str, key: &PlanKey) -> Option<PlannedQuery> {
        let (at, planned) = self.entries.lock().ok()?.remove(id)?;
        (at.elapsed() < TTL && planned.key == *key).then_some(planned)
    }

    /// How many plans are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlanCache({} plans)", self.len())
    }
}
