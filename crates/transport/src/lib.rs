//! Branchline's small-message transport.
//!
//! Small messages are single UDP datagrams (see `branchline-wire` for their format). This
//! crate makes them reliable and safe to act on, with no per-peer connection state:
//!
//! * [`retry`]: the sender retransmits the same datagram with exponential backoff and
//!   jitter until an answer arrives or a deadline passes (then a clear error).
//! * [`replay`]: the receiver refuses messages sent outside a clock window and remembers
//!   message ids, so each message is handled at most once; retransmissions get the cached
//!   reply.
//! * [`counters`]: every datagram not acted on is counted under a reason.
//! * [`bind`], [`keyfile`]: binding ports and reading keys, with errors that say what to do.
//! * [`keys`]: the keys a node holds, changeable while it runs (key rotation).
//! * [`endpoint`]: the tokio shell: a [`Responder`] on a node's request port, a
//!   [`Requester`] on its reply port.
//!
//! [`retry`], [`replay`] and [`ratelimit`] are pure (time passed in) and tested
//! deterministically; [`endpoint`] is tested over loopback sockets.

pub mod bind;
pub mod counters;
pub mod endpoint;
pub mod keyfile;
pub mod keys;
pub mod prom;
pub mod ratelimit;
pub mod replay;
pub mod retry;
pub mod supervise;

pub use bind::{
    BindError, SMALL_RECV_BUFFER, bind_small, bind_udp, enlarge_receive_buffer, serve_reserved,
};
pub use counters::{Counters, DropReason};
pub use endpoint::{
    Clock, Context, Handler, RequestError, Requester, Responder, Response, SystemClock,
};
pub use keyfile::{
    KeyFileError, create_key_file, ensure_private_dir, read_key_file, restrict_file,
    write_key_file, write_private_file,
};
pub use keys::KeySet;
pub use replay::ReplayConfig;
pub use retry::RetryPolicy;
pub use supervise::{Spawner, Supervisor, TaskDied};
