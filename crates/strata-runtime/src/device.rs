//! The device that holds resident and streamed layers: a CUDA GPU, or the host "device" that
//! stands in for one in tests (a memory budget, a copy thread, compute on the CPU).

use std::time::Duration;

use strata_tensor::{Gpu, MemoryBudget};

/// A host stand-in for a GPU: its memory is counted against `budget`, its copies run on a
/// worker thread (optionally slowed to emulate a bus), its compute is the CPU reference.
#[derive(Debug, Clone)]
pub struct HostDevice {
    /// The stand-in device memory: slots and resident layers are reserved from it.
    pub budget: MemoryBudget,
    /// Sleep per MiB copied, to emulate a slow bus (zero: copies run at memcpy speed).
    pub copy_delay_per_mib: Duration,
}

impl HostDevice {
    /// A host device with `budget_bytes` of memory and no copy delay.
    pub fn new(budget_bytes: u64) -> HostDevice {
        HostDevice { budget: MemoryBudget::new("host device", budget_bytes), copy_delay_per_mib: Duration::ZERO }
    }
}

/// Where resident and streamed layers run.
#[derive(Debug, Clone)]
pub enum Accelerator {
    /// A CUDA GPU.
    Gpu(Gpu),
    /// The host stand-in used by tests.
    Host(HostDevice),
}
