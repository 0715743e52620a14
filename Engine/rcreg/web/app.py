"""The web app's state and actions: what the page shows, read from files and from finished runs.

The page's MRML scene is trame-slicer's (:class:`trame_slicer.core.SlicerApp`), drawn by Slicer's slice
views and touched only by the server's event loop. A run goes to :func:`.runner.register` in a worker
thread (the page stays live; Cancel sets the flag its ``cancelCallback`` reads); its results come back as
images and become nodes here. The display uses the Slicer module's own ``display`` functions and metrics
table. Every failure becomes one line in ``state.error``; the server goes on serving.
"""
from __future__ import annotations

import asyncio
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import SimpleITK as sitk

from ..cli import error_line
from . import inputs, runner, sample
from . import scene as scenes
from .lib import import_lib
from .page import build_page, slice_slider

__all__ = ["RegistrationApp", "DOWNLOADS"]

log = logging.getLogger(__name__)

#: URL path (and folder name under the work folder) of the runs' downloads.
DOWNLOADS = "downloads"

#: Opacity of the warped segmentation's fill in the slice views (its outline stays opaque).
_FILL_OPACITY = 0.35

# Slot state name → (the role in messages, the volume slot a label map lies on, or None for volumes).
_SLOTS = {"fixed_file": ("fixed volume", None), "moving_file": ("moving volume", None),
          "fixed_labels_file": ("fixed segmentation", "fixed_file"),
          "moving_labels_file": ("moving segmentation", "moving_file")}


def _whole_number(text: Any, name: str, default_word: str) -> Optional[int]:
    """``None`` for ``default_word`` (or empty), else ``text`` as an int; ValueError naming ``name`` otherwise."""
    text = str(text if text is not None else "").strip()
    if text in ("", default_word):
        return None
    if not re.fullmatch(r"-?\d+", text):
        raise ValueError(f"{name} must be '{default_word}' or a whole number, got '{text}'")
    return int(text)


def _positive_number(text: Any, name: str, default_word: str) -> Optional[float]:
    """``None`` for ``default_word`` (or empty), else ``text`` as a float > 0; ValueError naming ``name`` otherwise."""
    text = str(text if text is not None else "").strip()
    if text in ("", default_word):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be '{default_word}' or a number > 0, got '{text}'")
    return value


class RegistrationApp:
    """Builds the page on ``server`` and keeps its state: files offered from ``data_dir``, the sample pair and
    uploads (saved in ``work_dir``), the loaded images, the page's nodes and the last run's results."""

    def __init__(self, server, data_dir: Optional[Path], work_dir: Path):
        import trame_slicer.module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        self.server, self.state = server, server.state
        self.lib = import_lib()
        self.work_dir = work_dir
        self._uploads = work_dir / "uploads"
        self._uploads.mkdir(parents=True, exist_ok=True)
        (work_dir / DOWNLOADS).mkdir(exist_ok=True)
        server.serve[DOWNLOADS] = str(work_dir / DOWNLOADS)
        server.enable_module(trame_slicer.module)

        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, server, slice_view_ui_f=slice_slider, rca_encoder="png")
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, server)
        self.layout_manager.register_layout("views", Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
            ViewLayoutDefinition.sagittal_view()]))
        self.layout_manager.set_layout("views")

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rcreg-registration")
        self._cancel = threading.Event()
        self._tasks: set[asyncio.Task] = set()
        self._runs = 0
        self._images: dict[str, tuple[str, sitk.Image]] = {}   # slot → (path, image read from it)
        self._label_names: dict[str, dict[int, str]] = {}      # label-map path → segment names by value
        self._input_nodes: dict[str, Any] = {}                 # volume slot → node in the page's scene
        self._output_nodes: dict[str, Any] = {}                # "warped", "transform", "segmentation"
        self._init_state(inputs.list_files(data_dir), data_dir)
        self._bind()
        build_page(server, self.layout_manager)

    # --- state -------------------------------------------------------------------------------------------

    def _init_state(self, files: list[Path], data_dir: Optional[Path]) -> None:
        choices = self.lib.choices
        bundled = self.lib.engine.bundledModelNames()
        titles = {choices.DEFAULT: "Default (the model for the fixed image)",
                  choices.NO_MODEL: "None (refinement only)"}
        state = self.state
        state.trame__title = "rcreg web"
        state.files = [{"title": str(path.relative_to(data_dir)), "value": str(path)} for path in files]
        state.models = [{"title": titles.get(name, name), "value": name}
                        for name in choices.modelChoices(bundled) if name != choices.FROM_FILE]
        state.devices = ["auto", "cpu", "cuda"]
        state.alignments = list(choices.INITIAL_ALIGNMENTS)
        state.similarities = [choices.DEFAULT, *choices.REFINE_SIMILARITIES]
        state.update({"model": choices.DEFAULT, "cascades": "all", "repeat": "1", "refine_iterations": "default",
                      "refine_weight": "default", "refine_levels": "default", "refine_spacing": "default",
                      "initial_alignment": "none", "refine_similarity": choices.DEFAULT,
                      "device": "auto", "symmetric": False, "flip_average": False, "diffeomorphic": False, "fade": 0.5, "show_grid": True,
                      "show_segmentation": True, "running": False, "progress": 0, "status": "", "error": "",
                      "metrics_rows": [], "downloads": [], "uploads": None,
                      **{slot: None for slot in _SLOTS}})

    def _bind(self) -> None:
        state, server = self.state, self.server
        for slot in _SLOTS:
            state.change(slot)(lambda slot=slot, **_: self._guarded(self._select, slot))
        state.change("uploads")(lambda uploads, **_: self._guarded(self._save_uploads, uploads))
        state.change("fade", "show_grid", "show_segmentation")(lambda **_: self._guarded(self._refresh_views))
        # A trigger's reply waits for its function, and the next trigger (Cancel) for that reply: long actions
        # are tasks of the event loop, so the trigger returns at once.
        server.trigger("load_sample")(lambda: self._start(self.load_sample()))
        server.trigger("run")(lambda: self._start(self.run()))
        server.trigger("cancel")(self.cancel)
        server.controller.on_server_exited.add(self.shutdown)

    def _start(self, action) -> None:
        from trame_server.utils.asynchronous import create_task

        self._tasks.add(task := create_task(action))
        task.add_done_callback(self._tasks.discard)

    def shutdown(self, **_) -> None:
        """Stop a running registration at its next progress report; drop queued ones."""
        self._cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _guarded(self, action, *args) -> None:
        """Run ``action``; a failure becomes the page's error line (with the traceback in the log if unexpected)."""
        try:
            action(*args)
        except Exception as error:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        if not isinstance(error, (ValueError, RuntimeError, OSError)):
            log.exception("rcreg web: unexpected error", exc_info=error)
        self.state.error = error_line(error)

    def _add_files(self, paths: list[tuple[str, Path]]) -> None:
        """Offer ``(title, path)`` entries in the file selectors (once each)."""
        known = {entry["value"] for entry in self.state.files}
        self.state.files = self.state.files + [{"title": title, "value": str(path)}
                                               for title, path in paths if str(path) not in known]

    # --- inputs ------------------------------------------------------------------------------------------

    def _save_uploads(self, uploads) -> None:
        """Save uploaded files (trame sends their bytes) under the work folder and offer them."""
        if not uploads:
            return
        saved = []
        for upload in uploads if isinstance(uploads, list) else [uploads]:
            name = Path(upload["name"]).name or "upload"
            if upload.get("error"):
                raise OSError(f"upload {name}: {upload['error']}")
            content = upload["content"]
            path = self._uploads / name
            path.write_bytes(b"".join(content) if isinstance(content, list) else content)
            saved.append((f"upload: {name}", path))
            self._images = {slot: entry for slot, entry in self._images.items() if entry[0] != str(path)}
        self._add_files(saved)
        self.state.uploads = None
        self.state.status = f"Uploaded {', '.join(path.name for _, path in saved)}"

    def _image(self, slot: str) -> Optional[sitk.Image]:
        """The image of ``slot``'s chosen file (read once per path), ``None`` when none is chosen."""
        path = self.state[slot]
        if not path:
            self._images.pop(slot, None)
            return None
        if slot in self._images and self._images[slot][0] == path:
            return self._images[slot][1]
        role, volume_slot = _SLOTS[slot]
        if volume_slot is None:
            image = inputs.read_volume(Path(path), role)
        else:
            reference = self._image(volume_slot)
            if reference is None:
                raise ValueError(f"{role}: choose the {_SLOTS[volume_slot][0]} first")
            image = inputs.read_labels(Path(path), reference, role)
        self._images[slot] = (path, image)
        return image

    def _select(self, slot: str) -> None:
        """A file was chosen for ``slot``: read it (errors go to the page) and show a chosen volume."""
        self.state.error = ""
        volume_slot = _SLOTS[slot][1]
        if volume_slot is not None:  # a label map: read now to report errors, shown after a run
            if self.state[volume_slot]:
                self._image(slot)
            return
        old = self._input_nodes.pop(slot, None)
        if old is not None:
            self.slicer.scene.RemoveNode(old)
        self._clear_outputs()
        labels_slots = [name for name, (_, on) in _SLOTS.items() if on == slot]
        for labels_slot in labels_slots:
            self._images.pop(labels_slot, None)  # read again against this volume's grid
        try:
            image = self._image(slot)
            if image is not None:
                self._input_nodes[slot] = scenes.volume_node(self.slicer.scene, image, _SLOTS[slot][0])
        finally:
            self._refresh_views(fit=True)
        for labels_slot in labels_slots:
            if self.state[labels_slot]:
                self._image(labels_slot)

    async def load_sample(self) -> None:
        """Fetch the sample pair (in a thread: it may download) and choose its four files."""
        with self.state:
            self.state.error, self.state.status = "", "Fetching the sample pair"
        try:
            paths = await asyncio.get_running_loop().run_in_executor(None, sample.sample_pair,
                                                                     self.work_dir / "sample")
        except Exception as error:
            with self.state:
                self._fail(error)
                self.state.status = ""
            return
        for role in ("fixed", "moving"):
            self._label_names[str(paths[f"{role}_labels"][1])] = dict(sample.TISSUES)
        with self.state:
            self._add_files(list(paths.values()))
            for role, (_, path) in paths.items():
                self.state[f"{role}_file"] = str(path)
            self.state.status = "Sample pair: MNI152 2009a (fixed), Colin27 (moving), tissue segmentations"

    # --- running -----------------------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        """``registerVolumes`` keywords from the page's options."""
        choices, state = self.lib.choices, self.state
        repeat = _whole_number(state.repeat, "repeat", "1")
        return {"model": choices.modelFromChoice(state.model, "") or None,
                "cascades": _whole_number(state.cascades, "cascades", "all"),
                "repeat": 1 if repeat is None else repeat,
                "refineIterations": _whole_number(state.refine_iterations, "refinement iterations", "default"),
                "refineSimilarity": None if state.refine_similarity == choices.DEFAULT else str(state.refine_similarity),
                "refineWeight": _positive_number(state.refine_weight, "refinement weight", "default"),
                "refineLevels": _whole_number(state.refine_levels, "refinement levels", "default"),
                "refineSpacing": _positive_number(state.refine_spacing, "refinement spacing (mm)", "default"),
                "initialAlignment": str(state.initial_alignment), "symmetric": bool(state.symmetric),
                "flipAverage": bool(state.flip_average), "diffeomorphic": bool(state.diffeomorphic),
                "device": str(state.device)}

    def _inputs(self) -> runner.Inputs:
        fixed, moving = self._image("fixed_file"), self._image("moving_file")
        if fixed is None or moving is None:
            raise ValueError("choose a fixed and a moving volume (or press Sample pair)")
        fixed_labels, moving_labels = self._image("fixed_labels_file"), self._image("moving_labels_file")
        names = {**self._label_names.get(self.state.fixed_labels_file or "", {}),
                 **self._label_names.get(self.state.moving_labels_file or "", {})}
        return runner.Inputs(fixed, moving, fixed_labels, moving_labels, names)

    async def run(self) -> None:
        """Register in the worker thread; progress and the outcome come back to the page."""
        if self.state.running:
            return
        try:
            request, options = self._inputs(), self._options()
        except Exception as error:
            with self.state:
                self._fail(error)
                self.state.error = f"cannot run: {self.state.error}"
            return
        self._runs += 1
        self._cancel = threading.Event()
        folder = self.work_dir / DOWNLOADS / f"run-{self._runs}"
        loop = asyncio.get_running_loop()
        with self.state:
            self._clear_outputs()
            self._refresh_views()
            self.state.update({"running": True, "progress": 0, "status": "Starting", "error": "",
                               "metrics_rows": [], "downloads": []})

        def progress(fraction: float, message: str) -> None:  # called in the worker thread
            loop.call_soon_threadsafe(self._progress, fraction, message)

        try:
            outputs = await loop.run_in_executor(self._executor, runner.register, request, options, folder,
                                                 progress, self._cancel.is_set)
        except self.lib.RegistrationCancelled:
            with self.state:
                self.state.update({"running": False, "progress": 0, "status": "Cancelled"})
            return
        except Exception as error:
            with self.state:
                self._fail(error)
                self.state.update({"running": False, "progress": 0, "status": "Failed"})
            return
        with self.state:
            self._guarded(self._show_outputs, outputs, folder.name)
            self.state.update({"running": False, "progress": 100,
                               "status": "Failed" if self.state.error else f"Finished run {self._runs}"})

    def cancel(self) -> None:
        """Ask the running registration to stop at its next progress report or refinement iteration."""
        if self.state.running:
            self._cancel.set()
            self.state.status = "Cancelling"

    def _progress(self, fraction: float, message: str) -> None:
        if self.state.running and not self._cancel.is_set():
            with self.state:
                self.state.progress = round(100 * fraction)
                self.state.status = message

    # --- display -----------------------------------------------------------------------------------------

    def _show_outputs(self, outputs: runner.Outputs, run_name: str) -> None:
        """Put a finished run's results into the page's scene, the metrics table and the downloads."""
        scene, fixed = self.slicer.scene, self._input_nodes["fixed_file"]
        self._output_nodes["warped"] = scenes.volume_node(scene, outputs.warped, "warped")
        self._output_nodes["transform"] = scenes.grid_transform_node(scene, outputs.field, "moving to fixed")
        if outputs.warped_labels is not None:
            segmentation = scenes.segmentation_node(scene, outputs.warped_labels, fixed, "warped segmentation",
                                                    outputs.label_names)
            segmentation.GetDisplayNode().SetOpacity2DFill(_FILL_OPACITY)
            self._output_nodes["segmentation"] = segmentation
        self.state.metrics_rows = [list(row) for row in self.lib.logic.metricsTable(outputs.metrics)]
        self.state.downloads = [{"name": path.name, "url": f"{DOWNLOADS}/{run_name}/{path.name}"}
                                for path in outputs.files.values()]
        self._refresh_views()

    def _clear_outputs(self) -> None:
        for node in self._output_nodes.values():
            self.slicer.scene.RemoveNode(node)
        self._output_nodes.clear()
        self.state.metrics_rows, self.state.downloads = [], []

    def _refresh_views(self, fit: bool = False) -> None:
        """Fixed volume in the background, the warped (or, before a run, the moving) volume faded over it, the
        warped segmentation and the deformation grid as the switches say (the module's ``display``)."""
        display = self.lib.display
        fixed, moving = self._input_nodes.get("fixed_file"), self._input_nodes.get("moving_file")
        background = fixed or moving
        if background is not None:
            foreground = self._output_nodes.get("warped", moving if fixed is not None else None)
            segmentation = self._output_nodes.get("segmentation")
            display.showInSliceViews(background, foreground, fade=float(self.state.fade),
                                     segmentationNode=segmentation if self.state.show_segmentation else None,
                                     hiddenSegmentationNodes=[segmentation])
            if "transform" in self._output_nodes:
                display.showDeformationGrid(self._output_nodes["transform"], background,
                                            visible=bool(self.state.show_grid))
        for view in self.slicer.view_manager.get_slice_views():
            if fit:
                view.fit_view_to_content()
            view.schedule_render()  # display-node changes alone do not ask trame-slicer's views to redraw
