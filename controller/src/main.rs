//! `orrery`: the CRD printer and the controller process (see [`orrery::runtime`]).

fn main() -> std::process::ExitCode {
    orrery::runtime::main()
}
