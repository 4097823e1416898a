//! Starting the workers: [`Worker::run_all`] and [`Command::run`] hand them to the process
//! lifecycle (`start`).
//!
//! Apart from `worker.rs` and `cli.rs` so that neither a worker's configuration nor the command
//! line depends on the lifecycle that reads them (`master` reads both; neither calls into it).

use crate::cli::Command;
use crate::worker::Worker;

impl Command {
    /// Run `workers` under this command and exit the process with its status.
    pub fn run(self, workers: impl IntoIterator<Item = Worker>) -> ! {
        let code = crate::start::run(self, workers.into_iter().collect());
        std::process::exit(code)
    }
}

impl Worker {
    /// Run these workers under the command line (`start [-d]`, `stop [-g]`, `restart`,
    /// `reload`, `status`, `connections`) and exit the process when done.
    pub fn run_all(workers: impl IntoIterator<Item = Worker>) -> ! {
        let workers: Vec<Worker> = workers.into_iter().collect();
        let code = crate::start::main(workers);
        std::process::exit(code)
    }

    /// Run just this worker; see [`Worker::run_all`].
    pub fn run(self) -> ! {
        Worker::run_all(vec![self])
    }
}
