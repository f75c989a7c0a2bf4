//! What decoding a `SyncRequest` will allocate, reckoned from its wire bytes before prost
//! allocates anything (the replayer's ingest decoder refuses a message that costs too much).
//!
//! prost turns every entry of a repeated field into a struct of its own: an empty `FileDelta`
//! is 2 bytes on the wire and 128 in memory, so a 32 MiB message of them decoded into 4 GiB.
//! [`sync_request`] walks the message along the shape of `SyncRequest` (only length-delimited
//! fields allocate; the rest are skipped as prost skips them), refuses entries that can never
//! be valid (an empty `FileDelta`, `UnitDelta`, `ProcessDelta`, `PackageDelta`, `UserDelta` or
//! `GroupDelta`), and adds up the structs and
//! strings decoding would allocate.

use std::mem::size_of;

use prost::{
    bytes::Buf,
    encoding::{WireType, decode_key, decode_varint},
};

use crate::v1;

/// Why the walk stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    /// It is not protobuf (prost would refuse it too).
    #[error("{0}")]
    Wire(String),
    /// An entry that can never be valid: the name of its message type.
    #[error("an empty {0} entry")]
    Empty(&'static str),
}

/// What a length-delimited field becomes when prost decodes it.
#[derive(Clone, Copy)]
enum Field {
    /// A string (or bytes).
    Str,
    /// An element of a repeated string.
    StrEntry,
    /// A singular message, inline in its parent.
    Msg(&'static Shape),
    /// An element of a repeated message: a struct of `size` bytes in a vector, never empty.
    Entry(&'static Shape, usize, &'static str),
}

/// The length-delimited fields of a message type; others allocate nothing.
struct Shape(&'static [(u32, Field)]);

const HELLO: Shape = Shape(&[(1, Field::Str), (2, Field::Str)]);
const PROCESS: Shape = Shape(&[(5, Field::Str), (6, Field::Str), (7, Field::StrEntry)]);
const FILE_STATE: Shape = Shape(&[(6, Field::Str), (8, Field::Str), (9, Field::Str)]);
const UNIT_RUNTIME: Shape = Shape(&[(1, Field::Str)]);
const UNIT: Shape = Shape(&[
    (1, Field::Str),
    (2, Field::Msg(&UNIT_RUNTIME)),
    (3, Field::Str),
    (4, Field::StrEntry),
    (5, Field::StrEntry),
]);
const FILE_DELTA: Shape = Shape(&[(1, Field::Str), (2, Field::Msg(&FILE_STATE))]);
const UNIT_DELTA: Shape = Shape(&[(1, Field::Str), (2, Field::Msg(&UNIT))]);
const PROCESS_DELTA: Shape = Shape(&[(2, Field::Msg(&PROCESS))]);
const PACKAGE: Shape = Shape(&[(1, Field::Str), (2, Field::Str), (3, Field::Str)]);
const PACKAGE_DELTA: Shape = Shape(&[(1, Field::Str), (2, Field::Str), (3, Field::Msg(&PACKAGE))]);
const USER: Shape = Shape(&[
    (1, Field::Str),
    (4, Field::Str),
    (5, Field::Str),
    (6, Field::Str),
]);
const USER_DELTA: Shape = Shape(&[(1, Field::Str), (2, Field::Msg(&USER))]);
const GROUP: Shape = Shape(&[(1, Field::Str), (3, Field::StrEntry)]);
const GROUP_DELTA: Shape = Shape(&[(1, Field::Str), (2, Field::Msg(&GROUP))]);
const OS_RELEASE: Shape = Shape(&[(1, Field::Str), (2, Field::Str), (3, Field::Str)]);
const DELTA_BATCH: Shape = Shape(&[
    (1, Field::Str),
    (2, Field::Str),
    (
        6,
        Field::Entry(&FILE_DELTA, size_of::<v1::FileDelta>(), "FileDelta"),
    ),
    (
        7,
        Field::Entry(&UNIT_DELTA, size_of::<v1::UnitDelta>(), "UnitDelta"),
    ),
    (
        8,
        Field::Entry(
            &PROCESS_DELTA,
            size_of::<v1::ProcessDelta>(),
            "ProcessDelta",
        ),
    ),
    (
        13,
        Field::Entry(
            &PACKAGE_DELTA,
            size_of::<v1::PackageDelta>(),
            "PackageDelta",
        ),
    ),
    (
        14,
        Field::Entry(&USER_DELTA, size_of::<v1::UserDelta>(), "UserDelta"),
    ),
    (
        15,
        Field::Entry(&GROUP_DELTA, size_of::<v1::GroupDelta>(), "GroupDelta"),
    ),
    (16, Field::Msg(&OS_RELEASE)),
]);
const SYNC_REQUEST: Shape = Shape(&[(1, Field::Msg(&HELLO)), (2, Field::Msg(&DELTA_BATCH))]);

/// A heap block for `n` bytes as the allocator hands it out (header, 16-byte granules).
fn block(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        16 + n.next_multiple_of(16)
    }
}

/// What decoding `wire` as `shape` allocates.
fn cost(shape: &Shape, mut wire: &[u8]) -> Result<usize, CostError> {
    let bad = |e: prost::DecodeError| CostError::Wire(e.to_string());
    let mut total = 0usize;
    while wire.has_remaining() {
        let (tag, wire_type) = decode_key(&mut wire).map_err(bad)?;
        let len = match wire_type {
            WireType::Varint => {
                decode_varint(&mut wire).map_err(bad)?;
                continue;
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                usize::try_from(decode_varint(&mut wire).map_err(bad)?).unwrap_or(usize::MAX)
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(CostError::Wire("groups are not used".into()));
            }
        };
        if len > wire.len() {
            return Err(CostError::Wire("a field runs past the message".into()));
        }
        let (body, rest) = wire.split_at(len);
        wire = rest;
        if wire_type != WireType::LengthDelimited {
            continue;
        }
        let field = shape.0.iter().find(|(t, _)| *t == tag).map(|(_, f)| *f);
        total = total.saturating_add(match field {
            None => 0,
            Some(Field::Str) => block(len),
            Some(Field::StrEntry) => size_of::<String>() + block(len),
            Some(Field::Msg(inner)) => cost(inner, body)?,
            Some(Field::Entry(inner, size, name)) => {
                if len == 0 {
                    return Err(CostError::Empty(name));
                }
                size + cost(inner, body)?
            }
        });
    }
    Ok(total)
}

/// What decoding `wire`, a `SyncRequest`, would allocate, or why it is not one.
pub fn sync_request(wire: &[u8]) -> Result<usize, CostError> {
    cost(&SYNC_REQUEST, wire)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::v1::{SyncRequest, sync_request};

    fn request(files: Vec<v1::FileDelta>) -> Vec<u8> {
        SyncRequest {
            msg: Some(sync_request::Msg::Batch(v1::DeltaBatch {
                host_id: "h".into(),
                seq: 1,
                files,
                ..Default::default()
            })),
        }
        .encode_to_vec()
    }

    fn file(path: &str, text: &str) -> v1::FileDelta {
        v1::FileDelta {
            path: path.into(),
            state: Some(v1::FileState {
                sha256: "0".repeat(64),
                text: text.into(),
                ..Default::default()
            }),
        }
    }

    /// The reckoning is an upper bound of what prost really allocates for a batch of tiny
    /// entries (the vector's spare capacity aside), so nothing slips between them.
    #[test]
    fn the_cost_covers_the_structs_prost_builds() {
        let n = 1000;
        let wire = request(vec![file("/etc/a", ""); n]);
        let cost = super::sync_request(&wire).unwrap();
        assert!(cost >= n * size_of::<v1::FileDelta>(), "{cost}");
    }

    #[test]
    fn empty_entries_and_broken_wire_are_refused() {
        let empty = request(vec![v1::FileDelta::default(); 3]);
        assert_eq!(
            super::sync_request(&empty),
            Err(CostError::Empty("FileDelta"))
        );
        let empty_package = SyncRequest {
            msg: Some(sync_request::Msg::Batch(v1::DeltaBatch {
                host_id: "h".into(),
                seq: 1,
                packages: vec![v1::PackageDelta::default(); 2],
                ..Default::default()
            })),
        }
        .encode_to_vec();
        assert_eq!(
            super::sync_request(&empty_package),
            Err(CostError::Empty("PackageDelta"))
        );
        assert!(matches!(
            super::sync_request(&[0x12, 0x05, 0x32]),
            Err(CostError::Wire(_))
        ));
    }
}
