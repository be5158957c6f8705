//! Asynchronous exports: submit a job, poll it until it is ready, fetch its (pre-signed) download
//! URL and stream the file, the way Qlara's history export and similar provider exports work.
//!
//! A provider implements [`ExportApi`] (one method per request, each returning the request's
//! [`RequestError`] on failure) and calls [`run_export`], which owns the loop:
//!
//! * every request goes through the shared [`RequestLoop`] and is retried as the [`RetryPolicy`]
//!   allows (`429` honours the server's wait and pauses the provider's budget, `5xx` and dropped
//!   connections back off);
//! * polls are `poll_interval` apart, with ±20 % jitter so that many windows do not poll in step;
//! * a job that reports `FAILED` is submitted again, up to `max_resubmits` times;
//! * a download URL that has expired (`400`/`403` when fetching it or the file) is regenerated
//!   and the job polled again, up to `max_regenerations` times;
//! * a job still not ready `export_timeout` after it was accepted fails with
//!   [`ExportError::Timeout`].
//!
//! The export id is handed to [`ExportHooks::accepted`] the moment the provider accepts a job, so
//! a caller can persist it and, after a restart, pass it back as `known_id` to poll the same job
//! instead of submitting a new one.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use tokio::time::Instant;
use url::Url;

use crate::{Failure, RequestError, RequestLoop, RetryObserver, RetryPolicy, classify};

/// What a poll says about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Still running (or completed but not yet downloadable).
    Pending,
    /// Completed and available for download.
    Ready,
    /// The provider gave up on the job; the text says what it reported.
    Failed(String),
    /// Its download link expired: regenerate it and poll again.
    Expired,
    /// The provider does not know this id (an id from an earlier run that it has forgotten).
    Unknown,
}

/// The requests of one provider's export flow for one job description (one window).
#[async_trait]
pub trait ExportApi: Send + Sync {
    /// What a finished download yields (a spool file, parsed rows, ...).
    type Download: Send;

    /// Submits a new job and returns its export id.
    async fn submit(&self) -> Result<String, RequestError>;
    /// Asks for the state of job `id`.
    async fn poll(&self, id: &str) -> Result<JobState, RequestError>;
    /// Asks for the download URL of a ready job. A `400`/`403` means the link expired.
    async fn download_url(&self, id: &str) -> Result<Url, RequestError>;
    /// Asks the provider to regenerate the expired link of job `id`.
    async fn regenerate(&self, id: &str) -> Result<(), RequestError>;
    /// Downloads the file at `url` (streaming). Must not send credentials to a foreign host.
    /// A `400`/`403` means the link expired.
    async fn download(&self, url: &Url) -> Result<Self::Download, RequestError>;
    /// The loop every request of the export goes through: the provider adds the budget a `429`
    /// pauses and names the component and window for the logs.
    fn request_loop<'a>(&'a self, retry: &'a RetryPolicy) -> RequestLoop<'a> {
        RequestLoop::new(retry)
    }
}

/// Callbacks of [`run_export`], for state and metrics. Every method has a no-op default.
#[async_trait]
pub trait ExportHooks: Send {
    /// The provider accepted job `export_id` (a submit or resubmit). Persist it to resume; the
    /// export waits for this to return, and an error stops it ([`ExportError::Hook`]).
    async fn accepted(&mut self, _export_id: &str) -> Result<(), String> {
        Ok(())
    }
    /// A request failed and is about to be tried again.
    fn retry(&mut self, _error: &RequestError, _delay: Duration) {}
    /// The provider answered that the rate limit was exceeded (for the 429 counter).
    fn rate_limited(&mut self, _error: &RequestError, _wait: Duration) {}
    /// A request is about to be sent (for request counters).
    fn request(&mut self) {}
}

/// No callbacks.
#[derive(Debug, Default)]
pub struct NoHooks;
impl ExportHooks for NoHooks {}

/// How [`run_export`] paces and bounds an export.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// Pause between polls (jittered by ±20 %).
    pub poll_interval: Duration,
    /// How long a job may take from acceptance to ready.
    pub export_timeout: Duration,
    /// How many times a `FAILED` job is submitted again.
    pub max_resubmits: u32,
    /// How many times an expired link is regenerated.
    pub max_regenerations: u32,
    /// Retries of each single request.
    pub retry: RetryPolicy,
}

/// Why an export did not produce its file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A request failed after its retries.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The job kept failing.
    #[error(
        "export {export_id} failed ({reason}) and was submitted again {resubmits} times; giving up"
    )]
    Failed {
        export_id: String,
        reason: String,
        resubmits: u32,
    },
    /// The job was not ready in time.
    #[error(
        "export {export_id} was not ready after {} (export_timeout); the window fails",
        humantime::format_duration(*.timeout)
    )]
    Timeout {
        export_id: String,
        timeout: Duration,
    },
    /// [`ExportHooks::accepted`] failed (the export id could not be saved).
    #[error("could not record export {export_id}: {message}")]
    Hook { export_id: String, message: String },
    /// The link kept expiring.
    #[error("the download link of export {export_id} expired {times} times; giving up")]
    Expired { export_id: String, times: u32 },
}

impl ExportError {
    /// The export id the error is about, if it got that far.
    pub fn export_id(&self) -> Option<&str> {
        match self {
            ExportError::Request(_) => None,
            ExportError::Failed { export_id, .. }
            | ExportError::Timeout { export_id, .. }
            | ExportError::Expired { export_id, .. }
            | ExportError::Hook { export_id, .. } => Some(export_id),
        }
    }
}

/// `400` or `403` on a download link: it has expired.
pub fn is_expired_link(error: &RequestError) -> bool {
    matches!(
        error.status(),
        Some(StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN)
    )
}

/// `interval` ±20 %, from `jitter` in `0..=1`.
pub fn jittered(interval: Duration, jitter: f64) -> Duration {
    interval.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// Calls `attempt` through `api`'s [`RequestLoop`] (see [`ExportApi::request_loop`]) with the
/// shared classification: the export's requests carry no token to refresh, and no provider fact
/// of an export flow is about a single answer (a `FAILED` job is a state, not a failed request).
pub async fn with_retries<A, T, F, Fut>(
    api: &A,
    retry: &RetryPolicy,
    hooks: &mut dyn ExportHooks,
    mut attempt: F,
) -> Result<T, RequestError>
where
    A: ExportApi + ?Sized,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RequestError>>,
{
    api.request_loop(retry)
        .run(&mut HooksObserver(hooks), classify, || {
            let sent = attempt();
            async move { sent.await.map_err(|e| Failure::request(e, None)) }
        })
        .await
}

/// The request counter and retry callback of [`ExportHooks`], as the loop's observer.
struct HooksObserver<'a>(&'a mut dyn ExportHooks);

impl RetryObserver for HooksObserver<'_> {
    fn attempt(&mut self) {
        self.0.request();
    }
    fn retry(&mut self, error: &RequestError, delay: Duration) {
        self.0.retry(error, delay);
    }
    fn rate_limited(&mut self, error: &RequestError, wait: Duration) {
        self.0.rate_limited(error, wait);
    }
}

/// Runs one export to its download: submits (or resumes `known_id`), polls, fetches the link,
/// regenerates it if it expired, and downloads. See the module docs.
pub async fn run_export<A: ExportApi>(
    api: &A,
    settings: &ExportSettings,
    known_id: Option<String>,
    hooks: &mut dyn ExportHooks,
) -> Result<A::Download, ExportError> {
    let retry = &settings.retry;
    let (mut id, mut fresh) = match known_id {
        Some(id) => (id, false),
        None => {
            let id = with_retries(api, retry, hooks, || api.submit()).await?;
            accepted(hooks, &id).await?;
            (id, true)
        }
    };
    let mut accepted_at = Instant::now();
    let mut resubmits = 0u32;
    let mut regenerations = 0u32;
    loop {
        // Poll until ready. A resumed id is polled at once; a fresh job gets time first.
        loop {
            if fresh {
                let pause = jittered(settings.poll_interval, rand::random_range(0.0..=1.0));
                if accepted_at.elapsed() + pause > settings.export_timeout {
                    let left = settings
                        .export_timeout
                        .saturating_sub(accepted_at.elapsed());
                    tokio::time::sleep(left).await;
                    // One last look before giving up.
                    if with_retries(api, retry, hooks, || api.poll(&id)).await? == JobState::Ready {
                        break;
                    }
                    return Err(ExportError::Timeout {
                        export_id: id,
                        timeout: settings.export_timeout,
                    });
                }
                tokio::time::sleep(pause).await;
            }
            fresh = true;
            match with_retries(api, retry, hooks, || api.poll(&id)).await? {
                JobState::Ready => break,
                JobState::Pending => {}
                JobState::Expired => {
                    regenerate(api, settings, hooks, &id, &mut regenerations).await?;
                    // A regenerated export is processed again: its time starts anew.
                    accepted_at = Instant::now();
                }
                state @ (JobState::Failed(_) | JobState::Unknown) => {
                    let reason = match state {
                        // The provider's words, copied out of a response: redacted like an
                        // error body (see `error`).
                        JobState::Failed(r) => chatlake_core::secret::redact(&r).into_owned(),
                        _ => "unknown to the provider".to_string(),
                    };
                    if resubmits >= settings.max_resubmits {
                        return Err(ExportError::Failed {
                            export_id: id,
                            reason,
                            resubmits,
                        });
                    }
                    resubmits += 1;
                    tracing::warn!(export_id = %id, %reason, resubmits, "export failed; submitting it again");
                    id = with_retries(api, retry, hooks, || api.submit()).await?;
                    accepted(hooks, &id).await?;
                    accepted_at = Instant::now();
                }
            }
        }
        let url = match with_retries(api, retry, hooks, || api.download_url(&id)).await {
            Ok(url) => url,
            Err(e) if is_expired_link(&e) => {
                tracing::warn!(export_id = %id, error = %e, "download link expired; regenerating it");
                regenerate(api, settings, hooks, &id, &mut regenerations).await?;
                accepted_at = Instant::now();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match with_retries(api, retry, hooks, || api.download(&url)).await {
            Ok(done) => return Ok(done),
            Err(e) if is_expired_link(&e) => {
                tracing::warn!(export_id = %id, error = %e, "download link expired; regenerating it");
                regenerate(api, settings, hooks, &id, &mut regenerations).await?;
                accepted_at = Instant::now();
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn accepted(hooks: &mut dyn ExportHooks, id: &str) -> Result<(), ExportError> {
    hooks
        .accepted(id)
        .await
        .map_err(|message| ExportError::Hook {
            export_id: id.to_string(),
            message,
        })
}

async fn regenerate<A: ExportApi>(
    api: &A,
    settings: &ExportSettings,
    hooks: &mut dyn ExportHooks,
    id: &str,
    regenerations: &mut u32,
) -> Result<(), ExportError> {
    if *regenerations >= settings.max_regenerations {
        return Err(ExportError::Expired {
            export_id: id.to_string(),
            times: *regenerations,
        });
    }
    *regenerations += 1;
    with_retries(api, &settings.retry, hooks, || api.regenerate(id)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use reqwest::Method;
    use std::sync::Mutex;

    /// A scripted provider: each poll pops the next state; downloads pop the next result.
    struct Script {
        polls: Mutex<Vec<JobState>>,
        downloads: Mutex<Vec<u16>>,
        submits: Mutex<u32>,
        regenerations: Mutex<u32>,
        submit_errors: Mutex<Vec<u16>>,
    }

    fn url() -> Url {
        Url::parse("http://127.0.0.1:1/x").unwrap()
    }

    fn status(code: u16) -> RequestError {
        RequestError::from_status(
            Method::GET,
            &url(),
            StatusCode::from_u16(code).unwrap(),
            br#"{"status":429,"retryAfter":0}"#,
            &Default::default(),
            chrono::Utc::now(),
        )
    }

    impl Script {
        fn new(polls: Vec<JobState>, downloads: Vec<u16>) -> Script {
            Script {
                polls: Mutex::new(polls.into_iter().rev().collect()),
                downloads: Mutex::new(downloads.into_iter().rev().collect()),
                submits: Mutex::new(0),
                regenerations: Mutex::new(0),
                submit_errors: Mutex::new(Vec::new()),
            }
        }
    }

    #[async_trait]
    impl ExportApi for Script {
        type Download = &'static str;
        async fn submit(&self) -> Result<String, RequestError> {
            if let Some(code) = self.submit_errors.lock().unwrap().pop() {
                return Err(status(code));
            }
            let mut n = self.submits.lock().unwrap();
            *n += 1;
            Ok(format!("job-{n}"))
        }
        async fn poll(&self, _id: &str) -> Result<JobState, RequestError> {
            Ok(self
                .polls
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(JobState::Pending))
        }
        async fn download_url(&self, _id: &str) -> Result<Url, RequestError> {
            Ok(url())
        }
        async fn regenerate(&self, _id: &str) -> Result<(), RequestError> {
            *self.regenerations.lock().unwrap() += 1;
            Ok(())
        }
        async fn download(&self, _url: &Url) -> Result<&'static str, RequestError> {
            match self.downloads.lock().unwrap().pop() {
                Some(200) | None => Ok("file"),
                Some(code) => Err(status(code)),
            }
        }
    }

    #[derive(Default)]
    struct Record {
        accepted: Vec<String>,
        retries: u32,
        refuse: bool,
    }
    #[async_trait]
    impl ExportHooks for Record {
        async fn accepted(&mut self, id: &str) -> Result<(), String> {
            if self.refuse {
                return Err("disk full".into());
            }
            self.accepted.push(id.to_string());
            Ok(())
        }
        fn retry(&mut self, _e: &RequestError, _d: Duration) {
            self.retries += 1;
        }
    }

    fn settings() -> ExportSettings {
        ExportSettings {
            poll_interval: Duration::from_millis(1),
            export_timeout: Duration::from_secs(5),
            max_resubmits: 2,
            max_regenerations: 2,
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
            },
        }
    }

    #[tokio::test]
    async fn polls_until_ready_and_reports_the_id_at_once() {
        let api = Script::new(
            vec![JobState::Pending, JobState::Pending, JobState::Ready],
            vec![],
        );
        let mut hooks = Record::default();
        let out = run_export(&api, &settings(), None, &mut hooks)
            .await
            .unwrap();
        assert_eq!(out, "file");
        assert_eq!(hooks.accepted, ["job-1"]);
        assert!(api.polls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_job_is_submitted_again_up_to_the_limit() {
        let fail = || JobState::Failed("FAILED".into());
        let api = Script::new(vec![fail(), JobState::Ready], vec![]);
        let mut hooks = Record::default();
        run_export(&api, &settings(), None, &mut hooks)
            .await
            .unwrap();
        assert_eq!(hooks.accepted, ["job-1", "job-2"]);

        let api = Script::new(vec![fail(), fail(), fail()], vec![]);
        let e = run_export(&api, &settings(), None, &mut NoHooks)
            .await
            .unwrap_err();
        assert!(matches!(e, ExportError::Failed { resubmits: 2, .. }), "{e}");
        assert_eq!(e.export_id(), Some("job-3"));
    }

    #[tokio::test]
    async fn an_expired_link_is_regenerated_and_polled_again() {
        let api = Script::new(
            vec![JobState::Ready, JobState::Pending, JobState::Ready],
            vec![403, 200],
        );
        let out = run_export(&api, &settings(), None, &mut NoHooks).await;
        assert_eq!(out.unwrap(), "file");
        assert_eq!(*api.regenerations.lock().unwrap(), 1);

        let api = Script::new(vec![JobState::Expired, JobState::Ready], vec![]);
        run_export(&api, &settings(), None, &mut NoHooks)
            .await
            .unwrap();
        assert_eq!(*api.regenerations.lock().unwrap(), 1);

        let api = Script::new(
            vec![JobState::Ready, JobState::Ready, JobState::Ready],
            vec![400, 400, 400],
        );
        let e = run_export(&api, &settings(), None, &mut NoHooks)
            .await
            .unwrap_err();
        assert!(matches!(e, ExportError::Expired { times: 2, .. }), "{e}");
    }

    #[tokio::test]
    async fn an_id_that_cannot_be_recorded_stops_the_export_before_polling() {
        let api = Script::new(vec![JobState::Ready], vec![]);
        let mut hooks = Record {
            refuse: true,
            ..Record::default()
        };
        let e = run_export(&api, &settings(), None, &mut hooks)
            .await
            .unwrap_err();
        assert!(matches!(e, ExportError::Hook { .. }), "{e}");
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(
            api.polls.lock().unwrap().len(),
            1,
            "no poll after a failed record"
        );
    }

    #[tokio::test]
    async fn a_known_id_is_polled_instead_of_submitting() {
        let api = Script::new(vec![JobState::Ready], vec![]);
        let mut hooks = Record::default();
        run_export(&api, &settings(), Some("old".into()), &mut hooks)
            .await
            .unwrap();
        assert_eq!(*api.submits.lock().unwrap(), 0);
        assert!(hooks.accepted.is_empty());
        // A forgotten id is replaced by a new job.
        let api = Script::new(vec![JobState::Unknown, JobState::Ready], vec![]);
        let mut hooks = Record::default();
        run_export(&api, &settings(), Some("old".into()), &mut hooks)
            .await
            .unwrap();
        assert_eq!(hooks.accepted, ["job-1"]);
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_and_others_are_not() {
        let api = Script::new(vec![JobState::Ready], vec![500, 429, 200]);
        *api.submit_errors.lock().unwrap() = vec![503];
        let mut hooks = Record::default();
        run_export(&api, &settings(), None, &mut hooks)
            .await
            .unwrap();
        assert_eq!(hooks.retries, 3);

        let api = Script::new(vec![JobState::Ready], vec![404]);
        let e = run_export(&api, &settings(), None, &mut NoHooks)
            .await
            .unwrap_err();
        assert!(matches!(e, ExportError::Request(_)));
        let t = RequestError::new(Method::GET, &url(), ErrorKind::Transport("reset".into()));
        assert!(!is_expired_link(&t));
    }

    #[tokio::test]
    async fn a_job_that_never_finishes_times_out() {
        let api = Script::new(vec![], vec![]);
        let mut s = settings();
        s.export_timeout = Duration::from_millis(30);
        s.poll_interval = Duration::from_millis(5);
        let e = run_export(&api, &s, None, &mut NoHooks).await.unwrap_err();
        assert!(e.to_string().contains("export_timeout"), "{e}");
        assert_eq!(e.export_id(), Some("job-1"));
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        let i = Duration::from_secs(5);
        assert_eq!(jittered(i, 0.0), Duration::from_secs(4));
        assert_eq!(jittered(i, 1.0), Duration::from_secs(6));
        assert_eq!(jittered(i, 0.5), i);
    }
}
