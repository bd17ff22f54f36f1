//! System facts logged each step (docs/metrics.md): GPU memory of libtorch's CUDA caching allocator (what
//! `torch.cuda.memory_allocated/reserved` report; read through a small C++ shim since tch has no such call), the
//! process's resident memory, the replay buffer size, and the device and process-group facts that re-grpo's
//! Accelerate and DDP experiments log.

use super::{MetricValue, Metrics};

extern "C" {
    fn grpo_cuda_memory_stats(device: i32, allocated: *mut i64, reserved: *mut i64) -> i32;
}

const GB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Allocated and reserved bytes of the CUDA caching allocator on `device`; `None` without CUDA.
pub fn cuda_memory(device: usize) -> Option<(i64, i64)> {
    if !tch::Cuda::is_available() || device >= tch::Cuda::device_count() as usize {
        return None;
    }
    let (mut allocated, mut reserved) = (0i64, 0i64);
    // SAFETY: the shim writes two integers we own and catches every C++ exception.
    let rc = unsafe { grpo_cuda_memory_stats(device as i32, &mut allocated, &mut reserved) };
    (rc == 0).then_some((allocated, reserved))
}

/// Resident set size of this process in bytes (Linux; `None` elsewhere).
pub fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as u64)
}

/// The process's peak resident set since the last [`reset_peak_rss`] (or its start): `VmHWM` (Linux; `None`
/// elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Start a new peak-RSS window: Linux lowers `VmHWM` to the current resident set when `5` is written to
/// `/proc/self/clear_refs`. Returns whether it could.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident memory of one phase of a batch: [`PhasePeak::start`] opens the window, [`PhasePeak::end`]
/// reads its high-water mark (`None` where the kernel offers neither).
#[derive(Debug)]
pub struct PhasePeak {
    reset: bool,
}

impl PhasePeak {
    /// Open the window now.
    pub fn start() -> PhasePeak {
        PhasePeak { reset: reset_peak_rss() }
    }

    /// The most resident memory the process held since `start`, in bytes.
    pub fn end(self) -> Option<u64> {
        if self.reset {
            peak_rss_bytes()
        } else {
            None
        }
    }
}

/// The process group this process belongs to; one process until data-parallel training exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DistInfo {
    /// World size.
    pub num_processes: usize,
    /// Global rank.
    pub process_index: usize,
    /// Rank on this machine.
    pub local_process_index: usize,
}

impl Default for DistInfo {
    fn default() -> Self {
        DistInfo { num_processes: 1, process_index: 0, local_process_index: 0 }
    }
}

/// Samples the `system/*`, `accelerate/*` and `ddp/*` metrics for one device.
#[derive(Clone, Debug)]
pub struct SystemMetrics {
    device: tch::Device,
    dist: DistInfo,
}

impl SystemMetrics {
    /// For the device the policy trains on.
    pub fn new(device: tch::Device, dist: DistInfo) -> SystemMetrics {
        SystemMetrics { device, dist }
    }

    /// `cpu` or `cuda:N`, as `accelerate/device` shows it.
    pub fn device_name(&self) -> String {
        match self.device {
            tch::Device::Cuda(i) => format!("cuda:{i}"),
            tch::Device::Cpu => "cpu".to_string(),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    /// One step's system metrics. GPU memory is 0 on CPU, so dashboards keep their panels; `sync_gradients` is
    /// whether this step's optimizer update synchronised (always, without gradient accumulation).
    pub fn sample(&self, replay_buffer_size: usize, sync_gradients: bool) -> Metrics {
        let (allocated, reserved) = match self.device {
            tch::Device::Cuda(i) => cuda_memory(i).unwrap_or((0, 0)),
            _ => (0, 0),
        };
        let mut m = Metrics::new();
        m.insert("system/gpu_memory_allocated_gb".into(), MetricValue::Number(allocated as f64 / GB));
        m.insert("system/gpu_memory_reserved_gb".into(), MetricValue::Number(reserved as f64 / GB));
        m.insert("system/replay_buffer_size".into(), replay_buffer_size.into());
        if let Some(rss) = process_rss_bytes() {
            m.insert("system/process_rss_gb".into(), MetricValue::Number(rss as f64 / GB));
        }
        m.insert("accelerate/device".into(), MetricValue::Text(self.device_name()));
        m.insert("accelerate/sync_gradients".into(), sync_gradients.into());
        m.insert("ddp/num_processes".into(), self.dist.num_processes.into());
        m.insert("ddp/process_index".into(), self.dist.process_index.into());
        m.insert("ddp/local_process_index".into(), self.dist.local_process_index.into());
        m.insert("ddp/sync_gradients".into(), sync_gradients.into());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_peak_sees_its_own_allocations_only() {
        // Process-wide numbers, and other tests run beside this one: wide margins around a 512 MiB allocation.
        const MIB: u64 = 1 << 20;
        let big = PhasePeak::start();
        let before = process_rss_bytes().unwrap();
        drop(std::hint::black_box(vec![1u8; 512 << 20]));
        let peak = big.end().expect("Linux has VmHWM and clear_refs");
        assert!(peak >= before + 384 * MIB, "peak {peak} does not show 512 MiB over {before}");
        // A later phase that allocates nothing peaks well below the first.
        let quiet = PhasePeak::start();
        let later = quiet.end().unwrap();
        assert!(later + 384 * MIB < peak, "{later} is not below {peak} by most of the freed 512 MiB");
    }

    #[test]
    fn cpu_sample_has_every_seed_key() {
        let m = SystemMetrics::new(tch::Device::Cpu, DistInfo::default()).sample(48, true);
        assert_eq!(m["system/gpu_memory_allocated_gb"], MetricValue::Number(0.0));
        assert_eq!(m["system/replay_buffer_size"], MetricValue::Number(48.0));
        assert_eq!(m["accelerate/device"], MetricValue::Text("cpu".into()));
        assert_eq!(m["ddp/num_processes"], MetricValue::Number(1.0));
        let rss = m["system/process_rss_gb"].as_f64().unwrap();
        assert!(rss > 0.0 && rss < 64.0, "{rss}");
    }

    #[test]
    fn cuda_memory_tracks_allocations_when_a_gpu_exists() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the shim is linked but only checked to report nothing");
            assert_eq!(cuda_memory(0), None);
            return;
        }
        let (before, _) = cuda_memory(0).expect("stats on cuda:0");
        let t = tch::Tensor::zeros([64, 1024, 1024], (tch::Kind::Float, tch::Device::Cuda(0)));
        let (after, reserved) = cuda_memory(0).unwrap();
        assert_eq!(after - before, 256 * 1024 * 1024, "a 256 MiB tensor");
        assert!(reserved >= after);
        drop(t);
    }
}
