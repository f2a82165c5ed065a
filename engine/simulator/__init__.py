"""The built-in Responses-API simulator: `streamfsm serve`, `streamfsm demo` and the test kit.

    replies      what the simulator sends: `Reply`, `Script`, error bodies, event-stream frames
    shapes       realistic Responses streams as data (`SHAPES`), built into scripts
    scenarios    which reply each request gets: scenario files, shapes and traces to serve
    background   background responses kept for resume (`GET`) and cancel
    server       `ResponsesSimulator`: the HTTP server on loopback that plays a scenario
    codex_app    the real `codex app-server` pointed at a simulator (offline, no login)
    codex_demo   `streamfsm demo --codex`

Each module imports only those listed above it.
"""
