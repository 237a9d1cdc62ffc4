"""Where scale lives: how a run is spread over processes (mesh, FSDP units, memory-parallel tables)."""
