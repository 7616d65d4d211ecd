//! The lockd client library: a session that heartbeats, follows the leader across failovers,
//! caches granted locks and answers blocking notifications (see docs/lockd.md, "Client").
//!
//! Modules, each using only those listed after it: `recovery` (other sessions' recovery:
//! what they hold, and ending it), `many` (many try-locks in one request), `give_up`
//! (trimming the cache: idle locks given up in batches), `session` (the API), `background`
//! (heartbeats, the event stream, asynchronous releases), `revoke` (answering blocking
//! notices), `state` (what a session shares with its tasks, and its RPCs), `cache` (a cached
//! lock's record), `conn` (leader following), `types` and `error` (public values).
mod background;
mod cache;
mod conn;
mod error;
mod give_up;
mod many;
mod recovery;
mod revoke;
mod session;
mod state;
mod types;

pub use conn::Conn;
pub use error::{Error, Refusal, Result};
pub use lockd_common::{ErrorKind, FencingToken, Mode};
pub use recovery::{holders, Holder};
pub use session::{LeaseWatch, LockGuard, Session};
pub use types::{BlockingHandler, BlockingNotice, Grant, LockOptions, Revoke, SessionOptions};
