//! `safetytwin-replayer`: the controller-side gRPC server. Not built yet (issues 4 and 5); this
//! binary only says so, so that the workspace layout is in place.

fn main() -> std::process::ExitCode {
    eprintln!("safetytwin-replayer: not implemented yet (see issue 4: gRPC ingest and history)");
    std::process::ExitCode::FAILURE
}
