"""``python -m airflow_provider_runcomfy.emulator``: the same as ``runcomfy-emulator``."""

from airflow_provider_runcomfy.emulator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
