"""What tests use: the pytest plugin (`--streamfsm-replay`), recording the built-in shapes as
replay fixtures, a scripted stand-in for `codex app-server`, and the fault matrix."""
