//! `kubectl-orrery`: the kubectl plugin; kubectl runs it as `kubectl orrery` when it is on PATH
//! (see [`orrery::plugin`]).

fn main() -> std::process::ExitCode {
    orrery::plugin::main()
}
