"""The propagation tasks by name: DAVIS-2017 masks (J&F), JHMDB joints (PCK), VIP human parts (mIoU).

A task is a module with ``load(root, **options)`` (its dataset, every file checked before any work)
and ``run(encoder, root, data, out, protocol, **options)`` (propagate with
:func:`siammae.propagate.loop.propagate_video`, score, write ``out/scores.json``, return the record,
:mod:`siammae.tasks.common`), registered here with one line that names its default protocol preset
(:data:`siammae.propagate.protocol.PROTOCOLS`) and its headline figures. The command
line, ``siammae benchmark`` and the training monitor all go through :data:`TASKS`. Importing this
package imports neither torch nor the tasks.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

from siammae.propagate.protocol import choose_protocol


@dataclass(frozen=True)
class Task:
    """A registered task: where it lives and what its dataset option says on the command line."""

    name: str
    module: str
    preset: str  # the protocol preset it uses unless told otherwise
    headline: tuple  # its figures, in table order
    dataset_help: str  # help of its --<name> option
    run_eval: bool = False  # a training run's eval.* settings apply (they are DAVIS settings)
    # Its own command-line options: (flag, keyword of load(), help); a file option each.
    options: tuple = ()

    def load_module(self) -> ModuleType:
        return importlib.import_module(self.module)

    def load(self, root, **options):
        """The task's dataset under ``root``, every file checked (a user error names the file)."""
        return self.load_module().load(root, **options)

    def run(self, encoder, root, out, protocol, data=None, load_options: Optional[dict] = None, **options) -> dict:
        """Run the task on ``root`` (``data``: its :meth:`load` result when already loaded) into ``out``."""
        data = self.load(root, **(load_options or {})) if data is None else data
        return self.load_module().run(encoder, root, data, out, protocol, **options)

    def protocol(self, preset=None, run_eval=None, **knobs):
        """The protocol: ``preset`` or (with a run's ``eval`` settings, for a task they apply to) its
        ``eval.protocol``, else the task's own; then the run's eval knobs; then ``knobs``."""
        run_eval = run_eval if self.run_eval else None
        return choose_protocol(preset or (None if run_eval is not None else self.preset), run_eval, **knobs)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


register(
    Task(
        "davis",
        "siammae.tasks.davis",
        "siammae",
        ("J&F", "J", "F"),
        "DAVIS-2017 root (JPEGImages/, Annotations/, ImageSets/): masks, J&F.",
        run_eval=True,
    )
)
register(
    Task(
        "jhmdb",
        "siammae.tasks.jhmdb",
        "siammae-jhmdb",
        ("PCK@0.1", "PCK@0.2"),
        "JHMDB root (Rename_Images/, joint_positions/): 15 joints, PCK@0.1 and @0.2.",
        options=(
            ("--jhmdb-list", "list_file", "JHMDB video list (default: the standard test list of split 1 in the root)."),
        ),
    )
)
register(
    Task(
        "vip",
        "siammae.tasks.vip",
        "siammae-vip",
        ("mIoU",),
        "VIP root (VIP_Fine/ with Images/, Annotations/Category_ids/, lists/): 20 parts, mIoU.",
    )
)
