"""Run-time wiring: configuration meets storage here (database, tiers), Prefect settings and the
local server watchdog, run records, run logs, progress artifacts, the memory guard, signals and
deployments."""
