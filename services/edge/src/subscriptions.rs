//! Which session channels the node's Pub/Sub connection must be subscribed to: the reference counts behind the
//! hub's subscription task, without the task.
//!
//! Pure (no tokio, no fred), so every transition is unit-tested here. The task hands each batch of requests to
//! [`SubscriptionTable::plan`], sends the SUBSCRIBE and UNSUBSCRIBE the [`Plan`] names, reports how they went
//! ([`SubscriptionTable::subscribed`], [`SubscriptionTable::unsubscribed`],
//! [`SubscriptionTable::unsubscribe_failed`]) and answers the batch's callers with [`Plan::answers`].
//!
//! The rules:
//! - A session referenced by N subscribe calls stays subscribed until N releases; a release without a reference
//!   is ignored (so a stray release can never take a channel from a connection that still needs it).
//! - Commands are decided per batch, from the counts after the whole batch: a session subscribed and released in
//!   one batch costs no command at all.
//! - A failed SUBSCRIBE leaves the session unsubscribed; its references stay held until their callers release
//!   (every subscribe call is paired with one release, successful or not), and each caller of the batch waiting
//!   on that session gets the error.
//! - A failed UNSUBSCRIBE leaves the channel subscribed and the channel is retried with the next batch, unless a
//!   caller referenced the session again meanwhile.
//! - A resubscribe (the connection was re-established, or Redis was found to have dropped the node's
//!   subscriptions) forgets what Redis confirmed before and subscribes every referenced session again, from this
//!   table: it is the one record of what the node needs, whatever the client library tracks. Its waiter gets the
//!   outcome of the whole SUBSCRIBE.

use std::collections::{BTreeSet, HashMap, HashSet};

/// One call of `Hub::subscribe` or `Hub::release`. `W` is whoever waits for a subscribe's outcome (the hub uses a
/// oneshot sender; tests use plain numbers).
#[derive(Debug)]
pub enum Request<W> {
    /// Take one reference on `session`'s channel; `waiter` is answered once the batch's SUBSCRIBE completed.
    Subscribe {
        /// The session whose channel is needed.
        session: String,
        /// Answered through [`Plan::answers`].
        waiter: W,
    },
    /// Give back one reference taken by a `Subscribe`.
    Release {
        /// The session whose channel is no longer needed by one caller.
        session: String,
    },
    /// Redis may have forgotten every subscription: subscribe every referenced session again.
    Resubscribe {
        /// Answered with the outcome of the batch's SUBSCRIBE.
        waiter: W,
    },
}

/// What to send to Redis for one batch, and who waits for the SUBSCRIBE.
#[derive(Debug)]
pub struct Plan<W> {
    /// Sessions to SUBSCRIBE (sorted): referenced after the batch, not subscribed before it.
    pub subscribe: Vec<String>,
    /// Sessions to UNSUBSCRIBE (sorted): subscribed, no longer referenced after the batch, including those whose
    /// UNSUBSCRIBE failed before.
    pub unsubscribe: Vec<String>,
    /// Whether the batch holds a resubscribe: the node's own channels must be subscribed again too.
    pub resubscribe: bool,
    /// The batch's subscribe calls, in request order.
    waiters: Vec<(String, W)>,
    /// The batch's resubscribe calls.
    resubscribers: Vec<W>,
}

impl<W> Plan<W> {
    /// The answer for each subscribe call of the batch, in request order, given how the batch's SUBSCRIBE went
    /// (`Ok` when none was needed). Only callers whose session was part of a failed SUBSCRIBE get its error; the
    /// others' sessions were subscribed already, or released again in the same batch.
    pub fn answers<E: Clone>(self, subscribe: Result<(), E>) -> Vec<(W, Result<(), E>)> {
        let Plan {
            subscribe: sessions,
            waiters,
            resubscribers,
            ..
        } = self;
        let whole = resubscribers
            .into_iter()
            .map(|waiter| (waiter, subscribe.clone()));
        let failed: HashSet<&str> = match subscribe {
            Ok(()) => HashSet::new(),
            Err(_) => sessions.iter().map(String::as_str).collect(),
        };
        waiters
            .into_iter()
            .map(|(session, waiter)| {
                let answer = match &subscribe {
                    Err(e) if failed.contains(session.as_str()) => Err(e.clone()),
                    _ => Ok(()),
                };
                (waiter, answer)
            })
            .chain(whole)
            .collect()
    }
}

/// Reference counts per session and the set of subscribed channels of one Pub/Sub connection.
///
/// Only one owner (the hub's subscription task) may drive it, and it must report the outcome of every command a
/// [`Plan`] names before planning the next batch; that single writer is what guarantees a leaving connection never
/// unsubscribes a channel a newer one still needs.
#[derive(Debug, Default)]
pub struct SubscriptionTable {
    /// Outstanding subscribe calls per session; a session is absent rather than at zero.
    refs: HashMap<String, usize>,
    /// Sessions whose channel Redis confirmed, and not (successfully) unsubscribed since.
    subscribed: HashSet<String>,
    /// Subscribed sessions whose UNSUBSCRIBE failed: looked at again with the next batch.
    retry_unsubscribe: HashSet<String>,
}

impl SubscriptionTable {
    /// Applies a batch of requests, in order, to the reference counts and says which channels to subscribe and
    /// unsubscribe so the subscribed set matches them again.
    pub fn plan<W>(&mut self, requests: impl IntoIterator<Item = Request<W>>) -> Plan<W> {
        // Sorted so a plan (and what the tests assert) does not depend on hash order.
        let mut touched = BTreeSet::new();
        let mut waiters = Vec::new();
        let mut resubscribers = Vec::new();
        for request in requests {
            match request {
                Request::Subscribe { session, waiter } => {
                    *self.refs.entry(session.clone()).or_insert(0) += 1;
                    waiters.push((session.clone(), waiter));
                    touched.insert(session);
                }
                Request::Release { session } => {
                    if let Some(n) = self.refs.get_mut(&session) {
                        *n -= 1;
                        if *n == 0 {
                            self.refs.remove(&session);
                        }
                    }
                    touched.insert(session);
                }
                Request::Resubscribe { waiter } => {
                    // Nothing Redis confirmed before can be relied on; an UNSUBSCRIBE to retry is moot.
                    self.subscribed.clear();
                    self.retry_unsubscribe.clear();
                    touched.extend(self.refs.keys().cloned());
                    resubscribers.push(waiter);
                }
            }
        }
        touched.extend(self.retry_unsubscribe.drain());
        let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
        for session in touched {
            match (
                self.refs.contains_key(&session),
                self.subscribed.contains(&session),
            ) {
                (true, false) => subscribe.push(session),
                (false, true) => unsubscribe.push(session),
                _ => {}
            }
        }
        Plan {
            subscribe,
            unsubscribe,
            resubscribe: !resubscribers.is_empty(),
            waiters,
            resubscribers,
        }
    }

    /// Redis confirmed the SUBSCRIBE of `sessions`. (A failed SUBSCRIBE changes nothing here: the sessions stay
    /// unsubscribed and referenced; their callers get the error through [`Plan::answers`].)
    pub fn subscribed(&mut self, sessions: &[String]) {
        self.subscribed.extend(sessions.iter().cloned());
    }

    /// Redis confirmed the UNSUBSCRIBE of `sessions`.
    pub fn unsubscribed(&mut self, sessions: &[String]) {
        for session in sessions {
            self.subscribed.remove(session);
        }
    }

    /// The UNSUBSCRIBE of `sessions` failed: they stay subscribed, and the next [`plan`](Self::plan) unsubscribes
    /// them again unless they are referenced by then.
    pub fn unsubscribe_failed(&mut self, sessions: &[String]) {
        self.retry_unsubscribe.extend(sessions.iter().cloned());
    }

    /// Number of subscribed session channels (the `ces_edge_subscribed_channels` gauge).
    pub fn subscribed_count(&self) -> usize {
        self.subscribed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Answers = Vec<(u32, Result<(), &'static str>)>;

    fn sub(session: &str, waiter: u32) -> Request<u32> {
        Request::Subscribe {
            session: session.to_owned(),
            waiter,
        }
    }

    fn rel(session: &str) -> Request<u32> {
        Request::Release {
            session: session.to_owned(),
        }
    }

    fn names(sessions: &[&str]) -> Vec<String> {
        sessions.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The plan's commands, as (subscribe, unsubscribe).
    fn commands(plan: &Plan<u32>) -> (Vec<&str>, Vec<&str>) {
        (
            plan.subscribe.iter().map(String::as_str).collect(),
            plan.unsubscribe.iter().map(String::as_str).collect(),
        )
    }

    /// The whole table, sorted: (references, subscribed, to retry).
    fn state(t: &SubscriptionTable) -> (Vec<(&str, usize)>, Vec<&str>, Vec<&str>) {
        let mut refs: Vec<(&str, usize)> = t.refs.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        refs.sort_unstable();
        let mut subscribed: Vec<&str> = t.subscribed.iter().map(String::as_str).collect();
        subscribed.sort_unstable();
        let mut retry: Vec<&str> = t.retry_unsubscribe.iter().map(String::as_str).collect();
        retry.sort_unstable();
        (refs, subscribed, retry)
    }

    /// Plans `requests`, reports every command as successful, and returns the plan's commands and answers.
    fn step_ok(
        t: &mut SubscriptionTable,
        requests: Vec<Request<u32>>,
    ) -> ((Vec<String>, Vec<String>), Answers) {
        let plan = t.plan(requests);
        t.subscribed(&plan.subscribe);
        t.unsubscribed(&plan.unsubscribe);
        let cmds = (plan.subscribe.clone(), plan.unsubscribe.clone());
        (cmds, plan.answers(Ok(())))
    }

    /// A table where `a` is subscribed with one reference.
    fn with_a() -> SubscriptionTable {
        let mut t = SubscriptionTable::default();
        step_ok(&mut t, vec![sub("a", 0)]);
        assert_eq!(state(&t), (vec![("a", 1)], vec!["a"], vec![]));
        t
    }

    #[test]
    fn a_new_table_is_empty() {
        let t = SubscriptionTable::default();
        assert_eq!(state(&t), (vec![], vec![], vec![]));
        assert_eq!(t.subscribed_count(), 0);
    }

    #[test]
    fn first_subscribe_subscribes_and_answers_ok() {
        let mut t = SubscriptionTable::default();
        let plan = t.plan(vec![sub("a", 1)]);
        assert_eq!(commands(&plan), (vec!["a"], vec![]));
        // Not counted until Redis confirmed it.
        assert_eq!(t.subscribed_count(), 0);
        assert_eq!(state(&t), (vec![("a", 1)], vec![], vec![]));
        t.subscribed(&plan.subscribe);
        assert_eq!(t.subscribed_count(), 1);
        assert_eq!(state(&t), (vec![("a", 1)], vec!["a"], vec![]));
        assert_eq!(plan.answers::<&str>(Ok(())), vec![(1, Ok(()))]);
    }

    #[test]
    fn a_further_reference_sends_nothing() {
        let mut t = with_a();
        let plan = t.plan(vec![sub("a", 7)]);
        assert_eq!(commands(&plan), (vec![], vec![]));
        assert_eq!(state(&t), (vec![("a", 2)], vec!["a"], vec![]));
        assert_eq!(plan.answers::<&str>(Ok(())), vec![(7, Ok(()))]);
    }

    #[test]
    fn two_subscribes_in_one_batch_send_one_subscribe_and_answer_both() {
        let mut t = SubscriptionTable::default();
        let (cmds, answers) = step_ok(&mut t, vec![sub("a", 1), sub("a", 2)]);
        assert_eq!(cmds, (names(&["a"]), vec![]));
        assert_eq!(answers, vec![(1, Ok(())), (2, Ok(()))]);
        assert_eq!(state(&t), (vec![("a", 2)], vec!["a"], vec![]));
    }

    #[test]
    fn two_connections_then_one_release_keeps_the_channel() {
        let mut t = SubscriptionTable::default();
        step_ok(&mut t, vec![sub("a", 1)]);
        step_ok(&mut t, vec![sub("a", 2)]);
        let (cmds, answers) = step_ok(&mut t, vec![rel("a")]);
        assert_eq!(cmds, (vec![], vec![]));
        assert_eq!(answers, vec![]);
        assert_eq!(state(&t), (vec![("a", 1)], vec!["a"], vec![]));
        assert_eq!(t.subscribed_count(), 1);
    }

    #[test]
    fn releasing_the_last_reference_unsubscribes() {
        let mut t = SubscriptionTable::default();
        step_ok(&mut t, vec![sub("a", 1)]);
        step_ok(&mut t, vec![sub("a", 2)]);
        step_ok(&mut t, vec![rel("a")]);
        let plan = t.plan(vec![rel("a")]);
        assert_eq!(commands(&plan), (vec![], vec!["a"]));
        // Still subscribed until Redis confirmed the UNSUBSCRIBE.
        assert_eq!(state(&t), (vec![], vec!["a"], vec![]));
        assert_eq!(t.subscribed_count(), 1);
        t.unsubscribed(&plan.unsubscribe);
        assert_eq!(state(&t), (vec![], vec![], vec![]));
        assert_eq!(t.subscribed_count(), 0);
    }

    #[test]
    fn two_releases_in_one_batch_unsubscribe_once() {
        let mut t = SubscriptionTable::default();
        step_ok(&mut t, vec![sub("a", 1), sub("a", 2)]);
        let (cmds, _) = step_ok(&mut t, vec![rel("a"), rel("a")]);
        assert_eq!(cmds, (vec![], names(&["a"])));
        assert_eq!(state(&t), (vec![], vec![], vec![]));
    }

    #[test]
    fn a_release_of_an_unknown_session_is_ignored() {
        let mut t = SubscriptionTable::default();
        let (cmds, answers) = step_ok(&mut t, vec![rel("nobody")]);
        assert_eq!(cmds, (vec![], vec![]));
        assert_eq!(answers, vec![]);
        assert_eq!(state(&t), (vec![], vec![], vec![]));
    }

    #[test]
    fn a_release_beyond_the_references_is_ignored() {
        let mut t = with_a();
        step_ok(&mut t, vec![rel("a")]);
        assert_eq!(state(&t), (vec![], vec![], vec![]));
        // A stray release does not go negative: the next subscribe is a first reference again.
        let (cmds, _) = step_ok(&mut t, vec![rel("a")]);
        assert_eq!(cmds, (vec![], vec![]));
        let (cmds, _) = step_ok(&mut t, vec![sub("a", 1)]);
        assert_eq!(cmds, (names(&["a"]), vec![]));
        assert_eq!(state(&t), (vec![("a", 1)], vec!["a"], vec![]));
    }

    #[test]
    fn a_stray_release_does_not_touch_another_session() {
        let mut t = with_a();
        let (cmds, _) = step_ok(&mut t, vec![rel("b")]);
        assert_eq!(cmds, (vec![], vec![]));
        assert_eq!(state(&t), (vec![("a", 1)], vec!["a"], vec![]));
    }

    #[test]
    fn subscribe_and_release_in_one_batch_send_nothing() {
        let mut t = SubscriptionTable::default();
        let plan = t.plan(vec![sub("a", 1), rel("a")]);
        assert_eq!(commands(&plan), (vec![], vec![]));
        assert_eq!(state(&t), (vec![], vec![], vec![]));
        // The caller is answered (it has released already), even when another session's SUBSCRIBE failed.
        assert_eq!(plan.answers(Err("boom")), vec![(1, Ok(()))]);
    }

    #[test]
    fn release_then_subscribe_in_one_batch_keeps_the_channel() {
        let mut t = with_a();
        let (cmds, answers) = step_ok(&mut t, vec![rel("a"), sub("a", 2)]);
        assert_eq!(cmds, (vec![], vec![]));
        assert_eq!(answers, vec![(2, Ok(()))]);
        assert_eq!(state(&t), (vec![("a", 1)], vec!["a"], vec![]));
    }

    #[test]
    fn subscribe_release_subscribe_in_one_batch_subscribes_once() {
        let mut t = SubscriptionTable::default();
        let plan = t.plan(vec![sub("a", 1), rel("a"), sub("a", 2)]);
        assert_eq!(commands(&plan), (vec!["a"], vec![]));
        assert_eq!(state(&t), (vec![("a", 1)], vec![], vec![]));
        // Both callers waited on the same SUBSCRIBE.
        assert_eq!(
            plan.answers(Err("boom")),
            vec![(1, Err("boom")), (2, Err("boom"))]
        );
    }

    #[test]
    fn a_new_connection_and_the_leaving_one_in_one_batch_keep_the_channel() {
        // The takeover order: the newer connection subscribes before the older one releases.
        let mut t = with_a();
        let (cmds, answers) = step_ok(&mut t, vec![sub("a", 2), rel("a")]);
        assert_eq!(cmds, (vec![], vec![]));
        assert_eq!(answers, vec![(2, Ok(()))]);
        assert_eq!(state(&t), (vec![("a", 1)], vec!["a"], vec![]));
    }

    #[test]
    fn one_batch_mixes_sessions_into_one_subscribe_and_one_unsubscribe() {
        let mut t = SubscriptionTable::default();
        step_ok(&mut t, vec![sub("c", 0), sub("d", 0), sub("d", 0)]);
        let plan = t.plan(vec![
            sub("b", 1),
            rel("c"),
            sub("a", 2),
            rel("d"),
            sub("b", 3),
            rel("x"),
        ]);
        // Sorted, each session once.
        assert_eq!(commands(&plan), (vec!["a", "b"], vec!["c"]));
        assert_eq!(
            state(&t),
            (vec![("a", 1), ("b", 2), ("d", 1)], vec!["c", "d"], vec![])
        );
        t.subscribed(&plan.subscribe);
        t.unsubscribed(&plan.unsubscribe);
        assert_eq!(
            state(&t),
            (
                vec![("a", 1), ("b", 2), ("d", 1)],
                vec!["a", "b", "d"],
                vec![]
            )
        );
        assert_eq!(t.subscribed_count(), 3);
        assert_eq!(
            plan.answers::<&str>(Ok(())),
            vec![(1, Ok(())), (2, Ok(())), (3, Ok(()))]
        );
    }

    #[test]
    fn a_failed_subscribe_leaves_the_session_unsubscribed_but_referenced() {
        let mut t = SubscriptionTable::default();
        let plan = t.plan(vec![sub("a", 1)]);
        assert_eq!(commands(&plan), (vec!["a"], vec![]));
        // The failure is not reported to the table: nothing changes there.
        assert_eq!(plan.answers(Err("boom")), vec![(1, Err("boom"))]);
        assert_eq!(state(&t), (vec![("a", 1)], vec![], vec![]));
        assert_eq!(t.subscribed_count(), 0);
        // The caller's release drops the reference; there is nothing to unsubscribe.
        let (cmds, _) = step_ok(&mut t, vec![rel("a")]);
        assert_eq!(cmds, (vec![], vec![]));
        assert_eq!(state(&t), (vec![], vec![], vec![]));
    }

    #[test]
    fn a_subscribe_after_a_failed_one_tries_again() {
        let mut t = SubscriptionTable::default();
        let plan = t.plan(vec![sub("a", 1)]);
        plan.answers(Err("boom"));
        let (cmds, answers) = step_ok(&mut t, vec![sub("a", 2)]);
        assert_eq!(cmds, (names(&["a"]), vec![]));
        assert_eq!(answers, vec![(2, Ok(()))]);
        assert_eq!(state(&t), (vec![("a", 2)], vec!["a"], vec![]));
    }

    #[test]
    fn a_failed_subscribe_errors_only_the_callers_of_the_sessions_in_it() {
        let mut t = with_a();
        let plan = t.plan(vec![
            sub("b", 1),
            sub("a", 2),
            sub("c", 3),
            rel("c"),
            sub("b", 4),
        ]);
        assert_eq!(commands(&plan), (vec!["b"], vec![]));
        assert_eq!(
            plan.answers(Err("boom")),
            vec![(1, Err("boom")), (2, Ok(())), (3, Ok(())), (4, Err("boom"))]
        );
        assert_eq!(state(&t), (vec![("a", 2), ("b", 2)], vec!["a"], vec![]));
    }

    #[test]
    fn a_failed_unsubscribe_keeps_the_channel_and_retries_it_with_the_next_batch() {
        let mut t = with_a();
        step_ok(&mut t, vec![sub("b", 0)]);
        let plan = t.plan(vec![rel("a")]);
        assert_eq!(commands(&plan), (vec![], vec!["a"]));
        t.unsubscribe_failed(&plan.unsubscribe);
        assert_eq!(state(&t), (vec![("b", 1)], vec!["a", "b"], vec!["a"]));
        assert_eq!(t.subscribed_count(), 2);
        // Retried together with whatever the next batch brings.
        let plan = t.plan(vec![sub("c", 1), rel("b")]);
        assert_eq!(commands(&plan), (vec!["c"], vec!["a", "b"]));
        assert_eq!(state(&t), (vec![("c", 1)], vec!["a", "b"], vec![]));
        t.subscribed(&plan.subscribe);
        t.unsubscribed(&plan.unsubscribe);
        assert_eq!(state(&t), (vec![("c", 1)], vec!["c"], vec![]));
        assert_eq!(t.subscribed_count(), 1);
    }

    #[test]
    fn an_unsubscribe_that_keeps_failing_is_retried_every_batch() {
        let mut t = with_a();
        let plan = t.plan(vec![rel("a")]);
        t.unsubscribe_failed(&plan.unsubscribe);
        for _ in 0..3 {
            let plan = t.plan(Vec::<Request<u32>>::new());
            assert_eq!(commands(&plan), (vec![], vec!["a"]));
            assert_eq!(state(&t), (vec![], vec!["a"], vec![]));
            t.unsubscribe_failed(&plan.unsubscribe);
            assert_eq!(state(&t), (vec![], vec!["a"], vec!["a"]));
            assert_eq!(t.subscribed_count(), 1);
        }
        let (cmds, _) = step_ok(&mut t, vec![]);
        assert_eq!(cmds, (vec![], names(&["a"])));
        assert_eq!(state(&t), (vec![], vec![], vec![]));
        // Nothing left to retry.
        let (cmds, _) = step_ok(&mut t, vec![]);
        assert_eq!(cmds, (vec![], vec![]));
    }

    #[test]
    fn a_session_referenced_again_before_the_retry_stays_subscribed() {
        let mut t = with_a();
        let plan = t.plan(vec![rel("a")]);
        t.unsubscribe_failed(&plan.unsubscribe);
        // Still subscribed (fred kept it), so the new caller needs no SUBSCRIBE, and the retry is dropped.
        let (cmds, answers) = step_ok(&mut t, vec![sub("a", 2)]);
        assert_eq!(cmds, (vec![], vec![]));
        assert_eq!(answers, vec![(2, Ok(()))]);
        assert_eq!(state(&t), (vec![("a", 1)], vec!["a"], vec![]));
        let (cmds, _) = step_ok(&mut t, vec![]);
        assert_eq!(cmds, (vec![], vec![]));
        // Its release unsubscribes as usual.
        let (cmds, _) = step_ok(&mut t, vec![rel("a")]);
        assert_eq!(cmds, (vec![], names(&["a"])));
        assert_eq!(state(&t), (vec![], vec![], vec![]));
    }

    #[test]
    fn a_retried_session_referenced_and_released_in_the_same_batch_is_unsubscribed() {
        let mut t = with_a();
        let plan = t.plan(vec![rel("a")]);
        t.unsubscribe_failed(&plan.unsubscribe);
        let (cmds, answers) = step_ok(&mut t, vec![sub("a", 2), rel("a")]);
        assert_eq!(cmds, (vec![], names(&["a"])));
        assert_eq!(answers, vec![(2, Ok(()))]);
        assert_eq!(state(&t), (vec![], vec![], vec![]));
    }

    #[test]
    fn answers_keep_request_order_and_skip_releases() {
        let mut t = SubscriptionTable::default();
        let plan = t.plan(vec![sub("z", 9), rel("z"), sub("y", 3), sub("z", 1)]);
        assert_eq!(commands(&plan), (vec!["y", "z"], vec![]));
        assert_eq!(
            plan.answers::<&str>(Ok(())),
            vec![(9, Ok(())), (3, Ok(())), (1, Ok(()))]
        );
    }

    #[test]
    fn an_empty_batch_plans_nothing() {
        let mut t = with_a();
        let plan = t.plan(Vec::<Request<u32>>::new());
        assert_eq!(commands(&plan), (vec![], vec![]));
        assert_eq!(plan.answers(Err("boom")), vec![]);
        assert_eq!(state(&t), (vec![("a", 1)], vec!["a"], vec![]));
    }

    #[test]
    fn the_count_follows_the_subscribed_set() {
        let mut t = SubscriptionTable::default();
        let mut counts = Vec::new();
        let batches = vec![
            vec![sub("a", 0), sub("b", 0)],
            vec![sub("c", 0), rel("a")],
            vec![sub("b", 0)],
            vec![rel("b")],
            vec![rel("b"), rel("c")],
        ];
        for batch in batches {
            step_ok(&mut t, batch);
            counts.push(t.subscribed_count());
            assert_eq!(t.subscribed_count(), state(&t).1.len());
        }
        assert_eq!(counts, vec![2, 2, 2, 2, 0]);
    }

    fn resub(waiter: u32) -> Request<u32> {
        Request::Resubscribe { waiter }
    }

    #[test]
    fn a_resubscribe_subscribes_every_referenced_session_again_and_nothing_else() {
        let mut t = with_a();
        step_ok(&mut t, vec![sub("b", 0), sub("c", 0)]);
        step_ok(&mut t, vec![rel("c")]);
        let plan = t.plan(vec![resub(7)]);
        assert!(plan.resubscribe);
        assert_eq!(commands(&plan), (vec!["a", "b"], vec![]));
        // Until Redis confirms, nothing counts as subscribed.
        assert_eq!(state(&t), (vec![("a", 1), ("b", 1)], vec![], vec![]));
        t.subscribed(&plan.subscribe);
        assert_eq!(plan.answers(Ok::<(), &str>(())), vec![(7, Ok(()))]);
        assert_eq!(state(&t).1, vec!["a", "b"]);
    }

    #[test]
    fn a_failed_resubscribe_errors_its_waiter_and_the_next_one_tries_everything_again() {
        let mut t = with_a();
        let plan = t.plan(vec![resub(1), sub("b", 2)]);
        assert_eq!(commands(&plan), (vec!["a", "b"], vec![]));
        assert_eq!(
            plan.answers(Err("NOPERM")),
            vec![(2, Err("NOPERM")), (1, Err("NOPERM"))]
        );
        assert_eq!(state(&t), (vec![("a", 1), ("b", 1)], vec![], vec![]));
        let plan = t.plan(vec![resub(3)]);
        assert_eq!(commands(&plan), (vec!["a", "b"], vec![]));
        t.subscribed(&plan.subscribe);
        assert_eq!(t.subscribed_count(), 2);
    }

    #[test]
    fn a_resubscribe_drops_a_pending_unsubscribe_retry_and_keeps_a_release_in_its_batch() {
        let mut t = with_a();
        step_ok(&mut t, vec![sub("b", 0)]);
        let plan = t.plan(vec![rel("a")]);
        t.unsubscribe_failed(&plan.unsubscribe);
        // After a reconnect Redis holds none of them: "a" needs no UNSUBSCRIBE any more, "b" a SUBSCRIBE.
        let plan = t.plan(vec![resub(1)]);
        assert_eq!(commands(&plan), (vec!["b"], vec![]));
        assert_eq!(state(&t), (vec![("b", 1)], vec![], vec![]));
        // A release in the same batch as the resubscribe is honoured.
        let plan = t.plan(vec![resub(2), rel("b")]);
        assert_eq!(commands(&plan), (vec![], vec![]));
        assert!(plan.resubscribe);
        assert_eq!(state(&t), (vec![], vec![], vec![]));
    }

    #[test]
    fn a_plan_without_a_resubscribe_says_so() {
        let mut t = SubscriptionTable::default();
        assert!(!t.plan(vec![sub("a", 0)]).resubscribe);
    }
}
