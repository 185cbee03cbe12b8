//! Answering a query with database work: the work runs in a task of its
//! own under a budget, and the task answers the caller's reply port, so the
//! actor that got the query is free at once (and answers its `Report`).
//! Shared by the actors that own a pool: persistence and webhooks.

use std::time::Duration;

use ractor::RpcReplyPort;

use crate::store::StoreError;

/// Runs `work` in its own task, under `budget`, and answers `reply` (a
/// caller that gave up is not worked for); before the schema is `ready`,
/// answers `Unavailable` at once. Work cut off by the budget may have been
/// committed: it answers `InDoubt`.
pub(crate) fn run_within<T: Send + 'static>(
    ready: bool,
    budget: Duration,
    reply: RpcReplyPort<Result<T, StoreError>>,
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) {
    if !ready {
        let _ = reply.send(Err(StoreError::Unavailable(
            "database schema is not ready yet".into(),
        )));
        return;
    }
    if reply.is_closed() {
        return;
    }
    tokio::spawn(async move {
        let result = match tokio::time::timeout(budget, work).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::InDoubt(
                "the database did not answer in time".into(),
            )),
        };
        let _ = reply.send(result);
    });
}
