//! Starting the workers: [`Worker::run_all`] hands them to the process lifecycle (`master`).
//!
//! Apart from `worker.rs` so that a worker's configuration does not depend on the lifecycle
//! that runs it (`master` reads `Worker`; `Worker` does not call into `master`).

use crate::worker::Worker;

impl Worker {
    /// Run these workers under the command line (`start [-d]`, `stop [-g]`, `restart`,
    /// `reload`, `status`, `connections`) and exit the process when done.
    pub fn run_all(workers: impl IntoIterator<Item = Worker>) -> ! {
        let workers: Vec<Worker> = workers.into_iter().collect();
        let code = crate::master::main(workers);
        std::process::exit(code)
    }

    /// Run just this worker; see [`Worker::run_all`].
    pub fn run(self) -> ! {
        Worker::run_all(vec![self])
    }
}
