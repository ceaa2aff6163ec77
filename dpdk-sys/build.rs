//! Finds DPDK with pkg-config, generates bindings with bindgen (including C wrappers for the
//! `static inline` fast path) and compiles them with the small C helper file.
//!
//! When DPDK (or libclang) is not available the crate still builds, empty but for an explanation,
//! and `cfg(dpdk_unavailable)` is set. `DPDK_SYS_DISABLE=1` forces that (for testing the fallback).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIN_VERSION: &str = "22.11";

fn main() {
    println!("cargo:rustc-check-cfg=cfg(dpdk_unavailable)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DPDK_SYS_DISABLE");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");

    match try_build() {
        Ok(version) => {
            println!("cargo:available=1");
            println!("cargo:version={version}");
        }
        Err(reason) => {
            let reason = reason.replace(['\n', '\r'], " ");
            println!("cargo:rustc-cfg=dpdk_unavailable");
            println!("cargo:rustc-env=DPDK_SYS_UNAVAILABLE_REASON={reason}");
            println!("cargo:available=0");
            if env::var_os("CARGO_FEATURE_REQUIRE").is_some() {
                println!("cargo:warning=dpdk-sys: DPDK not usable: {reason}");
            }
        }
    }
}

/// Runs `pkg-config <args> libdpdk` and splits its output into words.
fn pkg_config(args: &[&str]) -> Result<Vec<String>, String> {
    let exe = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(&exe)
        .args(args)
        .arg("libdpdk")
        .output()
        .map_err(|e| format!("cannot run {exe}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{exe} {} libdpdk` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

fn try_build() -> Result<String, String> {
    if env::var_os("DPDK_SYS_DISABLE").is_some_and(|v| !v.is_empty() && v != "0") {
        return Err("disabled by DPDK_SYS_DISABLE".into());
    }
    let version = pkg_config(&["--modversion"])?.join(" ");
    pkg_config(&[&format!("--atleast-version={MIN_VERSION}")])
        .map_err(|_| format!("found DPDK {version}, need at least {MIN_VERSION}"))?;

    // The pkg-config crate drops `-include rte_config.h` and `-march=...`: pass every cflag
    // ourselves, to clang (bindgen) and to the C compiler alike.
    let cflags = pkg_config(&["--cflags"])?;

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let csrc = manifest.join("csrc");
    let wrapper = csrc.join("wrapper.h");
    let static_fns = out_dir.join("static_fns");

    let bindings = generate(&wrapper, &csrc, &cflags, &static_fns)?;
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .map_err(|e| format!("cannot write bindings: {e}"))?;

    // Wrappers for the static inline functions, plus the macro helpers.
    let mut build = cc::Build::new();
    build
        .file(static_fns.with_extension("c"))
        .file(csrc.join("helpers.c"))
        .include(&csrc)
        .include(&manifest)
        .warnings(false)
        .opt_level(2);
    for flag in &cflags {
        build.flag(flag);
    }
    build
        .try_compile("dpdk_sys_wrappers")
        .map_err(|e| format!("cannot compile the C wrappers: {e}"))?;

    // Link after the wrapper archive so the linker resolves its references.
    link(&pkg_config(&["--libs"])?);
    Ok(version)
}

fn generate(
    wrapper: &Path,
    csrc: &Path,
    cflags: &[String],
    static_fns: &Path,
) -> Result<bindgen::Bindings, String> {
    let builder = bindgen::Builder::default()
        .header(wrapper.to_string_lossy())
        .clang_args(cflags)
        .clang_arg(format!("-I{}", csrc.display()))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .wrap_static_fns(true)
        .wrap_static_fns_path(static_fns)
        .allowlist_function("rte_eal_.*")
        .allowlist_function("rte_eth_.*")
        .allowlist_function("rte_pktmbuf_.*")
        .allowlist_function("rte_mbuf_.*")
        .allowlist_function("rte_mempool_.*")
        .allowlist_function("rte_lcore_.*")
        .allowlist_function("rte_socket_.*")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_version")
        .allowlist_function("rte_vdev_.*")
        .allowlist_function("rte_sys_.*")
        .allowlist_type("rte_eth_.*")
        .allowlist_type("rte_ether_addr")
        .allowlist_var("RTE_ETH_.*")
        .allowlist_var("RTE_MBUF_.*")
        .allowlist_var("RTE_PKTMBUF_.*")
        .allowlist_var("RTE_MEMPOOL_.*")
        .allowlist_var("RTE_MAX_.*")
        .allowlist_var("RTE_ETHER_.*")
        .allowlist_var("RTE_VER_.*")
        .allowlist_var("SOCKET_ID_ANY")
        .allowlist_var("LCORE_ID_ANY")
        // Flag values such as RTE_ETH_RX_OFFLOAD_IPV4_CKSUM are `RTE_BIT64(n)`: ask clang.
        .clang_macro_fallback()
        .clang_macro_fallback_build_dir(env::var("OUT_DIR").unwrap())
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false);
    // A missing libclang makes bindgen panic rather than fail: report it as "unavailable".
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate())) {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(format!("bindgen failed: {e}")),
        Err(_) => Err(
            "bindgen panicked (is libclang installed? apt-get install libclang-dev clang)".into(),
        ),
    }
}

/// Emits link directives for `pkg-config --libs` output.
fn link(libs: &[String]) {
    for word in libs {
        if let Some(dir) = word.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = word.strip_prefix("-l") {
            // `-l:librte_foo.a` style entries only appear in static builds.
            println!("cargo:rustc-link-lib={lib}");
        } else if word.starts_with("-Wl,") {
            // e.g. -Wl,--as-needed: rustc already links with --as-needed.
        } else {
            println!("cargo:rustc-link-arg={word}");
        }
    }
}
