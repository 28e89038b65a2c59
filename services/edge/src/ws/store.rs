//! What a socket needs of Redis, behind [`SessionStore`] so the socket loop can be driven in unit tests by an
//! in-memory stand-in. The implementation for the node's command connection ([`fred::clients::Client`])
//! delegates to [`crate::session`] and [`crate::resume`], which hold the Redis side of each call.

use std::future::Future;
use std::time::Duration;

use ces_protocol::close::CloseCode;
use ces_protocol::keys::SessionId;
use fred::clients::Client;

use crate::Error;
use crate::resume::{self, Snapshot};
use crate::session::{self, Claim, Heartbeat};

/// The session state a socket reads and writes: its claim, heartbeats and release, the control message to a
/// previous holder, and the reconnection buffer. `Sync` because a socket's task borrows it across awaits.
pub trait SessionStore: Send + Sync {
    /// Claims `session` for connection `conn` on `node` ([`session::claim`]).
    fn claim(
        &self,
        session: &SessionId,
        node: &str,
        conn: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Claim, Error>> + Send;

    /// Tells the node holding `holder` to close it with `code` ([`session::tell_holder`]).
    fn tell_holder(
        &self,
        session: &SessionId,
        holder: &str,
        code: CloseCode,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Refreshes the session while `conn` holds it, storing `ack` ([`session::heartbeat`]).
    fn heartbeat(
        &self,
        session: &SessionId,
        conn: &str,
        ttl: Duration,
        ack: Option<u64>,
    ) -> impl Future<Output = Result<Heartbeat, Error>> + Send;

    /// Releases the session if `conn` still holds it, storing `ack` ([`session::release`]).
    fn release(
        &self,
        session: &SessionId,
        conn: &str,
        ttl: Duration,
        ack: Option<u64>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Reads one page of the session's buffer after `after` ([`resume::fetch`]).
    fn fetch(
        &self,
        session: &str,
        after: u64,
        state: resume::StateTerms,
        page: resume::Page,
    ) -> impl Future<Output = Result<Snapshot, Error>> + Send;
}

impl SessionStore for Client {
    fn claim(
        &self,
        session: &SessionId,
        node: &str,
        conn: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Claim, Error>> + Send {
        session::claim(self, session, node, conn, ttl)
    }

    fn tell_holder(
        &self,
        session: &SessionId,
        holder: &str,
        code: CloseCode,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        session::tell_holder(self, session, holder, code)
    }

    fn heartbeat(
        &self,
        session: &SessionId,
        conn: &str,
        ttl: Duration,
        ack: Option<u64>,
    ) -> impl Future<Output = Result<Heartbeat, Error>> + Send {
        session::heartbeat(self, session, conn, ttl, ack)
    }

    fn release(
        &self,
        session: &SessionId,
        conn: &str,
        ttl: Duration,
        ack: Option<u64>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        session::release(self, session, conn, ttl, ack)
    }

    fn fetch(
        &self,
        session: &str,
        after: u64,
        state: resume::StateTerms,
        page: resume::Page,
    ) -> impl Future<Output = Result<Snapshot, Error>> + Send {
        resume::fetch(self, session, after, state, page)
    }
}
