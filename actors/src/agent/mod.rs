//! The agent side: the daemon (`runner`), the executor that runs one task
//! and outlives the agent (`executor`), the checkpoint files they share
//! (`checkpoint`), what /proc says about processes (`procinfo`), and the
//! agent's structured flags (`flags`).

pub mod checkpoint;
pub mod executor;
pub mod flags;
pub mod procinfo;
pub mod runner;
