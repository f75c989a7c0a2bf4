//! The host model and the delta engine.
//!
//! The daemon folds what happened on the host into a [`HostModel`] through [`Change`]s and,
//! every interval, cuts a [`DeltaBatch`] that holds only the *net* changes of the window; the
//! replayer folds batches back into a model with [`HostModel::apply_batch`]. Folding the batches
//! gives the same model as folding every change at once (a property test checks it).
//!
//! Architecture invariant: this crate is pure. No I/O, no clock, no async: file contents arrive
//! as [`Change::FileObserved`], read by the daemon at batch cut; times arrive as arguments. The
//! package set and the accounts arrive whole, parsed from the text the daemon read
//! (`packages`, `accounts`).

pub mod accounts;
mod engine;
pub mod escape;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod globs;
mod model;
pub mod os;
pub mod packages;
pub mod paths;
pub mod secrets;
pub mod unitfiles;
pub mod units;

pub use accounts::{Group, Password, User};
pub use engine::Window;
pub use model::{
    Activity, Batch, BatchHeader, Change, Content, DeltaBatch, FileDelta, FileKind, FileState,
    GroupDelta, HostModel, PackageDelta, Process, ProcessDelta, Unit, UnitDelta, UnitRuntime,
    UserDelta, files_below,
};
pub use os::OsRelease;
pub use packages::{Package, PackageStatus};
