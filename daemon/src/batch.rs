//! Group commit: concurrent callers share one transaction and one fsync.
//!
//! A [`GroupCommit`] owns one writer task. Callers hand it a request and wait
//! for their own answer; while a commit is running, new requests queue up and
//! all of them go into the next transaction. Under load this turns N fsyncs
//! into one without adding latency when idle (a lone request commits at
//! once, nothing waits for a timer).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the daemon is shutting down")]
    Closed,
}

type Job<Req, Resp> = (Req, oneshot::Sender<Result<Resp, BatchError>>);

/// A handle for submitting requests to one writer task. Cloning is cheap;
/// the task ends, after committing everything queued, when the last handle
/// is dropped.
#[derive(Debug)]
pub struct GroupCommit<Req, Resp> {
    jobs: mpsc::Sender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for GroupCommit<Req, Resp> {
    fn clone(&self) -> Self {
        GroupCommit {
            jobs: self.jobs.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> GroupCommit<Req, Resp> {
    /// Starts the writer task. `commit` must return one answer per request,
    /// in order; at most `max_batch` requests go into one call.
    pub fn spawn<F, Fut>(max_batch: usize, commit: F) -> (Self, JoinHandle<()>)
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Resp>, StoreError>> + Send,
    {
        let (jobs, mut queue) = mpsc::channel::<Job<Req, Resp>>(max_batch * 4);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while queue.recv_many(&mut batch, max_batch).await > 0 {
                let (requests, waiters): (Vec<Req>, Vec<_>) = batch.drain(..).unzip();
                let expected = requests.len();
                match commit(requests).await {
                    Ok(answers) if answers.len() == expected => {
                        for (waiter, answer) in waiters.into_iter().zip(answers) {
                            let _ = waiter.send(Ok(answer));
                        }
                    }
                    Ok(answers) => {
                        let error = Arc::new(StoreError::Corrupt(format!(
                            "batch commit answered {} of {expected} requests",
                            answers.len()
                        )));
                        for waiter in waiters {
                            let _ = waiter.send(Err(BatchError::Store(error.clone())));
                        }
                    }
                    Err(error) => {
                        let error = Arc::new(error);
                        for waiter in waiters {
                            let _ = waiter.send(Err(BatchError::Store(error.clone())));
                        }
                    }
                }
            }
        });
        (GroupCommit { jobs }, task)
    }

    /// Queues one request and waits until the transaction holding it has
    /// committed.
    pub async fn run(&self, request: Req) -> Result<Resp, BatchError> {
        let (answer, wait) = oneshot::channel();
        self.jobs
            .send((request, answer))
            .await
            .map_err(|_| BatchError::Closed)?;
        wait.await.map_err(|_| BatchError::Closed)?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn concurrent_requests_share_commits_and_get_their_own_answers() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let (group, task) = GroupCommit::spawn(64, move |reqs: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(reqs.len());
                tokio::task::yield_now().await;
                Ok(reqs.into_iter().map(|r| r * 10).collect())
            }
        });
        let calls: Vec<_> = (0..200u32)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { (i, group.run(i).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.unwrap();
            assert_eq!(answer, i * 10);
        }
        drop(group);
        task.await.unwrap();
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.iter().all(|&n| n <= 64));
        assert!(sizes.len() < 200, "some requests must have shared a commit");
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_request_in_it() {
        let (group, _task) = GroupCommit::<u32, u32>::spawn(8, |_reqs| async {
            Err(StoreError::Corrupt("disk on fire".into()))
        });
        let err = group.run(1).await.unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
    }
}
