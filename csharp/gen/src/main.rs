//! Generates `csharp/src/NativeMethods.g.cs`, the P/Invoke declarations of the C ABI, with
//! csbindgen from machnet-ffi's exported functions (`machnet-ffi/src/lib.rs`, the same source
//! cbindgen turns into `machnet.h`).
//!
//! Usage: `machnet-csbindgen <machnet-ffi/src/lib.rs> <output.cs>` (ci/csharp.sh runs it and
//! fails when the checked-in file differs; `ci/csharp.sh --update-bindings` rewrites it).
//!
//! csbindgen settings: C# 7.2 compatible output (no `nint`, no function pointers: Debian's
//! mono `mcs` accepts it), library name `machnet`, `ssize_t` as `IntPtr`. One post-processing
//! step: every import gets `SetLastError = true` so the managed layer reads `errno` with
//! `Marshal.GetLastWin32Error()` (csbindgen has no option for it).

use std::error::Error;

fn rename(rust_type: String) -> String {
    match rust_type.as_str() {
        "ssize_t" => "IntPtr".into(),
        _ => rust_type,
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return Err("usage: machnet-csbindgen <machnet-ffi/src/lib.rs> <output.cs>".into());
    }
    let tmp = format!("{}.tmp", args[2]);
    csbindgen::Builder::default()
        .input_extern_file(&args[1])
        .csharp_dll_name("machnet")
        .csharp_namespace("Machnet.Native")
        .csharp_class_name("NativeMethods")
        .csharp_class_accessibility("internal")
        .csharp_use_nint_types(false)
        .csharp_use_function_pointer(false)
        .csharp_generate_const_filter(|_| true)
        .csharp_type_rename(rename)
        .generate_csharp_file(&tmp)?;
    let text = std::fs::read_to_string(&tmp)?;
    std::fs::remove_file(&tmp)?;
    let marker = "ExactSpelling = true)]";
    if !text.contains(marker) {
        return Err("csbindgen output changed shape: no DllImport attribute to extend".into());
    }
    let text = text.replace(marker, "ExactSpelling = true, SetLastError = true)]");
    std::fs::write(&args[2], text)?;
    Ok(())
}
