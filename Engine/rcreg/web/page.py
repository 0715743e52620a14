"""The page's widgets (Vuetify 3 through trame), bound to the state names and controller calls of :mod:`.app`.

Left: inputs, options, Run/Cancel with the progress bar, the error line and the display switches. Right:
Slicer's axial, coronal and sagittal slice views (trame-slicer's layout grid), then the metrics table and the
downloads. Every control has an ``id`` (the browser tests find them by it). Nothing is loaded from outside
the server.
"""
from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v
from trame_slicer.app.logic.slice_view_logic import connect_slice_view_slider_to_state
from trame_slicer.app.ui.slider import Slider

__all__ = ["build_page", "slice_slider"]

_SELECTS = (("fixed_file", "Fixed volume", "fixed-select", False),
            ("moving_file", "Moving volume", "moving-select", False),
            ("fixed_labels_file", "Fixed segmentation (optional)", "fixed-labels-select", True),
            ("moving_labels_file", "Moving segmentation (optional)", "moving-labels-select", True))


def slice_slider(server, view_id: str, view) -> None:
    """A slice view's own slice slider at its bottom edge (trame-slicer's slider bound to the view)."""
    with html.Div(style="position: absolute; bottom: 0; left: 0; width: 100%;"):
        Slider(typed_state=connect_slice_view_slider_to_state(server, view), theme="dark", density="compact")


def _inputs() -> None:
    v.VCardTitle("Inputs", classes="px-0")
    with v.VRow(dense=True, classes="mb-2"):
        with v.VCol():
            v.VBtn("Sample pair", id="sample", block=True, variant="tonal", click="trigger('load_sample')",
                   disabled=("running",))
    v.VFileInput(v_model=("uploads", None), id="upload", label="Upload volumes or label maps", multiple=True,
                 density="compact", disabled=("running",), hide_details=True, classes="mb-3")
    for name, label, element_id, clearable in _SELECTS:
        v.VSelect(v_model=(name, None), items=("files",), label=label, id=element_id, clearable=clearable,
                  density="compact", disabled=("running",), hide_details=True, classes="mb-2")


def _options() -> None:
    v.VCardTitle("Options", classes="px-0")
    v.VSelect(v_model=("model", "default"), items=("models",), label="Model", id="model", density="compact",
              disabled=("running",), hide_details=True, classes="mb-2")
    with v.VRow(dense=True):
        with v.VCol():
            v.VTextField(v_model=("cascades", "all"), label="Cascades", id="cascades", density="compact",
                         disabled=("running",), hide_details=True)
        with v.VCol():
            v.VTextField(v_model=("repeat", "1"), label="Repeat", id="repeat", density="compact",
                         disabled=("running",), hide_details=True)
    with v.VRow(dense=True):
        with v.VCol():
            v.VTextField(v_model=("refine_iterations", "default"), label="Refinement iterations",
                         id="refine-iterations", density="compact", disabled=("running",), hide_details=True)
        with v.VCol():
            v.VSelect(v_model=("device", "auto"), items=("devices",), label="Device", id="device",
                      density="compact", disabled=("running",), hide_details=True)
    with v.VRow(dense=True):
        with v.VCol():
            v.VSelect(v_model=("initial_alignment", "none"), items=("alignments",), label="Initial alignment",
                      id="initial-alignment", density="compact", disabled=("running",), hide_details=True)
        with v.VCol():
            v.VSelect(v_model=("refine_similarity", "default"), items=("similarities",), label="Refinement similarity",
                      id="refine-similarity", density="compact", disabled=("running",), hide_details=True)
    with v.VRow(dense=True):
        for key, label in (("refine_weight", "Refinement weight"), ("refine_levels", "Refinement levels"),
                           ("refine_spacing", "Finest spacing (mm)")):
            with v.VCol():
                v.VTextField(v_model=(key, "default"), label=label, id=key.replace("_", "-"), density="compact",
                             disabled=("running",), hide_details=True)
    for key, label in (("symmetric", "Symmetric network (inverse-consistent)"),
                       ("flip_average", "Flip-average network (brains)"),
                       ("diffeomorphic", "Diffeomorphic refinement")):
        v.VCheckbox(v_model=(key, False), label=label, id=key.replace("_", "-"), density="compact", disabled=("running",),
                    hide_details=True)


def _run() -> None:
    with v.VRow(dense=True, classes="my-1"):
        with v.VCol():
            v.VBtn("Run", id="run", block=True, color="primary", click="trigger('run')", disabled=("running",))
        with v.VCol():
            v.VBtn("Cancel", id="cancel", block=True, click="trigger('cancel')", disabled=("!running",))
    v.VProgressLinear(model_value=("progress", 0), id="progress", height=8, rounded=True, classes="my-2",
                      color="primary")
    html.Div("{{ status }}", id="status", classes="text-caption mb-2")
    v.VAlert(v_if=("error",), text=("error",), id="error", type="error", density="compact", variant="tonal",
             classes="mb-2")


def _display() -> None:
    v.VCardTitle("Display", classes="px-0")
    with html.Div(id="fade"):
        v.VSlider(v_model=("fade", 0.5), min=0, max=1, step=0.05, label="Fixed ↔ warped", density="compact",
                  hide_details=True, classes="mb-2")
    v.VSwitch(v_model=("show_grid", True), label="Deformation grid", id="grid", density="compact",
              hide_details=True, color="primary")
    v.VSwitch(v_model=("show_segmentation", True), label="Warped segmentation", id="segmentation",
              density="compact", hide_details=True, color="primary")


def _results() -> None:
    with v.VCard(classes="ma-2", variant="flat"):
        v.VCardTitle("Results")
        with v.VTable(density="compact", id="metrics"):
            with html.Tbody():
                with html.Tr(v_for="(row, index) in metrics_rows", key="index"):
                    html.Td("{{ row[0] }}")
                    html.Td("{{ row[1] }}")
        with html.Div(id="downloads", classes="pa-2"):
            v.VBtn(v_for="file in downloads", key="file.name", text=("file.name",), href=("file.url",),
                   download=("file.name",), prepend_icon="mdi-download", variant="outlined", size="small",
                   classes="mr-2 mb-2 text-none")


def build_page(server, layout_manager):
    """The page of ``server``: controls in a drawer, the slice views of ``layout_manager`` and the results."""
    with VAppLayout(server, full_height=True) as layout:
        with v.VAppBar(density="compact", elevation=1):
            v.VAppBarTitle("Recursive Cascade Registration")
        with v.VNavigationDrawer(permanent=True, width=380):
            with html.Div(classes="pa-3"):
                _inputs()
                _options()
                _run()
                _display()
        with v.VMain():
            with html.Div(id="views", style="height: 62vh; position: relative;"):
                layout_manager.initialize_layout_grid(layout)
            _results()
    return layout
