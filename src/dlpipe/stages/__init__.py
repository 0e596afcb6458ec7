"""Pipeline stages: thin I/O around the core. Each `run(params, paths)` validates first, writes atomically."""
