"""Start/resume screen (no run active): recent runs with state and newest checkpoint; resume; start a new run."""
from __future__ import annotations

import time
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Checkbox, DataTable, Footer, Input, Select, Static

from nanotui.tui.model import RunSummary, recent_runs

PROFILES = ("cpu-demo", "4090", "8xh100")


def vram_preview(profile: str, overrides: dict, gpu: dict | None = None) -> str:
    """The start screen's plan: per training stage, predicted GiB per DEVICE_BS (`*` = largest fit), or why not."""
    from nanotui.core.plan import PlanError, build_plan
    from nanotui.core.vramplan import choose_gpu, plan_vram
    try:
        plan = build_plan(profile, overrides).to_dict()
    except PlanError as exc:
        return f"VRAM plan: {str(exc).splitlines()[0]}"
    try:
        card = choose_gpu(None, gpu, profile)
    except ValueError:
        return f"VRAM plan: none ({profile} names no GPU and none was detected)"
    lines = [f"VRAM plan on {card.name} ({card.capacity_gib:.0f} GiB, 10% headroom), predicted GiB per DEVICE_BS "
             f"(* largest fit, ! too big):"]
    for sv in plan_vram(plan, card):
        fixed = next((st.get("device_bs") for st in plan["stages"] if st["name"] == sv.stage), None)
        cells = []
        for r in sorted(sv.rows, key=lambda r: r.device_bs):
            mark = "*" if r.device_bs == sv.chosen else ""
            cells.append(f"{r.device_bs}{mark}:{r.train_gib:.1f}{'' if r.fits else '!'}")
        use = "auto" if fixed is None else f"B={fixed}"
        lines.append(f" {sv.stage:<10} {use:<6} " + " ".join(cells))
    return "\n".join(lines)


def parse_overrides(text: str) -> dict[str, str]:
    """`DEVICE_BS=4 SEQ_LEN=1024` -> {"DEVICE_BS": "4", ...}; raises ValueError naming a bad item."""
    out = {}
    for item in text.replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"override '{item}' is not KEY=VALUE (e.g. DEVICE_BS=4)")
        out[key.strip().upper()] = value.strip()
    return out


class NewRunScreen(ModalScreen[tuple[str, dict] | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="new-run"):
            yield Static("[b]Start a new run[/]", classes="dialog-text")
            yield Select([(p, p) for p in PROFILES], value=self.profile if self.profile in PROFILES else PROFILES[0],
                         allow_blank=False, id="profile")
            yield Input(placeholder="overrides, e.g. DEVICE_BS=4 SEQ_LEN=1024 WANDB_RUN=d20", id="overrides")
            yield Checkbox("DEVICE_BS auto: probe the GPU before training (keeps the total batch)", id="auto-bs")
            yield Static("", id="vram-plan")
            yield Static("", id="preflight")
            yield Static("", id="new-run-error")
            with Horizontal(classes="buttons"):
                yield Button("Start", id="start", variant="primary")
                yield Button("Check (dry run)", id="check")
                yield Button("Cancel", id="cancel")

    def __init__(self, gpu: dict | None = None, profile: str | None = None):
        super().__init__()
        self.gpu = gpu   # the detected card ({name, mem_total}) for the VRAM plan; None = the profile's card
        self.profile = profile   # preselected (the user's configured profile), else the first

    def on_mount(self) -> None:
        self._refresh_plan()

    def _overrides(self) -> dict:
        overrides = parse_overrides(self.query_one("#overrides", Input).value)
        if self.query_one("#auto-bs", Checkbox).value:
            overrides["DEVICE_BS"] = "auto"
        return overrides

    def _refresh_plan(self) -> None:
        try:
            overrides = self._overrides()
        except ValueError:
            return
        text = vram_preview(str(self.query_one("#profile", Select).value), overrides, self.gpu)
        self.query_one("#vram-plan", Static).update(text.replace("[", "\\["))

    def on_select_changed(self, event: Select.Changed) -> None:
        self._refresh_plan()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self._refresh_plan()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._refresh_plan()

    def _submit(self) -> None:
        try:
            overrides = self._overrides()
        except ValueError as exc:
            self.query_one("#new-run-error", Static).update(f"[red]error: {exc}[/]")
            return
        self.dismiss((str(self.query_one("#profile", Select).value), overrides))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def _check(self) -> None:
        """The preflight of this choice (`nanotui start --dry-run`), run by the app; its lines land in #preflight."""
        try:
            overrides = self._overrides()
        except ValueError as exc:
            self.query_one("#new-run-error", Static).update(f"[red]error: {exc}[/]")
            return
        panel = self.query_one("#preflight", Static)
        panel.update("preflight: checking every stage's flags, CUDA, ranks, disk, W&B ...")
        profile = str(self.query_one("#profile", Select).value)
        self.app.check_new_run(profile, overrides, lambda lines: panel.update("\n".join(lines).replace("[", "\\[")))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self._submit()
        elif event.button.id == "check":
            self._check()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class StartScreen(Screen):
    BINDINGS = [
        Binding("enter", "attach", "Attach", priority=True),
        Binding("r", "resume", "Resume newest ckpt"),
        Binding("n", "new_run", "New run"),
        Binding("d,q", "app.quit", "Quit"),
        Binding("question_mark,h,f1", "app.help", "Help"),
    ]

    def __init__(self, base_dir: Path):
        super().__init__()
        self.base_dir = Path(base_dir)
        self.runs: list[RunSummary] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="start-title")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("run", "profile", "state", "stage", "step", "newest checkpoint",
                                              "updated")
        self.load()

    def load(self) -> None:
        self.runs = recent_runs(self.base_dir)
        table = self.query_one(DataTable)
        table.clear()
        for i, r in enumerate(self.runs):
            ck = r.newest_checkpoint
            table.add_row(r.run_id, r.profile or "?", r.state, r.stage or "–", "–" if r.step is None else f"{r.step:,}",
                          f"{ck.get('stage')} step {ck.get('step')}" if ck else "–",
                          time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.updated)) if r.updated else "–", key=str(i))
        msg = (f" [b]No active run[/] in {self.base_dir}.  Enter attach/replay · r resume newest checkpoint · "
               f"n new run · q quit") if self.runs else \
            (f" [b]No runs yet[/] in {self.base_dir}.  Press [b]n[/] to start one "
             "(cpu-demo runs offline in minutes).")
        self.query_one("#start-title", Static).update(msg)

    def selected(self) -> RunSummary | None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        return self.runs[row] if self.runs and row is not None and 0 <= row < len(self.runs) else None

    def action_attach(self) -> None:
        r = self.selected()
        if r is not None:
            self.app.attach(r.path)

    def action_resume(self) -> None:
        r = self.selected()
        if r is None:
            self.notify("no run to resume: press n to start one", severity="warning")
            return
        self.app.resume_run(r.path)

    def action_new_run(self) -> None:
        def done(result) -> None:
            if result:
                self.app.start_run(*result)
        default = getattr(self.app.actions, "default_profile", None)
        self.app.push_screen(NewRunScreen(profile=default() if default else None), done)
