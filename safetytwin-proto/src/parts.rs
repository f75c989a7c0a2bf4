//! Answers larger than one message, in parts (`Twin.GetStateParts`, `Twin.DiffParts`): the
//! server cuts a state or a delta into parts of at most [`PART_BYTES`] and [`PART_ENTRIES`]
//! entries (a single larger entry goes alone), and the client joins them back by
//! concatenating their repeated fields in order. Each part repeats the answer's header (the
//! seq; a delta's batch header), so any part tells what it belongs to.

use crate::{v1, wire::Wire};

/// The most bytes of entries in one part.
pub const PART_BYTES: usize = 1 << 20;

/// The most entries in one part.
pub const PART_ENTRIES: usize = 4096;

/// `entries` in groups within the budget, in order; never an empty group.
fn groups<T: Wire>(entries: Vec<T>) -> impl Iterator<Item = Vec<T>> {
    let mut entries = entries.into_iter().peekable();
    std::iter::from_fn(move || {
        let (mut group, mut bytes) = (Vec::new(), 0);
        while let Some(entry) = entries.next_if(|e| {
            group.is_empty() || (group.len() < PART_ENTRIES && bytes + e.entry_len() <= PART_BYTES)
        }) {
            bytes += entry.entry_len();
            group.push(entry);
        }
        (!group.is_empty()).then_some(group)
    })
}

/// A host state at `seq`, in parts (at least one, so an empty state still tells its seq).
pub fn state(seq: u64, state: v1::HostState) -> Vec<v1::GetStateResponse> {
    let v1::HostState {
        processes,
        files,
        units,
        packages,
        users,
        groups: account_groups,
        os,
    } = state;
    let mut parts: Vec<v1::HostState> = groups(files)
        .map(|files| v1::HostState {
            files,
            ..Default::default()
        })
        .chain(groups(units).map(|units| v1::HostState {
            units,
            ..Default::default()
        }))
        .chain(groups(processes).map(|processes| v1::HostState {
            processes,
            ..Default::default()
        }))
        .chain(groups(packages).map(|packages| v1::HostState {
            packages,
            ..Default::default()
        }))
        .chain(groups(users).map(|users| v1::HostState {
            users,
            ..Default::default()
        }))
        .chain(groups(account_groups).map(|groups| v1::HostState {
            groups,
            ..Default::default()
        }))
        .collect();
    if parts.is_empty() {
        parts.push(v1::HostState::default());
    }
    parts[0].os = os;
    parts
        .into_iter()
        .map(|s| v1::GetStateResponse {
            seq,
            state: Some(s),
        })
        .collect()
}

/// A delta, in parts (at least one), each with the batch's header.
pub fn delta(mut batch: v1::DeltaBatch) -> Vec<v1::DiffResponse> {
    let files = std::mem::take(&mut batch.files);
    let units = std::mem::take(&mut batch.units);
    let processes = std::mem::take(&mut batch.processes);
    let packages = std::mem::take(&mut batch.packages);
    let users = std::mem::take(&mut batch.users);
    let account_groups = std::mem::take(&mut batch.groups);
    let header = batch;
    let mut parts: Vec<v1::DeltaBatch> = groups(files)
        .map(|files| v1::DeltaBatch {
            files,
            ..header.clone()
        })
        .chain(groups(units).map(|units| v1::DeltaBatch {
            units,
            ..header.clone()
        }))
        .chain(groups(processes).map(|processes| v1::DeltaBatch {
            processes,
            ..header.clone()
        }))
        .chain(groups(packages).map(|packages| v1::DeltaBatch {
            packages,
            ..header.clone()
        }))
        .chain(groups(users).map(|users| v1::DeltaBatch {
            users,
            ..header.clone()
        }))
        .chain(groups(account_groups).map(|groups| v1::DeltaBatch {
            groups,
            ..header.clone()
        }))
        .collect();
    if parts.is_empty() {
        parts.push(header);
    }
    parts
        .into_iter()
        .map(|d| v1::DiffResponse { delta: Some(d) })
        .collect()
}

/// Joins the parts of a state, in the order they came.
#[derive(Debug, Default)]
pub struct StateJoin {
    seq: Option<u64>,
    state: v1::HostState,
}

/// A part that does not belong with the ones before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// No part at all.
    #[error("the answer had no part")]
    Empty,
    /// A part for another seq or batch than the first.
    #[error("a part of another answer: {0}")]
    Mismatch(&'static str),
    /// A part without its payload.
    #[error("a part without its {0}")]
    Missing(&'static str),
}

impl StateJoin {
    /// Adds the next part.
    pub fn push(&mut self, part: v1::GetStateResponse) -> Result<(), JoinError> {
        if self.seq.is_some_and(|s| s != part.seq) {
            return Err(JoinError::Mismatch("seq"));
        }
        self.seq = Some(part.seq);
        let s = part.state.ok_or(JoinError::Missing("state"))?;
        self.state.files.extend(s.files);
        self.state.units.extend(s.units);
        self.state.processes.extend(s.processes);
        self.state.packages.extend(s.packages);
        self.state.users.extend(s.users);
        self.state.groups.extend(s.groups);
        if s.os.is_some() {
            self.state.os = s.os;
        }
        Ok(())
    }

    /// The seq and the whole state.
    pub fn finish(self) -> Result<(u64, v1::HostState), JoinError> {
        Ok((self.seq.ok_or(JoinError::Empty)?, self.state))
    }
}

/// Joins the parts of a delta, in the order they came.
#[derive(Debug, Default)]
pub struct DeltaJoin {
    batch: Option<v1::DeltaBatch>,
}

impl DeltaJoin {
    /// Adds the next part.
    pub fn push(&mut self, part: v1::DiffResponse) -> Result<(), JoinError> {
        let mut d = part.delta.ok_or(JoinError::Missing("delta"))?;
        match &mut self.batch {
            None => self.batch = Some(d),
            Some(b) => {
                if (&b.host_id, b.seq) != (&d.host_id, d.seq) {
                    return Err(JoinError::Mismatch("host or seq"));
                }
                b.files.append(&mut d.files);
                b.units.append(&mut d.units);
                b.processes.append(&mut d.processes);
                b.packages.append(&mut d.packages);
                b.users.append(&mut d.users);
                b.groups.append(&mut d.groups);
            }
        }
        Ok(())
    }

    /// The whole delta.
    pub fn finish(self) -> Result<v1::DeltaBatch, JoinError> {
        self.batch.ok_or(JoinError::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: String, text_len: usize) -> v1::NamedFile {
        v1::NamedFile {
            path,
            state: Some(v1::FileState {
                text: "x".repeat(text_len),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_state_splits_within_the_budget_and_joins_back_equal() {
        let state = v1::HostState {
            files: (0..10_000)
                .map(|i| file(format!("/etc/f{i:05}"), 300))
                .chain(std::iter::once(file("/etc/huge".into(), 3 * PART_BYTES)))
                .collect(),
            processes: (0..5000)
                .map(|pid| v1::Process {
                    pid,
                    ..Default::default()
                })
                .collect(),
            units: Vec::new(),
            packages: (0..5000)
                .map(|i| v1::Package {
                    name: format!("p{i}"),
                    ..Default::default()
                })
                .collect(),
            users: vec![v1::User::default(); 3],
            groups: vec![v1::Group::default(); 3],
            os: Some(v1::OsRelease {
                id: "debian".into(),
                ..Default::default()
            }),
        };
        let parts = super::state(7, state.clone());
        assert!(parts.len() > 3, "{} parts", parts.len());
        for p in &parts {
            let s = p.state.as_ref().unwrap();
            let entries = s.files.len()
                + s.units.len()
                + s.processes.len()
                + s.packages.len()
                + s.users.len()
                + s.groups.len();
            assert!(entries <= PART_ENTRIES);
            assert!(
                s.wire_len() <= PART_BYTES || entries == 1,
                "{} bytes in {entries} entries",
                s.wire_len()
            );
        }
        let mut join = StateJoin::default();
        for p in parts {
            join.push(p).unwrap();
        }
        assert_eq!(join.finish().unwrap(), (7, state));
    }

    #[test]
    fn an_empty_answer_is_one_part_and_parts_of_other_answers_are_refused() {
        let parts = super::state(3, v1::HostState::default());
        assert_eq!(parts.len(), 1);
        let mut join = StateJoin::default();
        join.push(parts[0].clone()).unwrap();
        let mut other = parts[0].clone();
        other.seq = 4;
        assert_eq!(join.push(other), Err(JoinError::Mismatch("seq")));
        assert_eq!(StateJoin::default().finish(), Err(JoinError::Empty));

        let batch = v1::DeltaBatch {
            host_id: "h".into(),
            seq: 9,
            files: (0..9000)
                .map(|i| v1::FileDelta {
                    path: format!("/f{i}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let parts = super::delta(batch.clone());
        assert_eq!(parts.len(), 3);
        let mut join = DeltaJoin::default();
        for p in parts {
            join.push(p).unwrap();
        }
        assert_eq!(join.finish().unwrap(), batch);
    }
}
