//! The mailbox transport, for compute nodes with no route to the bus: files on a filesystem the
//! nodes share, in codeswarm's layout (PROTOCOLS.md):
//!
//! ```text
//! <base>/mailbox/inbox/<job_id>_<NN>.jsonl     the control plane appends, the worker reads
//! <base>/mailbox/outbox/<job_id>_<NN>.jsonl    the worker appends, the control plane follows
//! <base>/mailbox/archive/<job_id>_<NN>.jsonl   the worker moves its outbox here when it exits
//! ```
//!
//! [`Follower`] reads outboxes by polling (the one mechanism that works on NFS and Lustre, where
//! inotify does not fire). It never consumes a line without its newline, follows a file into
//! the archive by its inode, reports lines that are not JSON without losing the lines around
//! them, and remembers offsets and inodes in a state file, so a restarted control plane neither
//! loses nor repeats lines it had committed.

pub mod follow;
pub mod hint;
pub mod layout;

pub use follow::{Follower, Line, Record, Tail};
pub use layout::{Mailbox, MailboxError};
