//! A minimal reader of kernel BTF (`/sys/kernel/btf/vmlinux`), enough to find struct member
//! offsets by path.
//!
//! Rust eBPF has no CO-RE relocations, so the daemon resolves the offsets its probes need here
//! and hands them to the programs as globals. Anonymous struct/union members (on 6.x,
//! `mm_struct`'s body, `dentry.d_name`, `file.f_path`) are descended into and their offsets
//! added. Format: `Documentation/bpf/btf.rst`.

use std::{collections::HashMap, path::Path};

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// How deep anonymous members are searched (the kernel's own nest three or four deep).
const MAX_ANONYMOUS_DEPTH: u32 = 16;

/// Errors reading BTF or resolving a member in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read (kernel built without `CONFIG_DEBUG_INFO_BTF`?).
    #[error("cannot read kernel BTF at {path}: {source} (kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Read {
        /// The path that was read.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF, or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A type kind this reader does not know how to skip.
    #[error("unknown BTF kind {kind} at type id {id}")]
    UnknownKind {
        /// The kind number.
        kind: u32,
        /// The type id.
        id: u32,
    },
    /// No struct of that name.
    #[error("struct {0} not found in kernel BTF")]
    NoStruct(String),
    /// The struct has no member of that name (also not inside an anonymous member).
    #[error("struct {strukt} has no member {member} in kernel BTF")]
    NoMember {
        /// The struct searched.
        strukt: String,
        /// The member looked for.
        member: String,
    },
    /// The member is a bitfield or not byte-aligned, so it has no byte offset.
    #[error("{0} is a bitfield, not a byte-addressable member")]
    Bitfield(String),
}

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    /// Bit offset from the start of the enclosing struct.
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Kind {
    Composite {
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: a name for another type.
    Alias {
        target: u32,
    },
    Other,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: Kind,
}

/// Parsed BTF: the types by id, and their names.
#[derive(Debug)]
pub struct Btf {
    strings: Vec<u8>,
    /// Index 0 is `void`.
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or(BtfError::Malformed("truncated type section"))
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(VMLINUX_BTF)
    }

    /// Reads and parses a raw BTF file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses raw (little-endian) BTF bytes.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(BtfError::Malformed("shorter than the header"));
        }
        if u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            data.get(start..start.checked_add(len)?)
        };
        let type_data =
            section(type_off, type_len).ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = section(str_off, str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let mut types = vec![Type {
            name: 0,
            kind: Kind::Other,
        }];
        let mut at = 0;
        while at < type_data.len() {
            let id = types.len() as u32;
            let name = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let kind = (info >> 24) & 0x1f;
            let kind = match kind {
                // INT, VAR, DECL_TAG: one u32 follows
                1 | 14 | 17 => {
                    at += 4;
                    Kind::Other
                }
                // PTR, FWD, FUNC, FLOAT
                2 | 7 | 12 | 16 => Kind::Other,
                // ARRAY
                3 => {
                    at += 12;
                    Kind::Other
                }
                // STRUCT, UNION
                4 | 5 => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let raw_offset = u32_at(type_data, at + 8)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (raw_offset & 0x00ff_ffff, raw_offset >> 24)
                        } else {
                            (raw_offset, 0)
                        };
                        members.push(Member {
                            name: u32_at(type_data, at)?,
                            type_id: u32_at(type_data, at + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                        at += 12;
                    }
                    Kind::Composite { members }
                }
                // ENUM, FUNC_PROTO
                6 | 13 => {
                    at += 8 * vlen;
                    Kind::Other
                }
                // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
                8 | 9 | 10 | 11 | 18 => Kind::Alias {
                    target: size_or_type,
                },
                // DATASEC, ENUM64
                15 | 19 => {
                    at += 12 * vlen;
                    Kind::Other
                }
                kind => return Err(BtfError::UnknownKind { kind, id }),
            };
            types.push(Type { name, kind });
        }
        if at != type_data.len() {
            return Err(BtfError::Malformed("type section ends inside a type"));
        }

        let mut btf = Btf {
            strings,
            types,
            structs_by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if let Kind::Composite { members } = &ty.kind {
                let name = btf.name(ty.name);
                // Keep the first full definition; empty ones are opaque duplicates.
                if !name.is_empty() && !members.is_empty() {
                    btf.structs_by_name
                        .entry(name.to_owned())
                        .or_insert(id as u32);
                }
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| &t.kind) {
                Some(Kind::Alias { target }) => id = *target,
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `member` in the composite `id`, searching anonymous members recursively.
    ///
    /// Hostile BTF can make a struct its own anonymous member, or nest one struct many times
    /// over: each type is searched at most once per lookup (a second visit could only fail
    /// again, since the first success ends the search), so a lookup costs one pass over the
    /// types, and at most `depth` levels down, so the recursion fits the stack (kernels nest
    /// a handful deep).
    fn member_bits(
        &self,
        id: u32,
        member: &str,
        depth: u32,
        visited: &mut [bool],
    ) -> Option<(u32, &Member)> {
        let seen = visited.get_mut(id as usize)?;
        if std::mem::replace(seen, true) {
            return None;
        }
        let Kind::Composite { members } = &self.types.get(id as usize)?.kind else {
            return None;
        };
        if let Some(m) = members.iter().find(|m| self.name(m.name) == member) {
            return Some((m.bit_offset, m));
        }
        let depth = depth.checked_sub(1)?;
        members
            .iter()
            .filter(|m| m.name == 0 || self.name(m.name).is_empty())
            .find_map(|m| {
                let inner = self.resolve(m.type_id);
                let (bits, found) = self.member_bits(inner, member, depth, visited)?;
                Some((m.bit_offset.checked_add(bits)?, found))
            })
    }

    /// Byte offset of `strukt.member`, looking through anonymous structs and unions. `member`
    /// may be a dotted path through named members (`d_u.d_alias`).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let mut id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut total = 0u32;
        let mut segments = member.split('.').peekable();
        while let Some(segment) = segments.next() {
            let no_member = || BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            };
            let (bits, m) = self
                .member_bits(
                    id,
                    segment,
                    MAX_ANONYMOUS_DEPTH,
                    &mut vec![false; self.types.len()],
                )
                .ok_or_else(no_member)?;
            if m.bitfield_size != 0 || bits % 8 != 0 {
                return Err(BtfError::Bitfield(format!("{strukt}.{member}")));
            }
            total = total.checked_add(bits / 8).ok_or_else(no_member)?;
            if segments.peek().is_some() {
                id = self.resolve(m.type_id);
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds little-endian BTF bytes from raw type records and a string table.
    pub(crate) fn build(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [
            HEADER_LEN as u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&type_bytes);
        out.extend_from_slice(strings);
        out
    }

    const fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        (kind << 24) | vlen | ((kind_flag as u32) << 31)
    }

    // Strings: 0 "", 1 "int", 5 "outer", 11 "a", 13 "b", 15 "inner_t", 23 "flag"
    const STRINGS: &[u8] = b"\0int\0outer\0a\0b\0inner_t\0flag\0";

    /// [1] int; [2] anonymous struct { int b @ 32 bits }; [3] typedef inner_t = [2];
    /// [4] struct outer { int a @0; <anon> inner_t @64; int flag:3 @ 128 (bitfield) };
    /// [5] const [1]
    fn sample() -> Vec<u8> {
        build(
            &[
                1,
                info(1, 0, false),
                4,
                0x20, // int, 32 bits
                0,
                info(4, 1, false),
                4,
                13,
                1,
                32, // anon struct {b}
                15,
                info(8, 0, false),
                2, // typedef inner_t
                5,
                info(4, 3, true),
                24,
                11,
                1,
                0,
                0,
                3,
                64,
                23,
                1,
                (3 << 24) | 128,
                0,
                info(10, 0, false),
                1,
            ],
            STRINGS,
        )
    }

    #[test]
    fn direct_anonymous_and_bitfield_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        // b sits 4 bytes into the anonymous struct, which sits at byte 8 of outer.
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 12);
        assert!(matches!(
            btf.member_offset("outer", "flag"),
            Err(BtfError::Bitfield(_))
        ));
        assert!(matches!(
            btf.member_offset("outer", "zzz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(Btf::parse(b"xx"), Err(BtfError::Malformed(_))));
        let mut bad = sample();
        bad[0] = 0;
        assert!(matches!(Btf::parse(&bad), Err(BtfError::Malformed(_))));
        let unknown = build(&[0, info(31, 0, false), 0], b"\0");
        assert!(matches!(
            Btf::parse(&unknown),
            Err(BtfError::UnknownKind { kind: 31, id: 1 })
        ));
        let cut = build(&[5, info(4, 2, false), 8, 11, 1, 0], STRINGS);
        assert!(matches!(Btf::parse(&cut), Err(BtfError::Malformed(_))));
    }

    /// Found by the `btf` fuzz target: a struct that is its own anonymous member recursed
    /// until the stack overflowed, one with many such members took minutes (every path
    /// through the nesting was searched), and offsets near 2^32 bits overflowed when added.
    #[test]
    fn hostile_nesting_is_a_missing_member_not_a_crash() {
        // [1] struct outer { <anon> outer @0 }: itself, forever.
        let cyclic = build(&[5, info(4, 1, false), 4, 0, 1, 0], STRINGS);
        let btf = Btf::parse(&cyclic).unwrap();
        assert!(matches!(
            btf.member_offset("outer", "a"),
            Err(BtfError::NoMember { .. })
        ));
        // [1] struct outer { 64 anonymous members, each outer itself }: 64^16 paths.
        let mut wide = vec![5, info(4, 64, false), 4];
        for _ in 0..64 {
            wide.extend([0, 1, 0]);
        }
        let btf = Btf::parse(&build(&wide, STRINGS)).unwrap();
        let start = std::time::Instant::now();
        assert!(matches!(
            btf.member_offset("outer", "a"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        // [1] int; [2] anonymous struct { int a @ 2^32-8 bits }; [3] struct outer { <anon> [2]
        // @ 2^32-8 bits }: the sum does not fit a u32.
        let far = u32::MAX - 7;
        let overflow = build(
            &[
                1,
                info(1, 0, false),
                4,
                0x20,
                0,
                info(4, 1, false),
                4,
                11,
                1,
                far,
                5,
                info(4, 1, false),
                4,
                0,
                2,
                far,
            ],
            STRINGS,
        );
        let btf = Btf::parse(&overflow).unwrap();
        assert!(matches!(
            btf.member_offset("outer", "a"),
            Err(BtfError::NoMember { .. })
        ));
    }
}
