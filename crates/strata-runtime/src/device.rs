//! The device that holds resident and streamed layers: a CUDA GPU, or the host "device" that
//! stands in for one in tests (a memory budget, a copy thread, compute on the CPU).

use std::time::Duration;

use strata_tensor::{Gpu, MemoryBudget};

/// A host stand-in for a GPU: its memory is counted against `budget`, its copies run on a
/// worker thread (optionally slowed to emulate a bus), its compute is the CPU reference.
#[derive(Debug, Clone)]
pub struct HostDevice {
    pub budget: MemoryBudget,
    pub copy_delay_per_mib: Duration,
}

impl HostDevice {
    pub fn new(budget_bytes: u64) -> HostDevice {
        HostDevice { budget: MemoryBudget::new("host device", budget_bytes), copy_delay_per_mib: Duration::ZERO }
    }
}

/// Where resident and streamed layers run.
#[derive(Debug, Clone)]
pub enum Accelerator {
    Gpu(Gpu),
    Host(HostDevice),
}
