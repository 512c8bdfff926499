//! Waiting on a condition with a deadline, instead of sleeping.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

/// Polls `probe` until it returns `Some`, or fails once `timeout` has passed. The error names
/// `what` was awaited. Polls quickly at first (10 ms), then backs off to 100 ms.
///
/// ```no_run
/// # async fn f(pvcs: kube::Api<k8s_openapi::api::core::v1::PersistentVolumeClaim>) -> anyhow::Result<()> {
/// use std::time::Duration;
/// let volume = stowage_testkit::wait_until(Duration::from_secs(5), "claim data is bound", || async {
///     pvcs.get_opt("data").await.ok().flatten()?.spec?.volume_name
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Polls `condition` until it is true, or fails once `timeout` has passed (see
/// [`wait_until`]).
///
/// ```no_run
/// # async fn f(store: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>) -> anyhow::Result<()> {
/// use std::time::Duration;
/// stowage_testkit::wait_for(Duration::from_secs(5), "three pods are cached", || async {
///     store.state().len() == 3
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until(timeout, what, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
}
