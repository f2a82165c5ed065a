"""The built-in Responses-API simulator: `streamfsm serve`, `streamfsm record`, `streamfsm demo`
and the test kit.

    replies      what the simulator sends: `Reply`, `Script`, error bodies, event-stream frames
    shapes       realistic Responses streams as data (`SHAPES`), built into scripts
    scenarios    which reply each request gets: scenario files, shapes and traces to serve
    background   background responses kept for resume (`GET`) and cancel
    server       `ResponsesSimulator`: the HTTP server on loopback that plays a scenario (and
                 `LoopbackServer`, the plumbing it shares with the recording proxy)
    recording_proxy  `RecordingProxy`, `streamfsm record`: any client's requests forwarded to a
                 real endpoint, each exchange saved as a trace
    codex_app    the real `codex app-server` pointed at a simulator (offline, no login)
    codex_demo   `streamfsm demo --codex`

Each module imports only those listed above it.
"""
