"""``python -m attnres_search``: the CLI, for launchers that need the running interpreter."""

from attnres_search.cli import main

if __name__ == "__main__":  # guarded: spawned DDP ranks re-import the main module
    main()
