"""nanotui: a detached supervisor and terminal dashboard for nanochat training runs."""
