//! A session's epoch plans: pages in, answers out, and the plans dropped
//! when the session ends.
//!
//! Each plan's items are checked as they arrive — a URI the daemon could
//! not serve (bad syntax, too long, no backend for it) refuses the whole
//! plan with INVALID_ARGUMENT naming it, and nothing of the plan is kept.
//! The engine's limits (items per plan, per node, plans per session) refuse
//! with RESOURCE_EXHAUSTED. A plan costs its session nothing in memory
//! shares: what bounds it is those limits, and what prefetch reads for it
//! is bounded by the look-ahead limits of `[prefetch]`.

use std::collections::HashSet;
use std::sync::Arc;

use sluice_engine::Engine;
use sluice_engine::plans::{PlanError, PlanKey};
use sluice_proto::v1;
use sluice_proto::v1::session_response::Msg as Out;
use tonic::{Code, Status};

use super::SessionCtx;
use crate::api::status::parse_uri;

/// Most items in one page (the protocol's limit).
pub(crate) const MAX_PAGE_ITEMS: usize = 4096;

/// Longest job name.
const MAX_JOB_LEN: usize = 128;

/// The plans of one session.
pub(crate) struct SessionPlans {
    session: u64,
    engine: Arc<Engine>,
    /// Plans whose pages are still arriving.
    open: HashSet<u64>,
    /// Whether any plan was ever taken (fetches then move positions).
    any: bool,
}

impl SessionPlans {
    pub(crate) fn new(session: u64, engine: Arc<Engine>) -> Self {
        SessionPlans {
            session,
            engine,
            open: HashSet::new(),
            any: false,
        }
    }

    fn key(&self, id: u64) -> PlanKey {
        PlanKey {
            session: self.session,
            id,
        }
    }

    /// A fetch of `uri` is about to start: the session's plans move past
    /// it.
    pub(crate) fn fetching(&self, uri: &str) {
        if self.any
            && let Ok(uri) = sluice_storage::ObjectUri::parse(uri)
        {
            let key = uri.to_string();
            self.engine.plans(|p| p.consumed(self.session, &key));
        }
    }

    /// Takes one page; answers when the plan is complete or refused.
    pub(crate) async fn page(&mut self, ctx: &SessionCtx, page: v1::PlanPage) {
        let id = page.plan_id;
        let first = self.open.insert(id);
        let items = match self.check(&page) {
            Ok(items) => items,
            Err(status) => {
                self.engine.plans(|p| p.drop_plan(self.key(id)));
                self.open.remove(&id);
                answer(ctx, id, 0, &status).await;
                return;
            }
        };
        let job = page.job.as_str();
        let taken = self
            .engine
            .submit_plan(self.key(id), job, &items, first, page.last);
        match taken {
            Ok(total) if page.last => {
                self.open.remove(&id);
                self.any = true;
                tracing::debug!(
                    session = self.session,
                    plan = id,
                    items = total,
                    "plan taken"
                );
                answer(ctx, id, total, &Status::ok("")).await;
            }
            Ok(_) => self.any = true,
            Err(e) => {
                self.open.remove(&id);
                let status = Status::resource_exhausted(plan_error(&e));
                answer(ctx, id, 0, &status).await;
            }
        }
    }

    /// Checks a page: its size, its job name and every URI.
    fn check(&self, page: &v1::PlanPage) -> Result<Vec<Option<Arc<str>>>, Status> {
        if page.items.len() > MAX_PAGE_ITEMS {
            return Err(Status::invalid_argument(format!(
                "a plan page of {} items; at most {MAX_PAGE_ITEMS}",
                page.items.len()
            )));
        }
        if page.job.len() > MAX_JOB_LEN {
            return Err(Status::invalid_argument(format!(
                "a job name of {} bytes; at most {MAX_JOB_LEN}",
                page.job.len()
            )));
        }
        page.items
            .iter()
            .map(|item| {
                let uri = parse_uri(&item.uri)?;
                self.engine
                    .backend(&uri)
                    .map_err(|e| crate::api::status::read_status(&e))?;
                // A range keeps the item's place; only whole objects are
                // prefetched and cached.
                Ok(item.range.is_none().then(|| Arc::from(uri.to_string())))
            })
            .collect()
    }

    pub(crate) fn progress(&self, progress: &v1::PlanProgress) {
        let key = self.key(progress.plan_id);
        self.engine.plans(|p| p.advance(key, progress.position));
    }

    pub(crate) fn drop_plan(&mut self, id: u64) {
        self.open.remove(&id);
        self.engine.plans(|p| p.drop_plan(self.key(id)));
    }
}

impl Drop for SessionPlans {
    fn drop(&mut self) {
        if self.any {
            self.engine.plans(|p| p.drop_session(self.session));
        }
    }
}

fn plan_error(e: &PlanError) -> String {
    format!("plan refused: {e}")
}

async fn answer(ctx: &SessionCtx, plan_id: u64, items: u64, status: &Status) {
    let code = status.code();
    let answer = v1::PlanAnswer {
        plan_id,
        items,
        code: code as i32,
        message: if code == Code::Ok {
            String::new()
        } else {
            status.message().to_owned()
        },
    };
    ctx.send(Out::Plan(answer)).await;
}
