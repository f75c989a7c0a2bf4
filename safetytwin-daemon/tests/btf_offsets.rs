//! The offsets the probes use come from the kernel's BTF: each one resolved by the daemon's
//! reader equals what bpftool (an independent BTF parser) says about the same member.

mod common;

use std::{collections::HashMap, path::Path};

use safetytwin_daemon::{btf::Btf, offsets};
use serde_json::Value;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Follows typedefs and qualifiers to the type they name.
fn resolve(types: &HashMap<u64, &Value>, mut id: u64) -> Option<u64> {
    while let Some(t) = types.get(&id) {
        match t["kind"].as_str()? {
            "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                id = t["type_id"].as_u64()?
            }
            _ => break,
        }
    }
    Some(id)
}

/// Bit offset and type of `member` in type `id`, descending into anonymous members like the
/// kernel.
fn find(types: &HashMap<u64, &Value>, id: u64, member: &str) -> Option<(u64, u64)> {
    let members = types.get(&id)?["members"].as_array()?;
    if let Some(m) = members.iter().find(|m| m["name"] == member) {
        return Some((m["bits_offset"].as_u64()?, m["type_id"].as_u64()?));
    }
    members
        .iter()
        .filter(|m| m["name"] == "(anon)")
        .find_map(|m| {
            let (bits, ty) = find(types, resolve(types, m["type_id"].as_u64()?)?, member)?;
            Some((m["bits_offset"].as_u64()? + bits, ty))
        })
}

/// Bit offset of `path` (members separated by dots) in type `id`.
fn bits(types: &HashMap<u64, &Value>, mut id: u64, path: &str) -> Option<u64> {
    let mut total = 0;
    for member in path.split('.') {
        let (bits, ty) = find(types, id, member)?;
        total += bits;
        id = resolve(types, ty)?;
    }
    Some(total)
}

#[test]
fn offsets_match_bpftool() {
    if !Path::new(VMLINUX).exists() {
        eprintln!("skipping offsets_match_bpftool: kernel has no BTF ({VMLINUX})");
        return;
    }
    let out = common::bpftool(&["-j", "btf", "dump", "file", VMLINUX]);
    let dump: Value = serde_json::from_slice(&out).unwrap();
    let types: HashMap<u64, &Value> = dump["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t))
        .collect();
    let struct_id = |name: &str| {
        let mut ids: Vec<u64> = types
            .iter()
            .filter(|(_, t)| t["kind"] == "STRUCT" && t["name"] == name && t["vlen"] != 0)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids[0]
    };

    let ours = offsets::resolve(&Btf::from_file(VMLINUX).unwrap(), "test").unwrap();
    for field in offsets::FIELDS {
        let theirs = bits(&types, struct_id(field.strukt), field.member)
            .unwrap_or_else(|| panic!("bpftool has no {}.{}", field.strukt, field.member));
        assert_eq!(theirs % 8, 0);
        assert_eq!(
            offsets::get(&ours, field) as u64,
            theirs / 8,
            "{}.{}",
            field.strukt,
            field.member
        );
    }
    // A member inside an anonymous struct, where a naive reader gets it wrong.
    assert_ne!(
        offsets::get(&ours, &offsets::FIELDS[6]),
        0,
        "mm_struct.arg_start"
    );
}
