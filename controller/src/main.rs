//! `orrery`: the CRD printer and the controller process (see [`orrery::operator`]).

fn main() -> std::process::ExitCode {
    orrery::operator::main()
}
