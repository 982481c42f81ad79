//! Writes the busybox test image as an OCI archive: `nvtest-image OUT.tar [NAME]`, for
//! `ctr image import OUT.tar`. Used by the demo script and the GPU-host kit.

use anyhow::{Context, Result};
use nvidia_shim_integration::containerd::BUSYBOX_IMAGE;
use nvidia_shim_integration::image::ImageSpec;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().context("usage: nvtest-image OUT.tar [NAME]")?;
    let name = args.next().unwrap_or_else(|| BUSYBOX_IMAGE.to_owned());
    ImageSpec::busybox()?.write_archive(&name, std::path::Path::new(&out))?;
    println!("{name}");
    Ok(())
}
