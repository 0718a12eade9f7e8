"""Weights & Biases logging: the rank-0 run for `--run NAME`; a no-op run for dummy, other ranks and failures."""
from nanochat.common import print0


class DummyWandb:
    """Accepts log/finish and does nothing."""

    def log(self, *args, **kwargs):
        pass

    def finish(self):
        pass


def start_wandb(*, project, run_name, run_id, master, config):
    """The W&B run to log to: a real one (resumable under `run_id`) on rank 0 unless `run_name` is 'dummy'. The
    project is $WANDB_PROJECT when set (nanotui's config file), else `project`; the run page URL is printed.
    Any failure (no login, no network) prints one line and returns a DummyWandb: training matters more."""
    if run_name == "dummy" or not master:
        return DummyWandb()
    try:
        import os

        import wandb
        run = wandb.init(project=os.environ.get("WANDB_PROJECT") or project, name=run_name, id=run_id,
                         resume="allow", config=config)
        print0(f"W&B run: {run_name} (id {run_id})")
        if getattr(run, "url", None):  # nanotui shows it in `status` and the dashboard header
            print0(f"W&B run URL: {run.url}")
        return run
    except Exception as exc:  # no login, no network: training matters more than the dashboard
        print0(f"W&B logging disabled: {' '.join(str(exc).split())[:200]}")
        return DummyWandb()
