//! The directory's state in the hub (embedded and channel server): which connections exist at
//! which worker, their uids, groups and sessions (see `channel::dir`).
