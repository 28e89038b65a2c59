//! The CES WebSocket client's decisions, apart from its I/O (docs/clients.md).
//!
//! - [`stream::Tracker`]: the session position `(epoch, last_seq)` and what each server frame means for the app:
//!   an event delivered once, dropped as a repeat, or a gap named exactly.
//! - [`policy`]: what a connection's end (close code, HTTP answer) leads to: reconnect soon, back off, refresh the
//!   token first, wait `Retry-After`, or stop.
//! - [`backoff::Backoff`]: full-jitter exponential backoff that resets only after a stable connection.
//! - [`token`]: when a session token is refreshed in band (at 80 % of its remaining life).
//!
//! - [`connection::run`]: the connection loop that performs them over tokio-tungstenite.
//!
//! The rules are pure (time and randomness come in as arguments), so they are unit-tested exhaustively; the
//! connection loop is tested against real edges (`systest/tests/client.rs`).

pub mod backoff;
pub mod connection;
pub mod policy;
pub mod stream;
pub mod token;

pub use connection::{Event, Options, Update, run};
pub use token::Token;
