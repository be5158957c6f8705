//! Paged listings as one stream: fetch a page with the cursor of the one before, read the next
//! cursor off it, stop when there is none, and start the listing over when a cursor has expired.
//!
//! The stream fetches a page only when it is polled, so a consumer that wants the next page on
//! its way while it handles this one polls the stream alongside its own work
//! (`tokio::join!(send(page), pages.next())`).

use std::future::Future;

use futures::Stream;

/// One item of a [`pages`] stream.
#[derive(Debug)]
pub enum PageEvent<P, E> {
    /// The next page.
    Page(P),
    /// A cursor expired (`error`): the listing starts again from its first page, which comes
    /// next. What the consumer built from earlier pages of this listing is stale; rows it already
    /// sent on will come again. `restart` counts from 1.
    Restarted { restart: u32, error: E },
}

/// How [`pages`] pages.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    /// Restarts after expired cursors before the listing fails with the last expiry error.
    pub max_restarts: u32,
}

/// The pages of one listing: `fetch(None)` for the first page, `fetch(Some(cursor))` for the
/// next, with `cursor` from `next_cursor(&page)`, until that gives `None`. An error `expired`
/// recognizes (a cursor the server no longer honours, never the first page's error) restarts the
/// listing, at most `paging.max_restarts` times; any other error ends the stream with it.
pub fn pages<P, E, C, F, Fut>(
    paging: Paging,
    mut fetch: F,
    next_cursor: impl Fn(&P) -> Option<C>,
    expired: impl Fn(&E) -> bool,
) -> impl Stream<Item = Result<PageEvent<P, E>, E>>
where
    F: FnMut(Option<C>) -> Fut,
    Fut: Future<Output = Result<P, E>>,
{
    async_stream::try_stream! {
        let mut restarts = 0u32;
        let mut cursor: Option<C> = None;
        loop {
            let paged = cursor.is_some();
            let page = match fetch(cursor.take()).await {
                Ok(page) => page,
                Err(error) if paged && expired(&error) && restarts < paging.max_restarts => {
                    restarts += 1;
                    yield PageEvent::Restarted { restart: restarts, error };
                    continue;
                }
                Err(error) => Err::<P, E>(error)?,
            };
            cursor = next_cursor(&page);
            let last = cursor.is_none();
            yield PageEvent::Page(page);
            if last {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::sync::Mutex;

    #[derive(Debug, PartialEq)]
    enum E {
        Expired(usize),
        Down,
    }

    /// A listing of `n` pages whose cursors are page numbers; `fail` maps a call number to an
    /// error.
    async fn list(
        n: usize,
        max_restarts: u32,
        fail: impl Fn(usize, usize) -> Option<E>,
    ) -> (Vec<String>, Result<(), E>, usize) {
        let calls = Mutex::new(0usize);
        let stream = pages(
            Paging { max_restarts },
            |cursor: Option<usize>| {
                let call = {
                    let mut c = calls.lock().unwrap();
                    *c += 1;
                    *c
                };
                let page = cursor.unwrap_or(0);
                let result = match fail(call, page) {
                    Some(e) => Err(e),
                    None => Ok(page),
                };
                async move { result }
            },
            |page: &usize| (page + 1 < n).then_some(page + 1),
            |e: &E| matches!(e, E::Expired(_)),
        );
        let mut seen = Vec::new();
        let result = stream
            .try_for_each(|event| {
                seen.push(match event {
                    PageEvent::Page(p) => format!("p{p}"),
                    PageEvent::Restarted { restart, .. } => format!("restart{restart}"),
                });
                async { Ok(()) }
            })
            .await;
        let calls = *calls.lock().unwrap();
        (seen, result, calls)
    }

    #[tokio::test]
    async fn follows_cursors_to_the_last_page() {
        let (seen, result, calls) = list(3, 3, |_, _| None).await;
        assert_eq!(seen, ["p0", "p1", "p2"]);
        assert_eq!((result, calls), (Ok(()), 3));
        let (seen, _, calls) = list(1, 3, |_, _| None).await;
        assert_eq!((seen, calls), (vec!["p0".to_string()], 1));
    }

    #[tokio::test]
    async fn an_expired_cursor_restarts_the_listing_up_to_the_limit() {
        // The 3rd call (page 2) finds its cursor expired once.
        let (seen, result, _) =
            list(3, 3, |call, page| (call == 3).then_some(E::Expired(page))).await;
        assert_eq!(seen, ["p0", "p1", "restart1", "p0", "p1", "p2"]);
        assert_eq!(result, Ok(()));

        // Every paged call expires: three restarts, then the expiry is the error.
        let (seen, result, _) = list(3, 3, |_, page| (page > 0).then_some(E::Expired(page))).await;
        assert_eq!(
            seen,
            ["p0", "restart1", "p0", "restart2", "p0", "restart3", "p0"]
        );
        assert_eq!(result, Err(E::Expired(1)));
    }

    #[tokio::test]
    async fn other_errors_and_a_first_page_error_end_the_listing() {
        let (seen, result, _) = list(3, 3, |call, _| (call == 2).then_some(E::Down)).await;
        assert_eq!((seen, result), (vec!["p0".to_string()], Err(E::Down)));
        // An "expired" answer to the first page has no cursor to blame: it is an error.
        let (seen, result, calls) =
            list(3, 3, |call, p| (call == 1).then_some(E::Expired(p))).await;
        assert_eq!((seen.len(), result, calls), (0, Err(E::Expired(0)), 1));
    }
}
