"""smctl, the exchange's command line: `main` (the typer app), `stack` (up/down/logs of the local
stack), `render` (tables, JSON, YAML), `demo` (the whole life of the seed job)."""
