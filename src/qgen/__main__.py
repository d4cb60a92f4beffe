from qgen.cli import main

if __name__ == "__main__":  # not when a spawned worker process (qgen.worker) imports the main module
    raise SystemExit(main())
