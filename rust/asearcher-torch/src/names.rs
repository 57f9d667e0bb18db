//! Device and dtype names as users write them (`cpu`, `cuda:1`, `bfloat16`, `torch.float16`),
//! parsed once for every entry point (Python classes, CLI, servers).

use crate::{Result, TorchError};
use tch::{Device, Kind};

/// `cpu`, `cuda` (device 0) or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => name
            .strip_prefix("cuda:")
            .and_then(|i| i.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| {
                TorchError::config("device", format!("{name:?} is not cpu, cuda or cuda:N"))
            }),
    }
}

/// `float32`, `bfloat16` or `float16`, also as `torch.float32`, `float`, `fp32`, `bf16`, `half`...
pub fn parse_dtype(name: &str) -> Result<Kind> {
    match name.trim_start_matches("torch.") {
        "float32" | "float" | "fp32" => Ok(Kind::Float),
        "bfloat16" | "bf16" => Ok(Kind::BFloat16),
        "float16" | "half" | "fp16" => Ok(Kind::Half),
        other => Err(TorchError::config(
            "dtype",
            format!("{other:?} is not float32, bfloat16 or float16"),
        )),
    }
}

/// The torch name of a floating dtype the model supports.
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// `cpu` or `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_named() {
        assert_eq!(parse_device("cuda:2").unwrap(), Device::Cuda(2));
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_dtype("torch.bfloat16").unwrap(), Kind::BFloat16);
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("`device`") && e.contains("tpu"), "{e}");
        let e = parse_dtype("int8").unwrap_err().to_string();
        assert!(e.contains("`dtype`") && e.contains("int8"), "{e}");
        assert_eq!(dtype_name(parse_dtype("bf16").unwrap()), "bfloat16");
        assert_eq!(device_name(Device::Cuda(1)), "cuda:1");
    }
}
