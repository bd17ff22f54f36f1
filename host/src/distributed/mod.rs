//! Data parallelism's plumbing: the launch environment `torchrun` sets, and a process group over libtorch's own c10d
//! (a `TCPStore` for rendezvous, Gloo for CPU tensors, NCCL for CUDA ones when built in) through the C++ shims in
//! `c10d.cpp` and `c10d_nccl.cpp`. Nothing outside this module sees the FFI; the trainer talks to a [`World`], which
//! is also what a single process is (a world of one, where every collective is the identity).
//!
//! Launch: `torchrun --no-python --nproc-per-node N grpo-host train ...` sets `RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` and `TORCHELASTIC_USE_AGENT_STORE`. When the last is `True` the
//! agent hosts the store and every rank connects to it as a client, under the key prefix of its restart attempt
//! (`TORCHELASTIC_RESTART_COUNT`), as torch.distributed's `env://` rendezvous does; otherwise rank 0 hosts it.

mod launch;

use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

pub use launch::Launch;

use crate::runtime::ErrBuf;
use crate::user_error;

extern "C" {
    fn grpo_pg_new(
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        is_server: c_int,
        prefix: *const c_char,
        nccl: c_int,
        timeout_ms: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut c_void;
    fn grpo_pg_free(handle: *mut c_void);
    fn grpo_pg_has_nccl() -> c_int;
    fn grpo_pg_all_reduce(handle: *mut c_void, t: *mut c_void, op: c_int, err: *mut c_char, err_len: usize) -> c_int;
    fn grpo_pg_broadcast(handle: *mut c_void, t: *mut c_void, root: c_int, err: *mut c_char, err_len: usize) -> c_int;
    fn grpo_pg_all_gather(
        handle: *mut c_void,
        input: *mut c_void,
        outputs: *mut *mut c_void,
        world: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn grpo_pg_barrier(handle: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    fn grpo_pg_store_set(
        handle: *mut c_void,
        key: *const c_char,
        value: *const c_char,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn grpo_pg_store_check(handle: *mut c_void, key: *const c_char, err: *mut c_char, err_len: usize) -> c_int;
}

/// How long the survivors of a failed collective wait for each other to report before naming the rest as lost.
const REPORT_GRACE: Duration = Duration::from_secs(5);
/// Gradients are all-reduced in flat buckets of about this many bytes (DDP's default), not one call per tensor.
const BUCKET_BYTES: i64 = 25 << 20;

/// A reduction of an all-reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}

/// A c10d process group (Gloo, with NCCL beside it for CUDA tensors when asked), owned; destroyed on drop.
struct ProcessGroup {
    handle: NonNull<c_void>,
    size: usize,
    /// CUDA tensors go through NCCL on the device; otherwise through Gloo by way of host memory.
    nccl: bool,
}

// SAFETY: c10d process groups are used from one thread at a time here (the trainer's), and c10d's objects are not
// tied to the thread that created them.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    fn connect(launch: &Launch, timeout: Duration, nccl: bool) -> Result<ProcessGroup> {
        let addr = CString::new(launch.master_addr.as_str()).context("MASTER_ADDR holds a NUL byte")?;
        let prefix = CString::new(launch.store_prefix()).expect("no NUL in the prefix");
        let mut err = ErrBuf::new();
        // SAFETY: every pointer is valid for the call; the shim copies what it keeps.
        let handle = unsafe {
            grpo_pg_new(
                addr.as_ptr(),
                c_int::from(launch.master_port),
                launch.rank as c_int,
                launch.world_size as c_int,
                c_int::from(launch.hosts_store()),
                prefix.as_ptr(),
                c_int::from(nccl),
                timeout.as_millis() as i64,
                err.ptr(),
                1024,
            )
        };
        let handle = NonNull::new(handle).ok_or_else(|| {
            user_error!(
                "rank {}: joining the process group at {}:{} failed: {} (are all {} ranks started with the same \
                 MASTER_ADDR/MASTER_PORT, and is the port reachable? --dist-timeout sets how long to wait)",
                launch.rank,
                launch.master_addr,
                launch.master_port,
                err.text(),
                launch.world_size
            )
        })?;
        Ok(ProcessGroup { handle, size: launch.world_size, nccl })
    }

    fn check(&self, rc: c_int, err: &ErrBuf) -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(anyhow!("{}", err.text()))
        }
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        let op = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        let mut err = ErrBuf::new();
        // SAFETY: `t` is a live tensor; the shim reads the handle during the call only.
        let rc = unsafe { grpo_pg_all_reduce(self.handle.as_ptr(), t.as_ptr() as *mut c_void, op, err.ptr(), 1024) };
        self.check(rc, &err)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        let mut err = ErrBuf::new();
        // SAFETY: as in `all_reduce`.
        let rc = unsafe {
            grpo_pg_broadcast(self.handle.as_ptr(), t.as_ptr() as *mut c_void, root as c_int, err.ptr(), 1024)
        };
        self.check(rc, &err)
    }

    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        let outputs: Vec<Tensor> = (0..self.size).map(|_| t.empty_like()).collect();
        let mut ptrs: Vec<*mut c_void> = outputs.iter().map(|o| o.as_ptr() as *mut c_void).collect();
        let mut err = ErrBuf::new();
        // SAFETY: `t` and every output are live tensors of `t`'s shape for the call.
        let rc = unsafe {
            grpo_pg_all_gather(
                self.handle.as_ptr(),
                t.as_ptr() as *mut c_void,
                ptrs.as_mut_ptr(),
                self.size,
                err.ptr(),
                1024,
            )
        };
        self.check(rc, &err).map(|()| outputs)
    }

    fn barrier(&self) -> Result<()> {
        let mut err = ErrBuf::new();
        // SAFETY: a valid handle.
        let rc = unsafe { grpo_pg_barrier(self.handle.as_ptr(), err.ptr(), 1024) };
        self.check(rc, &err)
    }

    fn store_set(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (CString::new(key)?, CString::new(value)?);
        let mut err = ErrBuf::new();
        // SAFETY: valid C strings for the call.
        let rc = unsafe { grpo_pg_store_set(self.handle.as_ptr(), key.as_ptr(), value.as_ptr(), err.ptr(), 1024) };
        self.check(rc, &err)
    }

    fn store_has(&self, key: &str) -> Result<bool> {
        let key = CString::new(key)?;
        let mut err = ErrBuf::new();
        // SAFETY: a valid C string for the call.
        let rc = unsafe { grpo_pg_store_check(self.handle.as_ptr(), key.as_ptr(), err.ptr(), 1024) };
        match rc {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(anyhow!("{}", err.text())),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from grpo_pg_new and is freed once.
        unsafe { grpo_pg_free(self.handle.as_ptr()) }
    }
}

/// The processes a run trains in: this one's rank among them, and their process group. A single process is a
/// world of one whose collectives return their input.
pub struct World {
    /// This process's global rank.
    pub rank: usize,
    /// Number of processes.
    pub size: usize,
    /// This process's rank on its machine (its CUDA device).
    pub local_rank: usize,
    group: Option<ProcessGroup>,
    /// Set once a collective has failed: the group is unusable and later calls fail at once.
    broken: std::cell::Cell<bool>,
}

impl World {
    /// One process, no process group.
    pub fn single() -> World {
        World { rank: 0, size: 1, local_rank: 0, group: None, broken: Default::default() }
    }

    /// Join the process group `launch` (torchrun's environment) describes, with `timeout` for the rendezvous and
    /// every collective (a world of one needs none); `cuda` adds NCCL for CUDA tensors when this build has it (else
    /// they go through Gloo by way of host memory).
    pub fn connect(launch: &Launch, timeout: Duration, cuda: bool) -> Result<World> {
        if launch.world_size == 1 {
            return Ok(World { local_rank: launch.local_rank, ..World::single() });
        }
        let group = ProcessGroup::connect(launch, timeout, cuda && nccl_built())?;
        Ok(World {
            rank: launch.rank,
            size: launch.world_size,
            local_rank: launch.local_rank,
            group: Some(group),
            broken: Default::default(),
        })
    }

    /// The world of a run started by torchrun (a world of one without it): one GPU per rank, so `device` becomes
    /// `cuda:LOCAL_RANK` when it asks for CUDA (or is `auto` and CUDA is present), before any CUDA work.
    pub fn for_run(device: &mut crate::model::DeviceSpec, timeout: Duration) -> Result<World> {
        use crate::model::DeviceSpec;
        let Some(launch) = Launch::from_env()?.filter(|l| l.world_size > 1) else { return Ok(World::single()) };
        *device = match *device {
            DeviceSpec::Auto if tch::Cuda::is_available() => DeviceSpec::Cuda(launch.local_rank),
            DeviceSpec::Cuda(_) => DeviceSpec::Cuda(launch.local_rank),
            other => other,
        };
        World::connect(&launch, timeout, matches!(device, DeviceSpec::Cuda(_)))
    }

    /// Run `decide` on rank 0 alone and give every rank its outcome (rank 0 picks run folders and writes files;
    /// the others wait here for it). A failure on rank 0 is a failure on every rank, a user error staying one.
    pub fn on_main<T: Serialize + DeserializeOwned>(
        &self,
        what: &str,
        decide: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.share_from_main(what, self.is_main().then(decide))
    }

    /// Rank 0's `outcome` (`Some` there, `None` on the other ranks) on every rank, as [`World::on_main`] gives it.
    pub fn share_from_main<T: Serialize + DeserializeOwned>(
        &self,
        what: &str,
        outcome: Option<Result<T>>,
    ) -> Result<T> {
        if self.group.is_none() {
            return outcome.unwrap_or_else(|| Err(anyhow!("internal: {what}: no outcome on the only rank")));
        }
        let shared: std::result::Result<serde_json::Value, (String, bool)> = match &outcome {
            Some(Ok(value)) => Ok(serde_json::to_value(value)?),
            Some(Err(e)) => Err((format!("{e:#}"), crate::error::exit_code(e) == 2)),
            None => Err((String::new(), false)),
        };
        match (self.from_main(what, shared)?, outcome) {
            (_, Some(result)) => result,
            (Ok(value), None) => Ok(serde_json::from_value(value)?),
            (Err((e, true)), None) => Err(user_error!("rank {}: {what} failed on rank 0: {e}", self.rank)),
            (Err((e, false)), None) => Err(anyhow!("rank {}: {what} failed on rank 0: {e}", self.rank)),
        }
    }

    /// Whether this process writes the run's files and logs (rank 0).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Whether there is more than one process.
    pub fn is_distributed(&self) -> bool {
        self.group.is_some()
    }

    /// Run one collective, turning a failure into the line that names the lost ranks.
    fn collective<T>(&self, what: &str, f: impl FnOnce(&ProcessGroup) -> Result<T>) -> Result<T> {
        let group = self.group.as_ref().expect("collectives of a world of one are handled by the caller");
        if self.broken.get() {
            return Err(anyhow!("rank {}: the process group failed earlier; {what} is not possible", self.rank));
        }
        f(group).map_err(|err| {
            self.broken.set(true);
            let lost = self.lost_ranks(group);
            user_error!(
                "rank {}: {what} failed: {err:#}; {} (the lost rank's own output says why); the other ranks stop \
                 too: restart the job (torchrun --max-restarts, or by hand) with --resume auto to continue from the \
                 last checkpoint",
                self.rank,
                match lost.as_slice() {
                    [] => "another rank has died or hung".to_string(),
                    [one] => format!("rank {one} is lost (died or hung)"),
                    many => format!(
                        "ranks {} are lost (died or hung)",
                        many.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
                    ),
                }
            )
        })
    }

    /// After a failed collective: each survivor says so in the store, waits a few seconds for the others, and the
    /// ranks that did not report are the lost ones. When the store itself is gone, its host (rank 0, unless the
    /// torchrun agent hosts it) is.
    fn lost_ranks(&self, group: &ProcessGroup) -> Vec<usize> {
        let key = |r: usize| format!("grpo/failed/{r}");
        if group.store_set(&key(self.rank), "1").is_err() {
            return if self.rank == 0 { Vec::new() } else { vec![0] };
        }
        let deadline = Instant::now() + REPORT_GRACE;
        loop {
            let missing: Vec<usize> =
                (0..self.size).filter(|&r| r != self.rank && !group.store_has(&key(r)).unwrap_or(false)).collect();
            if missing.is_empty() || Instant::now() >= deadline {
                return missing;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Tell every rank, through the job's store and without waiting for a collective, that this process was asked
    /// to stop by `signal`: a rank that was not signalled (a preemption that reached one machine) then drops its
    /// work within moments instead of finishing it (see [`World::stop_announced`]). Best effort: a store that cannot
    /// be reached leaves the news to the next collective.
    pub fn announce_stop(&self, signal: i32) {
        if let Some(group) = &self.group {
            let _ = group.store_set(&stop_key(signal), "1");
        }
    }

    /// Which of `signals` another rank announced a stop for, if any (one round trip to the store per signal: ask a
    /// few times a second, not every step).
    pub fn stop_announced(&self, signals: &[i32]) -> Option<i32> {
        let group = self.group.as_ref()?;
        signals.iter().copied().find(|&s| group.store_has(&stop_key(s)).unwrap_or(false))
    }

    /// Sum (or max, min) `t` over the ranks, in place. The tensor must be dense and contiguous.
    pub fn all_reduce(&self, what: &str, t: &Tensor, op: ReduceOp) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        self.collective(what, |g| g.all_reduce(t, op))
    }

    /// Reduce a few numbers over the ranks (on the CPU).
    pub fn reduce_f64(&self, what: &str, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
        if self.group.is_none() {
            return Ok(values.to_vec());
        }
        let t = Tensor::from_slice(values);
        self.all_reduce(what, &t, op)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Average `tensors` over the ranks in place, in flat f32 buckets of about 25 MB (one collective per bucket,
    /// not per tensor). All tensors must be f32, on one device, in the same order on every rank.
    pub fn average(&self, what: &str, tensors: &[Tensor]) -> Result<()> {
        if self.group.is_none() || tensors.is_empty() {
            return Ok(());
        }
        let scale = 1.0 / self.size as f64;
        let mut start = 0;
        while start < tensors.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < tensors.len() && (end == start || bytes + tensors[end].numel() as i64 * 4 <= BUCKET_BYTES) {
                bytes += tensors[end].numel() as i64 * 4;
                end += 1;
            }
            let part = &tensors[start..end];
            tch::no_grad(|| -> Result<()> {
                let flat = self.staged(&Tensor::cat(&part.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0));
                self.all_reduce(what, &flat, ReduceOp::Sum)?;
                let mut offset = 0;
                for t in part {
                    let n = t.numel() as i64;
                    let mut t = t.shallow_clone();
                    t.copy_(&(flat.narrow(0, offset, n) * scale).view_as(&t));
                    offset += n;
                }
                Ok(())
            })?;
            start = end;
        }
        Ok(())
    }

    /// Overwrite every rank's `tensors` with rank 0's (in place, one collective each).
    pub fn broadcast(&self, what: &str, tensors: &[Tensor]) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        for t in tensors {
            let dense = self.staged(&t.contiguous());
            self.collective(what, |g| g.broadcast(&dense, 0))?;
            if dense.data_ptr() != t.data_ptr() {
                tch::no_grad(|| t.shallow_clone().copy_(&dense));
            }
        }
        Ok(())
    }

    /// `t` itself when the group can reduce it where it is (a CPU tensor, or a CUDA one with NCCL), else a CPU copy
    /// for Gloo.
    fn staged(&self, t: &Tensor) -> Tensor {
        let nccl = self.group.as_ref().is_some_and(|g| g.nccl);
        if t.device() == Device::Cpu || nccl {
            t.shallow_clone()
        } else {
            t.to_device(Device::Cpu)
        }
    }

    /// Wait for every rank.
    pub fn barrier(&self, what: &str) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        self.collective(what, ProcessGroup::barrier)
    }

    /// Every rank's `value`, in rank order (serialized, see `encode`; for metrics and small records, not tensors).
    pub fn gather<T: Serialize + DeserializeOwned>(&self, what: &str, value: T) -> Result<Vec<T>> {
        if self.group.is_none() {
            return Ok(vec![value]);
        }
        let bytes = encode(&value)?;
        let lens = self.reduce_gathered(what, bytes.len() as i64)?;
        let longest = lens.iter().copied().max().unwrap_or(0).max(1);
        let mut padded = bytes;
        padded.resize(longest as usize, 0);
        let t = Tensor::from_slice(&padded);
        let parts = self.collective(what, |g| g.all_gather(&t))?;
        parts
            .iter()
            .zip(lens)
            .map(|(p, len)| {
                let all = Vec::<u8>::try_from(p)?;
                decode(&all[..len as usize])
            })
            .collect()
    }

    /// Rank 0's `value` on every rank.
    pub fn from_main<T: Serialize + DeserializeOwned>(&self, what: &str, value: T) -> Result<T> {
        if self.group.is_none() {
            return Ok(value);
        }
        Ok(self.gather(what, value)?.swap_remove(0))
    }

    /// One integer from every rank.
    fn reduce_gathered(&self, what: &str, x: i64) -> Result<Vec<i64>> {
        let t = Tensor::from_slice(&[x]);
        let parts = self.collective(what, |g| g.all_gather(&t))?;
        Ok(parts.iter().map(|p| p.int64_value(&[0])).collect())
    }

    /// Stop with one line naming the ranks whose `fingerprint` differs from rank 0's (diverged weights).
    pub fn check_same(&self, what: &str, fingerprint: i64) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        let all = self.reduce_gathered(what, fingerprint)?;
        let differ: Vec<String> =
            all.iter().enumerate().filter(|(_, &f)| f != all[0]).map(|(r, _)| r.to_string()).collect();
        if differ.is_empty() {
            return Ok(());
        }
        Err(user_error!(
            "{what}: the weights of rank(s) {} differ from rank 0's (fingerprints {all:?}); the ranks have diverged, \
             which data-parallel training must never do: resume from the last checkpoint, and report this with \
             the run's config.json",
            differ.join(", ")
        ))
    }
}

/// The store key a rank told to stop by `signal` sets.
fn stop_key(signal: i32) -> String {
    format!("grpo/stop/{signal}")
}

/// A record as the ranks exchange it: CBOR, self-describing like JSON (so enums, maps and `serde_json::Value`s pass
/// as they are) but keeping NaN and the infinities, which a diverging loss or a plugin's mean over nothing produce and
/// JSON would turn into a `null` that no number can be read back from.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| anyhow!("encoding a record for the other ranks: {e}"))?;
    Ok(out)
}

/// The record [`encode`] made.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    ciborium::from_reader(bytes).map_err(|e| anyhow!("decoding another rank's record: {e}"))
}

/// Whether this build has NCCL (see c10d_nccl.cpp).
pub fn nccl_built() -> bool {
    // SAFETY: no arguments, no state.
    unsafe { grpo_pg_has_nccl() == 1 }
}

/// An order-independent, exact fingerprint of tensors' bits: each element's bit pattern read as an integer and
/// summed in 64 bits (with the tensor's position mixed in). Exact, unlike a float sum, so equal weights give equal
/// fingerprints on any CPU or GPU whatever the reduction order.
pub fn fingerprint(tensors: &[Tensor]) -> i64 {
    tch::no_grad(|| {
        let mut acc: i64 = 0;
        for (i, t) in tensors.iter().enumerate() {
            let bits = match t.kind() {
                Kind::Float => t.view_dtype(Kind::Int),
                Kind::BFloat16 | Kind::Half => t.view_dtype(Kind::Int16),
                Kind::Double => t.view_dtype(Kind::Int64),
                _ => t.shallow_clone(),
            };
            // Summed in 64 bits as they are read, without a widened copy of the tensor.
            let s = bits.sum(Kind::Int64).to_device(Device::Cpu).int64_value(&[]);
            acc = acc.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as i64).wrapping_add(s ^ i as i64);
        }
        acc
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use grpo_sdk::MetricValue;

    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
        decode(&encode(value).unwrap()).unwrap()
    }

    #[test]
    fn records_keep_non_finite_numbers_and_their_shape() {
        let numbers = vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 1e-310, 0.1];
        let back = round_trip(&numbers);
        assert!(back[0].is_nan());
        assert_eq!(
            back[1..].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            numbers[1..].iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        // The shapes the trainer gathers: plugin metrics, options, results, maps and JSON values.
        let metrics = vec![
            ("kl".to_string(), MetricValue::Number(f64::NAN)),
            ("example".to_string(), MetricValue::Text("a <b>".into())),
        ];
        let back = round_trip(&metrics);
        assert!(matches!(back[0].1, MetricValue::Number(x) if x.is_nan()));
        assert!(matches!(&back[1].1, MetricValue::Text(t) if t == "a <b>"));
        let sums: std::collections::BTreeMap<String, (f64, usize)> = [("loss".to_string(), (f64::INFINITY, 3))].into();
        let shared: (Option<u64>, Result<u64, Option<i32>>, _) = (Some(u64::MAX), Err(Some(15)), sums);
        let back = round_trip(&shared);
        assert_eq!((back.0, back.1), (Some(u64::MAX), Err(Some(15))));
        assert_eq!(back.2["loss"], (f64::INFINITY, 3));
        let json = serde_json::json!({"lr": 3e-5, "steps": 12, "name": "run", "nested": [1, -2, null, true]});
        assert_eq!(round_trip(&json), json);
    }
}
