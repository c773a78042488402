//! Builds the eBPF object (`mesh-ebpf`, bin `mesh`) with the nightly toolchain
//! and bpf-linker, into OUT_DIR, where `ebpf/loader.rs` includes it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "mesh-ebpf")
        .ok_or_else(|| anyhow!("mesh-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("mesh-ebpf manifest has no parent directory"))?
        .as_str()
        .to_owned();
    // aya-build relays every line the inner cargo prints on stderr as a
    // `warning:` of this crate (~30 `Compiling ...` lines on a fresh build).
    // Quiet, it prints only what matters: errors, and the compiler's
    // messages, which still come as warnings.
    // SAFETY: a build script is single-threaded here: no thread has been
    // spawned yet that could read the environment concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
