"""Pure logic of nanotui: log parsing, events, ETA, OOM policy, pipeline plans, checkpoint discovery."""
