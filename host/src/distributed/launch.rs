//! The launch environment torchrun (torch.distributed.run) gives each worker process.

use anyhow::Result;

use crate::user_error;

/// Where this process stands in a torchrun job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// `RANK`: global rank.
    pub rank: usize,
    /// `LOCAL_RANK`: rank on this machine, and the CUDA device it uses.
    pub local_rank: usize,
    /// `WORLD_SIZE`: processes in the job.
    pub world_size: usize,
    /// `LOCAL_WORLD_SIZE`: processes on this machine.
    pub local_world_size: usize,
    /// `MASTER_ADDR`: the store's host.
    pub master_addr: String,
    /// `MASTER_PORT`: the store's port.
    pub master_port: u16,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`: torchrun's agent hosts the store; every rank is a client.
    pub agent_store: bool,
    /// `TORCHELASTIC_RESTART_COUNT`: which attempt of the job this is (its keys in the agent's store are its own).
    pub restart_count: u64,
}

impl Launch {
    /// Read the variables; `None` when `WORLD_SIZE` is unset (not launched by torchrun: one process).
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), from any lookup (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let Some(world) = var("WORLD_SIZE") else { return Ok(None) };
        let number = |name: &str, value: &str| -> Result<usize> {
            value.trim().parse::<usize>().map_err(|_| {
                user_error!(
                    "{name}={value:?} is not a number; launch with torchrun, which sets it, or unset WORLD_SIZE"
                )
            })
        };
        let required = |name: &str| -> Result<String> {
            var(name).ok_or_else(|| {
                user_error!("WORLD_SIZE is set but {name} is not; launch with torchrun --no-python, which sets both")
            })
        };
        let world_size = number("WORLD_SIZE", &world)?;
        let rank = number("RANK", &required("RANK")?)?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", &v)?,
            None => rank,
        };
        let local_world_size = match var("LOCAL_WORLD_SIZE") {
            Some(v) => number("LOCAL_WORLD_SIZE", &v)?,
            None => world_size,
        };
        if world_size == 0 || rank >= world_size {
            return Err(user_error!("RANK={rank} is not below WORLD_SIZE={world_size}; check the launcher's settings"));
        }
        let port = if world_size > 1 { required("MASTER_PORT")? } else { var("MASTER_PORT").unwrap_or("0".into()) };
        let master_port = port
            .trim()
            .parse::<u16>()
            .map_err(|_| user_error!("MASTER_PORT={port:?} is not a port number (1-65535)"))?;
        Ok(Some(Launch {
            rank,
            local_rank,
            world_size,
            local_world_size,
            master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".to_string()),
            master_port,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True"),
            restart_count: var("TORCHELASTIC_RESTART_COUNT").and_then(|v| v.parse().ok()).unwrap_or(0),
        }))
    }

    /// Whether an elastic launcher (torchrun) started this process: it reruns the same command after a failure.
    pub fn elastic() -> bool {
        std::env::var_os("TORCHELASTIC_RESTART_COUNT").is_some()
    }

    /// Whether this process starts the store server: rank 0, unless torchrun's agent already hosts it.
    pub fn hosts_store(&self) -> bool {
        !self.agent_store && self.rank == 0
    }

    /// The key prefix of this job's process group in the store: each restart attempt has its own under an agent's
    /// store, which outlives the workers.
    pub fn store_prefix(&self) -> String {
        if self.agent_store {
            format!("/worker/attempt_{}/default_pg/", self.restart_count)
        } else {
            "default_pg/".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Launch::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn no_torchrun_means_one_process() {
        assert_eq!(launch(&[]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables_are_read() {
        let l = launch(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.7"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.local_rank, l.world_size, l.local_world_size), (3, 1, 4, 2));
        assert_eq!((l.master_addr.as_str(), l.master_port), ("10.0.0.7", 29500));
        assert!(!l.hosts_store());
        assert_eq!(l.store_prefix(), "/worker/attempt_2/default_pg/");
    }

    #[test]
    fn rank_zero_hosts_the_store_without_an_agent() {
        let l = launch(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1234")]).unwrap().unwrap();
        assert!(l.hosts_store());
        assert_eq!(l.master_addr, "127.0.0.1");
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let e = launch(&[("WORLD_SIZE", "2"), ("RANK", "x"), ("MASTER_PORT", "1")]).unwrap_err().to_string();
        assert!(e.contains("RANK=\"x\""), "{e}");
        let e = launch(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")]).unwrap_err().to_string();
        assert!(e.contains("not below WORLD_SIZE"), "{e}");
        let e = launch(&[("WORLD_SIZE", "2"), ("RANK", "0")]).unwrap_err().to_string();
        assert!(e.contains("MASTER_PORT"), "{e}");
    }
}
