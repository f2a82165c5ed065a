"""What tests use: the pytest plugin (the `streamfsm_server` fixture and its markers, cassettes,
`--streamfsm-replay`) and what its fixture starts (`server_fixture`), recording the built-in
shapes as replay fixtures, a scripted stand-in for `codex app-server`, and the fault matrix."""
