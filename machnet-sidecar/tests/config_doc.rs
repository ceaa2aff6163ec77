//! docs/CONFIG.md is the one list of the sidecar's settings: every command-line flag and every
//! configuration-file key appears in its table, and nothing else does.

use std::collections::BTreeSet;

use clap::CommandFactory;
use machnet_sidecar::config::{Cli, FileConfig};
use serde::de::{self, Visitor};

/// The `(flag, file key)` rows of the table under `## Keys` (`—` for no file key).
fn documented() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIG.md");
    let text = std::fs::read_to_string(path).expect("docs/CONFIG.md");
    let keys = text.split("## Keys").nth(1).expect("a `## Keys` section");
    let keys = keys.split("\n## ").next().unwrap();
    let code = |cell: &str| cell.trim().trim_matches('`').to_owned();
    keys.lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            assert!(cells.len() >= 6, "a row with five columns: {l}");
            (code(cells[1]), code(cells[2]))
        })
        .collect()
}

/// The long flags of `machnet` (help and version aside), hidden ones included.
fn flags() -> BTreeSet<String> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(|l| format!("--{l}"))
        .collect()
}

/// The fields of `FileConfig`, as serde sees them: a deserializer that only records the field
/// list `deserialize_struct` is given.
fn file_keys() -> BTreeSet<String> {
    struct Fields(Option<&'static [&'static str]>);
    impl<'de> de::Deserializer<'de> for &mut Fields {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(fields);
            Err(de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut f = Fields(None);
    let _ = <FileConfig as serde::Deserialize>::deserialize(&mut f);
    f.0.expect("FileConfig is a struct")
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

#[test]
fn every_flag_and_file_key_is_in_docs_config_md_once() {
    let rows = documented();
    let doc_flags: BTreeSet<String> = rows.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(doc_flags.len(), rows.len(), "a flag listed twice");
    let flags = flags();
    assert!(flags.len() > 40, "flags found: {flags:?}");
    let missing: Vec<_> = flags.difference(&doc_flags).collect();
    let extra: Vec<_> = doc_flags.difference(&flags).collect();
    assert!(
        missing.is_empty(),
        "flags missing from docs/CONFIG.md: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/CONFIG.md lists flags machnet lacks: {extra:?}"
    );

    let doc_keys: BTreeSet<String> = rows
        .iter()
        .map(|(_, k)| k.clone())
        .filter(|k| k != "—")
        .collect();
    let keys = file_keys();
    let missing: Vec<_> = keys.difference(&doc_keys).collect();
    let extra: Vec<_> = doc_keys.difference(&keys).collect();
    assert!(
        missing.is_empty(),
        "file keys missing from docs/CONFIG.md: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/CONFIG.md lists file keys machnet lacks: {extra:?}"
    );
    // Each key is its flag's name with `_` for `-` (only --config has none).
    for (flag, key) in &rows {
        if flag == "--config" {
            assert_eq!(key, "—");
        } else {
            assert_eq!(key, &flag[2..].replace('-', "_"), "{flag}");
        }
    }
}
