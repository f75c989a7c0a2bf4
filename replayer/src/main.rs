//! `safetytwin-replayer`: the controller side. The history store exists (`store.rs`); the gRPC
//! services that feed and query it come next (issue 4), so this binary only says so.

fn main() -> std::process::ExitCode {
    eprintln!("safetytwin-replayer: the gRPC server is not implemented yet (see issue 4)");
    std::process::ExitCode::FAILURE
}
