//! Where a model runs and in which precision, as typed choices: `auto`, `cpu`, `cuda`, `cuda:N` for the device;
//! `auto`, `f32`, `bf16`, `f16` for the dtype. Resolving `auto` needs the machine, so it happens at load time.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::user_error;

/// A requested device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when CUDA is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// The libtorch device; a CUDA device that is not there is a user error naming what is.
    pub fn resolve(self) -> anyhow::Result<Device> {
        match self {
            DeviceSpec::Auto => Ok(Device::cuda_if_available()),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !tch::Cuda::is_available() {
                    return Err(user_error!("device {self}: CUDA is not available on this machine; use cpu"));
                }
                let count = tch::Cuda::device_count().max(0) as usize;
                if n >= count {
                    return Err(user_error!("device {self}: only {count} CUDA device(s) are available"));
                }
                Ok(Device::Cuda(n))
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = crate::choice::UnknownChoice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| crate::choice::UnknownChoice::new(other, &["auto", "cpu", "cuda", "cuda:N"])),
        }
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

crate::choice_enum! {
    /// A requested parameter dtype.
    #[derive(Default)]
    pub enum DtypeSpec {
        /// bf16 on CUDA, f32 on the CPU.
        #[default]
        Auto = "auto",
        /// 32-bit floats.
        F32 = "f32" | "float32",
        /// bfloat16.
        Bf16 = "bf16" | "bfloat16",
        /// IEEE half precision.
        F16 = "f16" | "float16" | "fp16",
    }
}

impl DtypeSpec {
    /// The libtorch kind on `device`.
    pub fn resolve(self, device: Device) -> Kind {
        match self {
            DtypeSpec::Auto if device.is_cuda() => Kind::BFloat16,
            DtypeSpec::Auto | DtypeSpec::F32 => Kind::Float,
            DtypeSpec::Bf16 => Kind::BFloat16,
            DtypeSpec::F16 => Kind::Half,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap().to_string(), "cuda:3");
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().to_string().contains("auto, cpu, cuda or cuda:N"));
        assert_eq!("bfloat16".parse::<DtypeSpec>().unwrap(), DtypeSpec::Bf16);
        assert_eq!(DtypeSpec::Auto.resolve(Device::Cpu), Kind::Float);
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
    }
}
